"""What the commands share: option types that say in one line what is wrong with a value, the
help panels, and the options several commands take, declared once as Annotated aliases."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..constraints import FORMS
from ..fit import KV_TYPE_BYTES
from ..retrieve import DEFAULT_CHARS, DEFAULT_COUNT, DEFAULT_EXAMPLES

# Help panels: every command groups its options under these names.
MODEL = "Model"
PROMPTS = "Prompts, references and examples"
SAMPLING = "Sampling (HF generate semantics)"
GPU = "GPU and throughput"
OUTPUT = "Output"


def at_least(low: int):
    """A whole number with a floor: `--parallel: must be at least 1`."""
    def parse(value) -> int:
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{value!r} is not a whole number") from None
        if n < low:
            raise typer.BadParameter(f"must be at least {low}")
        return n
    return parse


def finite(value) -> float:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number") from None
    if not math.isfinite(n):
        raise typer.BadParameter("must be a finite number")
    return n


def gib(value) -> int:
    """A memory size given in GiB (fractions too), as bytes."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number of GiB") from None
    if not 0 < n < 2**20:  # also refuses inf and nan
        raise typer.BadParameter("must be a number of GiB above 0")
    return max(1, int(n * 2**30))


def gpu_layers(value) -> int | str:
    """--n-gpu-layers: a count, -1 for all, or auto."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is neither a number of layers nor 'auto'") from None


def tensor_split(value) -> tuple[float, ...]:
    """--tensor-split 3,1: each device's share of the layers, in llama.cpp's device order."""
    try:
        parts = tuple(float(p) for p in str(value).split(","))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a list of numbers like 3,1") from None
    if any(not math.isfinite(p) or p < 0 for p in parts) or not any(parts):
        raise typer.BadParameter("needs shares of 0 or more, at least one above 0 (e.g. 3,1)")
    return parts


def override(value) -> tuple[str, str]:
    """--override-tensor REGEX=DEVICE (llama.cpp's -ot): where tensors whose names match go."""
    pattern, sep, device = str(value).rpartition("=")
    if not sep or not pattern or not device:
        raise typer.BadParameter(f"{value!r} is not REGEX=DEVICE (e.g. 'ffn_.*_exps=CPU')")
    try:
        re.compile(pattern)
    except re.error as e:
        raise typer.BadParameter(f"{pattern!r} is not a regular expression ({e})") from None
    return pattern, device


POSITIVE = at_least(1)

# Options several commands share.
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object", rich_help_panel=OUTPUT)]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace an output that already exists", rich_help_panel=OUTPUT)]
OutputDirOpt = Annotated[Path, typer.Option("--output-dir", help="where <name>/ goes", rich_help_panel=OUTPUT)]
GpuLayersOpt = Annotated[str, typer.Option(
    "--n-gpu-layers", parser=gpu_layers, metavar="N|auto", rich_help_panel=GPU,
    help="layers on the GPU: -1 all (default), N, or auto (as many as fit the free VRAM)")]
VramLimitOpt = Annotated[Optional[int], typer.Option(
    "--vram-limit", parser=gib, metavar="GIB", rich_help_panel=GPU,
    help="with auto: use at most this much GPU memory in all, as on a card of that size (what is in use already, "
         "the CUDA context included, counts against it)")]
RpcOpt = Annotated[Optional[str], typer.Option(
    "--rpc", metavar="HOST:PORT,…", rich_help_panel=GPU,
    help="llama.cpp RPC servers (`toolkit rpc-server` on each machine) whose devices join this run's; each is "
         "tried before loading")]
TensorSplitOpt = Annotated[Optional[str], typer.Option(
    "--tensor-split", parser=tensor_split, metavar="A,B,…", rich_help_panel=GPU,
    help="each device's share of the layers, in llama.cpp's order: RPC servers' devices (as --rpc names them), "
         "then GPUs (default: auto's plan, or llama.cpp's split by free memory)")]
SplitModeOpt = Annotated[Literal["layer", "row"], typer.Option(
    "--split-mode", rich_help_panel=GPU,
    help="over several GPUs: whole layers on each (layer), or each matrix's rows split (row; CUDA only)")]
