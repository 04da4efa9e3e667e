"""Korean text as the toolkit measures it: kiwipiepy's morphemes (its model ships with it:
offline), ROUGE-1 over them as the official evaluator prepares a text, and Okapi BM25 over them
and the words as written (what retrieval ranks passages and examples by)."""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

_NOT_ROUGE_CHAR = re.compile(r"[^A-Za-z0-9가-힣]")
ROUGE_WORD_LIMIT = 1000

_HYPHENATED = re.compile(r"[가-힣]+(?:(?:\s-|-\s?)[가-힣]+)+")  # 윗-눈썹, 윗 -목, 윗- 자리 (not a title's " - ")
_SYMBOL_TAGS = ("SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB", "W_")

_FINALS = "ᆨᆩᆪᆫᆬᆭᆮᆯᆰᆱᆲᆳᆴᆵᆶᆷᆸᆹᆺᆻᆼᆽᆾᆿᇀᇁᇂ"
_LETTERS = "ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"
_FINAL_TO_LETTER = str.maketrans(_FINALS, _LETTERS)


@functools.cache
def kiwi():
    """kiwipiepy's analyzer (it ships its model: offline), loaded once (about a second) for
    ROUGE-1, votes and retrieval alike."""
    from kiwipiepy import Kiwi

    return Kiwi()


class Rouge1:
    """ROUGE-1 F1 over Korean morphemes."""

    def __init__(self) -> None:
        self._kiwi = kiwi()

    def tokens(self, text: str) -> list[str]:
        # As the official rouge_metric.py prepares a text: lines joined, its first 1,000 words,
        # lower case, every character but Latin letters, digits and Hangul syllables a space.
        text = " ".join(text.split()[:ROUGE_WORD_LIMIT])
        text = _NOT_ROUGE_CHAR.sub(" ", text.lower()).strip()
        return " ".join(t.form for t in self._kiwi.tokenize(text)).split() if text else []

    def f1(self, prediction: str, reference: str) -> float:
        p, r = Counter(self.tokens(prediction)), Counter(self.tokens(reference))
        overlap = sum((p & r).values())
        if not overlap:
            return 0.0
        precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
        return 2 * precision * recall / (precision + recall)


class Retriever:
    """Okapi BM25 (k1 1.2, b 0.75) over kiwipiepy morphemes and whitespace words."""

    K1, B = 1.2, 0.75
    COMMON = 0.1  # share of the passages above which a term is too common to tell them apart

    def __init__(self, documents: Sequence[str]) -> None:
        self._kiwi = kiwi()
        self._docs = [Counter(self.terms(d)) for d in documents]
        self._lengths = [sum(d.values()) for d in self._docs]
        self._avg = sum(self._lengths) / len(self._lengths) or 1.0
        df = Counter(t for d in self._docs for t in d)
        n = len(self._docs)
        # Terms in many passages (particles, 하다, 것 …) only add noise that favours the long
        # rules full of example sentences (문장 부호): they count for nothing.
        common = max(2, n * self.COMMON)
        self._idf = {t: math.log((n - f + 0.5) / (f + 0.5) + 1) if f <= common else 0.0 for t, f in df.items()}

    def terms(self, text: str) -> list[str]:
        """Morphemes (particles and endings too: many norms are about them), and each word as
        written, its punctuation stripped: spellings like 할께 or 몇 일 are what a rule quotes."""
        text = unicodedata.normalize("NFC", text)  # (a decomposed file would match nothing)
        morphemes = [t.form for t in self._kiwi.tokenize(text) if not t.tag.startswith(_SYMBOL_TAGS)]
        words = re.findall(r"\w+", text)  # {A/B}: both spellings
        joined = [re.sub(r"[\s-]", "", w) for w in _HYPHENATED.findall(text)]  # 윗-눈썹 is asked as 윗눈썹
        # Kiwi writes an ending's consonant as a final jamo (ᆯ께), the norms as a letter (-(으)ㄹ께).
        return [t.translate(_FINAL_TO_LETTER) for t in morphemes + words + joined]

    def scores(self, query: str, among: Sequence[int] | None = None) -> dict[int, float]:
        """The BM25 score of each document (of those `among`) that shares a telling term with the query."""
        terms = set(self.terms(query))
        scores = {}
        for n in range(len(self._docs)) if among is None else among:
            doc, length = self._docs[n], self._lengths[n]
            s = 0.0
            for term in terms:
                f = doc.get(term)
                if f:
                    norm = f * (self.K1 + 1) / (f + self.K1 * (1 - self.B + self.B * length / self._avg))
                    s += self._idf[term] * norm
            if s > 0:
                scores[n] = s
        return scores

    def search(self, query: str, count: int, among: Sequence[int] | None = None) -> list[int]:
        """The `count` best documents (of those `among`) that share a telling term with the query, by
        index, best first (ties: file order)."""
        return [n for n, _ in sorted(self.scores(query, among).items(), key=lambda kv: (-kv[1], kv[0]))[:count]]
