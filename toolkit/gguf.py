"""A small, dependency-free GGUF reader: metadata, tensor table and completeness.

llama.cpp's own reader is gguf-py's GGUFReader (the `gguf` package of the pinned commit, which
setup provisions beside the converter). We keep ours for two reasons:

- Speed. auto-fit, `inspect`, validation and the manifest read a header on every run. GGUFReader
  makes numpy views of every element of every metadata array, and the vocabulary is 10^5 strings
  (plus as many merges); we step over long arrays without decoding them (ArraySummary). Measured
  with scripts/gguf_reader_timing.py (best of 3, a 2-core CPU VM with other test runs beside):

      file                                              ours      gguf-py
      SmolLM2-135M-Instruct Q4_1  (49k vocab, 272 t.)   0.012 s    3.9 s
      ggml-vocab-llama-bpe (Llama-3: 128k vocab + 280k merges, vocab only)
                                                        0.050 s   17.4 s
      gemma-3-270m Q4_K_M        (262k vocab, 236 t.)   0.043 s   16.8 s

  (On a quieter machine earlier: SmolLM2 0.008 s against 1.67 s.)
- Availability: `inspect` and validation work before and without the converter being provisioned.

What must not drift is checked against gguf-py by tests/test_gguf_reference.py: the ggml type
table and the file-type names entry by entry, the value-type codes, every metadata key name
toolkit reads (gguf-py's Keys), and every test model opened by both readers (metadata, tensor
names, types, shapes and offsets, parameter count, auto-fit's model shape).
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidGGUF

MAGIC = b"GGUF"

# ggml_type id -> (name, elements per block, bytes per block); from ggml.h at the pinned commit,
# checked entry by entry against gguf-py's GGMLQuantizationType / GGML_QUANT_SIZES (test_gguf_reference).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
    42: ("Q2_0", 64, 18),
}

# llama_ftype id -> name, as llama.cpp's quantize tool spells them (gguf-py's LlamaFileType, less MOSTLY_).
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}

# GGUF metadata value types (gguf-py's GGUFValueType): scalar id -> struct format; strings and arrays.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this are summarised (the vocabulary has ~10^5 entries).
_ARRAY_KEEP = 64


@dataclass(frozen=True)
class ArraySummary:
    """Stands in for a long metadata array: its element type and length."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type_id, (f"type{self.type_id}", 1, 0))[0]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        _, block, size = GGML_TYPES.get(self.type_id, ("", 1, 0))
        return self.n_elements // block * size


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int
    arrays_kept: dict[str, list] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def file_type(self) -> int | None:
        ft = self.metadata.get("general.file_type")
        return int(ft) if ft is not None else None

    @property
    def file_type_name(self) -> str:
        ft = self.file_type
        return "unknown" if ft is None else FILE_TYPES.get(ft, f"ftype {ft}")

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        # As llama.cpp reports it: tensor data bits over parameter count.
        return self.tensor_bytes * 8 / self.n_params if self.n_params else 0.0

    @property
    def context_length(self) -> int | None:
        v = self.metadata.get(f"{self.architecture}.context_length")
        return int(v) if v is not None else None

    @property
    def block_count(self) -> int | None:
        v = self.metadata.get(f"{self.architecture}.block_count")
        return int(v) if v is not None else None

    @property
    def n_vocab(self) -> int | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return tokens.length if isinstance(tokens, ArraySummary) else len(tokens) if isinstance(tokens, list) else None

    @property
    def chat_template(self) -> str | None:
        v = self.metadata.get("tokenizer.chat_template")
        return v if isinstance(v, str) else None

    def tensor_type_counts(self) -> dict[str, int]:
        return dict(Counter(t.type_name for t in self.tensors).most_common())


