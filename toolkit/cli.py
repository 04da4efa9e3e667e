"""Command line: parse options, call the library, turn named errors into exit codes."""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from pathlib import Path

from rich.markup import escape

from . import __version__, console
from .errors import DiskFull, ToolkitError, UserError
from .fit import KV_TYPE_BYTES
from .fsutil import NO_SPACE_ERRNOS
from .constraints import FORMS
from .quantizer import DEFAULT_TYPE, QUANT_TYPES
from .retrieve import (DEFAULT_CHARS, DEFAULT_COUNT, DEFAULT_EXAMPLES, ExampleSettings, RetrievalSettings,
                       load_examples, read_inputs)
from .sampler import SamplingParams


def gpu_layers(value: str) -> int | str:
    """--n-gpu-layers: a count, -1 for all, or auto."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number of layers nor 'auto'") from None


def gib(value: str) -> int:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of GiB") from None
    if not 0 < n < 2**20:  # also refuses inf and nan
        raise argparse.ArgumentTypeError("must be a number of GiB above 0")
    return max(1, int(n * 2**30))


def at_least(low: int):
    """An integer option with a floor (argparse's one-line error below it)."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return n
    return parse


def finite(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(n):
        raise argparse.ArgumentTypeError("must be a finite number")
    return n


positive = at_least(1)


def _add_placement(g) -> None:
    g.add_argument("--n-gpu-layers", type=gpu_layers, default=-1,
                   help="layers on the GPU: -1 all (default), N, or auto (as many as fit the free VRAM)")
    g.add_argument("--vram-limit", type=gib, metavar="GIB",
                   help="with auto: use at most this much GPU memory in all, as on a card of that size "
                        "(what is in use already, the CUDA context included, counts against it)")
    g.add_argument("--cache-type", choices=list(KV_TYPE_BYTES), default="f16",
                   help="KV cache type (q8_0 halves its memory)")


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="HF checkpoint (local dir or hub id) → quantized GGUF under models/",
                       description="Convert a Hugging Face checkpoint with llama.cpp's own converter, then "
                                   f"quantize it (default {DEFAULT_TYPE}). Any llama.cpp type can be given as "
                                   "--<type> (e.g. --q6_k, --iq4_xs) or --type T.")
    p.add_argument("model", help="local checkpoint directory or Hugging Face repo id (owner/name)")
    for name in QUANT_TYPES:
        shown = name in ("Q4_K_M", "Q8_0")
        p.add_argument(f"--{name.lower()}", dest="types", action="append_const", const=name,
                       help=f"make {name}" if shown else argparse.SUPPRESS)
    p.add_argument("--type", dest="types", action="append", metavar="T",
                   help="any llama.cpp quantization type, case-insensitive; repeatable or comma-separated")
    p.add_argument("--outtype", default="auto", choices=["auto", "bf16", "f16", "f32"],
                   help="intermediate precision (auto: bf16 for bf16 checkpoints, else f16)")
    p.add_argument("--revision", help="hub branch, tag or commit (default: main)")
    p.add_argument("--output-dir", type=Path, default=Path("models"), help="where <name>/ goes (default: models)")
    p.add_argument("--keep-intermediate", action="store_true", help="keep the 16-bit GGUF next to the quantized ones")
    p.add_argument("--force", action="store_true", help="rebuild outputs that already exist")
    p.add_argument("--threads", type=at_least(0), default=0, help="quantizer threads (default: all cores)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the fidelity report (top-1 agreement, KL divergence, perplexity vs the 16-bit file)")
    p.add_argument("--lora", metavar="ADAPTER",
                   help="PEFT LoRA adapter (directory or hub id) merged into MODEL first; outputs go to "
                        "<model>-<adapter>/")
    p.add_argument("--lora-revision", help="the adapter's hub branch, tag or commit (default: main)")
    p.add_argument("--imatrix", metavar="auto|FILE",
                   help="quantize with an importance matrix: auto computes one on --calibration's questions and "
                        "answers (llama.cpp's llama-imatrix); outputs are <name>-<TYPE>-imatrix.gguf; makes the "
                        "types that need one (iq1_*, iq2_*, q2_k_s) possible; needs `toolkit setup --tools`")
    p.add_argument("--calibration", type=Path, metavar="DATA.json",
                   help="competition JSON for --imatrix auto, e.g. the train file (default: the bundled samples)")
    p.add_argument("--json", action="store_true", help="print one JSON object (files, times, fidelity)")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="fidelity of quantized GGUFs against their 16-bit original",
                       description="Teacher-forced over the same texts: top-1 agreement with the reference, "
                                   "mean and p99 KL divergence, perplexity (what llama-perplexity "
                                   "--kl-divergence reports).")
    p.add_argument("reference", type=Path, help="the F16/BF16 GGUF")
    p.add_argument("quants", type=Path, nargs="+", help="quantized GGUFs of the same model")
    p.add_argument("--prompts", type=Path, help="competition JSON (questions + output.answer) or a plain text file "
                                               "(default: the bundled samples with reference answers)")
    p.add_argument("--n-ctx", type=at_least(16), default=512,
                   help="chunk size for a plain text file (as llama-perplexity -c; at least 16)")
    p.add_argument("--n-gpu-layers", type=gpu_layers, default=-1)
    p.add_argument("--json", action="store_true", help="print a list of objects")


