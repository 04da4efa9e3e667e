"""The `doctor` verb: what this installation is made of and what it can run on."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__, backend, fit, gguf, rpc, tools, vendor, versions
from .engine import device_budgets


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def report(rpc_servers: str | None = None) -> dict[str, Any]:
    """With `rpc_servers` ("HOST:PORT,…"), their devices are joined and listed too."""
    conv = vendor.find()
    runtime = vendor.installed_runtime_version()
    if rpc_servers:  # an unreachable one is a UserError, as for infer
        rpc.join(rpc.parse(rpc_servers))
    try:
        devices = backend.devices()
        offload = backend.supports_gpu_offload()
    except Exception as e:  # a broken llama_cpp install is exactly what doctor must report
        devices, offload = [], f"unknown ({e})"
    return {
        "toolkit": __version__,
        "llama_cpp_python": runtime or "not installed",
        "llama_cpp_python_pinned": versions.LLAMA_CPP_PYTHON,
        "llama_cpp_commit": conv.commit if conv else versions.LLAMA_CPP_COMMIT,
        "converter": str(conv.script) if conv else "not set up (run `toolkit setup`)",
        "llama_cpp_tools": f"{built.bin} (llama.cpp {built.commit[:7]})" if (built := tools.find())
        else "not built (`toolkit setup --tools`, for --imatrix)",
        "gpu_offload": offload,
        "rpc": bool(backend.ggml().ggml_backend_reg_by_name(b"RPC")) if runtime else False,
        "devices": [
            {"name": d.name, "description": d.description, "kind": d.kind,
             "free_bytes": d.free_bytes, "total_bytes": d.total_bytes}
            for d in devices
        ],
        # torch is read from package metadata: importing it costs seconds and it is only
        # needed by the converter subprocess.
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": _version("torch") or "not installed (needed only to convert checkpoints)",
        "transformers": _version("transformers") or "not installed",
        "huggingface_hub": _version("huggingface_hub") or "not installed",
    }


def fit_report(model: Path, n_ctx: int, parallel: int, free_bytes: int | None, cache_type: str = "f16",
               flash_attn: bool = True) -> dict[str, Any]:
    """What --n-gpu-layers auto would do for this GGUF over the devices llama.cpp offloads to
    (RPC servers joined by `report` included): with `free_bytes`, as if each had that much free;
    with no device, for one card of that size."""
    header = gguf.read_model(model)  # a missing, truncated, non-GGUF or non-model file: one line
    budgets = device_budgets(None, as_free=free_bytes)
    if not budgets and free_bytes is not None:
        budgets = [fit.Budget("GPU", free_bytes)]
    cells = n_ctx * max(1, parallel)
    req = fit.FitRequest(n_ctx=cells, n_ubatch=min(512, cells), n_outputs=max(1, parallel), cache_type=cache_type,
                         flash_attn=flash_attn)
    plan = fit.place(fit.shape_of(model, header), req, budgets)
    return {
        "request": f"{Path(model).name}: {parallel} × {n_ctx} tokens = {cells} KV cells ({cache_type}), "
                   f"flash attention {'on' if flash_attn else 'off'}",
        "plan": plan.describe(),
        "n_gpu_layers": plan.n_gpu_layers,
        "all_layers": plan.all_layers,
        "tensor_split": list(plan.tensor_split),
        "cpu_experts": list(plan.cpu_experts),
        "free_bytes": sum(d.free_bytes for d in plan.devices),
        "weights_bytes": sum(d.weights_bytes for d in plan.devices),
        "kv_bytes": sum(d.kv_bytes for d in plan.devices),
        "compute_bytes": sum(d.compute_bytes for d in plan.devices),
        "margin_bytes": sum(d.margin_bytes for d in plan.devices),
        "devices": [{"name": d.name, "layers": d.n_layers, "output": d.output, "free_bytes": d.free_bytes,
                     "weights_bytes": d.weights_bytes, "kv_bytes": d.kv_bytes, "compute_bytes": d.compute_bytes}
                    for d in plan.devices],
    }
