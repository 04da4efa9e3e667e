"""toolkit infer vs raw llama-cpp-python on the same GGUF and the same rendered prompts.

    .venv/bin/python scripts/bench_infer_vs_raw.py [--model FILE.gguf] [--input Q.json] [--max-new-tokens N]

Both sample with the seed's settings (raw: llama-cpp-python's own chain with min-p off) and
stop at end-of-generation or max-new-tokens. Prompt evaluation and generation are timed
apart, since the two runs stop after different numbers of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import llama_cpp
from llama_cpp import Llama

from toolkit import embedded, samples
from toolkit.infer import InferSettings, infer
from toolkit.sampler import SamplingParams


def raw_run(model: Path, prompts: list[str], params: SamplingParams, n_ctx: int, **llama_kwargs) -> dict:
    llm = Llama(model_path=str(model), n_ctx=n_ctx, n_gpu_layers=-1, verbose=False, seed=0, **llama_kwargs)
    pp = tg = 0.0
    n_prompt = n_new = 0
    start = time.perf_counter()
    for text in prompts:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        pp += time.perf_counter() - t
        n_prompt += len(ids)
        t = time.perf_counter()
        for _ in range(params.max_new_tokens):
            tok = llm.sample(top_k=params.top_k, top_p=params.top_p, min_p=0.0, temp=params.temperature,
                             repeat_penalty=params.repetition_penalty)
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
            n_new += 1
            llm.eval([tok])
        tg += time.perf_counter() - t
    return dict(wall=time.perf_counter() - start, pp=pp, tg=tg, n_prompt=n_prompt, n_new=n_new)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--input", type=Path, default=samples.samples_path())
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    model = args.model or embedded.smollm2_gguf()
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    tmp = Path(tempfile.mkdtemp())

    # The exact prompts toolkit renders (dry run), reused for the raw run.
    infer(args.input, InferSettings(model=model, output=tmp / "prompts.json", dry_run=True, sampling=params))
    prompts = [i["output"]["prompt"] for i in json.loads((tmp / "prompts.json").read_text(encoding="utf-8"))]

    t0 = time.perf_counter()
    r = infer(args.input, InferSettings(model=model, output=tmp / "answers.json", sampling=params))
    ours = dict(wall=time.perf_counter() - t0, pp=r.prompt_seconds, tg=r.gen_seconds,
                n_prompt=r.prompt_tokens, n_new=r.new_tokens)
    raw = raw_run(model, prompts, params, r.n_ctx)
    # Llama's defaults decode on half the cores; the same thread count as toolkit, for fairness.
    raw_all = raw_run(model, prompts, params, r.n_ctx, n_threads=os.cpu_count())

    print(f"model {model.name}, {len(prompts)} items, max_new_tokens {args.max_new_tokens}")
    print(f"{'':22}{'wall s':>8}{'prompt tok':>11}{'prompt tok/s':>13}{'new tok':>9}{'gen tok/s':>10}")
    rows = (("toolkit infer", ours), ("raw llama-cpp-python", raw), ("raw, n_threads=all", raw_all))
    for name, m in rows:
        print(f"{name:22}{m['wall']:8.1f}{m['n_prompt']:11d}{m['n_prompt'] / m['pp']:13.1f}"
              f"{m['n_new']:9d}{m['n_new'] / m['tg']:10.1f}")
    for name, m in rows[1:]:
        print(f"toolkit / {name}: prompt {ours['n_prompt'] / ours['pp'] / (m['n_prompt'] / m['pp']):.2f}x, "
              f"generation {ours['n_new'] / ours['tg'] / (m['n_new'] / m['tg']):.2f}x")


if __name__ == "__main__":
    main()
