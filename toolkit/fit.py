"""Stage (engine, before loading): how many layers fit the GPU's free memory.

`--n-gpu-layers auto` puts every layer on the GPU when the model, its KV cache and llama.cpp's
compute buffers fit; on a smaller card it keeps the first layers on the CPU, as llama.cpp's
own `-ngl N` does (layers n_layer-N … n_layer-1 go to the GPU, and the output layer with them
when N = n_layer + 1). Everything is estimated from the GGUF header, before any weight is read:
llama.cpp would otherwise fail half-way through allocating, or crawl in unified memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import gguf

GIB = 2**30
# Bytes per element of the KV cache types llama.cpp offers (--cache-type).
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                 "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
MIN_MARGIN = 512 * 2**20  # the CUDA context, cuBLAS workspace, fragmentation
MARGIN_FRACTION = 0.05
KV_PAD = 256  # llama.cpp rounds the cache up to this many cells


def round_up(n: int, step: int = KV_PAD) -> int:
    return -(-n // step) * step

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer (some architectures vary it)
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    layer_bytes: tuple[int, ...]  # weights of each repeating layer
    output_bytes: int  # output norm + output matrix (the tied embedding when there is none)


def shape_of(path: Path, header: gguf.GGUFFile | None = None) -> ModelShape:
    """The sizes that decide memory, from a GGUF's header (pass it when already read)."""
    header = header or gguf.read(path)
    arch = header.architecture
    per_layer = tuple(f"{arch}.{k}" for k in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"))
    # Per-layer arrays longer than the reader keeps by default (models of over 64 layers): read again, keeping them.
    if any(isinstance(header.metadata.get(k), gguf.ArraySummary) for k in per_layer):
        header = gguf.read(path, keep_arrays=per_layer)
    meta = header.metadata

    def number(key: str, default: int = 0) -> int:
        v = meta.get(f"{arch}.{key}", default)
        if isinstance(v, list):
            return max(int(x) for x in v) if v else default
        return int(v)

    n_layer = number("block_count")
    n_embd = number("embedding_length")
    n_head = number("attention.head_count", 1) or 1
    kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    n_head_kv = tuple(int(x) for x in kv) if isinstance(kv, list) else (int(kv),) * n_layer
    head_dim_k = number("attention.key_length", n_embd // n_head)
    head_dim_v = number("attention.value_length", n_embd // n_head)

    layer_bytes = [0] * n_layer
    output_bytes = 0
    tensors = {t.name: t for t in header.tensors}
    for t in header.tensors:
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_layer:
            layer_bytes[int(m.group(1))] += t.nbytes
        elif t.name.startswith("output"):
            output_bytes += t.nbytes
    embd = tensors.get("token_embd.weight")
    if "output.weight" not in tensors and embd is not None:
        output_bytes += embd.nbytes  # tied: llama.cpp duplicates the embedding for the output layer
    n_vocab = int(meta.get(f"{arch}.vocab_size") or (embd.shape[-1] if embd is not None else 0))
    return ModelShape(n_layer, n_embd, number("feed_forward_length"), n_head, n_head_kv, head_dim_k,
                      head_dim_v, n_vocab, tuple(layer_bytes), output_bytes)


@dataclass(frozen=True)
class FitRequest:
    n_ctx: int  # KV cells in all (every sequence together)
    n_ubatch: int = 512
    cache_type: str = "f16"
    flash_attn: bool = True


@dataclass(frozen=True)
class FitPlan:
    n_gpu_layers: int  # for llama.cpp: n_layer + 1 means every layer and the output
    n_layer: int
    free_bytes: int
    margin_bytes: int
    weights_bytes: int  # on the GPU, for this plan
    kv_bytes: int
    compute_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def all_layers(self) -> bool:
        return self.n_gpu_layers > self.n_layer

    def describe(self) -> str:
        layers = min(self.n_gpu_layers, self.n_layer) + (1 if self.all_layers else 0)
        return (f"auto-fit: {layers}/{self.n_layer + 1} layers on the GPU — weights {self.weights_bytes / GIB:.2f} GiB"
                f" + KV {self.kv_bytes / GIB:.2f} GiB + compute {self.compute_bytes / GIB:.2f} GiB"
                f" = {self.used_bytes / GIB:.2f} of {self.free_bytes / GIB:.2f} GiB free"
                f" (margin {self.margin_bytes / GIB:.2f} GiB)")


def kv_bytes_per_layer(shape: ModelShape, layer: int, req: FitRequest) -> int:
    cells = round_up(req.n_ctx)
    per_cell = shape.n_head_kv[layer] * (shape.head_dim_k + shape.head_dim_v)
    return int(cells * per_cell * KV_TYPE_BYTES[req.cache_type])


def compute_bytes(shape: ModelShape, req: FitRequest, output_on_gpu: bool) -> int:
    """llama.cpp's graph buffer: the larger of the logits (when the output layer is on the GPU)
    and one layer's attention scores (flash attention off), plus one micro-batch of activations.
    Checked against llama.cpp's reported buffer (SmolLM2, u=512): 8192 cells 166 MiB without
    flash attention (estimate 181), 98 MiB with it (112); 2048 cells 99 MiB (112)."""
    cells = round_up(req.n_ctx)
    u = min(req.n_ubatch, cells)
    activations = u * (6 * shape.n_embd + 3 * max(shape.n_ff, shape.n_embd)) * 4
    scores = 0 if req.flash_attn else int(1.15 * shape.n_head * cells * u * 4)
    logits = u * shape.n_vocab * 4 if output_on_gpu else 0
    return max(logits, scores) + activations


def plan(shape: ModelShape, req: FitRequest, free_bytes: int) -> FitPlan:
    """The most layers whose weights, KV cache and compute buffer fit `free_bytes` less a margin."""
    margin = max(MIN_MARGIN, int(free_bytes * MARGIN_FRACTION))
    budget = free_bytes - margin
    best = None
    # Try from everything down; the offloaded layers are always the last ones.
    for n in range(shape.n_layer + 1, -1, -1):
        layers = range(shape.n_layer - min(n, shape.n_layer), shape.n_layer)
        output = n > shape.n_layer
        weights = sum(shape.layer_bytes[i] for i in layers) + (shape.output_bytes if output else 0)
        kv = sum(kv_bytes_per_layer(shape, i, req) for i in layers)
        compute = compute_bytes(shape, req, output) if n else 0
        best = FitPlan(n, shape.n_layer, free_bytes, margin, weights, kv, compute)
        if weights + kv + compute <= budget:
            break
    return best
