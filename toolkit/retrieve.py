"""Stage: the norms a question needs, from the task's reference document (RAG), and the solved
questions most like it, from a train file (examples shown in the prompt).

The 2025 task ("한국어 어문 규범 기반 생성(RAG)") gives a reference document of the norms
(한글 맞춤법, 표준어 규정, 띄어쓰기, 문장 부호, 외래어 표기법 …), one passage per rule under a
title like `<띄어쓰기 - 한글 맞춤법 제42항>`. Each question gets the passages that best match it,
by BM25 over Korean morphemes (kiwipiepy, offline: korean.py) and the question's own
spellings, so that `{할 수/할수}` finds the rule whose examples write it. Off unless asked for: the
seed baseline's prompts have no references. Examples are found the same way, among the train
file's questions of the same type.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

from .dataset import answer_of, item_key, load_items
from .errors import InvalidInput
from .fsutil import sha256_file
from .korean import Retriever
from .labels import article_of, load_labels, same_question, title_key
from .question import AS_STRAIGHT
from .references import Reference, flat, load_references
from .route import Ranker

_QUOTED = re.compile(r'"([^"\n]+)"')
_SINGLE_QUOTED = re.compile(r"'([^'\n]+)'")

DEFAULT_COUNT = 3  # passages per question
DEFAULT_EXAMPLES = 3  # solved questions per question
DEFAULT_CHARS = 1000  # of each passage: the longest rules (쉼표, 외래어 표 …) run to several thousand
RETRIEVER = 2  # 1: BM25 over the question's sentence; 2: routed by what the question asks about (route.py)


@dataclass(frozen=True)
class RetrievalSettings:
    path: Path | None = None  # None: no references (the seed's prompts)
    count: int = DEFAULT_COUNT
    max_chars: int = DEFAULT_CHARS
    labels: Path | None = None  # labelled questions (output.article) whose rules retrieval may use

    def record(self) -> dict | None:
        """What decides the prompts: the files' content, not their names, and the retriever's
        version (another ranking gives other prompts)."""
        if self.path is None:
            return None
        return {"sha256": sha256_file(self.path), "count": self.count, "max_chars": self.max_chars,
                "retriever": RETRIEVER, "labels": sha256_file(self.labels) if self.labels else None}


def query_of(question: str) -> str:
    """What a question asks about: its quoted sentence (the rest, "가운데 올바른 것을 선택하고, 그 이유를
    설명하세요.", is the same in every question and would only match noise)."""
    text = unicodedata.normalize("NFC", question).translate(AS_STRAIGHT)
    for line in text.splitlines():
        if "{" in line and line.count('"') >= 2:  # the sentence with the choices, quotes inside it too
            return line[line.index('"') + 1:line.rindex('"')]
    for pattern in _QUOTED, _SINGLE_QUOTED:  # '깨끗이'와 '깨끗히' 가운데 …: the words it asks about
        if quoted := pattern.findall(text):
            return " ".join(quoted)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if len(lines) > 1 else text  # an instruction line, then the sentence unquoted


def ranker(settings: RetrievalSettings):
    """The ranking for these settings (route.Ranker): the reference document, with its labelled
    questions if any. A bad file of either is said here, before any model loads."""
    return Ranker(*read_inputs(settings))


def read_inputs(settings: RetrievalSettings) -> tuple[list[Reference], list]:
    """The reference document's passages and the labelled questions, checked: refused in one line
    where either is malformed or the labels name none of the document's rules."""
    refs = load_references(settings.path)
    labelled = load_labels(settings.labels) if settings.labels else []
    known = {title_key(r.title) for r in refs}
    unknown = [x for x in labelled if x.title not in known]
    if labelled and len(unknown) == len(labelled):
        raise InvalidInput(f"{settings.labels}: none of its rule titles is a title of {settings.path} "
                           f"(e.g. {unknown[0].title!r}): labels for another reference document?")
    if unknown:
        from . import console

        console.warn(f"{len(unknown)} of {len(labelled)} labelled questions in {settings.labels} name a rule "
                     f"{settings.path} has no title for (e.g. {unknown[0].title!r}); those labels point nowhere")
    return refs, labelled


def for_items(items: list[dict], settings: RetrievalSettings) -> dict[str, list[Reference]]:
    """Each item's passages, by id (none without a references file). A passage longer than the cut
    starts near the first word of the question it holds, if that lies past the cut."""
    if settings.path is None:
        return {}
    rank = ranker(settings)
    found = {}
    for item in items:
        question = item["input"]["question"]
        words = [w for w in re.findall(r"\w+", query_of(question)) if len(w) > 1]
        found[item_key(item)] = [rank.refs[n].around(words, settings.max_chars)
                                 for n, _ in rank.rank(question, settings.count)]
    return found


# -- examples: solved questions like the one asked, from a train file ---------------------------

@dataclass(frozen=True)
class Example:
    id: str
    question_type: str
    question: str
    answer: str
    title: str | None = None  # the rule it is about, where the file (or a labels file) says

    def render(self) -> str:
        return f"질문: {self.question}\n답변: {self.answer}"


@dataclass(frozen=True)
class ExampleSettings:
    path: Path | None = None  # None: no examples but the instruction's own (the seed's prompts)
    count: int = DEFAULT_EXAMPLES

    def record(self) -> dict | None:
        return None if self.path is None else {"sha256": sha256_file(self.path), "count": self.count}


def load_examples(path: Path) -> list[Example]:
    """The answered items of a competition file (train or dev: `output.answer` on each), with the
    title of the rule each is about where it has `output.article`."""
    examples = [Example(item_key(i), str(i["input"].get("question_type", "")), i["input"]["question"], answer,
                        title_key(a) if (a := article_of(i)) else None)
                for i in load_items(Path(path)) if (answer := (answer_of(i) or "").strip())]
    if not examples:
        raise InvalidInput(f"{path}: no item has an output.answer to show as an example (a test file?)")
    return examples


def examples_for(items: list[dict], settings: ExampleSettings, rules: dict[str, list[Reference]] | None = None,
                 labels: Path | None = None) -> dict[str, list[Example]]:
    """Each item's examples, by id: the most like it among the examples of its type (of all, where
    its type has none), never one that asks about the same sentence, so that a dev file given as its own
    examples does not show the model its answers.

    With the rules retrieved for each item (`rules`, best first) and examples that say which rule
    they are about (their own `output.article`, or a labels file's for the same question), the
    examples of those rules come first, one of each rule in turn, each the most alike of its rule;
    the most alike of any rule fill the rest."""
    if settings.path is None:
        return {}
    examples = _titled(load_examples(settings.path), labels)
    queries = [query_of(e.question) for e in examples]
    retriever = Retriever(queries)
    by_type: dict[str, list[int]] = {}
    for n, e in enumerate(examples):
        by_type.setdefault(e.question_type, []).append(n)
    asking: dict[str, set[int]] = {}  # what an example asks about → those examples
    for n, q in enumerate(queries):
        asking.setdefault(flat(q), set()).add(n)
    found = {}
    for item in items:
        key = item_key(item)
        query = query_of(item["input"]["question"])
        pool = by_type.get(str(item["input"].get("question_type", "")), range(len(examples)))
        same = asking.get(flat(query), set())  # the same sentence asked (in other words, too): its own answer
        among = [n for n in pool if n not in same]
        alike = retriever.search(query, len(among), among)
        titles = [r.title for r in (rules or {}).get(key, [])]
        chosen = _by_rule(examples, alike + [n for n in among if n not in set(alike)], titles, settings.count)
        found[key] = [examples[n] for n in chosen + [n for n in alike if n not in chosen]][:settings.count]
    return found


def _titled(examples: list[Example], labels: Path | None) -> list[Example]:
    """Examples with the rule a labels file gives the same question, where they say none."""
    if labels is None:
        return examples
    titles = {same_question(x.question): x.title for x in load_labels(labels)}
    return [e if e.title else replace(e, title=titles.get(same_question(e.question))) for e in examples]


def _by_rule(examples: list[Example], order: list[int], titles: list[str], count: int) -> list[int]:
    """Up to `count` examples of the given rules, one of each rule in turn (each in `order`)."""
    keys = [title_key(t) for t in titles]
    queues = [[n for n in order if examples[n].title == key] for key in keys]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen
