"""The `retrieve` verb: the rules found for each question, as `infer --references` puts them in
its prompts, and with gold titles (`output.article`) how often the right one is among them.

No model is loaded: it runs in seconds, so the retrieval can be measured and tuned on its own.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import retrieve
from .dataset import item_key, load_items
from .errors import UserError
from .labels import article_of, section_name, title_key

AT = (1, 3, 5)  # the recalls reported


@dataclass(frozen=True)
class Found:
    id: str
    question_type: str
    titles: list[str]  # best first, as many as asked for
    scores: list[float]
    gold: str | None = None  # the title the question is labelled with, if it is
    gold_rank: int | None = None  # 1 for first; None: not found at all
    examples: list[str | None] = field(default_factory=list)  # the rule each example shown is about


@dataclass(frozen=True)
class Retrieved:
    found: list[Found]
    seconds: float  # for all the questions, the reference document and labels read included
    titles: frozenset[str]  # the reference document's
    labelled: int


def run(questions: Path, references: retrieve.RetrievalSettings,
        examples: retrieve.ExampleSettings = retrieve.ExampleSettings()) -> Retrieved:
    """Each question's rules (and examples, if asked for), with the gold title's rank where the
    file has one."""
    items = load_items(questions)
    start = time.perf_counter()
    ranker = retrieve.ranker(references)
    found_refs = {}
    out = []
    for item in items:
        ranked = ranker.rank(item["input"]["question"], len(ranker.refs))
        titles = [title_key(ranker.refs[n].title) for n, _ in ranked]
        gold = title_key(a) if (a := article_of(item)) else None
        rank = titles.index(gold) + 1 if gold in titles else None
        top = ranked[:references.count]
        found_refs[item_key(item)] = [ranker.refs[n] for n, _ in top]
        out.append(Found(item_key(item), str(item["input"].get("question_type", "")), titles[:references.count],
                         [round(s, 4) for _, s in top], gold, rank))
    if examples.path is not None:
        shown = retrieve.examples_for(items, examples, found_refs, references.labels)
        out = [replace(f, examples=[e.title for e in shown.get(f.id, [])]) for f in out]
    labelled = len(ranker.labels) if ranker.labels is not None else 0
    return Retrieved(out, time.perf_counter() - start, frozenset(title_key(r.title) for r in ranker.refs), labelled)


def _recalls(found: list[Found]) -> dict:
    n = len(found)
    row = {"n": n}
    for k in AT:
        row[f"r@{k}"] = round(sum(1 for f in found if f.gold_rank and f.gold_rank <= k) / n, 3) if n else 0.0
    row["mrr"] = round(sum(1 / f.gold_rank for f in found if f.gold_rank) / n, 3) if n else 0.0
    return row


def evaluate(result: Retrieved, misses: int = 10) -> dict:
    """R@1, R@3, R@5 and MRR over the labelled questions, overall, per question type and per
    section of the gold rule; the commonest misses (gold → what came first) and, with examples,
    the share of questions shown an example about their own rule (first, and any)."""
    labelled = [f for f in result.found if f.gold is not None]
    if not labelled:
        raise UserError("--eval needs questions with output.article (the title of the rule each is about)")
    report = _recalls(labelled)
    by_type, by_section = defaultdict(list), defaultdict(list)
    for f in labelled:
        by_type[f.question_type].append(f)
        by_section[section_name(f.gold)].append(f)
    report["by_type"] = {k: _recalls(v) for k, v in sorted(by_type.items())}
    report["by_section"] = {k: _recalls(v) for k, v in sorted(by_section.items())}
    wrong = Counter((f.gold, f.titles[0] if f.titles else None) for f in labelled if f.gold_rank != 1)
    report["misses"] = [{"gold": g, "found": t, "count": c} for (g, t), c in wrong.most_common(misses)]
    report["unknown_gold"] = sum(1 for f in labelled if f.gold not in result.titles)
    if any(f.examples for f in result.found):
        n = len(labelled)
        report["examples"] = {
            "first": round(sum(1 for f in labelled if f.examples[:1] == [f.gold]) / n, 3),
            "any": round(sum(1 for f in labelled if f.gold in f.examples) / n, 3),
            "titled": any(t for f in result.found for t in f.examples),
        }
    report["seconds"] = round(result.seconds, 2)
    return report
