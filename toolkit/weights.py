"""What a checkpoint's weight files hold, read from their headers only (no tensor is loaded)."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import NotACheckpoint

# Bytes per element of the dtypes a checkpoint is saved in (config.json's torch spelling).
_STORED_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Towers of vision-language checkpoints (HyperCLOVAX-SEED-Vision, Bllossom-V, kanana-v …): the
# converter writes the language model alone (the rest goes to an --mmproj file), so they do not count.
_NOT_TEXT = ("vision", "visual", "mm_projector", "multi_modal_projector", "audio")


@dataclass(frozen=True)
class WeightTensor:
    file: str
    dtype: str  # safetensors spelling: BF16, F16, F32 …
    shape: tuple[int, ...]
    start: int  # byte range in the file
    end: int


def safetensors_files(checkpoint: Path) -> list[str]:
    """The safetensors files llama.cpp's converter reads: the index's, else model*.safetensors."""
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
    return sorted(p.name for p in checkpoint.glob("model*.safetensors"))


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the offset where its tensor data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < n < 1 << 30:
            raise NotACheckpoint(f"{path}: not a safetensors file")
        try:
            return json.loads(f.read(n)), 8 + n
        except ValueError:
            raise NotACheckpoint(f"{path}: not a safetensors file (bad header)") from None


def safetensors_tensors(checkpoint: Path) -> dict[str, WeightTensor]:
    """Name -> dtype, shape and byte range of every tensor; empty without safetensors weights."""
    tensors: dict[str, WeightTensor] = {}
    for name in safetensors_files(checkpoint):
        header, data_start = read_header(checkpoint / name)
        for key, info in header.items():
            if key != "__metadata__":
                b, e = info["data_offsets"]
                tensors[key] = WeightTensor(name, info["dtype"], tuple(info["shape"]), data_start + b, data_start + e)
    return tensors


def count_params(checkpoint: Path, stored_dtype: str | None = None) -> int:
    """How many weights the converter will write: from the safetensors headers, or, for a
    checkpoint with only pytorch_model*.bin, from their size and the dtype they were saved in
    (float32 when unknown, which counts low rather than high)."""
    if tensors := safetensors_tensors(checkpoint):
        return sum(math.prod(t.shape) for name, t in tensors.items() if not any(w in name for w in _NOT_TEXT))
    stored = _STORED_BYTES.get(stored_dtype or "", 4)
    return sum(p.stat().st_size for p in checkpoint.glob("pytorch_model*.bin")) // stored
