"""What a question asks about: its candidates, the difference between them, and the marks and
words that difference is made of.

A question of the task is about a *difference*, not its sentence: `"{외출 시에는/외출시에는} …"`
asks about a space, `"― 2022. 4. 11"` about a full stop, `"{플랙/플래그}"` about a loanword's
spelling. Retrieval routes by that difference (and later stages can constrain an answer to the
candidates). Nothing here needs a model; parsing never fails: a question without braces, quotes or
lines simply has no candidates.
"""

from __future__ import annotations

import difflib
import itertools
import re
import unicodedata
from dataclasses import dataclass, replace

# Every quote mark as a straight one (a question may open with “ and close with ", or use 「」).
AS_STRAIGHT = str.maketrans({"“": '"', "”": '"', "„": '"', "「": '"', "」": '"', "『": '"', "』": '"',
                             "‘": "'", "’": "'"})

# The marks of 문장 부호 (the 2015 rules), by the name the reference document titles them with.
MARKS: dict[str, str] = {
    "마침표": ".", "물음표": "?", "느낌표": "!", "쉼표": ",", "가운뎃점": "·ㆍ・", "쌍점": ":",
    "빗금": "/", "큰따옴표": "\"“”", "작은따옴표": "'‘’", "소괄호": "()", "중괄호": "{}",
    "대괄호": "[]", "겹낫표": "『』", "겹화살괄호": "《》", "홑낫표": "「」", "홑화살괄호": "〈〉<>",
    "줄표": "―—", "붙임표": "-", "물결표": "~∼～", "줄임표": "…", "숨김표": "○×", "빠짐표": "□",
}
_MARK_OF = {ch: name for name, chars in MARKS.items() for ch in chars}
_LINE = re.compile(r"^\s*[―—ㅡ-]\s*(.+?)\s*$")  # `― 2022. 4. 11`: a sentence given as a line
_CHOICE = re.compile(r"\{([^{}]*/[^{}]*)\}")  # {A/B}; braces without a slash are text
_BLANK = re.compile(r"\(\s*\)")  # `사업가인데요( ) 너무`: a mark to put there
_DATE = re.compile(r"\d\s*\.\s*\d")  # 2022. 4. 11: full stops in numbers
MAX_CANDIDATES = 8  # sentences from several {…} groups multiply

SPACE, PUNCT, WORD = "space", "punct", "word"  # what differs between candidates


@dataclass(frozen=True)
class Asked:
    """A question's reading: `candidates` (선택형: the sentences to choose from, each choice filled
    in; empty where there are none), `sentence` (the sentence asked about, choices as written),
    `differs` (SPACE, PUNCT, WORD or None: what the candidates differ in), `words` (the words
    that differ, or for a question without candidates the words it quotes), `marks` (names of
    the punctuation marks involved, most telling first), `about_marks` (the question says it
    is about punctuation: 문장 부호 in its instruction, a `( )` to fill, a line to correct) and
    `quoted` (it shows what it asks about: candidates, quotes or a line; else nothing to go by)."""

    sentence: str
    candidates: tuple[str, ...] = ()
    differs: str | None = None
    words: tuple[str, ...] = ()
    marks: tuple[str, ...] = ()
    about_marks: bool = False
    quoted: bool = True  # False: no candidates, quotes or line said what it asks about (its last line is taken)
    exact: bool = True  # the candidates are the question's own, not read around broken or nested braces
    lines: bool = False  # the candidates are `― ` lines (choices whatever the question's type says)


def normal(text: str) -> str:
    return unicodedata.normalize("NFC", text).translate(AS_STRAIGHT)


def _quoted_sentence(line: str) -> str:
    """The text between the first and last straight quote of a line, else the line."""
    if line.count('"') >= 2:
        return line[line.index('"') + 1:line.rindex('"')]
    return line


def choice_groups(sentence: str) -> list[list[str]]:
    """The `{A/B}` groups of a sentence, each as its alternatives (stripped)."""
    return [[a.strip() for a in m.group(1).split("/") if a.strip()] for m in _CHOICE.finditer(sentence)]


