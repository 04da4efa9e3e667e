"""How well retrieval finds the rule of the task's real questions: the figures of issue #24.

    .venv/bin/python scripts/retrieval_table.py [DATA_DIR]     (default ../shared/data)

DATA_DIR holds `norms.txt` (the task's reference document, `pdftotext -layout`) and
`retrieval_tune.json` (labelled questions: output.article on each); neither is in this repo.
Prints R@1 / R@3 / R@5 / MRR for today's retriever, for the retriever of v1 (BM25 over the
question's sentence), with and without labels (leave-one-out: the file is its own labels file and
no question sees its own label), what each part of the ranking buys, the share of questions whose
examples are about their own rule, and the seconds for 498 questions (the test file's size).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import korean, recall, references, retrieve  # noqa: E402
from toolkit.labels import title_key  # noqa: E402
from toolkit.route import Ranker  # noqa: E402


def row(name: str, r: dict) -> str:
    return f"| {name} | {r['n']} | {r['r@1']:.3f} | {r['r@3']:.3f} | {r['r@5']:.3f} | {r['mrr']:.3f} |"


def table(title: str, report: dict) -> None:
    print(f"\n### {title}\n")
    print("| questions | n | R@1 | R@3 | R@5 | MRR |\n|---|---|---|---|---|---|")
    print(row("all", report))
    for k, v in report["by_type"].items():
        print(row(k, v))
    for k, v in report["by_section"].items():
        print(row(k, v))
    if report.get("misses"):
        print("\ncommonest misses (gold → first found): " + "; ".join(
            f"{m['count']}× {m['gold'].split(' - ')[-1]} → {(m['found'] or '—').split(' - ')[-1]}"
            for m in report["misses"]))


def v1(items: list[dict], refs) -> dict:
    """Retrieval as it was before routing: BM25 over the question's sentence."""
    retriever = korean.Retriever([f"{r.title} {r.text}" for r in refs])
    found = []
    for item in items:
        titles = [title_key(refs[n].title) for n in retriever.search(retrieve.query_of(item["input"]["question"]),
                                                                         len(refs))]
        gold = title_key(item["output"]["article"])
        found.append(recall.Found(str(item["id"]), item["input"]["question_type"], titles[:3], [], gold,
                                  titles.index(gold) + 1 if gold in titles else None))
    return recall.evaluate(recall.Retrieved(found, 0.0, frozenset(title_key(r.title) for r in refs), 0))


def parts_bought(norms: Path, tune: Path, items: list[dict]) -> None:
    """R@1 / R@3 with each part of the ranking left out (weight 0), with labels and without."""
    print("\n### What each part buys (R@1 / R@3 on the tuning half; each row leaves one part out)\n")
    print("| left out | without labels | with labels (leave-one-out) |\n|---|---|---|")
    full = dict(Ranker.WEIGHTS)
    for left_out in [None] + [k for k, w in full.items() if w]:
        cells = []
        for labels in (None, tune):
            Ranker.WEIGHTS = {k: (0.0 if k == left_out else w) for k, w in full.items()}
            try:
                r = recall.evaluate(recall.run(tune, retrieve.RetrievalSettings(norms, labels=labels)))
            finally:
                Ranker.WEIGHTS = full
            cells.append(f"{r['r@1']:.3f} / {r['r@3']:.3f}")
        print(f"| {left_out or 'nothing (all parts)'} | {cells[0]} | {cells[1]} |")


def main() -> int:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    norms, tune = data / "norms.txt", data / "retrieval_tune.json"
    if not norms.is_file() or not tune.is_file():
        print(f"needs {norms} and {tune} (not part of this repo)", file=sys.stderr)
        return 2
    items = json.loads(tune.read_text(encoding="utf-8"))
    refs = references.load_references(norms)
    print(f"{len(refs)} passages in {norms.name}; {len(items)} labelled questions in {tune.name}")

    table("v1: BM25 over the question's sentence", v1(items, refs))
    plain = recall.run(tune, retrieve.RetrievalSettings(norms), retrieve.ExampleSettings(tune))
    table("routed by what the question asks about, no labels", recall.evaluate(plain))
    labelled = recall.run(tune, retrieve.RetrievalSettings(norms, labels=tune), retrieve.ExampleSettings(tune))
    with_labels = recall.evaluate(labelled)
    table("routed, with labels (--references-labels: the same file, leave-one-out)", with_labels)

    # Examples: by likeness alone (v1), then preferring the rules found (with labels).
    by_likeness = retrieve.examples_for(items, retrieve.ExampleSettings(tune))
    n = len(items)
    first = sum(1 for x in items if [e.title for e in by_likeness[str(x["id"])][:1]] == [title_key(x["output"]["article"])])
    anyof = sum(1 for x in items if title_key(x["output"]["article"]) in [e.title for e in by_likeness[str(x["id"])]])
    print("\n### Examples about the question's own rule (3 shown)\n")
    print("| examples chosen | first | any of 3 |\n|---|---|---|")
    print(f"| by likeness (v1) | {first / n:.3f} | {anyof / n:.3f} |")
    ex = recall.evaluate(plain)["examples"]
    print(f"| rules found first, no labels | {ex['first']:.3f} | {ex['any']:.3f} |")
    ex = with_labels["examples"]
    print(f"| rules found first, with labels | {ex['first']:.3f} | {ex['any']:.3f} |")

    parts_bought(norms, tune, items)

    # Seconds for the test file's size: 498 questions (the tuning half's, repeated, without gold).
    many = [dict(items[i % n], id=str(i)) for i in range(498)]
    for item in many:
        item.pop("output", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q498.json"
        path.write_text(json.dumps(many, ensure_ascii=False), encoding="utf-8")
        print("\n### Seconds for 498 questions: `toolkit retrieve … --json`, the whole process\n")
        for name, extra in (("no labels", []), ("with labels", ["--references-labels", str(tune)])):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "toolkit", "retrieve", str(path), "--references", str(norms),
                            *extra, "--json"], check=True, stdout=subprocess.DEVNULL,
                           cwd=Path(__file__).resolve().parent.parent)
            print(f"- {name}: {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
