"""Stage: prompt tokens → generated tokens, on llama.cpp's C API (every layer on the GPU by default).

We drive llama.cpp directly (model, context, batch, logits) instead of llama-cpp-python's
`Llama` class so that sampling is ours (HF semantics, see sampler.py) and so that several
sequences can later share one context.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import backend, fit, gguf, llama_log, rpc
from .errors import AdapterMismatch, DecodeFailed, InternalError, InvalidAdapter, LoadFailed, OutOfMemory, UserError
from .sampler import Sampler

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|LoRA) buffer size =\s+([\d.]+) MiB")
_CONTEXT_FAILED = re.compile(r"failed to initialize the context: (.*)")


def _keep_buffer_lines(into: list[str]) -> Callable[[str], None]:
    """A log hook: llama.cpp's buffer-size lines, as they come (its debug lines run to hundreds
    per load or context, more than the log tail keeps)."""
    def hook(line: str) -> None:
        if _BUFFER.search(line):
            into.append(line.strip())
    return hook


def buffers_of(lines) -> dict[str, dict[str, float]]:
    """llama.cpp's allocations as it logs them, MiB by buffer type (CUDA0, CPU_Mapped, CUDA_Host …)
    and kind (model, KV, compute, output, LoRA)."""
    out: dict[str, dict[str, float]] = {}
    for line in lines:
        if m := _BUFFER.search(line):
            kinds = out.setdefault(m.group(1), {})
            kinds[m.group(2)] = kinds.get(m.group(2), 0.0) + float(m.group(3))
    return out


def _on_gpu(failure: llama_log.AllocationFailure) -> bool:
    """Device memory, not host RAM (CPU, CPU_Mapped, CUDA_Host … are RAM)."""
    return not (failure.buffer.startswith("CPU") or "Host" in failure.buffer)


def _amount(failure: llama_log.AllocationFailure) -> str:
    """"2,048 MiB on CUDA0 (1,210 MiB free there)": what llama.cpp asked for, and what it had."""
    free = (next((d.free_bytes for d in backend.gpus() if failure.buffer in (d.name, d.buffer_type)), None)
            if _on_gpu(failure) else None)
    there = f" ({round(free / 2**20):,} MiB free there)" if free is not None else ""
    return f"{failure.mib:,} MiB on {failure.buffer}{there}"


def weights_do_not_fit(name: str, failure: llama_log.AllocationFailure, n_gpu_layers: int, planned: bool = False) -> str:
    head = f"{name} does not fit: llama.cpp could not allocate {_amount(failure)} for its weights"
    if not _on_gpu(failure):
        return f"{head}; take a smaller quant or free some RAM"
    layers = "every layer" if n_gpu_layers < 0 else f"{n_gpu_layers} layers"
    hint = ("the memory went elsewhere after auto planned: give a lower --vram-limit" if planned else
            "--n-gpu-layers auto puts only the layers that fit there, or take a smaller quant")
    return f"{head} with {layers} on the GPU; {hint}"


def context_does_not_fit(failure: llama_log.AllocationFailure, log_lines, n_ctx: int, planned: bool) -> str:
    reason = next((m.group(1) for ln in reversed(log_lines) if (m := _CONTEXT_FAILED.search(ln))), "")
    part = ("KV cache" if "kv cache" in reason else "compute buffers" if "compute" in reason
            else "logits" if "output" in reason else "context")
    hint = "lower --parallel or --n-ctx, or use --cache-type q8_0 (half the KV cache)"
    if _on_gpu(failure):  # planned: --n-gpu-layers auto made this plan, and the memory went meanwhile
        hint += (" or a lower --vram-limit" if planned else
                 " or --n-gpu-layers auto (only as many layers as leave room for the context)")
    return f"a context of {n_ctx} tokens does not fit: llama.cpp could not allocate {_amount(failure)} for the {part}; {hint}"


SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}  # enum llama_split_mode


class _Override(ctypes.Structure):  # struct llama_model_tensor_buft_override
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _tensor_split_array(split: tuple[float, ...]):
    import llama_cpp

    n = llama_cpp.llama_max_devices()
    if len(split) > n:
        raise UserError(f"--tensor-split: {len(split)} shares, but llama.cpp takes at most {n} devices")
    return (ctypes.c_float * n)(*split)


def buffer_type(device: str) -> int:
    """A device's buffer type, by llama.cpp device name (CPU, CUDA0, RPC1) or buffer type name
    (RPC0[127.0.0.1:50052], as llama.cpp logs it)."""
    lib = backend.ggml()
    names = []
    for d in backend.devices():
        if device.lower() in (d.name.lower(), d.buffer_type.lower()):
            return lib.ggml_backend_dev_buffer_type(lib.ggml_backend_dev_by_name(d.name.encode()))
        names.append(d.name if d.buffer_type == d.name else f"{d.name} ({d.buffer_type})")
    raise UserError(f"--override-tensor: no device {device!r} here; there are {', '.join(names)}")


def tensor_overrides(overrides) -> ctypes.Array:
    """A NULL-terminated llama_model_tensor_buft_override array of (regex, device) pairs."""
    arr = (_Override * (len(overrides) + 1))()
    for i, (pattern, device) in enumerate(overrides):
        arr[i].pattern = pattern.encode()
        arr[i].buft = buffer_type(device)
    return arr


def device_budgets(vram_limit: int | None, as_free: int | None = None,
                   devices: list[backend.Device] | None = None) -> list[fit.Budget]:
    """What each device llama.cpp offloads to (`devices`, default all) may hold, in its order (RPC
    servers first, then GPUs): free memory, or --vram-limit on each, as on cards of that size
    (or, to plan ahead, `as_free` on each, whatever is free now)."""
    budgets = []
    for d in backend.offload_devices() if devices is None else devices:
        free = d.free_bytes if as_free is None else as_free
        if vram_limit is not None:
            # an RPC server's CUDA context is on its machine, not counted in what it reports
            free = min(free, vram_limit) if backend.is_rpc(d) else fit.within_limit(vram_limit, free, d.total_bytes)
        budgets.append(fit.Budget(d.buffer_type or d.name, free, op_offload=not backend.is_rpc(d)))
    return budgets


@dataclass(frozen=True)
class EngineSettings:
    n_gpu_layers: int | str = -1  # -1: every layer on the GPU; "auto": as many as fit (fit.py)
    vram_limit: int | None = None  # bytes of GPU memory "auto" may use in all, context included (default: all that is free)
    cache_type: str = "f16"  # KV cache type (q8_0 halves it; llama.cpp needs flash attention for it)
    n_ctx: int | None = None  # None: fitted to the longest prompt + max_new_tokens
    n_batch: int = 512
    threads: int | None = None  # None: every core
    flash_attn: bool | None = None  # None: llama.cpp decides on a GPU; off on the CPU
    # llama.cpp's kernels are not batch-invariant: CPU weight repacking picks other matmul
    # kernels for several rows than for one, and a shared KV cache interleaves sequences.
    # True turns both off, so on the CPU a batched run gives exactly the single-stream tokens
    # (about 20% slower there; no effect on layers offloaded to a GPU, whose kernels still vary).
    batch_invariant: bool = False
    lora: Path | None = None  # a GGUF LoRA (toolkit lora) applied on top of the model
    lora_scale: float = 1.0
    # Beyond one GPU (docs/gpu-memory.md): llama.cpp RPC servers whose devices join this run's,
    # each device's share of the layers (llama.cpp's device order: RPC first, then GPUs), how a
    # layer is split, and tensors placed by name (regex, device), as llama.cpp's --rpc, -ts, -sm, -ot.
    rpc: str | None = None  # "HOST:PORT,HOST:PORT"
    tensor_split: tuple[float, ...] | None = None
    split_mode: str = "layer"  # or "row"
    overrides: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LoadInfo:
    path: Path
    architecture: str
    quant_type: str
    layers_offloaded: int
    layers_total: int
    backend: str
    n_ctx_train: int
    offload_log: str = ""  # llama.cpp's own line, e.g. "load_tensors: offloaded 33/33 layers to GPU"
    devices: tuple[str, ...] = ()  # the buffer types llama.cpp put weights in (CPU_Mapped, CUDA0, RPC0[…] …)


@dataclass
class Generation:
    tokens: list[int]
    text: str
    prompt_tokens: int
    stopped: str  # "eog", "length" or "context"
    prompt_seconds: float
    gen_seconds: float
    chosen: int = -1  # answer form `choose`: the opening kept (its index), -1 for none
    margin: float | None = None  # its log-probability over the next best opening's
    written: int = 0  # tokens of `tokens` written, not sampled (the opening kept): evaluated as a prompt is

    @property
    def sampled(self) -> int:
        return len(self.tokens) - self.written


def stop_rule(engine: "Engine", token: int, tokens: list[int], max_new_tokens: int, length: int,
              n_ctx: int) -> str | None:
    """Once `token` is sampled: "eog" (not kept), else it is kept and "length" (max_new_tokens
    reached), "context" (the sequence, `length` tokens with it, fills its share of the cache) or
    None (go on). The one stop rule of the single-stream and the batched decoders."""
    if engine.is_eog(token):
        return "eog"
    tokens.append(token)
    if len(tokens) >= max_new_tokens:
        return "length"
    if length >= n_ctx:
        return "context"
    return None


class Step:
    """One llama_batch over an engine's context: rows in (token, position, sequence, whether its
    logits are wanted), one llama_decode, logits out. The single-stream and the batched decoders
    and the scoring of answer openings all decode through it."""

    def __init__(self, engine: "Engine", size: int) -> None:
        import llama_cpp

        self.engine = engine
        self.size = size
        self.batch = llama_cpp.llama_batch_init(size, 0, 1)

    def close(self) -> None:
        import llama_cpp

        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None

    def __enter__(self) -> "Step":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.batch.n_tokens

    def clear(self) -> None:
        self.batch.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """A row; returns its index (the logits row, where asked for)."""
        b, i = self.batch, self.batch.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def decode(self) -> float:
        """Evaluate the rows; the seconds it took."""
        import llama_cpp

        t = time.perf_counter()
        rc = llama_cpp.llama_decode(self.engine.ctx, self.batch)
        if rc != 0:
            raise DecodeFailed(
                f"llama.cpp could not evaluate a batch of {self.batch.n_tokens} tokens (llama_decode returned {rc}); "
                "the KV cache may be full: lower --parallel or raise --n-ctx")
        # On a GPU llama_decode returns once the work is queued: wait, so that time is work done.
        llama_cpp.llama_synchronize(self.engine.ctx)
        return time.perf_counter() - t

    def logits(self, row: int) -> np.ndarray:
        """A view of the last decode's logits for a row (valid until the next decode)."""
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.engine.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.engine.n_vocab,))

    def evaluate(self, tokens: list[int], pos: int, seq: int, logits_from: int,
                 on_row: Callable[[int, np.ndarray], None] | None = None, chunk: int | None = None) -> float:
        """Evaluate tokens of one sequence from position `pos`, `chunk` rows a decode (default: the
        step's size), with logits for each token from index `logits_from` on, handed to
        on_row(index, logits) after its decode. The seconds it took."""
        chunk = chunk or self.size
        seconds = 0.0
        for start in range(0, len(tokens), chunk):
            self.clear()
            part = tokens[start:start + chunk]
            for j, tok in enumerate(part):
                self.add(tok, pos + start + j, seq, start + j >= logits_from)
            seconds += self.decode()
            if on_row is not None:
                for j in range(max(0, logits_from - start), len(part)):
                    on_row(start + j, self.logits(j))
        return seconds

    def feed(self, tokens: list[int], pos: int, seq: int, logits_last: bool = True) -> float:
        """Evaluate tokens of one sequence from position `pos`; logits for the last (its row is
        len(self) - 1)."""
        return self.evaluate(tokens, pos, seq, len(tokens) - 1 if logits_last else len(tokens))


