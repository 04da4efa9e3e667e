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
# With every layer on two or more devices (and no tensor overrides), llama.cpp pipelines
# micro-batches and keeps this many copies of each device's graph inputs (GGML_SCHED_MAX_COPIES).
PIPELINE_COPIES = 4
MARGIN_FRACTION = 0.05
KV_PAD = 256  # llama.cpp rounds the cache up to this many cells


def round_up(n: int, step: int = KV_PAD) -> int:
    return -(-n // step) * step

_BLOCK = re.compile(r"^blk\.(\d+)\.")
# A mixture-of-experts layer's stacked expert tensors (llama.cpp's fit moves the same ones).
_EXPERTS = re.compile(r"^blk\.(\d+)\.ffn_(up|down|gate_up|gate)_(ch|)exps\.")


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
    expert_bytes: tuple[int, ...] = ()  # of layer_bytes, each layer's expert tensors (MoE; empty when dense)
    largest_expert: tuple[int, ...] = ()  # each layer's largest expert tensor

    @property
    def moe(self) -> bool:
        return any(self.expert_bytes)


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
    experts = [0] * n_layer
    largest_expert = [0] * n_layer
    output_bytes = 0
    tensors = {t.name: t for t in header.tensors}
    for t in header.tensors:
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_layer:
            layer = int(m.group(1))
            layer_bytes[layer] += t.nbytes
            largest[layer] = max(largest[layer], t.nbytes)
            if _EXPERTS.match(t.name):
                experts[layer] += t.nbytes
                largest_expert[layer] = max(largest_expert[layer], t.nbytes)
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
                      2 if meta.get(f"{arch}.attention.sliding_window") else 1,
                      tuple(experts) if any(experts) else (), tuple(largest_expert) if any(experts) else ())


@dataclass(frozen=True)
class FitRequest:
    n_ctx: int  # KV cells in all (every sequence together)
    n_ubatch: int = 512
    n_outputs: int | None = None  # logits rows per micro-batch (infer: one per sequence); None: n_ubatch
    cache_type: str = "f16"
    flash_attn: bool = True


def kv_bytes_per_layer(shape: ModelShape, layer: int, req: FitRequest) -> int:
    cells = round_up(req.n_ctx)
    per_cell = shape.n_head_kv[layer] * (shape.head_dim_k + shape.head_dim_v)
    return int(cells * per_cell * KV_TYPE_BYTES[req.cache_type])


def compute_bytes(shape: ModelShape, req: FitRequest, output_on_gpu: bool, cpu_layers: range = range(0),
                  op_offload: bool = True, output_elsewhere: bool = False) -> int:
    """llama.cpp's graph buffer on the GPU: one micro-batch of activations, plus the larger of
    the logits and the attention's own memory (the mask, kept for the whole graph, and without
    flash attention one layer's scores), plus, when layers stay on the CPU, the weight copied
    for an op llama.cpp offloads anyway (one at a time: a new graph split starts at each, and
    its copy reuses the last one's memory).
    Against llama.cpp's reported buffer (CPU, u=512; tests/test_fit.py): SmolLM2 8192 cells,
    one logits row: 21.5 MiB with flash attention (estimate 23.8), 166 without (176);
    512 rows: 98 MiB (112).
    op_offload: whether the device takes such ops (CUDA does, an RPC device never); output_elsewhere:
    the output layer is on another device (not the CPU), so no logits here."""
    cells = round_up(req.n_ctx)
    u = min(req.n_ubatch, cells)
    outputs = min(req.n_outputs or u, u)
    activations = u * (6 * shape.n_embd + 3 * max(shape.n_ff, shape.n_embd)) * 4
    mask = cells * u * (2 if req.flash_attn else 4) * shape.n_masks  # f16 for flash attention
    scores = 0 if req.flash_attn else shape.n_head * cells * u * 4
    # The output layer runs on the GPU where it lives, or, from enough rows, as an offloaded op.
    output_offloaded = op_offload and not (output_on_gpu or output_elsewhere) and outputs >= OP_OFFLOAD_MIN_BATCH
    logits = outputs * shape.n_vocab * 4 if output_on_gpu or output_offloaded else 0
    copied = 0
    if op_offload and u >= OP_OFFLOAD_MIN_BATCH and shape.largest_tensor:  # a prompt's micro-batch: layers' ops
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


