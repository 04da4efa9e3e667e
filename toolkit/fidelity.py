"""Stage (after quantize): how far a quantized GGUF strays from its 16-bit original.

Teacher forcing over fixed texts: both models see the same tokens, and at every scored
position we compare their next-token distributions — top-1 agreement, KL divergence
(reference ‖ quant, mean and 99th percentile) and the perplexity of the text. These are the
figures llama.cpp's `llama-perplexity --kl-divergence` reports; `texts_from_source` scores a
plain text the way it does (chunks of n_ctx tokens, the second half of each scored), so the
two can be checked against each other.

Default texts are competition-style: each sample question rendered with the model's chat
template, followed by its reference answer, and only the answer's tokens are scored.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import chat_template, dataset, gguf
from .engine import Engine, EngineSettings
from .errors import UserError
from .samples import samples_with_gold
from .sampler import Sampler, SamplingParams

MIN_CHUNK = 16  # tokens in a plain-text chunk, half of them scored
MAX_ITEMS = 64  # a competition JSON is sampled down to this many items (evenly)
GENERATED_CONTINUATION = 64  # tokens the reference writes for items that have no answer


@dataclass(frozen=True)
class Text:
    tokens: list[int]
    first: int  # index of the first scored token


@dataclass(frozen=True)
class FidelityRow:
    file: str
    type: str
    top1_agreement: float
    kld_mean: float
    kld_p99: float
    ppl: float
    positions: int

    def as_dict(self) -> dict:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


# -- texts -------------------------------------------------------------------------------------
def competition_texts(engine: Engine, items: list[dict]) -> list[Text]:
    """Each question as the model's chat template renders a user turn, then its answer.

    Items without `output.answer` (test files) get the reference model's own greedy
    continuation, so the quant is measured on what the reference would have said.
    """
    if len(items) > MAX_ITEMS:
        idx = np.linspace(0, len(items) - 1, MAX_ITEMS).round().astype(int)
        items = [items[i] for i in idx]
    template = chat_template.load(engine.header.chat_template, engine.special_tokens(), None, engine.path.name)
    texts = []
    for item in items:
        question = str(item.get("input", {}).get("question", ""))
        messages = [{"role": "user", "content": question}]
        if not template.accepts_system():
            messages = chat_template.fold_system(messages)
        prompt = engine.tokenize(template.render(messages))
        answer = dataset.answer_of(item)
        if answer and answer.strip():
            continuation = engine.tokenize(answer.strip())
        else:
            continuation = _greedy(engine, prompt)
        if continuation:
            texts.append(Text(prompt + continuation, len(prompt)))
    if not texts:
        raise UserError("no text to score: the items have no questions")
    return texts


def _greedy(engine: Engine, prompt: list[int]) -> list[int]:
    engine.open_context(len(prompt) + GENERATED_CONTINUATION + 1)
    sampler = Sampler(SamplingParams(do_sample=False, repetition_penalty=1.0), prompt, engine.n_vocab, 0)
    return engine.generate(prompt, sampler, GENERATED_CONTINUATION).tokens


def text_chunks(tokens: list[int], n_ctx: int, bos: int | None) -> list[Text]:
    """llama-perplexity's chunks: n_ctx tokens each (BOS first when the model adds one), the
    second half scored."""
    texts = []
    for start in range(0, len(tokens) - n_ctx + 1, n_ctx):
        chunk = list(tokens[start:start + n_ctx])
        if bos is not None:
            chunk[0] = bos
        texts.append(Text(chunk, n_ctx // 2 + 1))
    if not texts:
        raise UserError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    return texts


def read_source(path: Path) -> list[dict] | str:
    """--prompts: a competition JSON's items (checked as infer checks them) or plain text."""
    if path.suffix.lower() == ".json":
        return dataset.load_items(path)
    return dataset.read_text(path, "text file")


def texts_from_source(engine: Engine, source: list[dict] | str, n_ctx: int) -> list[Text]:
    """Competition items, or plain text in llama-perplexity's chunks."""
    import llama_cpp

    if isinstance(source, list):
        return competition_texts(engine, source)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(engine.vocab))
    bos = llama_cpp.llama_vocab_bos(engine.vocab) if add_bos else None
    tokens = ([bos] if add_bos else []) + engine.tokenize(source)
    return text_chunks(tokens, n_ctx, bos)