def _log_softmax_at(logits: np.ndarray, token: int) -> float:
    x = np.asarray(logits, dtype=np.float64)
    top = x.max()
    return float(x[token] - top - np.log(np.exp(x - top).sum()))


def choose_opening(step: Step, seq: int, pos: int, first: np.ndarray, openings: list[list[int]],
                   rows: int) -> tuple[int, float | None]:
    """Answer form `choose`: each opening's log-probability after the `pos` tokens of sequence
    `seq` (teacher-forced; `first`: the logits that predict its first token), evaluated in that
    sequence and taken out of it again, at most `rows` logits rows a decode. Returns the best
    opening's index and its margin over the next best (None for a single one)."""
    import llama_cpp

    mem = llama_cpp.llama_get_memory(step.engine.ctx)
    scores = []
    for tokens in openings:
        total = [_log_softmax_at(first, tokens[0])]
        # Each token but the last predicts the next.
        step.evaluate(tokens[:-1], pos, seq, 0, lambda i, row: total.append(_log_softmax_at(row, tokens[i + 1])), rows)
        llama_cpp.llama_memory_seq_rm(mem, seq, pos, -1)
        scores.append(sum(total))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[0], (scores[order[0]] - scores[order[1]] if len(order) > 1 else None)


def write_opening(step: Step, seq: int, pos: int, first: np.ndarray, openings: list[list[int]], sampler: Sampler,
                  max_new_tokens: int) -> tuple[int, float | None, list[int], np.ndarray]:
    """Choose the likeliest opening (choose_opening) and write it into the sequence as the
    answer's first tokens, the sampler seeing them as its own. Returns the choice, its margin,
    the tokens written (at most max_new_tokens) and a view of the logits after them."""
    engine = step.engine
    chosen, margin = choose_opening(step, seq, pos, first, openings, min(engine.logits_rows, engine.n_batch))
    opening = openings[chosen][:max_new_tokens]
    step.feed(opening, pos, seq)
    for tok in opening:
        sampler.accept(tok)
    return chosen, margin, opening, step.logits(len(step) - 1)