def _add_lora(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="PEFT LoRA adapter → GGUF LoRA for `infer --lora` on a quantized base",
                       description="Convert a PEFT LoRA adapter with llama.cpp's own convert_lora_to_gguf.py (same "
                                   "pinned source as the model converter). Default output: "
                                   "models/<base>-<adapter>/<base>-<adapter>-LoRA-<OUTTYPE>.gguf.")
    p.add_argument("adapter", help="PEFT adapter directory (adapter_config.json + weights) or hub repo id")
    p.add_argument("--base", required=True, help="the base model it was trained on: checkpoint directory or hub id")
    p.add_argument("--outtype", default="f16", choices=["f16", "bf16", "f32"], help="LoRA tensor type (default f16)")
    p.add_argument("--output", type=Path, help="where to write the GGUF LoRA")
    p.add_argument("--output-dir", type=Path, default=Path("models"), help="where <base>-<adapter>/ goes (default: models)")
    p.add_argument("--revision", help="the adapter's hub branch, tag or commit (default: main)")
    p.add_argument("--base-revision", help="the base's hub branch, tag or commit (default: main)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print one JSON object (path, size, base, adapter)")


def _add_retrieve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieve", help="the rules infer --references finds for each question, and how often the "
                                        "right one (output.article) is among them",
                       description="No model is loaded. Examples:  toolkit retrieve test.json --references norms.txt "
                                   "--references-labels train.json   |   toolkit retrieve dev.json --references "
                                   "norms.txt --eval")
    p.add_argument("questions", type=Path, help="competition JSON (with output.article for --eval)")
    p.add_argument("--references", type=Path, metavar="FILE", required=True,
                   help="the task's reference document as text (as infer takes it)")
    p.add_argument("--references-labels", type=Path, metavar="FILE.json",
                   help="labelled questions (output.article); a question never uses its own label, so the "
                        "questions file itself measures leave-one-out")
    p.add_argument("--count", dest="references_count", type=positive, metavar="N",
                   help=f"rules per question (default {DEFAULT_COUNT})")
    p.add_argument("--examples", type=Path, metavar="FILE.json",
                   help="solved questions, as infer takes: also shows which rule each chosen example is about")
    p.add_argument("--examples-count", type=positive, metavar="N")
    p.add_argument("--eval", action="store_true",
                   help="R@1, R@3, R@5 and MRR overall, per type and per section, the commonest misses")
    p.add_argument("--json", action="store_true",
                   help="a list of {id, titles, scores}; with --eval one object (n, r@1, r@3, r@5, mrr, by_type, "
                        "by_section, misses)")


