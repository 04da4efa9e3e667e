"""Candidate probabilities equal transformers' own LogitsProcessors (as generate builds them)."""

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from toolkit.errors import InvalidGGUF, UserError
from toolkit.sampler import Sampler, SamplingParams, apply_repetition_penalty, warp

VOCAB = 4096


@pytest.fixture(scope="module")
def hf_model():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def hf_probs(model, params: SamplingParams, history: list[int], logits: np.ndarray) -> np.ndarray:
    gen = GenerationConfig(do_sample=params.do_sample, temperature=params.temperature, top_p=params.top_p,
                           top_k=params.top_k, repetition_penalty=params.repetition_penalty)
    processors = model._get_logits_processor(generation_config=gen, input_ids_seq_length=len(history),
                                             device="cpu", model_kwargs={})
    scores = processors(torch.tensor([history]), torch.tensor(logits[None, :], dtype=torch.float32))
    return torch.softmax(scores, dim=-1)[0].numpy()


def our_probs(params: SamplingParams, history: list[int], logits: np.ndarray) -> np.ndarray:
    sampler = Sampler(params, history, VOCAB, seed=0)
    ids, probs = sampler.candidates(logits)
    full = np.zeros(VOCAB, dtype=np.float32)
    full[ids] = probs
    return full


def fixed_logits(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, VOCAB).astype(np.float32)
    logits[rng.integers(0, VOCAB, 20)] += 8  # a few strong candidates, like a real model
    return logits


@pytest.mark.parametrize("params", [
    SamplingParams(),  # the seed's: 0.7 / 0.9 / 50 / 1.05
    SamplingParams(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0),
    SamplingParams(temperature=0.3, top_p=0.5, top_k=10, repetition_penalty=1.2),
    SamplingParams(temperature=1.3, top_p=0.95, top_k=0, repetition_penalty=1.05),
    SamplingParams(temperature=0.7, top_p=1.0, top_k=200, repetition_penalty=0.9),
    SamplingParams(temperature=0.7, top_p=0.0, top_k=50, repetition_penalty=1.05),  # HF keeps the top token
])
@pytest.mark.parametrize("seed", [1, 2])
def test_candidate_probabilities_match_transformers(hf_model, params, seed):
    logits = fixed_logits(seed)
    rng = np.random.default_rng(seed + 100)
    # History with repeats, including the strongest tokens (so the penalty matters) and negatives.
    history = list(rng.integers(0, VOCAB, 300)) + list(np.argsort(logits)[-5:]) + list(np.argsort(logits)[:5])
    history = [int(t) for t in history]
    np.testing.assert_allclose(our_probs(params, history, logits), hf_probs(hf_model, params, history, logits),
                               atol=1e-5)


def test_greedy_is_argmax_after_the_penalty(hf_model):
    logits = fixed_logits(3)
    best = int(np.argmax(logits))
    params = SamplingParams(do_sample=False, repetition_penalty=5.0)
    sampler = Sampler(params, [best], VOCAB, seed=0)
    penalized = logits.copy()
    apply_repetition_penalty(penalized, np.array([best]), 5.0)
    assert sampler.sample(logits) == int(np.argmax(penalized)) != best
    assert hf_probs(hf_model, params, [best], logits).argmax() == int(np.argmax(penalized))


def test_same_seed_same_tokens_and_other_seed_differs():
    logits = [fixed_logits(s) for s in range(40)]

    def run(seed):
        sampler = Sampler(SamplingParams(temperature=1.5, top_p=1.0, top_k=0), [1, 2, 3], VOCAB, seed)
        return [sampler.sample(l) for l in logits]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sampling_follows_the_probabilities():
    logits = fixed_logits(5)
    params = SamplingParams(temperature=0.9, top_p=0.8, top_k=20, repetition_penalty=1.0)
    ids, probs = warp(logits.copy(), params)
    sampler = Sampler(params, [], VOCAB, seed=11)
    draws = [sampler.sample(logits) for _ in range(4000)]
    freq = np.array([draws.count(int(i)) for i in ids]) / len(draws)
    assert set(draws) <= set(ids.tolist())
    np.testing.assert_allclose(freq, probs, atol=0.03)


