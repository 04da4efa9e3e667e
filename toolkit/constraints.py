"""Stage (engine + sampler): answers that begin in the form exact match reads, `"…"가 옳다. `.

A constraint masks the logits before HF's processors (repetition penalty, temperature, top-k,
top-p), so the allowed tokens keep their relative scores and the seed's sampling decides among
them. It works on the bytes of each token, not on its text: a token may span the closing quote
and what follows (`."`, `"가`), and a tokenizer may split a Korean syllable into bytes.

    선택형  "<one of the candidates>"가 옳다.   then the reason, free
    교정형  "<any text without a quote>"가 옳다.   then the reason, free
"""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .prompts import CORRECTION, SELECTION
from .question import read

CLOSE = '"가 옳다. '  # after the sentence: 97 % of the organisers' gold answers write 가 here
OPEN = '"'


@dataclass(frozen=True)
class Literal:
    options: tuple[bytes, ...]  # one of these, byte for byte


@dataclass(frozen=True)
class Sentence:
    """At least one byte and at most `limit`, none of them a straight quote or a line break;
    ended by the next literal's first byte. The limit makes the form end: a small model may
    otherwise write on to max_new_tokens and never close its quote."""

    limit: int = 400


@dataclass(frozen=True)
class Form:
    """What an answer must begin with, as segments; after the last, the rest is free."""

    segments: tuple[Literal | Sentence, ...]

    @classmethod
    def choice(cls, candidates: Sequence[str]) -> Form:
        """`"<candidate>"가 옳다. ` for one of the candidates (선택형)."""
        return cls((Literal(tuple(dict.fromkeys((OPEN + c + CLOSE).encode() for c in candidates))),))

    @classmethod
    def correction(cls, asked: str = "") -> Form:
        """`"<a sentence>"가 옳다. ` for any sentence without a straight quote (교정형), at most
        twice as long as the sentence `asked` about (in bytes) and a little more."""
        limit = 2 * len(asked.encode()) + 32
        return cls((Literal((OPEN.encode(),)), Sentence(limit), Literal((CLOSE.encode(),))))


@dataclass(frozen=True)
class State:
    segment: int  # index into the form's segments; len(segments): done, the rest is free
    left: tuple[bytes, ...] = ()  # a literal's options, less what was written of them
    written: int = 0  # bytes of the current sentence so far


_QUOTE = OPEN.encode()[0]
_NEWLINE = ord("\n")


def advance(form: Form, state: State, data: bytes) -> State | None:
    """The state after writing `data`, or None where the form does not allow it."""
    seg, left, written = state.segment, state.left, state.written
    for b in data:
        if seg >= len(form.segments):
            break  # done: anything goes
        if isinstance(form.segments[seg], Sentence):
            if b != _QUOTE:
                if b == _NEWLINE or written >= form.segments[seg].limit:
                    return None
                written += 1
                continue
            if written == 0:
                return None  # an empty sentence
            seg, written = seg + 1, 0  # the quote ends it: it is the next literal's first byte
            if seg >= len(form.segments):
                break
            left = _options(form, seg)
        left = tuple(o[1:] for o in left if o[:1] == bytes((b,)))
        if not left:
            return None
        if b"" in left:  # an option written in full: on to the next segment
            seg += 1
            left = _options(form, seg)
    return State(seg, left, written)


def _options(form: Form, seg: int) -> tuple[bytes, ...]:
    part = form.segments[seg] if seg < len(form.segments) else None
    return part.options if isinstance(part, Literal) else ()


def start(form: Form) -> State:
    return State(0, _options(form, 0), 0)


