"""Time toolkit's GGUF header reader against llama.cpp's gguf-py GGUFReader (the pinned commit's).

toolkit/gguf.py keeps its own reader because auto-fit, `inspect`, validation and the manifest
read a header on every run; this prints what that saves. Figures only, nothing is asserted.

    .venv/bin/python scripts/gguf_reader_timing.py                 # SmolLM2, Llama-3's 128k vocabulary, gemma-3
    .venv/bin/python scripts/gguf_reader_timing.py --repeat 5 other.gguf ...

gguf-py is taken from the converter that `toolkit setup` provisions (not a pip-installed `gguf`,
which may be another version). Each file is opened `--repeat` times by each reader; the best
time is printed (the first open also pays for the page cache, the same for both readers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolkit import embedded, gguf, vendor  # noqa: E402


def default_files(conv: vendor.Converter) -> list[Path]:
    files = [embedded.smollm2_gguf(),  # 49k vocabulary, 272 tensors
             conv.vocabs / "ggml-vocab-llama-bpe.gguf"]  # Llama-3's 128,256 tokens + 280k merges (vocab only)
    try:
        files.append(embedded.gemma3_gguf(vendor.cache_root() / "checkpoints"))  # 262k vocabulary
    except Exception as e:  # the gemma-3 part packages are a test dependency
        print(f"(gemma-3 left out: {e})", file=sys.stderr)
    return files


def best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="GGUF files (default: SmolLM2, Llama-3 vocab, gemma-3)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    conv = vendor.require()
    sys.path.insert(0, str(conv.gguf_py))
    import gguf as gguf_py  # llama.cpp's, from the provisioned converter

    if not Path(gguf_py.__file__).resolve().is_relative_to(conv.gguf_py.resolve()):
        sys.exit(f"imported gguf from {gguf_py.__file__}, not from {conv.gguf_py}")
    print(f"gguf-py: {conv.gguf_py} (llama.cpp {conv.commit[:10]}); best of {args.repeat}")
    print(f"{'file':<42} {'MiB':>7} {'vocab':>7} {'tensors':>7} {'toolkit':>9} {'gguf-py':>9} {'ratio':>6}")
    for path in args.files or default_files(conv):
        header = gguf.read(path)
        ours = best_of(args.repeat, lambda: gguf.read(path))
        theirs = best_of(args.repeat, lambda: gguf_py.GGUFReader(path))
        print(f"{path.name:<42} {path.stat().st_size / 2**20:>7.1f} {header.n_vocab or 0:>7} {len(header.tensors):>7} "
              f"{ours:>8.3f}s {theirs:>8.2f}s {theirs / ours:>5.0f}×")


if __name__ == "__main__":
    main()
