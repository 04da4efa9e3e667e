"""The `bench` verb: throughput of `infer` at several --parallel settings, each in its own
process (so peak memory is that setting's own)."""

from __future__ import annotations

import multiprocessing as mp
import resource
import tempfile
import threading
import time
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import rpc
from .engine import EngineSettings
from .errors import InternalError, UserError
from .prompts import PromptSet
from .retrieve import ExampleSettings, RetrievalSettings
from .samples import samples_path
from .sampler import SamplingParams


@dataclass(frozen=True)
class BenchSettings:
    parallel: tuple[int, ...] = (1, 4)
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=128))
    engine: EngineSettings = field(default_factory=EngineSettings)
    # The prompts' length decides prompt time: bench with the ones infer will use.
    prompts: PromptSet = field(default_factory=PromptSet)
    references: RetrievalSettings = field(default_factory=RetrievalSettings)  # norms lengthen the prompts too
    examples: ExampleSettings = field(default_factory=ExampleSettings)  # and so do examples
    answer_form: str = "free"  # constraints.py: what holding answers to the form costs


def _watch_vram(stop: threading.Event, peak: list[int]) -> None:
    from . import backend

    while not stop.wait(0.2):
        used = sum(d.total_bytes - d.free_bytes for d in backend.local_gpus())
        peak[0] = max(peak[0], used)


def _run_one(model: str, input_path: str, parallel: int, settings: BenchSettings, out: "mp.Queue") -> None:
    try:
        out.put(_measure(model, input_path, parallel, settings))
    except BaseException as e:  # reported by the parent, which would otherwise wait forever
        # A request that cannot be met (a context too big for the GPU …) stays a user error: exit 2.
        out.put({"error": f"{type(e).__name__}: {e}", "user_error": isinstance(e, UserError)})


def _measure(model: str, input_path: str, parallel: int, settings: BenchSettings) -> dict:
    from . import backend
    from .infer import InferSettings, infer

    has_gpu = bool(backend.local_gpus())  # an RPC server's memory is its machine's, polled over the wire
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_vram, args=(stop, peak), daemon=True) if has_gpu else None
    if watcher:
        watcher.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = infer(Path(input_path), InferSettings(model=Path(model), output=Path(tmp) / "out.json", resume=False,
                                                      parallel=parallel, sampling=settings.sampling,
                                                      engine=settings.engine, prompts=settings.prompts,
                                                      references=settings.references, examples=settings.examples,
                                                      answer_form=settings.answer_form))
            wall = time.perf_counter() - t0
    finally:
        stop.set()
        if watcher:
            watcher.join()  # not polling the GPU while CUDA shuts down at exit
    return {
        "parallel": r.parallel,
        "items": r.generated,
        "prompt_tokens": r.prompt_tokens,
        "new_tokens": r.new_tokens,
        "prompt_tps": round(r.prompt_tokens / r.prompt_seconds, 2) if r.prompt_seconds else 0.0,
        "gen_tps": round(r.new_tokens / r.gen_seconds, 2) if r.gen_seconds else 0.0,
        # Answers' tokens per second of generation wall time, all sequences together.
        "aggregate_tps": round(r.new_tokens / r.seconds, 2) if r.seconds else 0.0,
        "seconds_per_item": round(r.seconds / max(r.generated, 1), 3),
        "wall_seconds": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_vram_mb": round(peak[0] / 2**20, 1) if has_gpu else None,
        "memory_mib": r.memory,  # llama.cpp's own buffers (weights, KV, compute) by device
    }


def repeated(input_path: Path, times: int, directory: Path) -> Path:
    """The input's items `times` over (ids made unique), for batches bigger than the file."""
    from .dataset import load_items

    items = load_items(input_path)
    if times <= 1:
        return input_path
    many = [{**item, "id": f"{item['id']}#{k}"} for k in range(times) for item in items]
    path = directory / f"{input_path.stem}.x{times}.json"
    path.write_text(json.dumps(many, ensure_ascii=False), encoding="utf-8")
    return path


def bench(model: Path, input_path: Path | None = None, settings: BenchSettings = BenchSettings(),
          repeat: int = 1) -> list[dict]:
    """One row per --parallel setting; the questions default to the bundled samples."""
    from . import gguf
    from .dataset import load_items

    gguf.read_model(model)  # a missing, truncated, non-GGUF or non-model file fails here, before any worker starts
    input_path = Path(input_path) if input_path else samples_path()
    load_items(input_path)  # a bad input fails here, once, with the usual message
    if settings.engine.rpc:  # an unreachable server too (each worker joins the servers itself)
        rpc.check_reachable(rpc.parse(settings.engine.rpc))
    ctx = mp.get_context("spawn")  # a fresh process per setting: its own peak RSS, no shared state
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = repeated(input_path, repeat, Path(tmp))
        for parallel in settings.parallel:
            queue = ctx.Queue()
            proc = ctx.Process(target=_run_one, args=(str(model), str(path), parallel, settings, queue))
            proc.start()
            row = _row(proc, queue)
            proc.join()
            if "error" in row:
                raise (UserError if row.get("user_error") else InternalError)(
                    f"bench at --parallel {parallel} failed: {row['error']}")
            rows.append(row)
    return rows


def _row(proc, queue) -> dict:
    """The worker's row, or why there is none: a crash in llama.cpp (a segfault, an abort on CUDA
    out-of-memory, the OOM killer) ends the process without a word, and a bare get() would wait forever."""
    import queue as q

    while True:
        try:
            return queue.get(timeout=0.5)
        except q.Empty:
            if not proc.is_alive():
                try:  # it may have put its row just before exiting
                    return queue.get(timeout=1)
                except q.Empty:
                    return {"error": f"the worker process died (exit code {proc.exitcode})"}