def plan(shape: ModelShape, req: FitRequest, free_bytes: int) -> "Placement":
    """The most layers whose weights, KV cache and compute buffer fit `free_bytes` less a margin:
    one GPU (`place` with a single device)."""
    return place(shape, req, [Budget("GPU", free_bytes)])


# -- several devices, MoE experts -------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    name: str  # llama.cpp's device name: CUDA0, RPC0 …
    free_bytes: int  # what this run may use there (free memory, or --vram-limit's share)
    op_offload: bool = True  # whether llama.cpp copies CPU-held weights here for large batches (CUDA; never RPC)


@dataclass(frozen=True)
class DevicePlan:
    name: str
    free_bytes: int
    margin_bytes: int
    first_layer: int  # this device's repeating layers: first_layer … first_layer + n_layers - 1
    n_layers: int
    output: bool  # the output layer here (the last device that holds layers)
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def units(self) -> int:
        """Its share as llama.cpp's tensor split counts it (the output layer is one)."""
        return self.n_layers + self.output


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp will put each layer: `n_gpu_layers` as -ngl (output included), split over
    the devices in llama.cpp's order by `tensor_split` (whole layers each), and the expert tensors
    of `cpu_experts`' layers kept in RAM."""
    n_layer: int
    devices: tuple[DevicePlan, ...]
    cpu_experts: tuple[int, ...] = ()  # layers whose expert tensors stay on the CPU

    @property
    def n_gpu_layers(self) -> int:
        return sum(d.units for d in self.devices)

    @property
    def all_layers(self) -> bool:
        return self.n_gpu_layers > self.n_layer

    @property
    def tensor_split(self) -> tuple[float, ...]:
        return tuple(float(d.units) for d in self.devices)

    @property
    def overrides(self) -> tuple[tuple[str, str], ...]:
        """llama.cpp tensor overrides (regex, device) that keep `cpu_experts` on the CPU: one."""
        return ((expert_pattern(self.cpu_experts), "CPU"),) if self.cpu_experts else ()

    def describe(self) -> str:
        """One line for one device; a line per device under a heading for several."""
        experts = f"; experts of {len(self.cpu_experts)}/{self.n_layer} layers in RAM" if self.cpu_experts else ""
        layers = f"{min(self.n_gpu_layers, self.n_layer + 1)}/{self.n_layer + 1} layers"
        if len(self.devices) == 1:
            d = self.devices[0]
            return (f"auto-fit: {layers} on {d.name} — weights {d.weights_bytes / GIB:.2f} GiB + KV "
                    f"{d.kv_bytes / GIB:.2f} GiB + compute {d.compute_bytes / GIB:.2f} GiB = {d.used_bytes / GIB:.2f} "
                    f"of {d.free_bytes / GIB:.2f} GiB free (margin {d.margin_bytes / GIB:.2f} GiB){experts}")
        lines = [f"auto-fit: {layers} on {len([d for d in self.devices if d.units])} of {len(self.devices)} "
                 f"devices{experts}"]
        for d in self.devices:
            where = (f"layers {d.first_layer}–{d.first_layer + d.n_layers - 1}" if d.n_layers else "no layers") + \
                    (" + output" if d.output else "")
            lines.append(f"  {d.name:<10} {where}: weights {d.weights_bytes / GIB:.2f} + KV {d.kv_bytes / GIB:.2f} + "
                         f"compute {d.compute_bytes / GIB:.2f} = {d.used_bytes / GIB:.2f} of {d.free_bytes / GIB:.2f} "
                         f"GiB (margin {d.margin_bytes / GIB:.2f})")
        cpu = self.n_layer - sum(d.n_layers for d in self.devices)
        if cpu or self.cpu_experts:
            lines.append(f"  {'CPU':<10} " + (f"layers 0–{cpu - 1}" if cpu else "no whole layers")
                         + (f", experts of {len(self.cpu_experts)} layers" if self.cpu_experts else ""))
        return "\n".join(lines)


