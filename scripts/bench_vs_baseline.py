"""One run, one model, one question set, the seed's sampling — four ways:

  1. the seed baseline's path: transformers `generate`, one question at a time (bf16, as the seed loads it)
  2. raw llama-cpp-python, single stream (`Llama` eval + sample loop, its default threads)
  3. toolkit infer, single stream (--parallel 1)
  4. toolkit infer, batched (best of --parallel 2/4/8, shared prompt heads reused)

    .venv/bin/python scripts/bench_vs_baseline.py [--repeat 3] [--max-new-tokens 64] [--parallel 2 4 8]

The model is the embedded SmolLM2-135M-Instruct: its rebuilt HF checkpoint for (1), and the
Q4_K_M GGUF that `toolkit quantize` makes from that checkpoint for (2)-(4).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from toolkit import demo, samples
from toolkit.bench import repeated
from toolkit.infer import InferSettings, infer
from toolkit.prompts import PromptSet, build_messages
from toolkit.quantize import QuantizeSettings, quantize
from toolkit.sampler import SamplingParams


def run_transformers(checkpoint: Path, items: list[dict], params: SamplingParams) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
    terminators = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} if t is not None]
    new = 0
    torch.manual_seed(params.seed)
    start = time.perf_counter()
    for item in items:
        ids = tokenizer.apply_chat_template(build_messages(item["input"], PromptSet()), add_generation_prompt=True,
                                            enable_thinking=False, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=params.max_new_tokens, do_sample=True,
                                 temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                 repetition_penalty=params.repetition_penalty, eos_token_id=terminators,
                                 pad_token_id=tokenizer.eos_token_id)
        new += out.shape[-1] - ids.shape[-1]
    return {"wall": time.perf_counter() - start, "new": new}


def run_raw(model: Path, prompts: list[str], params: SamplingParams, n_ctx: int) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=n_ctx, n_gpu_layers=-1, verbose=False, seed=params.seed)
    new = 0
    start = time.perf_counter()
    for text in prompts:
        llm.reset()
        llm.eval(llm.tokenize(text.encode(), add_bos=False, special=True))
        for _ in range(params.max_new_tokens):
            tok = llm.sample(top_k=params.top_k, top_p=params.top_p, min_p=0.0, temp=params.temperature,
                             repeat_penalty=params.repetition_penalty)
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
            new += 1
            llm.eval([tok])
    return {"wall": time.perf_counter() - start, "new": new}


def run_toolkit(model: Path, questions: Path, params: SamplingParams, parallel: int, tmp: Path) -> dict:
    start = time.perf_counter()
    r = infer(questions, InferSettings(model=model, output=tmp / f"p{parallel}.json", resume=False,
                                       parallel=parallel, sampling=params))
    wall = time.perf_counter() - start
    return {"wall": wall, "new": r.new_tokens, "gen_wall": r.seconds, "prompt_tokens": r.prompt_tokens,
            "prompt_s": r.prompt_seconds, "gen_s": r.gen_seconds, "n_ctx": r.n_ctx}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="the 8 sample questions this many times over")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    tmp = Path(tempfile.mkdtemp())
    checkpoint = demo.checkpoint()
    model = quantize(str(checkpoint), QuantizeSettings(types=("Q4_K_M",), output_dir=tmp / "models")).files[0].path
    questions = repeated(samples.samples_path(), args.repeat, tmp)
    items = json.loads(questions.read_text(encoding="utf-8"))

    infer(questions, InferSettings(model=model, output=tmp / "prompts.json", dry_run=True, sampling=params))
    prompts = [i["output"]["prompt"] for i in json.loads((tmp / "prompts.json").read_text(encoding="utf-8"))]

    rows = {"transformers generate (seed)": run_transformers(checkpoint, items, params)}
    single = run_toolkit(model, questions, params, 1, tmp)
    rows["raw llama-cpp-python"] = run_raw(model, prompts, params, single["n_ctx"])
    rows["toolkit single-stream"] = single
    batched = {p: run_toolkit(model, questions, params, p, tmp) for p in args.parallel}
    best = max(batched, key=lambda p: batched[p]["new"] / batched[p]["wall"])
    for p, r in batched.items():
        rows[f"toolkit batched --parallel {p}" + (" (best)" if p == best else "")] = r

    base = rows["transformers generate (seed)"]
    tps = {name: r["new"] / r["wall"] for name, r in rows.items()}
    print(f"{len(items)} questions, max_new_tokens {args.max_new_tokens}, seed sampling; model {model.name}")
    print(f"{'path':40}{'wall s':>8}{'new tok':>9}{'tok/s':>8}{'x seed':>8}{'x single':>9}")
    for name, r in rows.items():
        print(f"{name:40}{r['wall']:8.1f}{r['new']:9d}{tps[name]:8.1f}{tps[name] / (base['new'] / base['wall']):8.2f}"
              f"{tps[name] / tps['toolkit single-stream']:9.2f}")
    print("\nwhere toolkit's time goes (prompt evaluation vs generation, llama_decode time split by rows):")
    for name, r in [("single", single)] + [(f"--parallel {p}", r) for p, r in batched.items()]:
        print(f"  {name:14} prompt {r['prompt_tokens']:6d} tok in {r['prompt_s']:6.1f} s, "
              f"generation {r['new']:5d} tok in {r['gen_s']:6.1f} s, other {r['wall'] - r['prompt_s'] - r['gen_s']:5.1f} s")


if __name__ == "__main__":
    main()