_U64 = struct.Struct("<Q")


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise InvalidGGUF(f"{self.path}: truncated GGUF header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise InvalidGGUF(f"{self.path}: truncated GGUF header")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep_array: bool) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, n = self.take("<I"), self.take("<Q")
            if not keep_array and n > _ARRAY_KEEP:  # skip without decoding (the vocabulary)
                if item_type in _SCALARS:
                    self.pos += n * struct.calcsize(_SCALARS[item_type])
                elif item_type == _STRING:
                    # A tight loop: a 128k vocabulary plus 280k merges is 400k strings.
                    buf, pos, length = self.buf, self.pos, _U64.unpack_from
                    end = len(buf) - 8
                    for _ in range(n):
                        if pos > end:
                            raise InvalidGGUF(f"{self.path}: truncated GGUF header")
                        pos += 8 + length(buf, pos)[0]
                    self.pos = pos
                else:
                    for _ in range(n):
                        self.value(item_type, False)
                if self.pos > len(self.buf):
                    raise InvalidGGUF(f"{self.path}: truncated GGUF header")
                return ArraySummary(item_type, n)
            return [self.value(item_type, keep_array) for _ in range(n)]
        raise InvalidGGUF(f"{self.path}: unknown metadata value type {vtype}")


def read(path: str | Path, keep_arrays: tuple[str, ...] = ()) -> GGUFFile:
    """Parse a GGUF file's header and check that its tensor data is all there.

    Raises InvalidGGUF for anything that is not a complete GGUF file.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidGGUF(f"{path}: is a directory, not a GGUF file")
    if not path.is_file():
        raise InvalidGGUF(f"{path}: no such file")
    size = path.stat().st_size
    if size < 24:
        raise InvalidGGUF(f"{path}: not a GGUF file (too small)")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InvalidGGUF(f"{path}: cannot read it ({e.strerror})") from None
    with f:
        if f.read(4) != MAGIC:
            raise InvalidGGUF(f"{path}: not a GGUF file (bad magic)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            cur.pos = 4
            version = cur.take("<I")
            if version not in (2, 3):
                raise InvalidGGUF(f"{path}: unsupported GGUF version {version}")
            n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                vtype = cur.take("<I")
                metadata[key] = cur.value(vtype, key in keep_arrays)
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.take("<I")
                shape = tuple(cur.take("<Q") for _ in range(n_dims))
                tensors.append(TensorInfo(name, shape, cur.take("<I"), cur.take("<Q")))
            align = int(metadata.get("general.alignment", 32))
            header_end = cur.pos
            data_offset = (header_end + align - 1) // align * align
    gguf = GGUFFile(path, version, metadata, tensors, data_offset, size)
    # ggml pads the header to the alignment only when tensor data follows (gguf.cpp): a GGUF with
    # no tensors (llama.cpp's vocab-only models/ggml-vocab-*.gguf) may end right after its header.
    end = max((data_offset + t.offset + t.nbytes for t in tensors), default=header_end)
    # Split files (-0000N-of-0000M) keep only some tensors here; the check still holds per file.
    if end > size:
        raise InvalidGGUF(
            f"{path}: truncated GGUF ({size} bytes, tensor data needs {end}); "
            "the file is incomplete, re-create it"
        )
    return gguf


# GGUFs that quantize and lora write beside the models, and that no runtime loads as one.
NOT_MODELS = {"adapter": "a LoRA adapter (give it to --lora)", "imatrix": "an importance matrix"}


def read_model(path: str | Path) -> GGUFFile:
    """read(), refusing a GGUF that is not a model with what it is instead of llama.cpp's
    "failed to load model"."""
    header = read(path)
    kind = NOT_MODELS.get(header.metadata.get("general.type"))
    if kind:
        raise InvalidGGUF(f"{path}: is {kind}, not a model")
    return header


def general_type(path: str | Path) -> str | None:
    """general.type: "model", "adapter" (a LoRA) or "imatrix"; None for what is not a whole GGUF."""
    try:
        return read(path).metadata.get("general.type")
    except InvalidGGUF:
        return None