OverrideTensorOpt = Annotated[Optional[list[str]], typer.Option(
    "--override-tensor", "-ot", parser=override, metavar="REGEX=DEVICE", rich_help_panel=GPU,
    help="put tensors whose names match on a device (CPU, CUDA0, RPC1 …: `toolkit doctor` lists them), as "
         "llama.cpp's -ot; "
         "repeatable, first match wins, e.g. 'ffn_.*_exps=CPU' keeps MoE experts in RAM")]
CacheTypeOpt = Annotated[Literal[tuple(KV_TYPE_BYTES)], typer.Option("--cache-type", rich_help_panel=GPU,
                                           help="KV cache type (q8_0 halves its memory)")]
BatchInvariantOpt = Annotated[bool, typer.Option(
    "--batch-invariant", rich_help_panel=GPU,
    help="kernels and cache layout that make a batched run give the single-stream tokens on the CPU (slower there)")]
PromptsFileOpt = Annotated[Optional[Path], typer.Option(
    "--prompts", rich_help_panel=PROMPTS, help="TOML with system / selection / correction / generic")]
ReferencesOpt = Annotated[Optional[Path], typer.Option(
    "--references", metavar="FILE", rich_help_panel=PROMPTS,
    help="the task's reference document of norms as text (passages under <분야 - 규정> titles, Markdown headings or "
         "blank lines) or JSON/JSONL: each question gets the rules of what it asks about (a space, a mark, a "
         "loanword, a spelling) in its prompt under [참고 규범]")]
LabelsOpt = Annotated[Optional[Path], typer.Option(
    "--references-labels", metavar="FILE.json", rich_help_panel=PROMPTS,
    help="labelled questions (competition JSON with output.article, the organisers' retriever files): retrieval "
         "also weighs the rules of the most similar ones; a question never uses its own label; examples prefer "
         "the rules found")]
ReferencesCountOpt = Annotated[Optional[int], typer.Option(
    "--references-count", parser=POSITIVE, metavar="N", rich_help_panel=PROMPTS,
    help=f"passages per question (default {DEFAULT_COUNT})")]
ReferencesCharsOpt = Annotated[Optional[int], typer.Option(
    "--references-chars", parser=POSITIVE, metavar="N", rich_help_panel=PROMPTS,
    help=f"characters kept of each passage (default {DEFAULT_CHARS})")]
ExamplesOpt = Annotated[Optional[Path], typer.Option(
    "--examples", metavar="FILE.json", rich_help_panel=PROMPTS,
    help="a train file (competition JSON with output.answer): each question is shown the solved questions of its "
         "type most like it, under [참고 예시]")]
ExamplesCountOpt = Annotated[Optional[int], typer.Option(
    "--examples-count", parser=POSITIVE, metavar="N", rich_help_panel=PROMPTS,
    help=f"examples per question (default {DEFAULT_EXAMPLES})")]
AnswerFormOpt = Annotated[Literal[FORMS], typer.Option(
    "--answer-form", rich_help_panel=PROMPTS,
    help="free: as the model writes (the seed's); strict: every 선택형/교정형 answer opens with \"…\"가 옳다. , a 선택형 "
         "one with one of its {A/B} candidates; choose: the 선택형 candidate the model finds likeliest opens the "
         "answer (교정형 as strict)")]


# Commands in the order help lists them, with their typer settings; the package registers them.
COMMANDS: list[tuple[str, Callable, dict]] = []


def command(name: str, **settings):
    def register(function: Callable) -> Callable:
        COMMANDS.append((name, function, settings))
        return function
    return register


def examples(*lines: str) -> str:
    """A command's epilog: real invocations, one per line (typer joins paragraphs, so one each)."""
    return "\n\n".join(["Examples:", *(f"  $ {line}" for line in lines)])


def placement(rpc: str | None, tensor_split: tuple[float, ...] | None, split_mode: str,
              override_tensor: list[tuple[str, str]] | None) -> dict:
    """EngineSettings' fields for the options that place a model over several devices."""
    return {"rpc": rpc, "tensor_split": tensor_split, "split_mode": split_mode,
            "overrides": tuple(override_tensor or ())}

