"""The `inspect` verb: what a GGUF file holds, from its header alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import gguf


def summary(path: Path) -> dict[str, Any]:
    info = gguf.read(path)
    md = info.metadata
    return {
        "file": str(path),
        "architecture": info.architecture,
        "name": md.get("general.name"),
        "file_type": info.file_type_name,
        "size_bytes": info.file_size,
        "parameters": info.n_params,
        "bits_per_weight": round(info.bits_per_weight, 2),
        "tensor_types": info.tensor_type_counts(),
        "layers": info.block_count,
        "context_length": info.context_length,
        "tokenizer_model": md.get("tokenizer.ggml.model"),
        "pre_tokenizer": md.get("tokenizer.ggml.pre"),
        "chat_template": info.chat_template is not None,
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def human_count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)