def expert_pattern(layers) -> str:
    """The expert tensors of these layers (llama.cpp's fit names them the same way, a layer each)."""
    return rf"blk\.({'|'.join(str(i) for i in layers)})\.ffn_(up|down|gate_up|gate)_(ch|)exps"


def _device_cost(shape: ModelShape, req: FitRequest, first: int, count: int, output: bool, cpu_experts: int,
                 unplaced: range, op_offload: bool, output_elsewhere: bool = False) -> tuple[int, int, int]:
    """Weights, KV and compute of layers first … first+count-1 (and the output layer) on a device,
    with the experts of layers below `cpu_experts` in RAM; `unplaced`: layers not on any device yet
    (for an op llama.cpp offloads here, the largest such weight is copied in); output_elsewhere:
    the output layer is on another device."""
    layers = range(first, first + count)
    experts = shape.expert_bytes or (0,) * shape.n_layer
    weights = sum(shape.layer_bytes[i] - (experts[i] if i < cpu_experts else 0) for i in layers)
    weights += shape.output_bytes if output else 0
    kv = sum(kv_bytes_per_layer(shape, i, req) for i in layers)
    compute = compute_bytes(shape, req, output, unplaced, op_offload, output_elsewhere)
    if op_offload and shape.largest_expert and req.n_ubatch >= OP_OFFLOAD_MIN_BATCH:
        # experts held in RAM run here from a prompt's micro-batch on, one tensor at a time
        compute += max((shape.largest_expert[i] for i in range(min(cpu_experts, shape.n_layer))
                        if i not in unplaced), default=0)
    return weights, kv, compute


def _fill(shape: ModelShape, req: FitRequest, budgets: list[Budget], cpu_experts: int) -> tuple[DevicePlan, ...]:
    """Whole layers onto the devices from the last one back (it holds the output layer, as
    llama.cpp assigns them), each taking as many of the remaining last layers as fit it."""
    plans: list[DevicePlan] = []
    next_layer = shape.n_layer  # layers next_layer … n_layer-1 are placed
    output_placed = False
    # Should every layer end up placed, llama.cpp pipelines (see _split): counted whenever it may.
    pipelined = (PIPELINE_COPIES - 1) * _graph_inputs(shape, req) if len(budgets) > 1 and not cpu_experts else 0
    for b in reversed(budgets):
        margin = _margin(b)
        budget = b.free_bytes - margin
        best = DevicePlan(b.name, b.free_bytes, margin, next_layer, 0, False, 0, 0, 0)
        # the output layer goes to the last device with layers: this one, if nothing is placed yet
        takes_output = not output_placed
        for count in range(0, next_layer + 1):
            if count == 0 and takes_output:
                weights, kv, compute = _device_cost(shape, req, next_layer, 0, True, cpu_experts,
                                                    range(next_layer), b.op_offload)
            elif count == 0:
                continue
            else:
                weights, kv, compute = _device_cost(shape, req, next_layer - count, count, takes_output, cpu_experts,
                                                    range(next_layer - count), b.op_offload, output_placed)
            compute += pipelined
            if weights + kv + compute > budget:
                break
            best = DevicePlan(b.name, b.free_bytes, margin, next_layer - count, count, takes_output, weights, kv,
                              compute)
        if best.units == 0:  # nothing fits here: a share of 0 (the devices before it may still take layers)
            plans.append(best)
            continue
        output_placed = output_placed or best.output
        next_layer = best.first_layer
        plans.append(best)
    return tuple(reversed(plans))


