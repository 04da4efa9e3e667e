"""Labelled questions: solved questions with the title of the rule that answers each
(`output.article`, as the organisers publish them), and the rules of those most like a question.

A labelled question never speaks for itself: one that asks the same (its text, spaces and quote
marks aside) is left out, so a file given as its own labels is measured leave-one-out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .dataset import item_key, read_json
from .errors import InvalidInput
from .question import normal


@dataclass(frozen=True)
class Labelled:
    id: str
    question_type: str
    question: str
    title: str  # as titles() writes it: no angle brackets, single spaces


def title_key(title: str) -> str:
    """A rule's title as the reference document's parser writes it: `<띄어쓰기 - 한글 맞춤법 제2항 >`
    and `띄어쓰기 - 한글 맞춤법 제2항` are the same rule."""
    return " ".join(normal(title).strip().strip("<>").split())


def section_name(title: str) -> str:
    """A title's section as the document names it: `한글 맞춤법, 표준어 규정` of
    `한글 맞춤법, 표준어 규정 - 한글 맞춤법 제11항` (a title without ` - ` is its own)."""
    return title.split(" - ")[0] if " - " in title else title


def same_question(question: str) -> str:
    """What makes two questions the same question: the text, spaces and quote marks aside."""
    return "".join(normal(question).split())


def article_of(item: dict) -> str | None:
    out = item.get("output")
    article = out.get("article") if isinstance(out, dict) else None
    return article if isinstance(article, str) and article.strip() else None


def load_labels(path: Path) -> list[Labelled]:
    """The labelled items of a competition JSON file: each with `input.question` and
    `output.article`. Refused in one line: not a list, an item without them, none labelled."""
    data = read_json(path, "labels file")
    if not isinstance(data, list) or not data:
        raise InvalidInput(f"{path}: expected a JSON list of labelled items (each with output.article)")
    out = []
    for n, item in enumerate(data, 1):
        if not isinstance(item, dict) or not isinstance(item.get("input"), dict) \
                or not isinstance(item["input"].get("question"), str):
            raise InvalidInput(f"{path}: item {n} has no input.question")
        if "output" in item and not isinstance(item["output"], dict):
            raise InvalidInput(f"{path}: item {n}: 'output' must be an object")
        article = article_of(item)
        if article is None:
            if "article" in (item.get("output") or {}):
                raise InvalidInput(f"{path}: item {n}: output.article must be a rule's title (text)")
            continue
        key = item_key(item) if "id" in item else str(n)
        out.append(Labelled(key, str(item["input"].get("question_type", "")), item["input"]["question"],
                            title_key(article)))
    if not out:
        raise InvalidInput(f"{path}: no item has an output.article (the title of the rule it is about)")
    return out


class Neighbours:
    """Cosine similarity of weighted feature vectors (tf-idf over the labelled questions); a
    question's vote for each title is the summed similarity of its nearest labelled questions."""

    K = 12  # neighbours that vote

    def __init__(self, vectors: Sequence[Counter], titles: Sequence[str], questions: Sequence[str]) -> None:
        self._n = n = len(vectors)
        df = Counter(f for v in vectors for f in v)
        self._idf = {f: math.log((n + 1) / (c + 0.5)) for f, c in df.items()}
        self._vectors = [self._weigh(v) for v in vectors]
        self._titles = list(titles)
        self._same = [same_question(q) for q in questions]

    def __len__(self) -> int:
        return self._n

    def _weigh(self, v: Counter) -> dict[str, float]:
        unseen = math.log((self._n + 1) / 0.5)  # a feature no labelled question has
        w = {f: c * self._idf.get(f, unseen) for f, c in v.items()}
        norm = math.sqrt(sum(x * x for x in w.values())) or 1.0
        return {f: x / norm for f, x in w.items()}

    def votes(self, vector: Counter, question: str) -> dict[str, float]:
        """Each title's summed similarity among the K nearest labelled questions (never the same
        question)."""
        q = self._weigh(vector)
        own = same_question(question)
        sims = []
        for n, v in enumerate(self._vectors):
            if self._same[n] == own:
                continue
            s = sum(x * v[f] for f, x in q.items() if f in v)
            if s > 0:
                sims.append((s, n))
        sims.sort(reverse=True)
        out: Counter = Counter()
        for s, n in sims[:self.K]:
            out[self._titles[n]] += s
        return dict(out)
