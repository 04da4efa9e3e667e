"""Fidelity of every quant type, plain and with an importance matrix, on held-out text.

    .venv/bin/python scripts/fidelity_table.py CHECKPOINT [--types Q2_K,Q3_K_M,Q4_K_M,Q5_K_M,Q6_K,Q8_0]
        [--calibration DATA.json] [--text toolkit/data/prose_ko.txt] [--n-ctx 256] [--out DIR]

Quantizes CHECKPOINT to each type twice (plain, and with `--imatrix auto` calibrated on the
bundled samples or DATA.json), then compares every file with the BF16/F16 intermediate on the
held-out text, as `toolkit compare --prompts TEXT --n-ctx N` does, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from toolkit import samples
from toolkit.fidelity import compare
from toolkit.quantize import QuantizeSettings, quantize


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--types", default="Q2_K,Q3_K_M,Q4_K_M,Q5_K_M,Q6_K,Q8_0")
    ap.add_argument("--calibration", type=Path)
    ap.add_argument("--text", type=Path, default=samples.samples_path().parent / "prose_ko.txt")
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fidelity-table")
    args = ap.parse_args()
    types = tuple(t.strip().upper() for t in args.types.split(",") if t.strip())

    plain = quantize(args.checkpoint, QuantizeSettings(types=types, output_dir=args.out, keep_intermediate=True,
                                                      check=False))
    calibrated = quantize(args.checkpoint, QuantizeSettings(types=types, output_dir=args.out, imatrix="auto",
                                                           calibration=args.calibration, check=False))
    reference = next(p for p in plain.directory.glob("*.gguf")
                     if p.stem.endswith(("-BF16", "-F16", "-F32")))
    files = [f.path for f in plain.files] + [f.path for f in calibrated.files]
    rows = {r.file: r for r in compare(reference, files, args.text, n_ctx=args.n_ctx)}
    ref = rows[reference.name]
    m = calibrated.imatrix or {}
    print(f"\n{plain.source.name}: held-out {args.text.name}, n_ctx {args.n_ctx}, {ref.positions} positions; "
          f"reference {reference.name} PPL {ref.ppl:.3f}; imatrix on {m.get('calibration')} "
          f"({m.get('calibration_items')} items, {m.get('tokens')} tokens)\n")
    print("| type | BPW | top-1 plain | top-1 imatrix | KLD plain | KLD imatrix | KLD p99 plain | KLD p99 imatrix "
          "| PPL plain | PPL imatrix |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p, c in zip(plain.files, calibrated.files):
        a, b = rows[p.path.name], rows[c.path.name]
        print(f"| {p.type} | {p.bits_per_weight:.2f} | {a.top1_agreement:.1%} | {b.top1_agreement:.1%} | "
              f"{a.kld_mean:.4f} | {b.kld_mean:.4f} | {a.kld_p99:.3f} | {b.kld_p99:.3f} | {a.ppl:.3f} | {b.ppl:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