@pytest.mark.parametrize("bad,match", [
    (dict(num_beams=4), "beam search is not supported"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_invalid_settings_are_refused(bad, match):
    with pytest.raises(UserError, match=match):
        SamplingParams(**bad).validate()
    assert SamplingParams(do_sample=False, temperature=0.0).validate()  # greedy ignores temperature


def reference_warp(scores: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """HF's processors written out over the whole vocabulary, step by step."""
    scores = scores / np.float32(params.temperature)
    ids = np.arange(scores.size)
    if 0 < params.top_k < scores.size:
        kth = np.sort(scores)[scores.size - params.top_k]
        ids = np.flatnonzero(scores >= kth)
    cand = scores[ids].astype(np.float32)
    if params.top_p < 1.0:
        order = np.argsort(cand, kind="stable")
        e = np.exp(cand[order] - cand.max(), dtype=np.float32)
        removed = np.cumsum(e / e.sum(dtype=np.float32), dtype=np.float32) <= np.float32(1 - params.top_p)
        removed[-1] = False
        keep = np.sort(order[~removed])
        ids, cand = ids[keep], cand[keep]
    e = np.exp(cand - cand.max(), dtype=np.float32)
    return ids, e / e.sum(dtype=np.float32)


@pytest.mark.parametrize("case", ["flat", "peaked", "ties", "quantized", "inf"])
def test_fast_top_k_equals_the_whole_vocabulary_computation(case):
    """The band search for top-k gives exactly the full sort's candidates (128k vocabulary)."""
    rng = np.random.default_rng(sum(map(ord, case)))
    for trial in range(20):
        v = 128_256
        if case == "flat":
            x = rng.normal(0, 0.01, v)
        elif case == "peaked":
            x = rng.normal(0, 3, v)
            x[rng.integers(0, v, 5)] += 30
        elif case == "ties":
            x = np.round(rng.normal(0, 2, v), 1)  # many exact ties at every value, the k-th included
        elif case == "quantized":
            x = rng.integers(-3, 3, v).astype(np.float32) * 1e-3  # everything within a tiny band
        else:
            x = rng.normal(0, 3, v)
            x[rng.integers(0, v, 1000)] = -np.inf  # masked tokens
        x = x.astype(np.float32)
        for params in (SamplingParams(), SamplingParams(temperature=1.3, top_k=200, top_p=1.0),
                       SamplingParams(temperature=1.0, top_k=1, top_p=0.5)):
            ids, probs = warp(x.copy(), params)
            ref_ids, ref_probs = reference_warp(x.copy(), params)
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_allclose(probs, ref_probs, rtol=1e-6, atol=1e-7)


def test_nan_scores_are_a_damaged_model_not_a_crash():
    logits = fixed_logits(5)
    logits[7] = np.nan
    with pytest.raises(InvalidGGUF, match="NaN"):
        Sampler(SamplingParams(), [1], VOCAB, 0).sample(logits)


@pytest.mark.parametrize("do_sample", [True, False])
def test_an_infinite_score_is_a_damaged_model_too(do_sample):
    """+inf would turn the softmax into NaNs and sample the vocabulary's last candidate, silently."""
    logits = fixed_logits(5)
    logits[7] = np.inf
    with pytest.raises(InvalidGGUF, match="NaN or infinite"):
        Sampler(SamplingParams(do_sample=do_sample), [1], VOCAB, 0).sample(logits)
    masked = fixed_logits(5)
    masked[7] = -np.inf  # a masked token is fine
    assert Sampler(SamplingParams(), [1], VOCAB, 0).sample(masked) != 7