def fill(sentence: str) -> list[str]:
    """The sentence with each combination of its `{A/B}` alternatives filled in (at most
    MAX_CANDIDATES), a stray brace left by a broken question dropped."""
    groups = choice_groups(sentence)
    if not groups or any(len(g) < 2 for g in groups):
        return []
    parts = _CHOICE.split(sentence)  # text, group, text, group, …, text
    out = []
    for combo in itertools.islice(itertools.product(*groups), MAX_CANDIDATES):
        text = "".join(p if i % 2 == 0 else combo[i // 2] for i, p in enumerate(parts))
        out.append(" ".join(text.replace("{", "").replace("}", "").split()))
    return out


def _balanced(sentence: str) -> bool:
    """Every brace pairs with one, none inside another (`{가 {나/다}` is not)."""
    depth = 0
    for ch in sentence:
        depth += (ch == "{") - (ch == "}")
        if depth not in (0, 1):
            return False
    return depth == 0


def _lines(text: str) -> list[str]:
    return [m.group(1) for line in text.splitlines() if (m := _LINE.match(line))]


def marks_in(text: str) -> list[str]:
    """Names of the marks a text uses, each once, in order of appearance."""
    seen = []
    for ch in text.replace("...", "…"):
        name = _MARK_OF.get(ch)
        if name and name not in seen:
            seen.append(name)
    return seen


def _is_mark(ch: str) -> bool:
    return ch in _MARK_OF or unicodedata.category(ch).startswith("P")


def compare(a: str, b: str) -> tuple[str, list[str], list[str]]:
    """What differs between two candidates: SPACE (spaces only, away from any mark), PUNCT (marks,
    or spaces beside a mark: `필수 : 이름` / `필수: 이름` is about the colon) or WORD; the marks
    involved; and the words of each that the other lacks."""
    a, b = a.replace("...", "…"), b.replace("...", "…")
    marks: list[str] = []
    spaces_only = True
    letters = False
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            continue
        changed = a[i1:i2] + b[j1:j2]
        near = a[max(0, i1 - 1):i2 + 1] + b[max(0, j1 - 1):j2 + 1]
        for ch in changed:
            if ch.isspace():
                continue
            spaces_only = False
            if _is_mark(ch):
                if (name := _MARK_OF.get(ch)) and name not in marks:
                    marks.append(name)
            else:
                letters = True
        if changed.strip() == "":  # a space added or taken: beside a mark, it is that mark's rule
            for ch in near:
                if (name := _MARK_OF.get(ch)) and name not in marks:
                    marks.append(name)
    words_a, words_b = a.split(), b.split()
    only_a = [w for w in words_a if w not in words_b]
    only_b = [w for w in words_b if w not in words_a]
    if letters:
        return WORD, marks, _strip_marks(only_a + only_b)
    if marks:
        return PUNCT, marks, _strip_marks(only_a + only_b)
    return (SPACE if spaces_only else PUNCT), marks, _strip_marks(only_a + only_b)


def _strip_marks(words: list[str]) -> list[str]:
    out = []
    for w in words:
        w = "".join(ch for ch in w if not _is_mark(ch))
        if w and w not in out:
            out.append(w)
    return out


_QUOTING = re.compile(r"[.?!]\s*(?:라고|라는|라며|하고|하며|하는|를|을|이라)")  # 사과야.라고: quotes missing
_HANJA_GLOSS = re.compile(r"[가-힣][\u4e00-\u9fff]")  # 타이베이台北: a gloss without its brackets


def _marks_to_check(sentence: str) -> list[str]:
    """The marks a sentence to correct may be wrong about, the most telling first: those it gets
    wrong in a recognisable way (quotes missing before 라고, quotes inside quotes, a gloss without
    brackets, a `( )` to fill, a date's full stops, no mark at the end), then those it uses; a
    full stop that only ends the sentence comes last (nearly every sentence has one)."""
    text = sentence.strip()
    if len(text) > 2 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1].strip()  # the sentence given in quotes: they are not what it asks about
    blanks = len(_BLANK.findall(text))
    bare = _BLANK.sub(" ", text).strip()
    first: list[str] = []
    if text.count('"') >= 4:
        first.append("작은따옴표")  # a quote inside a quote
    if _QUOTING.search(bare) or blanks >= 2:
        first += ["큰따옴표", "작은따옴표"]
    if _HANJA_GLOSS.search(bare):
        first += ["소괄호", "대괄호"]
    if _DATE.search(bare):
        first.append("마침표")
    if blanks == 1:
        at_end = _BLANK.search(text).end() >= len(text.rstrip()) - 1
        first += ["마침표", "물음표", "느낌표"] if at_end else ["쉼표", "느낌표"]
    used = marks_in(bare)
    final_stop = bare.endswith(".") and "." not in bare[:-1].replace("…", "")
    if final_stop:
        used.remove("마침표")
    if bare and bare[-1] not in ".?!…" and not blanks:
        used.append("마침표")  # no mark ends it
    names = []
    for name in first + used + (["마침표"] if final_stop else []):
        if name not in names:
            names.append(name)
    return names


def read(question: str) -> Asked:
    """A question's reading (see Asked)."""
    text = normal(question)
    lines = [line for line in text.splitlines() if line.strip()]
    given = _lines(text)
    about_marks = "문장 부호" in text or bool(_BLANK.search(text))
    # Choices as lines: `다음 중 … 선택하고 …\n― A\n― B`, whatever the question's type says.
    if len(given) >= 2:
        return replace(_from_candidates(given[0], given, about_marks), lines=True)
    for line in lines:
        if "/" in line and ("{" in line or "}" in line):
            sentence = _quoted_sentence(line)
            if "/" not in sentence:  # the quotes were inside the braces' sentence: take the line
                sentence = line
            candidates = fill(sentence)
            exact = bool(candidates) and _balanced(sentence)
            if not candidates and "/" in sentence and "}" in sentence:  # `"약속컨대/약속건대} …`
                candidates = fill(re.sub(r"(^|\s)([^\s{}/]+/[^{}]*})", r"\1{\2", sentence, count=1))
            if len(candidates) >= 2:
                return replace(_from_candidates(sentence, candidates, about_marks), exact=exact)
    # A sentence to correct: a `―` line, else the quoted text, else the last line.
    if given:
        sentence = given[-1]
        about_marks = True  # the task's `―` lines are punctuation questions
    elif (quoted := re.findall(r'"([^"\n]+)"', text)):
        sentence = max(quoted, key=len) if len(lines) > 1 else quoted[0]
    elif (single := re.findall(r"'([^'\n]+)'", text)):
        sentence = " ".join(single)
    else:
        sentence = lines[-1] if lines else text
    sentence = sentence.strip()
    marks = _marks_to_check(sentence) if about_marks else []
    words = tuple(re.findall(r"'([^'\n]+)'", text)) if "'" in text and not given else ()
    quoted = bool(given or words or '"' in text)
    return Asked(sentence, (), None, words, tuple(marks), about_marks, quoted)


def _from_candidates(sentence: str, candidates: list[str], about_marks: bool) -> Asked:
    if len(set(candidates)) == 1:  # `{데이터/데이터}`: the same twice, a slip of the question's; the word is what it asks
        words = [w for group in choice_groups(sentence) for w in group] or candidates
        return Asked(sentence, tuple(candidates), WORD, tuple(dict.fromkeys(words)), (), about_marks)
    kinds, marks, words = [], [], []
    for a, b in itertools.combinations(candidates, 2):
        kind, m, w = compare(a, b)
        kinds.append(kind)
        marks += [x for x in m if x not in marks]
        words += [x for x in w if x not in words]
    differs = WORD if WORD in kinds else PUNCT if PUNCT in kinds else SPACE
    return Asked(sentence, tuple(candidates), differs, tuple(words), tuple(marks), about_marks)
