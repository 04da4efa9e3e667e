"""Ranking the reference document's rules for a question: routed by what the question asks about.

A question is about a difference (question.read): a space, a mark, a loanword's spelling or a
Korean word's. That difference picks the document's section (띄어쓰기 / 문장 부호 / 외래어 표기법
/ 한글 맞춤법·표준어 규정) and, for a mark, its own passage; inside the section the passages are
ranked by BM25 over the words that differ. With labelled questions (labels.Neighbours), the rules
of the most similar ones are added to that.

Without a section to route to (a document of the user's own without the task's sections), this
is plain BM25 over the question's words, as before routing existed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .korean import Retriever, kiwi
from .labels import Labelled, Neighbours, section_name, title_key
from .question import MARKS, PUNCT, SPACE, WORD, Asked, read
from .references import Reference

# Sections by what their name says, whatever the document calls them in full.
SPACING, MARKS_SECTION, LOANWORDS, SPELLING = "띄어쓰기", "문장 부호", "외래어", "맞춤법"
_SECTION_WORDS = {SPACING: ("띄어쓰기",), MARKS_SECTION: ("문장 부호", "문장부호"), LOANWORDS: ("외래어",),
                  SPELLING: ("맞춤법", "표준어")}
# The general rule of a section: the one a question of that section falls under when no more
# particular rule speaks of it. 한글 맞춤법 제2항 ("문장의 각 단어는 띄어 씀을 원칙으로 한다") for
# spacing, and the table of the international phonetic alphabet (외래어 표기법 제2장 표1), which
# every English-borrowed word is written by.
GENERAL = {SPACING: "한글 맞춤법 제2항", LOANWORDS: "제2장 표1"}
# The particular spacing rules, by the part of speech that a space's presence or absence is about
# (what the rule's first sentence names).
_SPACING_TAGS = (("J", "조사"), ("NNB", "의존 명사"), ("VX", "보조 용언"))

_LATIN = re.compile(r"[A-Za-z]{4,}")  # a word in its own spelling (not a unit: mSv, km)


def section_of(title: str) -> str | None:
    """The section a title belongs to (SPACING, MARKS_SECTION, LOANWORDS, SPELLING), or None:
    read from the part before ` - ` (`<띄어쓰기 - 한글 맞춤법 제42항>` is spacing, not spelling)."""
    head = section_name(title)
    for section, words in _SECTION_WORDS.items():
        if any(w in head for w in words):
            return section
    return None


def _jamo(text: str) -> list[str]:
    """Each Hangul syllable as its onset, vowel and coda (`률` → ㄹ, ㅠ, ㄹ), by position."""
    out = []
    for i, v, f in _syllables(text):
        out += [f"i{i}", f"v{v}", f"f{f}"]
    return out


def _syllables(word: str) -> list[tuple[int, int, int]]:
    """(initial, vowel, final) of each Hangul syllable (Unicode composes them as 588·i + 28·v + f)."""
    out = []
    for ch in word:
        if "가" <= ch <= "힣":
            code = ord(ch) - 0xAC00
            out.append((code // 588, code % 588 // 28, code % 28))
    return out


def _shape(word: str) -> list[tuple]:
    """A word's syllables and their onset-vowel and vowel-coda pairs: how a word sounds, at the
    grain a loanword's spelling (캐/케, 쉬/시, 렉/랙) differs from a Korean word's."""
    out: list[tuple] = []
    for i, v, f in _syllables(word):
        out += [("s", i, v, f), ("iv", i, v), ("vf", v, f)]
    return out


class LoanwordShape:
    """How much a word looks like a loanword: a naive Bayes ratio of its syllable shapes among the
    loanwords the document itself spells (its examples `gap[gæp] 갭, cat[kæt] 캣`, `サッポロ 삿포로`)
    against all other Hangul words of the document. Trained on the document: no word list ships."""

    THRESHOLD = 0.5  # mean log-ratio per shape above which a word reads as a loanword

    def __init__(self, refs: Sequence[Reference]) -> None:
        loan, native = set(), set()
        for r in refs:
            if section_of(r.title) == LOANWORDS:
                loan.update(re.findall(r"[A-Za-zÀ-ÿ\-]+\s*(?:\[[^\]]*\])?\s*([가-힣]{2,})", r.text))
                loan.update(re.findall(r"[\u3040-\u30ff]+\s+([가-힣]{2,})", r.text))
            else:
                native.update(re.findall(r"[가-힣]+", r.text))
        self.usable = len(loan) >= 20  # too few examples to tell anything
        self._loan = Counter(s for w in loan for s in _shape(w))
        self._native = Counter(s for w in native for s in _shape(w))
        self._nl, self._nn = sum(self._loan.values()) + 1, sum(self._native.values()) + 1

    def score(self, word: str) -> float:
        shapes = _shape(word)
        if not shapes:
            return 0.0
        return sum(math.log((self._loan[s] + 0.5) / self._nl) - math.log((self._native[s] + 0.5) / self._nn)
                   for s in shapes) / len(shapes)

    def is_loanword(self, words: Sequence[str]) -> bool:
        """The words (a question's alternatives) read as loanwords, taken together: a misspelt
        Korean word may look foreign (래일), but its right spelling (내일) does not."""
        return self.usable and bool(words) and sum(self.score(w) for w in words) / len(words) > self.THRESHOLD


@dataclass(frozen=True)
class Reading:
    """A question as the ranking sees it: what it asks (question.Asked), the section it routes to
    (None: unrouted), and the terms to match."""

    asked: Asked
    sections: dict[str, float]  # the sections routed to, with how sure (none: unrouted)
    query: str  # words for BM25
    hints: tuple[str, ...] = ()  # phrases of a particular rule (의존 명사, 조사 …), spacing only
    pair: tuple[str, ...] = ()  # two versions to compare: the first two candidates, or as written and corrected

    @property
    def section(self) -> str | None:
        return max(self.sections, key=self.sections.get) if self.sections else None


class Ranker:
    """Passages of a reference document for each question, best first, with scores."""

    # Tuned on the organisers' labelled questions (the tuning half; scripts/retrieval_table.py
    # shows what each part buys). The optimum is flat: round values within it.
    WEIGHTS = {"route": 1.0, "general": 0.5, "mark": 2.0, "hint": 0.8, "bm25": 1.5, "labels": 1.0}

    def __init__(self, refs: Sequence[Reference], labelled: Sequence[Labelled] = ()) -> None:
        self.refs = list(refs)
        self._kiwi = kiwi()
        self.retriever = Retriever([f"{r.title} {r.text}" for r in self.refs])
        self.sections = [section_of(r.title) for r in self.refs]
        self.routed = {s for s in self.sections if s}
        self.loanwords = LoanwordShape(self.refs)
        self.labels = None
        if labelled:
            readings = [self.reading(x.question) for x in labelled]
            self.labels = Neighbours([self.features(r) for r in readings], [x.title for x in labelled],
                                     [x.question for x in labelled])
        self._by_title: dict[str, list[int]] = {}
        for n, r in enumerate(self.refs):
            self._by_title.setdefault(title_key(r.title), []).append(n)
        self._mark_passages = {name: [n for n, r in enumerate(self.refs)
                                      if self.sections[n] == MARKS_SECTION and name in r.title]
                               for name in MARKS}
        self._general = {n for n, r in enumerate(self.refs)
                         if (g := GENERAL.get(self.sections[n])) and r.title.endswith(g)}
        self._hinted = {phrase: [n for n, r in enumerate(self.refs) if self.sections[n] == SPACING
                                 and phrase in r.text.split(".")[0]]
                        for _, phrase in _SPACING_TAGS}

    # -- reading ---------------------------------------------------------------------------

    def reading(self, question: str) -> Reading:
        asked = read(question)
        sections, hints, pair = {}, (), tuple(asked.candidates[:2])
        query = " ".join(asked.words) or asked.sentence
        if asked.about_marks or asked.differs == PUNCT:
            sections = {MARKS_SECTION: 1.0}
        elif asked.differs == SPACE:
            sections, hints = {SPACING: 1.0}, self._spacing_hints(asked.candidates)
        elif asked.differs == WORD:
            nouns = [self._noun(w) for w in asked.words]
            latin = any(re.search("[A-Za-z]", w) for w in asked.words) or _LATIN.search(question)
            loan = bool(latin) or (all(nouns) and self.loanwords.is_loanword(nouns))
            sections = {LOANWORDS if loan else SPELLING: 1.0}
        elif not asked.quoted:  # nothing says what it asks about: BM25 over its words, everywhere
            sections = {}
        else:  # a sentence to correct: a word misspelt, or a space
            sections, query, pair = self._to_correct(asked)
            if pair and sections.get(SPACING) == self.SURE:
                hints = self._spacing_hints(pair)
        sections = {s: w for s, w in sections.items() if s in self.routed}
        return Reading(asked, sections, query or asked.sentence, hints, pair)

    def _noun(self, word: str) -> str:
        """The noun a word is, its particles and a copula's endings dropped (`캐찹을` → `캐찹`);
        "" where it is a verb or an adjective: a loanword is a noun."""
        tokens = self._kiwi.tokenize(word)
        while tokens and tokens[-1].tag.startswith(("J", "E", "VCP")):
            tokens.pop()
        if not tokens or any(t.tag.startswith(("VV", "VA", "VX", "XSV", "XSA", "E", "MAG")) for t in tokens):
            return ""
        return word[:tokens[-1].end]

    def _spacing_hints(self, candidates: Sequence[str]) -> tuple[str, ...]:
        """The parts of speech right after the spaces that one candidate has and another lacks."""
        tags = []
        for text in candidates:
            others = [c for c in candidates if c != text]
            after = {i + 1 for i, ch in enumerate(text) if ch == " "
                     and any(text[:i].replace(" ", "") + text[i + 1:].replace(" ", "") == o.replace(" ", "")
                             and len(o) < len(text) for o in others)}
            tags += [t.tag for t in self._kiwi.tokenize(text) if t.start in after]
        return tuple(phrase for prefix, phrase in _SPACING_TAGS if any(tag.startswith(prefix) for tag in tags))

    SURE, UNSURE = 1.0, 0.5  # a section's weight when the evidence says it, and when it only may be

    def _to_correct(self, asked: Asked) -> tuple[dict[str, float], str, tuple[str, ...]]:
        """A sentence to correct: a misspelling kiwipiepy's typo model corrects says spelling; a
        space it would put elsewhere may be the error, or a misspelt word it cannot read, so both.
        Returns the sections, the words to match and the sentence with the correction guessed."""
        sentence = asked.sentence
        typos = [t for t in self._kiwi.tokenize(sentence, typos="basic_with_continual") if t.typo_cost > 0]
        if typos:
            words = [sentence[t.start:t.end] for t in typos] + [t.form for t in typos]
            fixed = sentence
            for t in reversed(typos):
                fixed = fixed[:t.start] + t.form + fixed[t.end:]
            return {SPELLING: self.SURE}, " ".join(words), (sentence, fixed)
        spaced = self._kiwi.space(sentence)
        if spaced != sentence:
            changed = [w for w in spaced.split() if w not in sentence.split()]
            changed += [w for w in sentence.split() if w not in spaced.split()]
            return {SPACING: self.SURE, SPELLING: self.UNSURE}, " ".join(changed), (sentence, spaced)
        return {SPELLING: self.UNSURE, SPACING: self.UNSURE}, sentence, ()

    # -- ranking ---------------------------------------------------------------------------

    def parts(self, question: str) -> dict[str, dict[int, float]]:
        """A question's evidence for each passage, by kind, before weighing (see WEIGHTS): the
        section routed to (`route`, with the section's general rule again in `general`), the mark's
        own passage (`mark`), the spacing rule of the part of speech at the space (`hint`), BM25
        scaled to the best passage's (`bm25`), and with labels the vote of the most similar labelled
        questions scaled to the best title's (`labels`)."""
        r = self.reading(question)
        parts: dict[str, dict[int, float]] = {k: {} for k in self.WEIGHTS}
        among = [n for n, s in enumerate(self.sections) if s in r.sections] if r.sections else None
        matched = self.retriever.scores(r.query, among)
        best = max(matched.values(), default=0.0)
        parts["bm25"] = {n: s / best * r.sections.get(self.sections[n], 1.0) for n, s in matched.items()}
        for n, s in enumerate(self.sections):
            if (w := r.sections.get(s)):
                parts["route"][n] = w
                if n in self._general:
                    parts["general"][n] = w
        for rank, name in enumerate(r.asked.marks):
            for n in self._mark_passages.get(name, ()):
                parts["mark"][n] = max(parts["mark"].get(n, 0.0), 1 / (1 + rank))
        for phrase in r.hints:
            for n in self._hinted.get(phrase, ()):
                parts["hint"][n] = 1.0
        if self.labels is not None:
            votes = self.labels.votes(self.features(r), question)
            best = max(votes.values(), default=0.0)
            for title, v in votes.items():
                for n in self._by_title.get(title, ()):
                    parts["labels"][n] = v / best
        return parts

    def scores(self, question: str) -> dict[int, float]:
        """Every passage's score for a question (those with none left out)."""
        total: Counter = Counter()
        for kind, found in self.parts(question).items():
            for n, s in found.items():
                total[n] += self.WEIGHTS[kind] * s
        return dict(total)

    def rank(self, question: str, count: int) -> list[tuple[int, float]]:
        scores = self.scores(question)
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:count]

    def features(self, r: Reading) -> Counter:
        """What labelled questions are compared by: the section routed to, the marks, the spacing
        hints, the differing words' morphemes and the letters they differ in, and (lightly) the
        sentence's morphemes."""
        f: Counter = Counter()
        f[f"section:{r.section}"] += 2
        f[f"differs:{r.asked.differs}"] += 1
        for rank, name in enumerate(r.asked.marks):
            f[f"mark:{name}"] += 2 / (1 + rank)
        for phrase in r.hints:
            f[f"hint:{phrase}"] += 2
        for t in self._kiwi.tokenize(r.query):
            f[f"m:{t.form}/{t.tag[:2]}"] += 1
            f[f"tag:{t.tag}"] += 0.3
        for a, b in zip(r.pair[:1], r.pair[1:2]):
            for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
                if tag != "equal":
                    x, y = sorted((a[i1:i2].strip(), b[j1:j2].strip()))
                    f[f"d:{x}|{y}"] += 2
                    for p, q in zip(_jamo(x), _jamo(y)):
                        if p != q:
                            f[f"j:{p}|{q}"] += 1
        for t in self._kiwi.tokenize(r.asked.sentence):
            f[f"s:{t.form}"] += 0.3
        return f
