"""quantize, compare, lora: from a Hugging Face checkpoint to quantized GGUFs, and what they cost."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from .. import console, printing
from ..quantizer import DEFAULT_TYPE
from ._options import (MODEL, OUTPUT, ForceOpt, GpuLayersOpt, OutputDirOpt, OverrideTensorOpt, RpcOpt, SplitModeOpt,
                       TensorSplitOpt, at_least, command, examples, placement)

# Shown as flags of their own; any other llama.cpp type works as --<type> too (the entry point
# turns it into --type).
FLAG_TYPES = ("Q4_K_M", "Q8_0")


@command("quantize", help="HF checkpoint (local dir or hub id) → quantized GGUF under models/",
         epilog=examples("toolkit quantize LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct --q4_k_m",
                         "toolkit quantize ./my-checkpoint --q8_0 --q6_k --iq4_xs",
                         "toolkit quantize kakaocorp/kanana-1.5-2.1b-instruct-2505 --iq2_xxs --imatrix auto "
                         "--calibration train.json"))
def quantize(
    model: Annotated[str, typer.Argument(help="local checkpoint directory or Hugging Face repo id (owner/name)")],
    q4_k_m: Annotated[bool, typer.Option("--q4_k_m", help=f"make Q4_K_M (the default when no type is given: "
                                                           f"{DEFAULT_TYPE})")] = False,
    q8_0: Annotated[bool, typer.Option("--q8_0", help="make Q8_0 (any llama.cpp type works as a flag: --q6_k, "
                                                       "--iq4_xs …, any case)")] = False,
    type_: Annotated[Optional[list[str]], typer.Option(
        "--type", metavar="T", help="any llama.cpp quantization type, case-insensitive; repeatable or "
                                    "comma-separated")] = None,
    outtype: Annotated[Literal["auto", "bf16", "f16", "f32"], typer.Option(
        help="intermediate precision (auto: bf16 for bf16 checkpoints, else f16)")] = "auto",
    revision: Annotated[Optional[str], typer.Option(help="hub branch, tag or commit (default: main)",
                                                    rich_help_panel=MODEL)] = None,
    lora: Annotated[Optional[str], typer.Option(
        metavar="ADAPTER", rich_help_panel=MODEL,
        help="PEFT LoRA adapter (directory or hub id) merged into MODEL first; outputs go to <model>-<adapter>/")] = None,
    lora_revision: Annotated[Optional[str], typer.Option(
        rich_help_panel=MODEL, help="the adapter's hub branch, tag or commit (default: main)")] = None,
    imatrix: Annotated[Optional[str], typer.Option(
        metavar="auto|FILE",
        help="quantize with an importance matrix: auto computes one on --calibration's questions and answers "
             "(llama.cpp's llama-imatrix); outputs are <name>-<TYPE>-imatrix.gguf; makes the types that need one "
             "(iq1_*, iq2_*, q2_k_s) possible; needs `toolkit setup --tools`")] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        metavar="DATA.json",
        help="competition JSON for --imatrix auto, e.g. the train file (default: the bundled samples)")] = None,
    threads: Annotated[int, typer.Option(parser=at_least(0), help="quantizer threads (default: all cores)")] = 0,
    no_check: Annotated[bool, typer.Option(
        "--no-check", help="skip the fidelity report (top-1 agreement, KL divergence, perplexity vs the 16-bit "
                           "file)")] = False,
    output_dir: OutputDirOpt = Path("models"),
    keep_intermediate: Annotated[bool, typer.Option(
        "--keep-intermediate", rich_help_panel=OUTPUT, help="keep the 16-bit GGUF next to the quantized ones")] = False,
    force: Annotated[bool, typer.Option("--force", rich_help_panel=OUTPUT,
                                        help="rebuild outputs that already exist")] = False,
    json_: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                                        help="print one JSON object (files, times, fidelity)")] = False,
) -> int:
    """Convert a Hugging Face checkpoint with llama.cpp's own converter, then quantize it (default
    Q4_K_M). Any llama.cpp type can be given as --<type> (e.g. --q6_k, --iq4_xs) or --type T."""
    from ..quantize import QuantizeSettings, quantize as run

    flagged = [name for name, on in zip(FLAG_TYPES, (q4_k_m, q8_0)) if on]
    types = tuple(flagged) + tuple(t for v in type_ or [] for t in v.split(",") if t.strip())
    settings = QuantizeSettings(
        types=types or (DEFAULT_TYPE,), outtype=outtype, revision=revision, output_dir=output_dir,
        keep_intermediate=keep_intermediate, force=force, threads=threads, check=not no_check,
        lora=lora, lora_revision=lora_revision, imatrix=imatrix, calibration=calibration)
    result = run(model, settings)
    if json_:
        printing.print_json(result.as_dict())
        return 0
    printing.print_quantize_result(result)
    if result.fidelity:
        printing.print_fidelity(result.fidelity, f"fidelity vs the {result.fidelity[0].type} intermediate "
                                                 "(bundled samples, answers teacher-forced)")
    return 0


@command("compare", help="fidelity of quantized GGUFs against their 16-bit original",
         epilog=examples("toolkit compare models/m/m-BF16.gguf models/m/m-Q4_K_M.gguf models/m/m-Q8_0.gguf",
                         "toolkit compare m-BF16.gguf m-IQ4_XS.gguf --prompts dev.json --json"))
def compare(
    reference: Annotated[Path, typer.Argument(help="the F16/BF16 GGUF")],
    quants: Annotated[list[Path], typer.Argument(help="quantized GGUFs of the same model")],
    prompts: Annotated[Optional[Path], typer.Option(
        help="competition JSON (questions + output.answer) or a plain text file (default: the bundled samples with "
             "reference answers)")] = None,
    n_ctx: Annotated[int, typer.Option(parser=at_least(16),
                                       help="chunk size for a plain text file (as llama-perplexity -c; at least "
                                            "16)")] = 512,
    n_gpu_layers: GpuLayersOpt = -1,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
    split_mode: SplitModeOpt = "layer",
    override_tensor: OverrideTensorOpt = None,
    json_: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT, help="print a list of objects")] = False,
) -> int:
    """Teacher-forced over the same texts: top-1 agreement with the reference, mean and p99 KL
    divergence, perplexity (what llama-perplexity --kl-divergence reports)."""
    from ..engine import EngineSettings
    from ..fidelity import compare as run

    rows = run(reference, list(quants), prompts, n_ctx, EngineSettings(n_gpu_layers=n_gpu_layers,
                                                                **placement(rpc, tensor_split, split_mode, override_tensor)),
               on_file=lambda p: console.err.print(f"scoring {p.name}"))
    if json_:
        printing.print_json([r.as_dict() for r in rows], ensure_ascii=True)
    else:
        printing.print_fidelity(rows, f"fidelity vs {reference.name}")
    return 0


@command("lora", help="PEFT LoRA adapter → GGUF LoRA for `infer --lora` on a quantized base",
         epilog=examples("toolkit lora ./my-adapter --base LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
                         "toolkit infer test.json --model models/m/m-Q4_K_M.gguf --lora "
                         "models/m-my-adapter/m-my-adapter-LoRA-F16.gguf"))
def lora(
    adapter: Annotated[str, typer.Argument(help="PEFT adapter directory (adapter_config.json + weights) or hub repo id")],
    base: Annotated[str, typer.Option(help="the base model it was trained on: checkpoint directory or hub id",
                                      rich_help_panel=MODEL)],
    outtype: Annotated[Literal["f16", "bf16", "f32"], typer.Option(help="LoRA tensor type (default f16)")] = "f16",
    revision: Annotated[Optional[str], typer.Option(help="the adapter's hub branch, tag or commit (default: main)",
                                                    rich_help_panel=MODEL)] = None,
    base_revision: Annotated[Optional[str], typer.Option(help="the base's hub branch, tag or commit (default: main)",
                                                         rich_help_panel=MODEL)] = None,
    output: Annotated[Optional[Path], typer.Option(help="where to write the GGUF LoRA", rich_help_panel=OUTPUT)] = None,
    output_dir: OutputDirOpt = Path("models"),
    force: ForceOpt = False,
    json_: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                                        help="print one JSON object (path, size, base, adapter)")] = False,
) -> int:
    """Convert a PEFT LoRA adapter with llama.cpp's own convert_lora_to_gguf.py (same pinned source
    as the model converter). Default output: models/<base>-<adapter>/<base>-<adapter>-LoRA-<OUTTYPE>.gguf."""
    from ..lora import LoraSettings, export_lora

    settings = LoraSettings(outtype=outtype, output=output, output_dir=output_dir, revision=revision,
                            base_revision=base_revision, force=force)
    r = export_lora(adapter, base, settings)
    if json_:
        printing.print_json(r.as_dict())
    else:
        printing.print_lora(r)
    return 0


