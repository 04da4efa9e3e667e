"""The reference document (the task's norms, 어문 규범): its passages, each a rule under its title,
read from a text, Markdown, JSON or JSONL file."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .dataset import read_text
from .errors import InvalidInput

# Titles as the reference document writes them: `<분야 - 규정 제N항>`, wrapped over lines where a
# PDF's text extraction broke them. The " - " tells them from a `<…>` inside a rule's examples.
_TITLE = re.compile(r"<([^<>]{1,80}?\s[-–]\s[^<>]{1,120}?)>")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)  # a Markdown file of rules


@dataclass(frozen=True)
class Reference:
    title: str  # "" where the file gives none
    text: str

    def around(self, words: Sequence[str], max_chars: int) -> Reference:
        """This passage, or where the first of `words` in it lies past `max_chars`, its text from a
        little before that word: the cut would otherwise drop what it was found for."""
        first = min((i for w in words if (i := self.text.find(w)) >= 0), default=None)
        if len(self.text) <= max_chars or first is None or first < max_chars * 3 // 4:
            return self
        start = self.text.rfind(" ", 0, max(0, first - max_chars // 4)) + 1
        return Reference(self.title, "… " + self.text[start:])

    def render(self, max_chars: int) -> str:
        text = self.text if len(self.text) <= max_chars else _cut(self.text, max_chars)
        return f"<{self.title}> {text}" if self.title else text


def _cut(text: str, max_chars: int) -> str:
    """At the last space inside max_chars (a word is not split), with an ellipsis."""
    head = text[:max_chars]
    space = head.rfind(" ")
    return (head[:space] if space > max_chars // 2 else head).rstrip() + " …"


def flat(text: str) -> str:
    return " ".join(text.split())  # a PDF's line breaks fall mid-sentence


def parse_references(text: str) -> list[Reference]:
    """Passages of a text file: under `<… - …>` titles, else under Markdown headings, else one per
    paragraph (blank lines between)."""
    for pattern in (_TITLE, _HEADING):
        marks = list(pattern.finditer(text))
        if marks:
            refs = []
            for mark, following in zip(marks, marks[1:] + [None]):
                body = text[mark.end():following.start() if following else len(text)]
                if flat(body):
                    refs.append(Reference(flat(mark.group(1)), flat(body)))
            return refs
    return [Reference("", flat(p)) for p in re.split(r"\n\s*\n", text) if flat(p)]


def _from_json(data, path: Path) -> list[Reference]:
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):  # {title: text}
        data = [{"title": k, "text": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise InvalidInput(f"{path}: expected a list of passages (texts or {{title, text}} objects)")
    refs = []
    for n, entry in enumerate(data, 1):
        if isinstance(entry, str):
            entry = {"text": entry}
        if not isinstance(entry, dict):
            raise InvalidInput(f"{path}: passage {n} is neither text nor an object")
        body = entry.get("text", entry.get("content"))
        if not isinstance(body, str):
            raise InvalidInput(f"{path}: passage {n} has no 'text'")
        title = entry.get("title") or ""
        if not isinstance(title, str):
            raise InvalidInput(f"{path}: passage {n}: 'title' must be text")
        if flat(body):
            refs.append(Reference(flat(title), flat(body)))
    return refs


def load_references(path: Path) -> list[Reference]:
    """A text or Markdown file (the reference document as text), a JSON list or object, or JSONL."""
    suffix = Path(path).suffix.lower()
    try:
        with Path(path).open("rb") as f:
            is_pdf = suffix == ".pdf" or f.read(5) == b"%PDF-"
    except OSError:
        is_pdf = suffix == ".pdf"  # (else read_text says why it cannot be read)
    if is_pdf:  # checked before decoding: a PDF is binary
        raise InvalidInput(f"{path}: a PDF; extract its text first (pdftotext -layout {Path(path).name} norms.txt)")
    text = unicodedata.normalize("NFC", read_text(path, "references file"))
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        refs = _from_json(data, path)
    elif suffix == ".jsonl":
        data = []
        for n, line in enumerate(text.split("\n"), 1):  # (not splitlines: U+2028 may sit inside a string)
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InvalidInput(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        refs = _from_json(data, path)
    else:
        refs = parse_references(text)
    if not refs:
        raise InvalidInput(f"{path}: no passages in it")
    return refs