def _same_model(reference: Path, quants: list[Path]) -> None:
    """From the headers, before any scoring: every file a GGUF of the reference's architecture
    and vocabulary."""
    ref = gguf.read_model(reference)
    for path in quants:
        q = gguf.read_model(path)
        for what, a, b in (("architecture", ref.architecture, q.architecture),
                           ("vocabulary size", ref.n_vocab, q.n_vocab)):
            if a != b:
                raise UserError(f"{path.name} has {what} {b}, the reference {a}: not the same model")


# -- comparing ---------------------------------------------------------------------------------
class _Reference:
    """The reference model's log-probabilities at every scored position, on disk (a 128k
    vocabulary over a few thousand positions is gigabytes)."""

    def __init__(self, n_positions: int, n_vocab: int, directory: Path, prefix: str = ".fidelity-"):
        self._file = tempfile.NamedTemporaryFile(dir=directory, prefix=prefix, suffix=".logprobs")
        self.logp = np.memmap(self._file.name, dtype=np.float32, mode="w+", shape=(n_positions, n_vocab))

    def close(self) -> None:
        del self.logp
        self._file.close()


def _evaluate(engine: Engine, texts: list[Text], visit: Callable[[int, int, np.ndarray], None]) -> None:
    """visit(row, target_token, logits) for every scored position, rows numbered across texts."""
    engine.open_context(max(len(t.tokens) for t in texts))
    row = 0
    for text in texts:
        offset = row - text.first

        def on_row(i: int, logits: np.ndarray, offset=offset, text=text) -> None:
            visit(offset + i, text.tokens[i], logits)

        engine.score(text.tokens, text.first, on_row)
        row += len(text.tokens) - text.first


def compare(reference: Path, quants: list[Path], texts_source: Path | None = None, n_ctx: int = 512,
            engine_settings: EngineSettings = EngineSettings(), workdir: Path | None = None,
            on_file: Callable[[Path], None] | None = None, temp_prefix: str = ".fidelity-") -> list[FidelityRow]:
    """Rows for the reference (agreement 1, KLD 0) and each quant, on the same tokens."""
    if n_ctx < MIN_CHUNK:
        raise UserError(f"--n-ctx {n_ctx}: chunks need at least {MIN_CHUNK} tokens")
    _same_model(reference, quants)  # all of them before the first model is scored
    source = samples_with_gold() if texts_source is None else read_source(Path(texts_source))

    with Engine(reference, engine_settings) as ref_engine:
        texts = texts_from_source(ref_engine, source, n_ctx)
        n_positions = sum(len(t.tokens) - t.first for t in texts)
        n_vocab = ref_engine.n_vocab
        # Beside the models (where the disk space is), not in /tmp (often memory); a read-only
        # model folder falls back to /tmp.
        if workdir is None:
            workdir = reference.parent if os.access(reference.parent, os.W_OK) else Path(tempfile.gettempdir())
        store = _Reference(n_positions, n_vocab, workdir, temp_prefix)
        ref_top = np.zeros(n_positions, dtype=np.int64)
        ref_nll = np.zeros(n_positions)
        if on_file:
            on_file(reference)

        def keep(row: int, target: int, logits: np.ndarray) -> None:
            lp = log_softmax(logits)
            store.logp[row] = lp
            ref_top[row] = int(np.argmax(logits))
            ref_nll[row] = -lp[target]

        _evaluate(ref_engine, texts, keep)
        ref_type = ref_engine.header.file_type_name
    rows = [FidelityRow(reference.name, ref_type, 1.0, 0.0, 0.0,
                        float(np.exp(ref_nll.mean())), n_positions)]
    try:
        for path in quants:
            if on_file:
                on_file(path)
            same = np.zeros(n_positions, dtype=bool)
            kld = np.zeros(n_positions)
            nll = np.zeros(n_positions)
            with Engine(path, engine_settings) as engine:
                if engine.n_vocab != n_vocab:
                    raise UserError(f"{path.name} has {engine.n_vocab} tokens, the reference {n_vocab}: not the same model")

                def measure(row: int, target: int, logits: np.ndarray) -> None:
                    lq = log_softmax(logits)
                    lp = store.logp[row].astype(np.float64)
                    kld[row] = float(np.sum(np.exp(lp) * (lp - lq)))
                    same[row] = int(np.argmax(logits)) == ref_top[row]
                    nll[row] = -lq[target]

                _evaluate(engine, texts, measure)
                quant_type = engine.header.file_type_name
            rows.append(FidelityRow(path.name, quant_type, float(same.mean()),
                                    float(kld.mean()), float(np.percentile(kld, 99)), float(np.exp(nll.mean())),
                                    n_positions))
    finally:
        store.close()
    return rows
