"""Next-token selection with Hugging Face `generate` semantics, on llama.cpp's logits.

llama-cpp-python's own chain departs from HF in three ways that change answers: its
repetition penalty sees only the last 64 tokens, temperature comes before top-k/top-p,
and min-p 0.05 is on. Here the order and arithmetic are HF's (float32 scores):

    repetition penalty over every prompt and generated token
    → temperature → top-k → top-p → sample        (do_sample=False: argmax after the penalty)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .errors import InvalidGGUF, UserError


@dataclass(frozen=True)
class SamplingParams:
    """HF `generate` names; defaults are the seed baseline's."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.05
    max_new_tokens: int = 1024
    do_sample: bool = True
    num_beams: int = 1
    # Answers sampled per question, the majority's kept (`infer --votes`; toolkit.vote). Vote i
    # is the answer of seed + i: the first is the one a run without votes gives.
    num_return_sequences: int = 1
    seed: int = 0

    def validate(self) -> "SamplingParams":
        if self.num_beams != 1:
            raise UserError(f"num_beams={self.num_beams}: beam search is not supported; use sampling or --greedy")
        if self.num_return_sequences < 1:
            raise UserError(f"num_return_sequences must be >= 1 (got {self.num_return_sequences})")
        if self.num_return_sequences > 1 and not self.do_sample:  # as HF refuses it: N identical answers
            raise UserError("greedy decoding gives the same answer every time: votes need sampling (drop --greedy)")
        if self.do_sample and not self.temperature > 0:
            raise UserError(f"temperature must be > 0 when sampling (got {self.temperature}); use --greedy for argmax")
        if not 0 <= self.top_p <= 1:  # HF's range: 0 keeps the most likely token only
            raise UserError(f"top_p must be in [0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (got {self.top_k}); 0 turns top-k off")
        if not self.repetition_penalty > 0:
            raise UserError(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        return self


def apply_repetition_penalty(scores: np.ndarray, token_ids: np.ndarray, penalty: float) -> None:
    """HF's RepetitionPenaltyLogitsProcessor, in place: shrink the scores of seen tokens."""
    if penalty == 1.0 or token_ids.size == 0:
        return
    seen = scores[token_ids]
    scores[token_ids] = np.where(seen < 0, seen * penalty, seen / penalty)


BAND_MAX = 4096  # a band under the maximum with more tokens than this is slower than one partition


def warp(scores: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Temperature → top-k → top-p. Returns (candidate ids, their probabilities)."""
    t = np.float32(params.temperature)
    if 0 < params.top_k < scores.size:
        ids = _top_k_ids(scores, params.top_k, t)
        cand = scores[ids] / t if t != 1 else scores[ids]
    else:
        cand = scores / t if t != 1 else scores
        ids = np.arange(scores.size)
    cand = cand.astype(np.float32, copy=False)
    if params.top_p < 1.0:
        order = np.argsort(cand, kind="stable")  # ascending, as HF sorts
        probs = _softmax(cand[order])
        removed = np.cumsum(probs, dtype=np.float32) <= np.float32(1 - params.top_p)
        removed[-1] = False  # min_tokens_to_keep = 1
        keep = np.sort(order[~removed])
        ids, cand = ids[keep], cand[keep]
    return ids, _softmax(cand)


def _top_k_ids(scores: np.ndarray, k: int, t: np.float32) -> np.ndarray:
    """HF's top-k after temperature: every token whose scaled score is at least the k-th best
    scaled score (ties kept), found without scaling or sorting the whole vocabulary.

    Scaling by 1/t keeps the order, so the k-th best scaled score is the scaled k-th best raw
    score; only tokens just below it can round to a tie, so every token down to a little under
    the k-th is a candidate, and the scaled comparison decides. A trained model's logits are
    peaked: a band under the maximum holds the k best and few others (a few vector passes,
    0.05 ms for 128k tokens). Flat ones (random weights) fill the band: then one partition of
    the values finds the k-th (0.15 ms; the band alone took 2 ms, np.argpartition 1.8).
    """
    top = scores.max()
    floor = top - np.float32(8.0)
    kth = None
    inside = scores >= floor
    if np.isfinite(floor) and k <= np.count_nonzero(inside) <= BAND_MAX:
        near = np.flatnonzero(inside)
        vals = scores[near]
        kth = np.partition(vals, vals.size - k)[vals.size - k] if vals.size > k else vals.min()
        if kth - floor <= _tie_margin(kth):  # a tie with the k-th could lie under the band
            kth = None
    if kth is None:
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        floor = kth - 2 * _tie_margin(kth)
        near = np.flatnonzero(scores >= floor) if np.isfinite(floor) else np.arange(scores.size)
        vals = scores[near]
    if t == 1:
        return near[vals >= kth]
    return near[(vals / t) >= (kth / t)]


def _tie_margin(kth: np.float32) -> np.float32:
    """Far wider than float32 rounding of a division: nothing below kth by more rounds up to it."""
    return np.float32(1e-4) * max(np.float32(1), abs(kth))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float32)
    return e / e.sum(dtype=np.float32)


def item_seed(seed: int, item_id: str) -> int:
    """A per-item seed: answers do not depend on item order, resumes or batching."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{item_id}".encode()).digest()[:8], "little")


class Sampler:
    """Sampling state for one sequence: the tokens seen so far, its random stream and, for an
    answer form (constraints.Constraint), what it may write next."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], n_vocab: int, seed: int, constraint=None):
        self.params = params
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._seen = np.zeros(n_vocab, dtype=bool)
        self._seen[np.asarray(prompt_ids, dtype=np.int64)] = True
        self._seen_ids = np.flatnonzero(self._seen)
        self.constraint = constraint

    def accept(self, token: int) -> None:
        if not self._seen[token]:
            self._seen[token] = True
            self._seen_ids = np.append(self._seen_ids, token)
        if self.constraint is not None:
            self.constraint.accept(token)

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.array(logits, dtype=np.float32, copy=True)
        if not np.isfinite(scores.max()):  # NaN when any score is; +inf would sample the wrong token silently
            raise InvalidGGUF("the model's scores are NaN or infinite: the GGUF's weights are damaged or this "
                               "build cannot run its types; re-create the file or check `toolkit inspect`")
        apply_repetition_penalty(scores, self._seen_ids, self.params.repetition_penalty)
        if not self.params.do_sample:
            best = int(np.argmax(scores))
            return np.array([best]), np.array([1.0], dtype=np.float32)
        return warp(scores, self.params)

    def sample(self, logits: np.ndarray) -> int:
        if self.constraint is not None and not self.constraint.done:
            logits = self.constraint.apply(logits)  # before HF's processors: they see the allowed tokens only
        ids, probs = self.candidates(logits)
        if ids.size == 1:
            token = int(ids[0])
        else:
            cdf = np.cumsum(probs, dtype=np.float64)
            token = int(ids[min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), ids.size - 1)])
        self.accept(token)
        return token