def _add_infer(sub: argparse._SubParsersAction) -> None:
    d = SamplingParams()
    p = sub.add_parser("infer", help="answer every question of a competition JSON file with a GGUF model",
                       description="Build the competition prompts, sample as HF generate does (the seed's "
                                   "defaults), and write the same JSON back with output.answer on every item. "
                                   "Default output: <input stem>.<model stem>.json beside the input.")
    p.add_argument("input", type=Path, help="competition JSON (a list of {id, input: {question_type, question}})")
    p.add_argument("--model", type=Path, help="GGUF file (default: the only one under models/, else the embedded model)")
    p.add_argument("--output", type=Path, help="where to write (default: <input stem>.<model stem>.json)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over instead of keeping answers already in the output")
    p.add_argument("--dry-run", action="store_true",
                   help="write each item's rendered prompt and its token count instead of generating")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    g = p.add_argument_group("prompts")
    g.add_argument("--system-prompt", help="system message (text or @file; default: the seed's)")
    g.add_argument("--selection-prompt", help="instruction for 선택형 (text or @file)")
    g.add_argument("--correction-prompt", help="instruction for 교정형 (text or @file)")
    g.add_argument("--prompts", type=Path, help="TOML with system / selection / correction / generic")
    g.add_argument("--chat-template", type=Path, help="jinja chat template to use instead of the model's")
    g.add_argument("--references", type=Path, metavar="FILE",
                   help="the task's reference document of norms as text (passages under <분야 - 규정> titles, "
                        "Markdown headings or blank lines) or JSON/JSONL: each question gets the rules of what "
                        "it asks about (a space, a mark, a loanword, a spelling) in its prompt under [참고 규범]")
    g.add_argument("--references-labels", type=Path, metavar="FILE.json",
                   help="labelled questions (competition JSON with output.article, the organisers' retriever "
                        "files): retrieval also weighs the rules of the most similar ones; examples prefer the "
                        "rules found")
    g.add_argument("--references-count", type=positive, metavar="N",
                   help=f"passages per question (default {DEFAULT_COUNT})")
    g.add_argument("--references-chars", type=positive, metavar="N",
                   help=f"characters kept of each passage (default {DEFAULT_CHARS})")
    g.add_argument("--examples", type=Path, metavar="FILE.json",
                   help="a train file (competition JSON with output.answer): each question is shown the solved "
                        "questions of its type most like it, under [참고 예시]")
    g.add_argument("--examples-count", type=positive, metavar="N",
                   help=f"examples per question (default {DEFAULT_EXAMPLES})")
    g.add_argument("--answer-form", choices=FORMS, default="free",
                   help="free: as the model writes (the seed's); strict: every 선택형/교정형 answer opens with "
                        "\"…\"가 옳다. , a 선택형 one with one of its {A/B} candidates; choose: the 선택형 candidate "
                        "the model finds likeliest opens the answer (교정형 as strict)")
    g = p.add_argument_group("sampling (HF generate semantics)")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--top-k", type=int, default=d.top_k, help="0 turns top-k off")
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--greedy", action="store_true", help="do_sample=False: argmax after the repetition penalty")
    g.add_argument("--num-beams", type=int, default=d.num_beams, help="only 1: beam search is not supported")
    g.add_argument("--seed", type=int, default=d.seed, help="same seed, same answers (per item)")
    g.add_argument("--votes", type=positive, default=d.num_return_sequences, metavar="N",
                   help="sample N answers per question (those of --seed, seed+1, …) and keep the sentence most of "
                        "them declare correct, with the most typical reason (default 1)")
    g = p.add_argument_group("loading")
    _add_placement(g)
    g.add_argument("--n-ctx", type=positive, help="KV cells for all --parallel sequences together (default: fitted "
                   "to them: each one's prompt + max-new-tokens, shared prompt heads once)")
    g.add_argument("--threads", type=at_least(0), help="CPU threads (default or 0: all cores)")
    g.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto")
    g.add_argument("--lora", type=Path, metavar="FILE.gguf", help="GGUF LoRA (from `toolkit lora`) applied on the model")
    g.add_argument("--lora-scale", type=finite, default=1.0, help="LoRA strength (default 1.0: as trained)")
    g = p.add_argument_group("throughput")
    g.add_argument("--parallel", type=positive, help="questions decoded together (default: 16 on a GPU, 4 on the CPU; "
                                                 "1: one at a time)")
    g.add_argument("--batch-invariant", action="store_true",
                   help="kernels and cache layout that make a batched run give the single-stream tokens on "
                        "the CPU (slower there)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolkit",
        description="Quantize Korean LLMs with llama.cpp and answer AI 말평 language-norm questions.")
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("setup", help="take llama.cpp's converter from the pinned llama-cpp-python sdist")
    p.add_argument("--sdist", type=Path, help="use this llama-cpp-python sdist instead of downloading it")
    p.add_argument("--force", action="store_true", help="extract (and with --tools, build) again even if already set up")
    p.add_argument("--tools", action="store_true",
                   help="also build llama.cpp's llama-imatrix, llama-quantize and llama-perplexity from the same "
                        "sdist (for quantize --imatrix; a few minutes; CMAKE_ARGS/CFLAGS as for llama-cpp-python)")

    p = sub.add_parser("doctor", help="versions, converter location, GPU devices and free VRAM",
                       description="With --model: also the --n-gpu-layers auto plan for that GGUF.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("auto-fit plan")
    g.add_argument("--model", type=Path, help="GGUF file to plan for")
    g.add_argument("--n-ctx", type=positive, default=2048, help="tokens per sequence (prompt + answer; default 2048)")
    g.add_argument("--parallel", type=positive, default=1, help="sequences decoded together")
    g.add_argument("--vram", type=gib, metavar="GIB", help="free GPU memory to plan for (default: what is free now)")
    g.add_argument("--cache-type", choices=list(KV_TYPE_BYTES), default="f16")
    g.add_argument("--no-flash-attn", action="store_true", help="plan for attention scores in the compute buffer")

    _add_quantize(sub)
    _add_compare(sub)
    _add_lora(sub)

    p = sub.add_parser("inspect", help="architecture, types, size and tokenizer of a GGUF file")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    _add_infer(sub)
    _add_retrieve(sub)

    p = sub.add_parser("bench", help="prompt / generation / aggregate tok/s and memory at several --parallel",
                       description="Runs infer on the questions (default: the bundled samples) once per --parallel "
                                   "setting, each in a fresh process, with the seed's sampling and prompts.")
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("--input", type=Path, help="competition JSON (default: the bundled sample questions)")
    p.add_argument("--repeat", type=positive, default=1, help="use the questions this many times over")
    p.add_argument("--parallel", type=positive, action="append", help="repeatable (default: 1 and 4)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=Path, help="TOML with system / selection / correction / generic, as infer "
                   "takes (default: the seed's prompts)")
    p.add_argument("--references", type=Path, metavar="FILE", help="norms for each question's prompt, as infer takes")
    p.add_argument("--references-labels", type=Path, metavar="FILE.json", help="labelled questions, as infer takes")
    p.add_argument("--references-count", type=positive, metavar="N")
    p.add_argument("--references-chars", type=positive, metavar="N")
    p.add_argument("--examples", type=Path, metavar="FILE.json", help="solved questions for each prompt, as infer takes")
    p.add_argument("--examples-count", type=positive, metavar="N")
    p.add_argument("--answer-form", choices=FORMS, default="free", help="as infer takes it (default free)")
    _add_placement(p)
    p.add_argument("--batch-invariant", action="store_true")
    p.add_argument("--json", action="store_true", help="print a list of objects")

    p = sub.add_parser("score", help="the competition's metrics for predictions against gold answers",
                       description="Exact match on the \"…\"가 옳다 sentence, ROUGE-1 on Korean morphemes, and "
                                   "BERTScore / BLEURT when their models are local. Never downloads.")
    p.add_argument("predictions", type=Path, help="JSON written by `toolkit infer`")
    p.add_argument("gold", type=Path, help="the same items with gold output.answer")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--bertscore-model", type=Path, help="local bert-base-multilingual-cased (else the HF cache's, if any)")
    p.add_argument("--bleurt-model", type=Path, help="local BLEURT checkpoint loadable by transformers (the official evaluator uses BLEURT-20)")

    p = sub.add_parser("vote", help="one answers file from several (models, prompts, seeds): the majority's answer",
                       description="Per question, keep the \"…\"가 옳다 sentence most of the files declare correct, "
                                   "with the reason most like the others' (ROUGE-1); ties go to the earlier file.")
    p.add_argument("answers", type=Path, nargs="+", help="JSON files written by `toolkit infer` for one question file")
    p.add_argument("--output", type=Path, required=True, help="where to write the chosen answers")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    sub.add_parser("demo", help="quantize the embedded SmolLM2-135M-Instruct, answer and score the sample questions")
    for command in sub.choices.values():  # `toolkit infer … -v` as well as `toolkit -v infer …`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks on errors")
    return parser


def _type_flags_any_case(argv: list[str]) -> list[str]:
    """--Q8_0 and --IQ4_XS as well as --q8_0: type flags are case-insensitive."""
    return [a.lower() if a.startswith("--") and a[2:].upper() in QUANT_TYPES else a for a in argv]


def _split_types(values: list[str] | None) -> tuple[str, ...]:
    return tuple(t for v in values or [] for t in v.split(",") if t.strip())


def cmd_setup(args: argparse.Namespace) -> int:
    from . import vendor

    conv = vendor.provision(args.sdist, force=args.force)
    console.out.print(f"llama.cpp converter: {conv.script}")
    console.out.print(f"from llama-cpp-python {conv.llama_cpp_python}, llama.cpp commit {conv.commit}")
    if args.tools:
        from . import tools

        built = tools.build(force=args.force)
        console.out.print(f"llama.cpp tools: {built.bin} ({', '.join(tools.NAMES)})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor
    from .inspection import human_bytes

    rep = doctor.report()
    if args.model:
        rep["fit"] = doctor.fit_report(args.model, args.n_ctx, args.parallel, args.vram, args.cache_type,
                                       not args.no_flash_attn)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    for key, value in rep.items():
        if key == "devices":
            for d in value:
                mem = f", {human_bytes(d['free_bytes'])} free of {human_bytes(d['total_bytes'])}" if d["kind"] != "CPU" else ""
                console.out.print(f"{'device':<24} {d['name']}: {d['description']} ({d['kind']}{mem})")
            if not any(d["kind"] in ("GPU", "IGPU") for d in value):
                console.out.print(f"{'cuda devices':<24} none visible to llama.cpp")
        elif key == "fit":
            console.out.print(f"{'plan':<24} {value['request']}")
            console.out.print(f"{'':<24} {value['plan']}")
        else:
            console.out.print(f"{key.replace('_', ' '):<24} {value}")
    return 0


def print_quantize_result(result) -> None:
    from rich.table import Table

    from .inspection import human_bytes

    table = Table(title=f"{result.source.id}", title_justify="left")
    for col in ("type", "size", "BPW", "seconds", "status", "path"):
        table.add_column(col, justify="right" if col in ("size", "BPW", "seconds") else "left",
                         overflow="fold")
    for f in result.files:
        table.add_row(f.type, human_bytes(f.size), f"{f.bits_per_weight:.2f}", f"{f.seconds:.1f}", f.status, str(f.path))
    captions = []
    if result.adapter is not None:
        config = result.adapter.config
        captions.append(f"LoRA {result.adapter.source.id} (r={config.get('r')}, alpha={config.get('lora_alpha')})")
    if result.merge_seconds is not None:
        captions.append(f"merge: {result.merge_seconds:.1f} s")
    if result.convert_seconds is not None:
        captions.append(f"conversion: {result.convert_seconds:.1f} s")
    if result.imatrix is not None:
        built = any(f.status == "built" for f in result.files)
        how = (f"computed in {result.imatrix_seconds:.1f} s" if result.imatrix_seconds is not None
               else "given" if result.imatrix.get("calibration") == "given file"
               else "reused" if built else "as recorded")
        on = (f" on {result.imatrix['calibration']} ({result.imatrix['calibration_items']} items, "
              f"{result.imatrix['tokens']} tokens)" if "tokens" in result.imatrix else "")
        captions.append(f"imatrix {Path(result.imatrix['file']).name}{on}, {how}")
    table.caption = "; ".join(captions) or None
    console.out.print(table)


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import QuantizeSettings, quantize

    settings = QuantizeSettings(
        types=_split_types(args.types) or (DEFAULT_TYPE,),
        outtype=args.outtype, revision=args.revision, output_dir=args.output_dir,
        keep_intermediate=args.keep_intermediate, force=args.force, threads=args.threads, check=args.check,
        lora=args.lora, lora_revision=args.lora_revision, imatrix=args.imatrix, calibration=args.calibration,
    )
    result = quantize(args.model, settings)
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
        return 0
    print_quantize_result(result)
    if result.fidelity:
        print_fidelity(result.fidelity, f"fidelity vs the {result.fidelity[0].type} intermediate "
                                        "(bundled samples, answers teacher-forced)")
    return 0


def print_fidelity(rows, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("file", "type", "top-1 agreement", "KLD mean", "KLD p99", "PPL", "positions"):
        table.add_column(col, justify="left" if col in ("file", "type") else "right")
    for r in rows:
        table.add_row(r.file, r.type, f"{100 * r.top1_agreement:.1f} %", f"{r.kld_mean:.4f}", f"{r.kld_p99:.4f}",
                      f"{r.ppl:.3f}", str(r.positions))
    console.out.print(table)


def cmd_compare(args: argparse.Namespace) -> int:
    from .engine import EngineSettings
    from .fidelity import compare

    rows = compare(args.reference, list(args.quants), args.prompts, args.n_ctx,
                   EngineSettings(n_gpu_layers=args.n_gpu_layers),
                   on_file=lambda p: console.err.print(f"scoring {p.name}"))
    if args.json:
        print(json.dumps([r.as_dict() for r in rows]))
    else:
        print_fidelity(rows, f"fidelity vs {args.reference.name}")
    return 0


def cmd_lora(args: argparse.Namespace) -> int:
    from .inspection import human_bytes
    from .lora import LoraSettings, export_lora

    settings = LoraSettings(outtype=args.outtype, output=args.output, output_dir=args.output_dir,
                            revision=args.revision, base_revision=args.base_revision, force=args.force)
    r = export_lora(args.adapter, args.base, settings)
    if args.json:
        print(json.dumps(r.as_dict(), ensure_ascii=False))
        return 0
    config = r.adapter.config
    console.out.print(f"{r.status} {r.path} ({human_bytes(r.size)}, {r.seconds:.1f} s): LoRA r={config.get('r')} "
                      f"alpha={config.get('lora_alpha')} on {len(r.adapter.updates)} tensors of {r.base.id}")
    console.out.print(f"use it: toolkit infer FILE.json --model <a GGUF of {r.base.name}> --lora {r.path}")
    return 0


def print_inspect(path: Path) -> None:
    from .inspection import human_bytes, human_count, summary

    s = summary(path)
    rows = [
        ("file", s["file"]), ("architecture", s["architecture"]), ("name", s["name"]),
        ("file type", s["file_type"]), ("size", human_bytes(s["size_bytes"])),
        ("parameters", human_count(s["parameters"])), ("bits per weight", f"{s['bits_per_weight']:.2f}"),
        ("tensor types", ", ".join(f"{k} {v}" for k, v in s["tensor_types"].items())),
        ("layers", s["layers"]), ("context length", s["context_length"]),
        ("tokenizer", f"{s['tokenizer_model']} (pre-tokenizer {s['pre_tokenizer']})"),
        ("chat template", "yes" if s["chat_template"] else "no"),
    ]
    for key, value in rows:
        console.out.print(f"{key:<16} {value}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import summary

    if args.json:
        print(json.dumps(summary(args.file), ensure_ascii=False, indent=2))
    else:
        print_inspect(args.file)
    return 0


def retrieval_settings(args: argparse.Namespace):
    """--references and --examples with their counts; a count without its file is a mistake, said."""
    for option, needs in (("references_count", "references"), ("references_chars", "references"),
                          ("references_labels", "references"), ("examples_count", "examples")):
        if getattr(args, option, None) is not None and getattr(args, needs) is None:
            raise UserError(f"--{option.replace('_', '-')} needs --{needs} FILE")
    return (RetrievalSettings(args.references, args.references_count or DEFAULT_COUNT,
                              getattr(args, "references_chars", None) or DEFAULT_CHARS, args.references_labels),
            ExampleSettings(args.examples, args.examples_count or DEFAULT_EXAMPLES))


def infer_settings(args: argparse.Namespace):
    from dataclasses import replace

    from .engine import EngineSettings
    from .infer import InferSettings
    from .prompts import PromptSet, load_prompt_file, text_or_file

    prompts = load_prompt_file(args.prompts) if args.prompts else PromptSet()
    overrides = {"system": args.system_prompt, "selection": args.selection_prompt,
                 "correction": args.correction_prompt}
    prompts = replace(prompts, **{k: text_or_file(v) for k, v in overrides.items() if v is not None})
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                              do_sample=not args.greedy, num_beams=args.num_beams,
                              num_return_sequences=args.votes, seed=args.seed)
    engine = EngineSettings(n_gpu_layers=args.n_gpu_layers, vram_limit=args.vram_limit, cache_type=args.cache_type,
                            n_ctx=args.n_ctx, threads=args.threads,
                            flash_attn={"auto": None, "on": True, "off": False}[args.flash_attn],
                            batch_invariant=args.batch_invariant, lora=args.lora, lora_scale=args.lora_scale)
    references, examples = retrieval_settings(args)
    return InferSettings(model=args.model, output=args.output, sampling=sampling, engine=engine, prompts=prompts,
                         references=references, examples=examples, chat_template=args.chat_template, resume=args.resume,
                         dry_run=args.dry_run, parallel=args.parallel, answer_form=args.answer_form)


def print_infer_result(r, as_json: bool = False) -> None:
    summary = {
        "output": str(r.output), "model": str(r.model), "items": r.items, "resumed": r.resumed,
        "generated": r.generated, "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens,
        "seconds": round(r.seconds, 2), "tokens_per_second": round(r.tokens_per_second, 2),
        "prompt_tokens_per_second": round(r.prompt_tokens / r.prompt_seconds, 2) if r.prompt_seconds else 0.0,
        "generation_tokens_per_second": round(r.new_tokens / r.gen_seconds, 2) if r.gen_seconds else 0.0,
        "cut_at_max_new_tokens": r.cut_at_max_tokens, "missing_answer_form": r.missing_form,
        "answer_form_checked": r.form_checked, "parallel": r.parallel, "n_ctx": r.n_ctx,
        "votes": r.votes, "agreement": _agreement_json(r.agreement),
        "layers_on_gpu": f"{r.load.layers_offloaded}/{r.load.layers_total}", "backend": r.load.backend,
        "llama_cpp_offload_log": r.load.offload_log,
        "memory_mib": r.memory,
        "answer_form": r.answer_form, "choices": r.choices,
    }
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    console.out.print(f"wrote {r.output}: {r.items} items ({r.generated} generated, {r.resumed} resumed)")
    console.out.print(f"{r.new_tokens} new tokens in {r.seconds:.1f} s = {r.tokens_per_second:.1f} tok/s overall; "
                      f"prompts {summary['prompt_tokens_per_second']:.0f} tok/s ({r.prompt_tokens} tokens), "
                      f"generation {summary['generation_tokens_per_second']:.1f} tok/s; "
                      f"{r.cut_at_max_tokens} cut at max-new-tokens")
    if r.form_checked:
        console.out.print(f'{r.missing_form} of {r.form_checked} 선택형/교정형 answers lack the "…"가 옳다 form')
    if r.votes > 1 and r.agreement:
        console.out.print(describe_agreement(r.agreement, r.votes))
    if r.choices:
        console.out.print(describe_choices(r.choices), markup=False)  # ids are text


def describe_choices(choices: dict[str, dict]) -> str:
    """`choose: 4 선택형 answer(s) opened with the likeliest candidate; margins … 0.62 to 8.29, median
    6.44: s1 #1 (6.44); s2 #2 (2.56); …` (item, candidate's number, margin); past 20 items, --json lists each."""
    margins = sorted(c["margin"] for c in choices.values() if c["margin"] is not None)
    text = f"choose: {len(choices)} 선택형 answer(s) opened with the likeliest candidate"
    if margins:
        text += (f"; margins (log-probability over the next best) {margins[0]:.2f} to {margins[-1]:.2f}, "
                 f"median {margins[len(margins) // 2]:.2f}")
    if len(choices) <= 20:  # each, while that stays readable
        return text + ": " + "; ".join(
            f"{key} #{c['candidate'] + 1}" + (f" ({c['margin']:.2f})" if c["margin"] is not None else "")
            for key, c in choices.items())
    return text + " (--json lists each)"


def _agreement_json(agreement: dict[int, int]) -> dict[str, int]:
    return {str(k): n for k, n in sorted(agreement.items(), reverse=True)}


def describe_agreement(agreement: dict[int, int], votes: int) -> str:
    """`the kept sentence had 3/3 votes on 5 questions, 2/3 on 2, 0/3 on 1 (0: no answer had the form)`."""
    (top, n), *rest = sorted(agreement.items(), reverse=True)
    text = f"the kept sentence had {top}/{votes} votes on {n} question{'s' if n != 1 else ''}"
    text += "".join(f", {k}/{votes} on {m}" for k, m in rest)
    return text + (" (0: no answer had the form)" if 0 in agreement else "")


def cmd_infer(args: argparse.Namespace) -> int:
    from .infer import infer

    result = infer(args.input, infer_settings(args))
    if args.dry_run:
        console.out.print(f"wrote {result.items} rendered prompts to {result.output}")
    else:
        print_infer_result(result, args.json)
    return 0


def print_score(report) -> None:
    from rich.table import Table

    def fmt(v):
        return "—" if v is None else f"{v:.4f}"

    table = Table(title="scores", title_justify="left")
    for col in ("type", "n", "EM", "ROUGE-1", "BERTScore", "BLEURT", "descriptive", "final"):
        table.add_column(col, justify="left" if col == "type" else "right")
    rows = list(report.by_type.items()) + [("overall", report)]
    for name, r in rows:
        table.add_row(name, str(r.n), fmt(r.exact_match), fmt(r.rouge1), fmt(r.bertscore), fmt(r.bleurt),
                      fmt(r.descriptive_avg), fmt(r.final))
    table.caption = "final = (EM + mean of " + ", ".join(report.metrics_used[1:] or ["no descriptive metric"]) + ") / 2"
    console.out.print(table)


def cmd_score(args: argparse.Namespace) -> int:
    from .score import score

    report = score(args.predictions, args.gold, args.bertscore_model, args.bleurt_model)
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print_score(report)
    return 0


def cmd_vote(args: argparse.Namespace) -> int:
    from .vote import vote_files

    r = vote_files(args.answers, args.output)
    if args.json:
        print(json.dumps({"output": str(r.output), "items": r.items,
                          "kept": {str(p): n for p, n in zip(r.sources, r.kept)},
                          "agreement": _agreement_json(r.agreement)},
                         ensure_ascii=False))
        return 0
    kept = ", ".join(f"{n} from {p.name}" for p, n in zip(r.sources, r.kept))
    console.out.print(f"wrote {r.output}: {r.items} items; answers kept: {kept}")
    console.out.print(describe_agreement(r.agreement, len(r.sources)))
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from . import recall

    references, examples = retrieval_settings(args)
    result = recall.run(args.questions, references, examples)
    if args.eval:
        report = recall.evaluate(result)
        if args.json:
            print(json.dumps(report, ensure_ascii=False))
        else:
            print_recall(report, result)
        return 0
    if args.json:
        print(json.dumps([{"id": f.id, "titles": f.titles, "scores": f.scores,
                           **({"examples": f.examples} if examples.path else {})} for f in result.found],
                         ensure_ascii=False))
        return 0
    for f in result.found:
        shown = "; ".join(f"{t} ({s:.2f})" for t, s in zip(f.titles, f.scores)) or "—"
        console.out.print(f"{f.id}\t{shown}", markup=False)
    console.notice(f"{len(result.found)} questions in {result.seconds:.1f} s")
    return 0


def print_recall(report: dict, result) -> None:
    from rich.table import Table

    table = Table(title="retrieval", title_justify="left")
    for col in ("", "n", "R@1", "R@3", "R@5", "MRR"):
        table.add_column(col, justify="left" if not col else "right")
    rows = [("all", report)] + [(f"type {k}", v) for k, v in report["by_type"].items()] \
        + [(f"section {k}", v) for k, v in report["by_section"].items()]
    for name, r in rows:
        table.add_row(escape(name), str(r["n"]), *(f"{r[k]:.3f}" for k in ("r@1", "r@3", "r@5", "mrr")))
    labels = f", {result.labelled} labelled questions" if result.labelled else ", no labels"
    table.caption = f"{len(result.titles)} rules{labels}; {report['seconds']:.1f} s for {len(result.found)} questions"
    console.out.print(table)
    if report["misses"]:
        console.out.print("commonest misses (gold → first found):")
        for m in report["misses"]:
            console.out.print(f"  {m['count']:>3}  {m['gold']} → {m['found'] or '—'}", markup=False)
    if report["unknown_gold"]:
        console.warn(f"{report['unknown_gold']} gold titles are not titles of the reference document")
    if "examples" in report:
        ex = report["examples"]
        if ex["titled"]:
            console.out.print(f"examples about the question's own rule: first {ex['first']:.1%}, "
                              f"any of those shown {ex['any']:.1%}")
        else:
            console.out.print("examples: none says which rule it is about (output.article, or "
                              "--references-labels for the same questions)")


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .bench import BenchSettings, bench
    from .engine import EngineSettings
    from .prompts import PromptSet, load_prompt_file

    references, examples = retrieval_settings(args)
    if args.references:  # a bad file is said once, not by each --parallel's process
        read_inputs(references)
    if args.examples:
        load_examples(args.examples)
    settings = BenchSettings(parallel=tuple(args.parallel or (1, 4)),
                             prompts=load_prompt_file(args.prompts) if args.prompts else PromptSet(),
                             references=references, examples=examples, answer_form=args.answer_form,
                             sampling=SamplingParams(max_new_tokens=args.max_new_tokens).validate(),
                             engine=EngineSettings(n_gpu_layers=args.n_gpu_layers, vram_limit=args.vram_limit,
                                                   cache_type=args.cache_type, batch_invariant=args.batch_invariant))
    rows = bench(args.model, args.input, settings, repeat=args.repeat)
    if args.json:
        print(json.dumps(rows))
        return 0
    table = Table(title=f"{args.model.name}", title_justify="left")
    cols = [("parallel", "parallel"), ("prompt tok/s", "prompt_tps"), ("gen tok/s", "gen_tps"),
            ("aggregate tok/s", "aggregate_tps"), ("s/item", "seconds_per_item"), ("peak RSS MB", "peak_rss_mb"),
            ("peak VRAM MB", "peak_vram_mb")]
    for title, _ in cols:
        table.add_column(title, justify="right")
    for row in rows:
        table.add_row(*("—" if row[key] is None else str(row[key]) for _, key in cols))
    table.caption = "aggregate = new tokens of all sequences / wall time of the run (prompts included)"
    console.out.print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    quantized, answers, scores = demo.run()
    print_quantize_result(quantized)
    if quantized.fidelity:
        print_fidelity(quantized.fidelity, f"fidelity vs the {quantized.fidelity[0].type} intermediate")
    print_inspect(quantized.files[0].path)
    print_infer_result(answers)
    print_score(scores)
    for item in json.loads(answers.output.read_text(encoding="utf-8"))[:3]:
        console.out.print(f"\n[bold]{item['id']}[/bold] {item['input']['question']}\n→ {item['output']['answer']}")
    return 0


COMMANDS = {"setup": cmd_setup, "doctor": cmd_doctor, "quantize": cmd_quantize, "compare": cmd_compare,
            "lora": cmd_lora, "inspect": cmd_inspect, "infer": cmd_infer, "retrieve": cmd_retrieve, "bench": cmd_bench,
            "score": cmd_score, "vote": cmd_vote, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_type_flags_any_case(sys.argv[1:] if argv is None else list(argv)))
    try:
        return COMMANDS[args.command](args)
    except ToolkitError as e:
        if args.verbose:
            traceback.print_exc()
        console.err.print(f"[red]error:[/red] {escape(str(e))}")
        return e.exit_code
    except KeyboardInterrupt:
        console.err.print("[red]interrupted[/red]: finished work is kept and nothing half-written is left; rerun to go on")
        return 130
    except Exception as e:  # an internal failure: one line unless -v
        if args.verbose:
            traceback.print_exc()
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:  # the machine's disk, not a bug of ours
            where = f" writing {e.filename}" if e.filename else ""
            console.err.print(f"[red]error:[/red] no space left on the device{where}; free some space and rerun "
                              "(finished work is kept, nothing half-written is left)")
            return DiskFull.exit_code
        console.err.print(f"[red]error:[/red] {type(e).__name__}: {e} (rerun with -v for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
