"""Stage: raw generated text → the answer that goes into the submission."""

from __future__ import annotations

import re
from collections.abc import Iterable

# The seed's answer prefixes, in the order it tries them (only the first match is removed).
SEED_PREFIXES = ("[답변]\n", "[답변] ", "[답변]", "답변: ", "답변:")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
# The usual spellings of chat special tokens, for models that print them as plain text.
_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?s>|<(?:start|end)_of_turn>|<eos>|<bos>|<pad>")


def strip_thinking(text: str) -> str:
    """Remove <think>…</think> blocks; an unclosed one (cut off) takes the rest with it."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:  # the opening tag was in the prompt; or a stray one after the answer
        before, after = text.split("</think>", 1)
        text = after if after.strip() else before
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text


def clean_answer(text: str, special_tokens: Iterable[str] = ()) -> str:
    """Drop thinking, special tokens and the seed's prefixes; keep the rest verbatim."""
    text = strip_thinking(text)
    for token in special_tokens:
        if token:
            text = text.replace(token, "")
    text = _SPECIAL.sub("", text).strip()
    for prefix in SEED_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return text.strip()
