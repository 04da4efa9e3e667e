"""Stage (engine, before loading): how many layers fit the GPU's free memory.

`--n-gpu-layers auto` puts every layer on the GPU when the model, its KV cache and llama.cpp's
compute buffers fit; on a smaller card it keeps the first layers on the CPU, as llama.cpp's
own `-ngl N` does: the output layer goes first, then the last N-1 repeating layers
(llama-model.cpp: i_gpu_start = n_layer + 1 - N, the output layer counting as layer n_layer).
Everything is estimated from the GGUF header, before any weight is read: llama.cpp would
otherwise fail half-way through allocating, or crawl in unified memory.
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
# cuBLAS's workspace, the memory pool's growth, fragmentation: about 0.2 GiB over llama.cpp's own
# buffers on an H200 (the CUDA context, 0.5 GiB there, is already in use when free memory is read).
MIN_MARGIN = 512 * 2**20
CONTEXT_MAX = 2**30  # a CUDA context with llama.cpp's kernels: 0.5 GiB on an H200 (CUDA 13)
# From this many rows, llama.cpp's CUDA backend runs an op whose weight stays on the CPU on the
# GPU anyway, copying the weight into its compute buffer (ggml-cuda's op_offload_min_batch_size).
OP_OFFLOAD_MIN_BATCH = 32
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
    largest_tensor: tuple[int, ...] = ()  # each layer's largest weight (what one offloaded op copies)
    output_matrix_bytes: int = 0
    n_masks: int = 1  # attention masks in the graph: two with sliding-window layers (gemma 2/3 …)


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
    largest = [0] * n_layer
    output_bytes = 0
    tensors = {t.name: t for t in header.tensors}
    for t in header.tensors:
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_layer:
            layer_bytes[int(m.group(1))] += t.nbytes
            largest[int(m.group(1))] = max(largest[int(m.group(1))], t.nbytes)
        elif t.name.startswith("output"):
            output_bytes += t.nbytes
    embd = tensors.get("token_embd.weight")
    output_matrix = tensors.get("output.weight", embd)
    if "output.weight" not in tensors and embd is not None:
        output_bytes += embd.nbytes  # tied: llama.cpp duplicates the embedding for the output layer
    n_vocab = int(meta.get(f"{arch}.vocab_size") or (embd.shape[-1] if embd is not None else 0))
    return ModelShape(n_layer, n_embd, number("feed_forward_length"), n_head, n_head_kv, head_dim_k,
                      head_dim_v, n_vocab, tuple(layer_bytes), output_bytes, tuple(largest),
                      output_matrix.nbytes if output_matrix is not None else 0,
                      2 if meta.get(f"{arch}.attention.sliding_window") else 1)


@dataclass(frozen=True)
class FitRequest:
    n_ctx: int  # KV cells in all (every sequence together)
    n_ubatch: int = 512
    n_outputs: int | None = None  # logits rows per micro-batch (infer: one per sequence); None: n_ubatch
    cache_type: str = "f16"
    flash_attn: bool = True


@dataclass(frozen=True)
class FitPlan:
    n_gpu_layers: int  # as llama.cpp's -ngl: the output layer, then N-1 repeating layers (n_layer + 1: all)
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
        layers = min(self.n_gpu_layers, self.n_layer + 1)
        return (f"auto-fit: {layers}/{self.n_layer + 1} layers on the GPU — weights {self.weights_bytes / GIB:.2f} GiB"
                f" + KV {self.kv_bytes / GIB:.2f} GiB + compute {self.compute_bytes / GIB:.2f} GiB"
                f" = {self.used_bytes / GIB:.2f} of {self.free_bytes / GIB:.2f} GiB free"
                f" (margin {self.margin_bytes / GIB:.2f} GiB)")


def kv_bytes_per_layer(shape: ModelShape, layer: int, req: FitRequest) -> int:
    cells = round_up(req.n_ctx)
    per_cell = shape.n_head_kv[layer] * (shape.head_dim_k + shape.head_dim_v)
    return int(cells * per_cell * KV_TYPE_BYTES[req.cache_type])


def compute_bytes(shape: ModelShape, req: FitRequest, output_on_gpu: bool, cpu_layers: range = range(0)) -> int:
    """llama.cpp's graph buffer on the GPU: one micro-batch of activations, plus the larger of
    the logits and the attention's own memory (the mask, kept for the whole graph, and without
    flash attention one layer's scores), plus, when layers stay on the CPU, the weight copied
    for an op llama.cpp offloads anyway (one at a time: a new graph split starts at each, and
    its copy reuses the last one's memory).
    Against llama.cpp's reported buffer (CPU, u=512; tests/test_fit.py): SmolLM2 8192 cells,
    one logits row: 21.5 MiB with flash attention (estimate 23.8), 166 without (176);
    512 rows: 98 MiB (112)."""
    cells = round_up(req.n_ctx)
    u = min(req.n_ubatch, cells)
    outputs = min(req.n_outputs or u, u)
    activations = u * (6 * shape.n_embd + 3 * max(shape.n_ff, shape.n_embd)) * 4
    mask = cells * u * (2 if req.flash_attn else 4) * shape.n_masks  # f16 for flash attention
    scores = 0 if req.flash_attn else shape.n_head * cells * u * 4
    # The output layer runs on the GPU where it lives, or, from enough rows, as an offloaded op.
    output_offloaded = not output_on_gpu and outputs >= OP_OFFLOAD_MIN_BATCH
    logits = outputs * shape.n_vocab * 4 if output_on_gpu or output_offloaded else 0
    copied = 0
    if u >= OP_OFFLOAD_MIN_BATCH and shape.largest_tensor:  # a prompt's micro-batch: layers' ops
        copied = max((shape.largest_tensor[i] for i in cpu_layers), default=0)
    if output_offloaded:
        copied = max(copied, shape.output_matrix_bytes)
    return max(logits, mask + scores) + activations + copied


def within_limit(limit_bytes: int, free_bytes: int, total_bytes: int) -> int:
    """What a plan may use under --vram-limit, a cap on all this run's GPU memory as on a card of
    that size: the limit less this process's CUDA context, already in use when free memory is read,
    and never more than is free. Of what is in use, at most CONTEXT_MAX is taken for the context:
    the rest belongs to other processes, which the limit is not about."""
    context = min(total_bytes - free_bytes, CONTEXT_MAX)
    return max(0, min(free_bytes, limit_bytes - context))


def plan(shape: ModelShape, req: FitRequest, free_bytes: int) -> FitPlan:
    """The most layers whose weights, KV cache and compute buffer fit `free_bytes` less a margin."""
    margin = max(MIN_MARGIN, int(free_bytes * MARGIN_FRACTION))
    budget = free_bytes - margin
    best = None
    # Try from everything down: the output layer leaves the GPU last, the first layers first.
    for n in range(shape.n_layer + 1, -1, -1):
        output = n >= 1
        on_cpu = range(shape.n_layer - max(n - 1, 0))
        layers = range(on_cpu.stop, shape.n_layer)
        weights = sum(shape.layer_bytes[i] for i in layers) + (shape.output_bytes if output else 0)
        kv = sum(kv_bytes_per_layer(shape, i, req) for i in layers)
        compute = compute_bytes(shape, req, output, on_cpu)
        best = FitPlan(n, shape.n_layer, free_bytes, margin, weights, kv, compute)
        if weights + kv + compute <= budget:
            break
    return best
