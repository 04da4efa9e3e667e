"""--n-gpu-layers auto over several devices, against llama.cpp's own accounting and its own fit.

Starts two `toolkit rpc-server`s on loopback (this machine's CPU behind each, seen by llama.cpp
as two GPUs), then for each model and memory cap:
  plan      toolkit's plan (fit.place): layers, experts in RAM, MiB per device, and its time;
  llama.cpp the same parameters (-ngl, -ts, -ot) given to `llama-fit-params --fit-print`, which
            loads with no_alloc and reports llama.cpp's own allocations per device;
  measured  the model loaded for real through the engine, llama.cpp's logged buffers per device;
  fit       what llama.cpp's fit (`llama-fit-params`, margins set so that it may use what the plan
            may) chooses by itself, and its time.

    python scripts/placement_table.py [--moe models/moe-tiny/moe-tiny-Q4_K_M.gguf] [--gemma]
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from toolkit import embedded, fit, tools, vendor
from toolkit.engine import Engine, EngineSettings, device_budgets

MIB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(n: int) -> tuple[list[subprocess.Popen], list[str]]:
    procs, endpoints = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "toolkit", "rpc-server", "--port", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        endpoints.append(f"127.0.0.1:{port}")
    for e in endpoints:
        host, port = e.split(":")
        for _ in range(100):
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
    return procs, endpoints


def llama_cpp_print(model: Path, rpc: str, ngl: int, split, overrides, n_ctx: int) -> dict[str, list[int]]:
    """llama-fit-params --fit-print: MiB of model, context, compute per device (no_alloc)."""
    cmd = [str(tools.require_tool("llama-fit-params")), "-m", str(model), "--rpc", rpc, "-ngl", str(ngl), "-c",
           str(n_ctx), "-np", "1", "-ub", str(min(512, n_ctx)), "-b", str(min(512, n_ctx)), "-fa", "on",
           "-fitp", "on"]
    if split:
        cmd += ["-ts", ",".join(str(int(x)) for x in split)]
    if overrides:
        cmd += ["-ot", ",".join(f"{p}={d}" for p, d in overrides)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            rows[parts[0]] = [int(p) for p in parts[1:]]
    return rows


def llama_cpp_fit(model: Path, rpc: str, targets_mib: list[int], n_ctx: int) -> tuple[str, float]:
    cmd = [str(tools.require_tool("llama-fit-params")), "-m", str(model), "--rpc", rpc, "-c", str(n_ctx), "-np", "1",
           "-ub", str(min(512, n_ctx)), "-b", str(min(512, n_ctx)), "-fa", "on",
           "-fitt", ",".join(str(t) for t in targets_mib)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    return (r.stdout.strip() if r.returncode == 0 else "fails"), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", type=Path, help="a Qwen3-MoE GGUF (scripts/make_random_checkpoint.py + toolkit quantize)")
    ap.add_argument("--gemma", action="store_true", help="also gemma-3-270m")
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()

    models = [embedded.smollm2_gguf()]
    if args.gemma:
        models.append(embedded.gemma3_gguf(vendor.cache_root() / "checkpoints"))
    if args.moe:
        models.append(args.moe)
    procs, endpoints = start_servers(2)
    try:
        print("| model | devices | cap MiB | plan: -ngl, -ts, experts in RAM | plan ms | device | "
              "weights plan / llama.cpp / measured | KV plan / llama.cpp / measured | compute plan / llama.cpp / measured"
              " | llama-fit-params' own choice (s) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for model in models:
            shape = fit.shape_of(model)
            # A whole micro-batch of logits rows, as llama.cpp's tools size their contexts (infer asks
            # for one row a sequence: its output device's compute buffer is smaller than here).
            req = fit.FitRequest(n_ctx=args.n_ctx, n_ubatch=min(512, args.n_ctx), n_outputs=None, flash_attn=True)
            for n_dev in (1, 2):
                rpc = ",".join(endpoints[:n_dev])
                # caps: none; then room on each device for its compute buffer and 60 % (30 %) of the
                # weights and KV cache it holds when nothing is capped
                with Engine(model, EngineSettings(n_gpu_layers="auto", rpc=rpc, flash_attn=True)) as engine:
                    roomy = fit.place(shape, req, device_budgets(None, devices=engine.devices))
                compute = max(d.compute_bytes for d in roomy.devices)
                held = max(d.weights_bytes + d.kv_bytes for d in roomy.devices)
                for share in (None, 0.6, 0.3):
                    cap = None if share is None else fit.MIN_MARGIN + compute + int(held * share)
                    settings = EngineSettings(n_gpu_layers="auto", vram_limit=cap, rpc=rpc, flash_attn=True)
                    with Engine(model, settings) as engine:
                        budgets = device_budgets(cap, devices=engine.devices)
                        t = time.perf_counter()
                        fit.place(fit.shape_of(model), req, budgets)  # what auto does before loading, timed
                        plan_ms = (time.perf_counter() - t) * 1000
                        engine.open_context(args.n_ctx, logits_rows=None)
                        plan = engine.fit_plan
                        measured = engine.memory()
                        free = [b.free_bytes for b in device_budgets(None, devices=engine.devices)]
                    printed = llama_cpp_print(model, rpc, plan.n_gpu_layers, plan.tensor_split, plan.overrides,
                                              args.n_ctx)
                    # llama.cpp's fit leaves `target` free: free - target = what the plan may use
                    targets = [round((f - (p.free_bytes - p.margin_bytes)) / MIB) for f, p in zip(free, plan.devices)]
                    choice, fit_s = llama_cpp_fit(model, rpc, targets, args.n_ctx)
                    names = [f"RPC{i}" for i in range(n_dev)]
                    for i, d in enumerate(plan.devices):
                        mine = [round(x / MIB, 1) for x in (d.weights_bytes, d.kv_bytes, d.compute_bytes)]
                        theirs = printed.get(names[i], ["-"] * 3)
                        got = measured.get(d.name, {})
                        real = [round(got.get("model", 0), 1), round(got.get("KV", 0), 1), round(got.get("compute", 0), 1)]
                        head = (f"| {model.name} | {n_dev} | {cap // MIB if cap else 'free'} | {plan.n_gpu_layers}, "
                                f"{','.join(str(int(x)) for x in plan.tensor_split)}, {len(plan.cpu_experts)} | "
                                f"{plan_ms:.1f}" if i == 0 else "| | | | | ")
                        tail = f"`{choice}` ({fit_s:.2f})" if i == 0 else ""
                        print(f"{head} | {d.name} | {mine[0]} / {theirs[0]} / {real[0]} | {mine[1]} / {theirs[1]} / "
                              f"{real[1]} | {mine[2]} / {theirs[2]} / {real[2]} | {tail} |")
                    host = printed.get("Host")
                    cpu = {k: v for k, v in measured.items() if not k.startswith("RPC")}
                    print(f"| | | | | | CPU (host) | – / {host[0] if host else '-'} / "
                          f"{round(sum(v.get('model', 0) for v in cpu.values()), 1)} | | | |")
                    sys.stdout.flush()
    finally:
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    main()
