"""The `doctor` verb: what this installation is made of and what it can run on."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from . import __version__, backend, vendor, versions


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
