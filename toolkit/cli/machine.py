"""setup, doctor, inspect, rpc-server: what is installed, what the machine can run, what a GGUF holds, and
serving this machine's devices to others."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import printing
from ._options import GPU, CacheTypeOpt, JsonOpt, POSITIVE, RpcOpt, at_least, command, examples, gib


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
                                                help="GPU memory to plan for on each device (default: what is free now; "
                                                     "with no GPU, one card of this size)")] = None,
    cache_type: CacheTypeOpt = "f16",
    no_flash_attn: Annotated[bool, typer.Option("--no-flash-attn", rich_help_panel=GPU,
                                                help="plan for attention scores in the compute buffer")] = False,
    rpc: RpcOpt = None,
) -> int:
    from .. import doctor as checks

    rep = checks.report(rpc)
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


@command("rpc-server", help="serve this machine's GPUs (or CPU) to other machines' runs, as llama.cpp's rpc-server",
         epilog=examples("toolkit rpc-server", "toolkit rpc-server --port 50053 --device CUDA0",
                         "toolkit infer test.json --model m.gguf --rpc 127.0.0.1:50052,127.0.0.1:50053"))
def rpc_server(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="address to listen on; anything but loopback lets anyone who can reach it "
                                           "use this machine (RPC has no authentication)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(parser=at_least(1), metavar="PORT", help="TCP port")] = 50052,
    device: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", help="device to serve, repeatable (CUDA0, CPU …; default: every GPU, else the CPU)")] = None,
    cache: Annotated[bool, typer.Option("--cache", help="keep large tensors on disk here, so a later load sends only "
                                                        "their hashes")] = False,
    threads: Annotated[Optional[int], typer.Option(parser=POSITIVE, metavar="N",
                                                   help="CPU threads (default: half the cores)")] = None,
) -> int:
    from .. import rpc

    rpc.serve(rpc.ServerSettings(host=host, port=port, devices=tuple(device or ()), cache=cache, threads=threads))
    return 0
