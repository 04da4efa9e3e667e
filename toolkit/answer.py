"""The answer form: the sentence an answer declares correct (`"…"가 옳다`) and the reason after it.

The declared sentence is the part before the first `가 옳다` / `이 옳다` (for a sentence in quotes,
the first right after a closing quote: the sentence may itself hold one), after normalizing:
  * curly quotes become straight ones, surrounding whitespace goes, and one pair of quotes
    around the sentence is dropped (so `"A"가 옳다`, `“A” 가 옳다` and `A가 옳다` all give `A`);
  * a gold sentence that offers alternatives (`"A" 혹은 "B"`, also 또는) matches either.
The reason is the text after that `옳다.`; an answer without the form is all reason. Exact match
(score), votes (vote) and infer's count of answers without the form all read answers here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "″": '"', "‘": "'", "’": "'", "`": "'"})
# 옳다 ends a word: "…이 옳다고 보기 어렵다" declares nothing.
_FORM_AFTER = {q: re.compile(rf"(?<={q})\s*[가이]\s*옳다(?![가-힣])\.?") for q in "\"'"}  # after a closing quote
_FORM = re.compile(r"\s*[가이]\s*옳다(?![가-힣])\.?")


@dataclass(frozen=True)
class SplitAnswer:
    sentence: str | None  # None: the answer does not use the form
    reason: str

    @property
    def quoted(self) -> bool:
        """The declared sentence is in quotes, as the task's answers write it (`"…"가 옳다`)."""
        s = self.sentence
        return s is not None and len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'"


def _normalize(text: str) -> str:
    return text.translate(_QUOTES).strip()


def unquote(text: str) -> str:
    """The text without one pair of quotes around it."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def split_answer(answer: str) -> SplitAnswer:
    text = _normalize(answer)
    # A quoted sentence may itself hold "가 옳다" (or other quotes): then the form is the first
    # one right after the opening quote's own kind of quote.
    m = (_FORM_AFTER[text[0]].search(text, 1) if text[:1] in _FORM_AFTER else None) or _FORM.search(text)
    if m is None:
        return SplitAnswer(None, text)
    return SplitAnswer(text[:m.start()].strip(), text[m.end():].strip())


def gold_sentences(sentence: str) -> set[str]:
    """The sentence, and where it lists quoted alternatives (`"A" 혹은 "B"`, `"A", "B" 또는 "C"`), each
    of them. Quotes of another kind inside one sentence (`"그는 '사과' 또는 '배'를 골랐다."`) are its own."""
    sentence = sentence.strip()
    targets = {unquote(sentence)}
    q = sentence[:1]
    if q in "\"'":
        parts = re.split(rf"(?<={q})\s*(?:,|혹은|또는)\s*(?={q})", sentence)
        if len(parts) > 1 and all(len(p) >= 2 and p[0] == p[-1] == q for p in parts):
            targets |= {unquote(p) for p in parts}
    return targets


def has_answer_form(answer: str) -> bool:
    """The answer opens with a quoted sentence declared correct (`"…"가 옳다`, or 이 옳다): what exact
    match reads. `정답: "…"가 옳다` or a bold `**"…"가 옳다**` does not, and scores 0."""
    return split_answer(answer).quoted


def answer_sentence(answer: str) -> str | None:
    """The sentence an answer declares correct, as exact match compares it (None: no form)."""
    sentence = split_answer(answer).sentence
    return None if sentence is None else unquote(sentence)