class Vocabulary:
    """Each token's bytes, indexed to find the tokens a form allows without scanning them all."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = list(pieces)
        self.n = len(self.pieces)
        self._exact: dict[bytes, list[int]] = {}
        for t, p in enumerate(self.pieces):
            if p:
                self._exact.setdefault(p, []).append(t)
        self._sorted = sorted((p, t) for t, p in enumerate(self.pieces) if p)
        self._keys = [p for p, _ in self._sorted]
        self.longest = max((len(p) for p in self.pieces), default=0)
        # For a sentence: each token's bytes before its first quote (all of them where it has
        # none), and whether those hold a line break.
        self.quoted = np.array([_QUOTE in p for p in self.pieces], dtype=bool)
        self.before_quote = np.array([p.index(_QUOTE) if _QUOTE in p else len(p) for p in self.pieces], dtype=np.int64)
        self.breaks = np.array([_NEWLINE in p[:p.find(_QUOTE)] if _QUOTE in p else _NEWLINE in p
                                for p in self.pieces], dtype=bool)
        self.empty = np.array([not p for p in self.pieces], dtype=bool)
        self._closing: dict[tuple[bytes, ...], np.ndarray] = {}
        self.refusals: dict[tuple, np.ndarray] = {}  # Constraint._refused, once per form's sentence

    def closing(self, options: tuple[bytes, ...]) -> np.ndarray:
        """Tokens whose bytes from their first quote on fit one of the options (which open with a
        quote): a prefix of it, or it and more."""
        if options not in self._closing:
            ok = np.zeros(self.n, dtype=bool)
            for t in np.flatnonzero(self.quoted):
                rest = self.pieces[t][self.before_quote[t]:]
                ok[t] = any(o.startswith(rest) or rest.startswith(o) for o in options)
            self._closing[options] = ok
        return self._closing[options]

    @classmethod
    def of(cls, engine) -> Vocabulary:
        """The pieces llama.cpp writes for each token (control tokens write none)."""
        import llama_cpp

        pieces = []
        buf = ctypes.create_string_buffer(256)
        for t in range(engine.n_vocab):
            n = llama_cpp.llama_token_to_piece(engine.vocab, t, buf, len(buf), 0, False)
            if n < 0:  # longer than the buffer
                big = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(engine.vocab, t, big, -n, 0, False)
                pieces.append(big.raw[:max(n, 0)])
            else:
                pieces.append(buf.raw[:n])
        return cls(pieces)

    def starting_with(self, prefix: bytes) -> list[int]:
        """Tokens whose bytes begin with `prefix` (it included)."""
        i = bisect.bisect_left(self._keys, prefix)
        out = []
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            out.append(self._sorted[i][1])
            i += 1
        return out

    def prefixes_of(self, text: bytes) -> list[int]:
        """Tokens whose bytes are a (non-empty) prefix of `text`."""
        return [t for n in range(1, min(len(text), self.longest) + 1) for t in self._exact.get(text[:n], ())]


class Constraint:
    """One sequence's form: masks its logits until the form is written, then steps aside."""

    def __init__(self, form: Form, vocab: Vocabulary) -> None:
        self.form, self.vocab = form, vocab
        self.state = start(form)

    @property
    def done(self) -> bool:
        return self.state.segment >= len(self.form.segments)

    def allowed(self) -> np.ndarray | None:
        """The tokens allowed next: a boolean mask over the vocabulary (None: any)."""
        if self.done:
            return None
        mask = np.zeros(self.vocab.n, dtype=bool)
        if self._in_sentence():
            mask[:] = True
            mask[self._refused()] = False
        else:
            mask[self._only()] = True
        return mask

    def _in_sentence(self) -> bool:
        return isinstance(self.form.segments[self.state.segment], Sentence)

    def _only(self) -> list[int]:
        """In a literal: the few tokens that go on writing one of its options."""
        tried = {t for o in self.state.left for t in self.vocab.prefixes_of(o) + self.vocab.starting_with(o)}
        return sorted(t for t in tried if advance(self.form, self.state, self.vocab.pieces[t]) is not None)

    def _refused(self) -> np.ndarray:
        """In a sentence: the tokens it may not hold (most may), by index. Those with a line
        break, none or a quote that does not end it as the form does; with little room left,
        those too long for it. The same for every sentence of a form while there is room:
        worked out once."""
        part, v = self.form.segments[self.state.segment], self.vocab
        room, first = part.limit - self.state.written, self.state.written == 0
        key = (_options(self.form, self.state.segment + 1), first)
        if key not in v.refusals:
            ends = v.quoted & v.closing(key[0])
            if first:
                ends &= v.before_quote > 0  # not an empty sentence
            v.refusals[key] = np.flatnonzero(v.breaks | v.empty | (v.quoted & ~ends))
        refused = v.refusals[key]
        if room < v.longest:
            refused = np.union1d(refused, np.flatnonzero(v.before_quote > room))
        return refused

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the form does not allow at -inf (a copy; as given when free
        or when nothing would be allowed: a form no token can write is not forced). By index,
        not by a mask over the whole vocabulary: it runs once per token of the opening."""
        if self.done:
            return logits
        if self._in_sentence():
            refused = self._refused()
            if refused.size == self.vocab.n:
                return logits
            out = np.array(logits, dtype=np.float32, copy=True)
            out[refused] = -np.inf
            return out
        only = self._only()
        if not only:
            return logits
        out = np.full(self.vocab.n, -np.inf, dtype=np.float32)
        out[only] = logits[only]
        return out

    def accept(self, token: int) -> None:
        if self.done:
            return
        nxt = advance(self.form, self.state, self.vocab.pieces[token])
        # A token the form did not allow (only when none was): the form is given up, not forced.
        self.state = nxt if nxt is not None else State(len(self.form.segments))


FORMS = ("free", "strict", "choose")


@dataclass(frozen=True)
class AnswerPlan:
    """How one question's answer is held to the form: `form` constrains the decoding (None:
    free), `openings` are scored and the likeliest written first (`choose`), `candidates` are the
    sentences a 선택형 answer chooses among, and `fallback` says a 선택형 question gave none."""

    form: Form | None = None
    candidates: tuple[str, ...] = ()
    openings: tuple[str, ...] = ()
    fallback: bool = False


def plan_for(question_type: str, question: str, answer_form: str) -> AnswerPlan:
    """`free`: nothing. `strict`: a 선택형 answer writes one of its candidates, a 교정형 answer any
    sentence, each as `"…"가 옳다. `. `choose`: a 선택형 answer's opening is the candidate the model
    finds likeliest; 교정형 as strict. A question given as `― ` lines chooses among them whatever
    its type; a 선택형 question without candidates falls back to the 교정형 form."""
    if answer_form == "free" or question_type not in (SELECTION, CORRECTION):
        return AnswerPlan()
    asked = read(question)
    choices = asked.candidates if asked.exact and (question_type == SELECTION or asked.lines) else ()
    if choices and answer_form == "choose":
        return AnswerPlan(None, choices, tuple(OPEN + c + CLOSE.rstrip() for c in choices))
    if choices:
        return AnswerPlan(Form.choice(choices), choices)
    return AnswerPlan(Form.correction(asked.sentence), fallback=question_type == SELECTION)
