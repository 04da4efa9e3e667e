"""The `doctor` verb: what this installation is made of and what it can run on."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__, backend, fit, gguf, tools, vendor, versions


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def report() -> dict[str, Any]:
    conv = vendor.find()
    runtime = vendor.installed_runtime_version()
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
    """What --n-gpu-layers auto would do for this GGUF: for given free VRAM, or what is free now."""
    header = gguf.read_model(model)  # a missing, truncated, non-GGUF or non-model file: one line
    if free_bytes is None:
        free_bytes = sum(d.free_bytes for d in backend.gpus())
    cells = n_ctx * max(1, parallel)
    req = fit.FitRequest(n_ctx=cells, n_ubatch=min(512, cells), n_outputs=max(1, parallel), cache_type=cache_type,
                         flash_attn=flash_attn)
    plan = fit.plan(fit.shape_of(model, header), req, free_bytes)
    return {
        "request": f"{Path(model).name}: {parallel} × {n_ctx} tokens = {cells} KV cells ({cache_type}), "
                   f"flash attention {'on' if flash_attn else 'off'}",
        "plan": plan.describe(),
        "n_gpu_layers": plan.n_gpu_layers,
        "all_layers": plan.all_layers,
        "free_bytes": plan.free_bytes,
        "weights_bytes": plan.weights_bytes,
        "kv_bytes": plan.kv_bytes,
        "compute_bytes": plan.compute_bytes,
        "margin_bytes": plan.margin_bytes,
    }