class Engine:
    def __init__(self, model_path: Path, settings: EngineSettings = EngineSettings()):
        import llama_cpp

        self.settings = settings
        self.path = Path(model_path)
        self.header = gguf.read_model(self.path)  # a clear error for missing, non-GGUF, truncated or non-model files
        self.model = None
        self.ctx = None
        self.n_ctx = 0
        self.n_batch = 0
        self.logits_rows = 0
        self.model_buffer_lines: list[str] = []
        self.buffer_sizes: list[str] = []
        self.fit_plan: fit.Placement | None = None
        self.adapter = None
        self._keep: list = []  # ctypes arrays llama.cpp reads while loading
        llama_cpp.llama_backend_init()
        self.endpoints = rpc.parse(settings.rpc) if settings.rpc else []
        self.rpc_devices = rpc.join(self.endpoints)  # before loading: an unreachable server is one line, not an abort
        # This run's devices: the local GPUs and its own servers' (another Engine in this process
        # may have joined other servers, which llama.cpp would otherwise use too).
        everything = backend.offload_devices()
        self.devices = [d for d in everything if not backend.is_rpc(d) or d.name in self.rpc_devices]
        self._device_list = None if len(self.devices) == len(everything) else self._devices_array()
        self._check_placement_options()
        if self.endpoints:
            rpc.on_abort(self.endpoints, lambda: "")
        # "auto" needs the context size, which needs the prompts' tokens: load only the
        # vocabulary now, and the weights once place() knows how much KV cache there will be.
        self._placed = settings.n_gpu_layers != "auto"
        self._load(int(settings.n_gpu_layers) if self._placed else 0, vocab_only=not self._placed)

    def _check_placement_options(self) -> None:
        """What llama.cpp would ignore or fail on half-way through a load, said up front."""
        s = self.settings
        names = ", ".join(d.buffer_type or d.name for d in self.devices) or "none"
        if s.tensor_split is not None and len(s.tensor_split) != len(self.devices):
            raise UserError(f"--tensor-split: {len(s.tensor_split)} shares for {len(self.devices)} device(s) "
                            f"(in order: {names})")
        if s.split_mode == "row" and any(backend.is_rpc(d) for d in self.devices):
            raise UserError("--split-mode row splits matrices across the GPUs of one machine; llama.cpp cannot split "
                            "them over RPC devices: use --split-mode layer")
        for _, device in s.overrides:
            buffer_type(device)  # an unknown device: one line naming those there are

    def _devices_array(self) -> ctypes.Array:
        """A NULL-terminated ggml_backend_dev_t array of self.devices (llama_model_params.devices)."""
        lib = backend.ggml()
        return (ctypes.c_void_p * (len(self.devices) + 1))(
            *(lib.ggml_backend_dev_by_name(d.name.encode()) for d in self.devices), None)

    def _load(self, n_gpu_layers: int, vocab_only: bool, tensor_split: tuple[float, ...] | None = None,
              extra_overrides: tuple[tuple[str, str], ...] = ()) -> None:
        import llama_cpp

        self._free_model()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers if n_gpu_layers >= 0 else 1_000_000
        mparams.vocab_only = vocab_only
        mparams.use_extra_bufts = not self.settings.batch_invariant  # the CPU's repacked weights
        mparams.split_mode = SPLIT_MODES[self.settings.split_mode]
        if self._device_list is not None:
            mparams.devices = ctypes.cast(self._device_list, ctypes.c_void_p)
        if split := (tensor_split if tensor_split is not None else self.settings.tensor_split):
            self._keep.append(arr := _tensor_split_array(split))
            mparams.tensor_split = arr
        if overrides := (*self.settings.overrides, *extra_overrides):
            self._keep.append(arr := tensor_overrides(overrides))
            mparams.tensor_buft_overrides = ctypes.cast(arr, ctypes.c_void_p)
        self.model_buffer_lines = []
        with llama_log.capture(_keep_buffer_lines(self.model_buffer_lines)) as log:
            self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            if failure := log.allocation_failure():
                raise OutOfMemory(weights_do_not_fit(self.path.name, failure, n_gpu_layers, planned=self.fit_plan is not None))
            raise LoadFailed(f"llama.cpp cannot load {self.path.name}: {log.load_error() or 'unknown reason'}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        n_layer = self.header.block_count or 0
        m = _OFFLOADED.search(log.text())
        offloaded, total = (int(m.group(1)), int(m.group(2))) if m else (0, n_layer + 1)
        if not self.devices:  # llama.cpp counts -ngl as offloaded in any build that could offload (RPC)
            offloaded = 0
        gpus = self.devices if offloaded else []
        self.info = LoadInfo(
            path=self.path, architecture=self.header.architecture, quant_type=self.header.file_type_name,
            layers_offloaded=offloaded, layers_total=total,
            backend=", ".join(f"{d.name} ({d.description})" for d in gpus) if gpus else "CPU",
            devices=tuple(sorted({b for b, kinds in buffers_of(self.model_buffer_lines).items() if kinds.get("model")})),
            n_ctx_train=self.header.context_length or 4096,
            offload_log=next((ln.strip() for ln in log.lines if _OFFLOADED.search(ln)), ""),
        )
        if self.settings.lora is not None and not vocab_only:
            try:
                self.adapter = self._load_adapter(Path(self.settings.lora))
            except BaseException:
                self.close()
                raise

    @property
    def on_gpu(self) -> bool:
        """Whether generation will run on a GPU (for "auto": whether there is one)."""
        return bool(self.info.layers_offloaded) if self._placed else bool(self.devices)

    def place(self, n_ctx: int, logits_rows: int | None = None,
              on_plan: Callable[[fit.Placement], None] | None = None) -> fit.Placement | None:
        """For --n-gpu-layers auto: plan the layers over the devices for a context of n_ctx cells
        (and logits_rows, as open_context takes it), hand the plan to on_plan, and load the weights.
        Does nothing once the weights are loaded."""
        if self._placed:
            return self.fit_plan
        flash = self.settings.flash_attn if self.settings.flash_attn is not None else True
        req = fit.FitRequest(n_ctx=n_ctx, n_ubatch=min(self.settings.n_batch, n_ctx), n_outputs=logits_rows,
                             cache_type=self.settings.cache_type, flash_attn=flash)
        budgets = device_budgets(self.settings.vram_limit, devices=self.devices)
        if budgets:
            self.fit_plan = fit.place(fit.shape_of(self.path, self.header), req, budgets)
            if on_plan is not None:
                on_plan(self.fit_plan)
            # The user's own split and overrides, when given, win over the plan's (first match wins).
            self._load(self.fit_plan.n_gpu_layers, vocab_only=False,
                       tensor_split=self.settings.tensor_split or self.fit_plan.tensor_split,
                       extra_overrides=self.fit_plan.overrides)
        else:
            self._load(0, vocab_only=False)
        self._placed = True
        return self.fit_plan

    def _load_adapter(self, path: Path):
        import llama_cpp

        info = gguf.read(path)
        if info.metadata.get("general.type") != "adapter":
            raise InvalidAdapter(f"{path.name} is not a GGUF LoRA adapter (make one with `toolkit lora ADAPTER --base BASE`)")
        with llama_log.capture(_keep_buffer_lines(self.model_buffer_lines)) as log:
            adapter = llama_cpp.llama_adapter_lora_init(self.model, str(path).encode())
        if not adapter:
            # llama.cpp checks architecture and every tensor's shape against the model.
            reason = log.last_error() or "unknown reason"
            raise AdapterMismatch(f"llama.cpp cannot apply {path.name} to {self.path.name}: {reason}")
        return adapter

    # -- context -----------------------------------------------------------------------------
    def open_context(self, n_ctx: int, n_seq_max: int = 1, kv_unified: bool = False,
                     logits_rows: int | None = None) -> None:
        """A context of n_ctx cells for n_seq_max sequences. logits_rows: the most rows of logits
        one decode asks for (generation: one per sequence); None allows a whole batch (scoring).
        llama.cpp sizes its logits buffers and, on a GPU, the output layer's share of the compute
        buffer by it: for a 128k vocabulary 512 rows take 250 MiB, 16 take 8."""
        import llama_cpp

        self.place(n_ctx, logits_rows)
        self.close_context()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(self.settings.n_batch, n_ctx)
        cparams.n_ubatch = min(self.settings.n_batch, n_ctx)
        # llama.cpp aborts the process (not an error code) below n_seq_max or past this in a decode.
        self.logits_rows = cparams.n_batch if logits_rows is None else max(logits_rows, n_seq_max)
        cparams.n_outputs_max = self.logits_rows
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = kv_unified  # one cache for all sequences: shared heads are not copied
        threads = self.settings.threads or os.cpu_count() or 1
        cparams.n_threads = cparams.n_threads_batch = threads
        if self.settings.cache_type != "f16":
            kv_type = getattr(llama_cpp, f"GGML_TYPE_{self.settings.cache_type.upper()}")
            cparams.type_k = cparams.type_v = kv_type
        if self.settings.flash_attn is not None:
            cparams.flash_attn_type = 1 if self.settings.flash_attn else 0
        elif self.settings.cache_type != "f16":
            pass  # AUTO: llama.cpp turns flash attention on, which a quantized V cache needs
        elif not self.info.layers_offloaded:
            # On the CPU, llama.cpp's flash attention halves decode speed (measured: 41.8 vs
            # 21.5 ms/token); on a GPU, AUTO lets llama.cpp use it where the backend has it.
            cparams.flash_attn_type = 0
        cparams.no_perf = True
        # llama.cpp's own figures for the KV cache and compute buffers (checked against fit.py).
        self.buffer_sizes = []
        with llama_log.capture(_keep_buffer_lines(self.buffer_sizes)) as log:
            self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            if failure := log.allocation_failure():
                raise OutOfMemory(context_does_not_fit(failure, log.lines, n_ctx, planned=self.fit_plan is not None))
            if "std::bad_alloc" in (log.last_error() or ""):  # its own bookkeeping of the cells, in RAM
                raise OutOfMemory(f"a context of {n_ctx} tokens does not fit: llama.cpp ran out of RAM setting it up "
                                  "(std::bad_alloc); lower --parallel or --n-ctx")
            raise LoadFailed(f"llama.cpp cannot create a context of {n_ctx} tokens: {log.last_error() or 'out of memory?'}")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)  # at most n_ctx: no decode may carry more tokens
        if self.adapter:  # adapters belong to a context: set on every one we create
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            scales = (ctypes.c_float * 1)(self.settings.lora_scale)
            with llama_log.capture():  # it re-plans the compute graph, verbosely
                rc = llama_cpp.llama_set_adapters_lora(self.ctx, adapters, 1, scales)
            if rc != 0:
                raise LoadFailed(f"llama.cpp could not apply the LoRA {self.settings.lora} to the context")

    def memory(self) -> dict[str, dict[str, float]]:
        """What llama.cpp allocated for the weights and the open context, MiB by buffer type and kind."""
        return buffers_of(self.model_buffer_lines + self.buffer_sizes)

    def close_context(self) -> None:
        import llama_cpp

        if self.ctx:
            with llama_log.capture():  # llama.cpp reports buffer sizes on free
                llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def _free_model(self) -> None:
        import llama_cpp

        if self.adapter:  # belongs to the model: freed first
            llama_cpp.llama_adapter_lora_free(self.adapter)
            self.adapter = None
        if self.model:
            with llama_log.capture():
                llama_cpp.llama_model_free(self.model)
            self.model = None

    def close(self) -> None:
        self.close_context()
        self._free_model()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- vocabulary ----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """As HF tokenizes a rendered chat: special tokens parsed, nothing (no BOS) added."""
        import llama_cpp

        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, True)
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, -n, False, True)
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        """As HF decodes with skip_special_tokens=True: control tokens leave no text."""
        import llama_cpp

        if not tokens:
            return ""
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        size = len(tokens) * 16 + 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, arr, len(tokens), buf, size, False, False)
            if n >= 0:
                # Not final: a cut at max_new_tokens inside a character drops its bytes
                # instead of ending the answer in U+FFFD.
                return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(buf.raw[:n], final=False)
            size = -n + 1
        raise DecodeFailed("llama.cpp could not detokenize the generated tokens")

    def token_text(self, token: int) -> str:
        import llama_cpp

        return (llama_cpp.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", errors="replace")

    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token strings for the chat template, as HF exposes them."""
        import llama_cpp

        tokens = {}
        for name, fn in (("bos_token", llama_cpp.llama_vocab_bos), ("eos_token", llama_cpp.llama_vocab_eos)):
            tok = fn(self.vocab)
            if tok >= 0:
                tokens[name] = self.token_text(tok)
        return tokens

    def control_token_texts(self) -> list[str]:
        import llama_cpp

        return [self.token_text(t) for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_control(self.vocab, t)]

    def is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # -- generation ----------------------------------------------------------------------------
    def score(self, tokens: list[int], first: int, on_row: Callable[[int, np.ndarray], None]) -> None:
        """Teacher forcing: evaluate `tokens` in one sequence and call on_row(i, logits) with the
        logits that predict tokens[i], for every i from `first` on (as llama-perplexity scores)."""
        import llama_cpp

        if self.ctx is None:
            raise InternalError("no context: call open_context first")
        if len(tokens) > self.n_ctx:
            raise UserError(f"a text has {len(tokens)} tokens but the context holds {self.n_ctx}")
        step = self.n_batch
        if self.logits_rows < min(step, len(tokens)):
            raise InternalError(f"scoring needs a context opened for {step} logits rows, not {self.logits_rows}")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        with Step(self, step) as batch:  # the logits of token i predict token i + 1
            batch.evaluate(tokens[:-1], 0, 0, first - 1, lambda i, row: on_row(i + 1, row))

    def prompt_logits(self, prompt: list[int]) -> np.ndarray:
        """The next-token logits after `prompt`, evaluated as a fresh sequence (a copy)."""
        import llama_cpp

        if self.ctx is None:
            raise InternalError("no context: call open_context first")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        with Step(self, self.n_batch) as step:
            step.feed(prompt, 0, 0)
            return step.logits(len(step) - 1).copy()

    def generate(self, prompt: list[int], sampler: Sampler, max_new_tokens: int,
                 openings: list[list[int]] | None = None) -> Generation:
        """One answer. With `openings` (answer form `choose`), the one the model finds likeliest
        is written first and the answer goes on from it."""
        import llama_cpp

        if self.ctx is None:
            raise InternalError("no context: call open_context first")
        if len(prompt) >= self.n_ctx:
            raise UserError(f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx}; raise --n-ctx")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        out: list[int] = []
        chosen, margin = -1, None
        with Step(self, self.n_batch) as step:
            t0 = time.perf_counter()
            step.feed(prompt, 0, 0)
            logits = step.logits(len(step) - 1)
            if openings:  # scored and written as a prompt is: its time is prompt time
                chosen, margin, out, logits = write_opening(step, 0, len(prompt), logits.copy(), openings, sampler,
                                                            max_new_tokens)
                out = list(out)
            written = len(out)
            t1 = time.perf_counter()
            stopped = "length" if len(out) >= max_new_tokens else None
            while stopped is None:
                token = sampler.sample(logits)
                stopped = stop_rule(self, token, out, max_new_tokens, len(prompt) + len(out) + 1, self.n_ctx)
                if stopped is None:
                    step.feed([token], len(prompt) + len(out) - 1, 0)
                    logits = step.logits(0)
            t2 = time.perf_counter()
        return Generation(out, self.detokenize(out), len(prompt), stopped, t1 - t0, t2 - t1, chosen, margin, written)