def _margin(b: Budget) -> int:
    return max(MIN_MARGIN, int(b.free_bytes * MARGIN_FRACTION))


def _split(shape: ModelShape, req: FitRequest, budgets: list[Budget], units: list[int], cpu_experts: int,
           ) -> tuple[DevicePlan, ...] | None:
    """Every layer and the output, `units[i]` of them on device i in order (the output one of the
    last device's); None when a device would be over its budget."""
    plans = []
    first = 0
    last = max(i for i, u in enumerate(units) if u)
    pipelined = len(budgets) > 1 and not cpu_experts  # llama_context: pipeline parallelism
    for i, (b, u) in enumerate(zip(budgets, units)):
        output = i == last
        count = u - output
        weights, kv, compute = _device_cost(shape, req, first, count, output, cpu_experts, range(0), b.op_offload,
                                            not output)
        if pipelined:
            compute += (PIPELINE_COPIES - 1) * _graph_inputs(shape, req)
        if u and weights + kv + compute > b.free_bytes - _margin(b):
            return None
        plans.append(DevicePlan(b.name, b.free_bytes, _margin(b), first, count, output,
                                weights if u else 0, kv, compute if u else 0))
        first += count
    return tuple(plans)


def _graph_inputs(shape: ModelShape, req: FitRequest) -> int:
    """A device's inputs from the one before it in a micro-batch: the hidden state and the masks."""
    cells = round_up(req.n_ctx)
    u = min(req.n_ubatch, cells)
    return u * shape.n_embd * 4 + cells * u * (2 if req.flash_attn else 4) * shape.n_masks


def _shares(budgets: list[Budget], n: int) -> list[int]:
    """n units in proportion to the budgets (largest remainders), as llama.cpp splits by free memory."""
    total = sum(max(b.free_bytes, 0) for b in budgets) or 1
    exact = [max(b.free_bytes, 0) * n / total for b in budgets]
    units = [int(x) for x in exact]
    for i in sorted(range(len(budgets)), key=lambda i: exact[i] - units[i], reverse=True)[:n - sum(units)]:
        units[i] += 1
    return units


def place(shape: ModelShape, req: FitRequest, budgets: list[Budget]) -> Placement:
    """Layers over `budgets` (in llama.cpp's device order) in proportion to what each holds.

    Dense: every layer split by the budgets when each device then has room (as llama.cpp's own
    split by free memory); else the most layers that fit, the last device filled first. MoE: everything on the devices if it
    fits; else the experts of the first layers go to RAM, as few layers' as let every layer's
    attention and shared weights fit (the experts are most of the bytes and the least of the
    work per token); only when even all experts in RAM leave layers over do layers stay on the CPU.
    """
    if not budgets:
        return Placement(shape.n_layer, ())
    def placed(k: int) -> Placement:
        # Every layer, split in proportion to what each device holds, when that fits each;
        # else filled from the last device back.
        if len(budgets) > 1 and (even := _split(shape, req, budgets, _shares(budgets, shape.n_layer + 1), k)):
            return Placement(shape.n_layer, even, tuple(range(k)))
        return Placement(shape.n_layer, _fill(shape, req, budgets, k), tuple(range(k)))

    best = placed(0)
    if best.all_layers or not shape.moe:
        return best
    # The fewest layers' experts in RAM that let every layer on: more in RAM never fits fewer
    # layers, so a binary search over how many.
    low, high = 0, shape.n_layer  # placed(low) does not fit every layer; placed(high) may or may not
    best = placed(high)
    if not best.all_layers:
        return best if best.n_gpu_layers else placed(0)  # no layer on a device: nothing to keep off it
    while high - low > 1:
        mid = (low + high) // 2
        if (trial := placed(mid)).all_layers:
            high, best = mid, trial
        else:
            low = mid
    return best
