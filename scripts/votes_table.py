"""What `infer --votes N` buys on questions with gold answers: score and time per N.

    .venv/bin/python scripts/votes_table.py MODEL.gguf [--input dev.json] [--gold dev.json]
        [--votes 1 3 5] [--max-new-tokens 256] [--parallel 4] [--seed 0] [--out DIR]

Answers --input once per N with the same seed (N=1 is the plain run; with --parallel 1 each N's
votes are the smaller N's plus more), scores each against --gold (default: the input itself, for a dev file; the
bundled samples' gold without --input) as `toolkit score` does, and prints a markdown table:
exact match, ROUGE-1, the share of 선택형/교정형 answers with the "…"가 옳다 form, new tokens
and wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from toolkit import samples
from toolkit.infer import InferSettings, infer
from toolkit.sampler import SamplingParams
from toolkit.score import score


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--input", type=Path)
    ap.add_argument("--gold", type=Path)
    ap.add_argument("--votes", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "votes-table")
    args = ap.parse_args()
    inp = args.input or samples.samples_path()
    gold = args.gold or (args.input if args.input else samples.samples_path().with_name("samples_gold.json"))
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for n in args.votes:
        sampling = replace(SamplingParams(), max_new_tokens=args.max_new_tokens, seed=args.seed,
                           num_return_sequences=n)
        out = args.out / f"{inp.stem}.{args.model.stem}.votes{n}.json"
        started = time.perf_counter()
        r = infer(inp, InferSettings(model=args.model, output=out, sampling=sampling, parallel=args.parallel,
                                     resume=False))
        wall = time.perf_counter() - started
        report = score(out, gold)
        rows.append((n, report, r, wall))

    print(f"\n{args.model.name} on {inp.name} ({rows[0][2].items} questions), gold {gold.name}, seed {args.seed}, "
          f"max_new_tokens {args.max_new_tokens}, --parallel {args.parallel}\n")
    print("| votes | EM | ROUGE-1 | answers with the form | new tokens | wall s |")
    print("|---|---|---|---|---|---|")
    for n, report, r, wall in rows:
        form = f"{r.form_checked - r.missing_form}/{r.form_checked}" if r.form_checked else "—"
        print(f"| {n} | {report.exact_match:.3f} | {report.rouge1:.3f} | {form} | {r.new_tokens} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
