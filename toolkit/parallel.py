"""Stage (engine, batched): many sequences in one llama.cpp context, one batch per step.

What llama-server's parallel slots do, in-process: N slots share one context (one unified KV
cache; one cache per sequence in batch-invariant runs). Each step carries one token for every
slot that is generating plus as many prompt tokens of newly started slots as the batch holds
(continuous refill: when a sequence ends, the next question starts in its slot). The prompt
head shared by all items of a question type (system prompt + instruction) is evaluated once
into its own sequence and copied into each new slot's sequence with llama_memory_seq_cp, so
only the question itself is evaluated per item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .engine import Engine, Generation, Step, stop_rule, write_opening
from .sampler import Sampler

MIN_SHARED_PREFIX = 16  # tokens; shorter heads are not worth a sequence of their own
# In a batch-invariant run, at most this many generation rows go into one llama_decode:
# measured on the CPU, llama.cpp gives the single-row logits bit for bit up to 7 rows, not from 8.
INVARIANT_ROWS = 4


@dataclass
class Request:
    key: str
    prompt: list[int]
    sampler: Sampler
    max_new_tokens: int
    prefix: int = -1  # index into the shared prefixes, -1 for none
    sample: int = 0  # which of the answers sampled for this key (infer --votes)
    openings: list[list[int]] | None = None  # answer form `choose`: the likeliest is written first


@dataclass
class _Slot:
    seq: int
    req: Request
    cursor: int  # prompt tokens already in the KV cache
    tokens: list[int] = field(default_factory=list)
    pending: int | None = None  # sampled, not yet evaluated
    logit_row: int = -1  # this step's batch row with logits for this slot
    started: float = 0.0
    chosen: int = -1  # answer form `choose`: the opening written (engine.write_opening)
    margin: float | None = None
    written: int = 0


@dataclass
class Stats:
    prompt_tokens: int = 0  # evaluated (shared prefixes once)
    new_tokens: int = 0
    prompt_seconds: float = 0.0  # each step's time split by its prompt/generation rows
    gen_seconds: float = 0.0
    steps: int = 0


def shared_prefixes(groups: Iterable[list[list[int]]]) -> list[list[int]]:
    """For each group of prompts (one group per question type), their common token head.

    At least one token of every prompt is left out, so each item still has something to
    evaluate (and logits to sample from)."""
    heads = []
    for prompts in groups:
        if len(prompts) < 2:
            heads.append([])
            continue
        first = prompts[0]
        n = min(len(p) for p in prompts) - 1
        for p in prompts[1:]:
            i = 0
            while i < n and p[i] == first[i]:
                i += 1
            n = i
        heads.append(first[:n] if n >= MIN_SHARED_PREFIX else [])
    return heads


class ParallelDecoder:
    def __init__(self, engine: Engine, n_parallel: int, prefixes: list[list[int]], invariant: bool = False):
        self.engine = engine
        # Batch-invariant schedule: a step is either one slot's prompt chunk or generation
        # rows only, and prompts are cut at the same places whatever N is; with llama.cpp's
        # per-row kernels (no CPU repacking, a split cache) the tokens then do not depend on N.
        self.invariant = invariant
        self.n_parallel = n_parallel
        self.prefixes = prefixes
        self.n_batch = engine.n_batch  # the context's: llama.cpp aborts the process on a bigger batch
        self.step = Step(engine, self.n_batch)
        self.stats = Stats()

    def close(self) -> None:
        self.step.close()

    def _prefill_prefixes(self) -> None:
        """Evaluate each shared head once, in its own sequence after the slots' ones."""
        for k, head in enumerate(self.prefixes):
            self.stats.prompt_seconds += self.step.feed(head, 0, self.n_parallel + k, logits_last=False)
            self.stats.prompt_tokens += len(head)

    def _open(self, slot: _Slot, first: "np.ndarray") -> "np.ndarray":
        """Answer form `choose`: the likeliest opening written into the slot's sequence; the
        logits after it."""
        t = time.perf_counter()
        slot.chosen, slot.margin, opening, logits = write_opening(self.step, slot.seq, len(slot.req.prompt), first,
                                                                  slot.req.openings, slot.req.sampler,
                                                                  slot.req.max_new_tokens)
        slot.tokens, slot.written = list(opening), len(opening)
        self.stats.prompt_tokens += len(opening)  # written, as a prompt is: not sampled
        self.stats.prompt_seconds += time.perf_counter() - t
        return logits

    def _finish(self, slot: _Slot, stopped: str, slots: list, on_done) -> None:
        import llama_cpp

        gen = Generation(slot.tokens, self.engine.detokenize(slot.tokens), len(slot.req.prompt), stopped, 0.0,
                         time.perf_counter() - slot.started, slot.chosen, slot.margin, slot.written)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.engine.ctx), slot.seq, -1, -1)
        slots[slot.seq] = None
        on_done(slot.req, gen)

    def _next(self, slot: _Slot, logits: "np.ndarray", n_ctx_seq: int, slots: list, on_done) -> None:
        """Sample the slot's next token from its logits and apply the stop rule."""
        token = slot.req.sampler.sample(logits)
        kept = len(slot.tokens)
        stopped = stop_rule(self.engine, token, slot.tokens, slot.req.max_new_tokens,
                            len(slot.req.prompt) + len(slot.tokens) + 1, n_ctx_seq)
        self.stats.new_tokens += len(slot.tokens) - kept
        if stopped:
            self._finish(slot, stopped, slots, on_done)
        else:
            slot.pending = token

    # -- the loop ---------------------------------------------------------------------------
    def run(self, requests: Iterable[Request], on_done: Callable[[Request, Generation], None]) -> Stats:
        import llama_cpp

        mem = llama_cpp.llama_get_memory(self.engine.ctx)
        llama_cpp.llama_memory_clear(mem, True)
        self._prefill_prefixes()
        queue = iter(requests)
        slots: list[_Slot | None] = [None] * self.n_parallel
        # A sequence stops where its share of the cache ends (n_ctx / sequences when split) or at
        # the trained context, whichever comes first, instead of failing the whole batch.
        n_ctx_seq = min(self.engine.info.n_ctx_train, llama_cpp.llama_n_ctx_seq(self.engine.ctx))
        exhausted = False
        step = self.step

        while not exhausted or any(slots):
            # Refill free slots: the shared head is copied, not evaluated again.
            for seq in range(self.n_parallel):
                if slots[seq] is None and not exhausted:
                    req = next(queue, None)
                    if req is None:
                        exhausted = True
                        break
                    llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
                    cursor = 0
                    if req.prefix >= 0 and self.prefixes[req.prefix]:
                        llama_cpp.llama_memory_seq_cp(mem, self.n_parallel + req.prefix, seq, -1, -1)
                        cursor = len(self.prefixes[req.prefix])
                    slots[seq] = _Slot(seq, req, cursor, started=time.perf_counter())

            step.clear()
            n_gen_rows = 0
            prefilling = [sl for sl in slots if sl is not None and sl.cursor < len(sl.req.prompt)]
            generate = not (self.invariant and prefilling)
            # One token for every generating slot (invariant runs: a few, taken in turn). A slot
            # asks for one row of logits at most: the context holds one per sequence, no more.
            waiting = [sl for sl in slots if sl is not None and sl.pending is not None] if generate else []
            if self.invariant and len(waiting) > INVARIANT_ROWS:
                start = self.stats.steps % len(waiting)
                waiting = (waiting[start:] + waiting[:start])[:INVARIANT_ROWS]
            for slot in waiting:
                pos = len(slot.req.prompt) + len(slot.tokens) - 1
                slot.logit_row = step.add(slot.pending, pos, slot.seq, True)
                slot.pending = None
                n_gen_rows += 1
            for slot in prefilling:  # then prompt tokens, as many as fit
                room = self.n_batch - len(step)
                if room <= 0 or (self.invariant and len(step)):
                    break
                prompt = slot.req.prompt
                end = min(len(prompt), slot.cursor + room)
                for pos in range(slot.cursor, end):
                    row = step.add(prompt[pos], pos, slot.seq, pos == len(prompt) - 1)
                slot.logit_row = row if end == len(prompt) else -1
                self.stats.prompt_tokens += end - slot.cursor
                slot.cursor = end

            n_rows = len(step)
            if n_rows == 0:  # the queue ran dry and every slot is free
                continue
            dt = step.decode()
            self.stats.steps += 1
            self.stats.gen_seconds += dt * n_gen_rows / n_rows
            self.stats.prompt_seconds += dt * (n_rows - n_gen_rows) / n_rows

            opening: list[tuple[_Slot, np.ndarray]] = []
            for slot in slots:
                if slot is None or slot.logit_row < 0:
                    continue
                row, slot.logit_row = slot.logit_row, -1
                if slot.req.openings and not slot.tokens:  # its prompt just ended: choose first
                    opening.append((slot, step.logits(row).copy()))
                else:
                    self._next(slot, step.logits(row), n_ctx_seq, slots, on_done)
            # After every slot of this step has read its row: choosing decodes again.
            for slot, first in opening:
                logits = self._open(slot, first)
                if len(slot.tokens) >= slot.req.max_new_tokens:
                    self._finish(slot, "length", slots, on_done)
                else:
                    self._next(slot, logits, n_ctx_seq, slots, on_done)
        return self.stats


def kv_cells(prefixes: list[list[int]], prompts: list[list[int]], prefix_of: list[int], n_parallel: int,
             max_new_tokens: int, unified: bool = True) -> int:
    """The n_ctx the run needs at most.

    Unified cache: the shared heads once, plus the longest remaining prompt and
    max_new_tokens per slot. Split cache (one stream per sequence, n_ctx divided evenly):
    every stream must hold the longest whole sequence."""
    n_streams = min(n_parallel, len(prompts))
    if not unified:
        longest = max(max(len(p) for p in prompts) + max_new_tokens, max((len(h) for h in prefixes), default=0))
        return longest * (n_streams + len(prefixes))
    tails = [len(p) - (len(prefixes[k]) if k >= 0 else 0) for p, k in zip(prompts, prefix_of)]
    return sum(len(h) for h in prefixes) + n_streams * (max(tails) + max_new_tokens)
