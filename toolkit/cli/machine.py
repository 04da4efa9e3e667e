"""setup, doctor, inspect: what is installed, what the machine can run, what a GGUF holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import printing
from ._options import GPU, CacheTypeOpt, JsonOpt, POSITIVE, command, examples, gib


@command("setup", help="take llama.cpp's converter from the pinned llama-cpp-python sdist",
         epilog=examples("toolkit setup", "toolkit setup --tools"))
def setup(
    sdist: Annotated[Optional[Path], typer.Option(help="use this llama-cpp-python sdist instead of downloading it")] = None,
    force: Annotated[bool, typer.Option("--force", help="extract (and with --tools, build) again even if already set up")] = False,
    tools: Annotated[bool, typer.Option(
        "--tools", help="also build llama.cpp's llama-imatrix, llama-quantize and llama-perplexity from the same sdist "
                        "(for quantize --imatrix; a few minutes; CMAKE_ARGS/CFLAGS as for llama-cpp-python)")] = False,
) -> int:
    from .. import tools as llama_tools
    from .. import vendor

    conv = vendor.provision(sdist, force=force)
    built = llama_tools.build(force=force) if tools else None
    printing.print_setup(conv, built, llama_tools.NAMES)
    return 0


@command("doctor", help="versions, converter location, GPU devices and free VRAM; with --model, the auto-fit plan",
         epilog=examples("toolkit doctor", "toolkit doctor --model models/EXAONE-3.5-7.8B-Instruct-Q4_K_M.gguf "
                         "--vram 8 --parallel 4"))
def doctor(
    json_: JsonOpt = False,
    model: Annotated[Optional[Path], typer.Option(help="GGUF file to plan for", rich_help_panel=GPU)] = None,
    n_ctx: Annotated[int, typer.Option(parser=POSITIVE, rich_help_panel=GPU,
                                       help="tokens per sequence (prompt + answer; default 2048)")] = 2048,
    parallel: Annotated[int, typer.Option(parser=POSITIVE, rich_help_panel=GPU, help="sequences decoded together")] = 1,
    vram: Annotated[Optional[int], typer.Option(parser=gib, metavar="GIB", rich_help_panel=GPU,
                                                help="free GPU memory to plan for (default: what is free now)")] = None,
    cache_type: CacheTypeOpt = "f16",
    no_flash_attn: Annotated[bool, typer.Option("--no-flash-attn", rich_help_panel=GPU,
                                                help="plan for attention scores in the compute buffer")] = False,
) -> int:
    from .. import doctor as checks

    rep = checks.report()
    if model:
        rep["fit"] = checks.fit_report(model, n_ctx, parallel, vram, cache_type, not no_flash_attn)
    if json_:
        printing.print_json(rep, indent=2, ensure_ascii=True)
    else:
        printing.print_doctor(rep)
    return 0


@command("inspect", help="architecture, types, size and tokenizer of a GGUF file",
         epilog=examples("toolkit inspect models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct-Q4_K_M.gguf"))
def inspect(file: Annotated[Path, typer.Argument(help="a GGUF file")], json_: JsonOpt = False) -> int:
    from ..inspection import summary

    s = summary(file)
    if json_:
        printing.print_json(s, indent=2)
    else:
        printing.print_inspect(s)
    return 0

