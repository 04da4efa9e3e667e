"""Stage 2b: an importance matrix over the task's own text, for calibrated low-bit quants.

The calibration text is what the model will see in the competition: each question as the full
prompt (system prompt, the type's instruction, the question) rendered by the model's chat
template, followed by its reference answer. llama.cpp's llama-imatrix (built by
`toolkit setup --tools` from the pinned sdist) accumulates the squared activations each weight
matrix sees on it; llama-quantize then spends its rounding error where those are small.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import chat_template, console, tools
from .dataset import answer_of, read_json
from .errors import InternalError, UserError
from .fsutil import atomic_path, sha256_file
from .process import child
from .prompts import PromptSet, build_messages
from .samples import samples_with_gold

MAX_CTX = 512  # llama-imatrix's own default chunk
MIN_CTX = 64
_CHUNK = re.compile(rb"\[(\d+)\]\s*[-+0-9.naif]")  # the running perplexity: "[3]12.3456,"
_TOTAL = re.compile(rb"computing over (\d+) chunks")


@dataclass(frozen=True)
class Calibration:
    text: str
    source: str  # what it was made from, for the manifest
    items: int
    sha256: str  # of the text, so a changed calibration set makes a new matrix
    items_sha256: str = ""  # of the items (items_sha256): known before any conversion


@dataclass(frozen=True)
class ImatrixInfo:
    path: Path
    chunks: int
    n_ctx: int
    tokens: int
    seconds: float


def default_items() -> tuple[list[dict], str]:
    """The bundled sample questions with their reference answers."""
    return samples_with_gold(), "bundled samples"


def items_sha256(items: list[dict]) -> str:
    """The calibration set's identity from the items alone, before the model's template renders
    them: what quantize compares to see whether an imatrix quant was made on this set."""
    return hashlib.sha256(json.dumps(items, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def load_items(path: Path) -> list[dict]:
    items = read_json(path, "calibration file")
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("input"), dict)
                                              and "question" in i["input"] for i in items):
        raise UserError(f"{path}: expected a list of competition items with input.question")
    if not items:
        raise UserError(f"{path}: the list of items is empty")
    return items


def calibration(items: list[dict], source: str, template_text: str | None, special: dict[str, str],
                model_name: str, prompts: PromptSet = PromptSet()) -> Calibration:
    """Every item as prompt + answer (answers only where given: test files have none).

    A base model's GGUF has no chat template: its prompts are then the plain messages, one
    after the other, as a base model would read them."""
    template = chat_template.load(template_text, special, None, model_name) if template_text else None
    parts = []
    for item in items:
        messages = build_messages(item["input"], prompts)
        if template is None:
            prompt = "\n\n".join(m["content"] for m in messages) + "\n\n"
        else:
            if not template.accepts_system():
                messages = chat_template.fold_system(messages)
            prompt = template.render(messages)
        answer = answer_of(item)
        parts.append(prompt + (answer or "").strip())
    text = "\n\n".join(parts)
    return Calibration(text, source, len(items), hashlib.sha256(text.encode()).hexdigest(), items_sha256(items))


def chunk_size(n_tokens: int) -> int:
    """llama-imatrix wants at least two chunks: the largest power of two ≤ 512 that gives them."""
    n_ctx = MAX_CTX
    while n_ctx > MIN_CTX and n_tokens < 2 * n_ctx:
        n_ctx //= 2
    if n_tokens < 2 * n_ctx:
        raise UserError(f"the calibration text has {n_tokens} tokens; an importance matrix needs at least "
                        f"{2 * MIN_CTX}: give more questions with --calibration")
    return n_ctx


def compute(model: Path, calib: Calibration, out: Path, n_tokens: int, threads: int = 0) -> ImatrixInfo:
    """Run llama-imatrix over the calibration text; the matrix is written atomically to `out`."""
    llama_imatrix = tools.require().path("llama-imatrix")
    n_ctx = chunk_size(n_tokens)
    t0 = time.monotonic()
    with atomic_path(out) as tmp:
        text_file = tmp.with_name(tmp.name + ".txt")
        out_tmp = tmp.with_name(tmp.name + ".gguf")  # llama-imatrix picks its format by the suffix
        try:
            text_file.write_text(calib.text, encoding="utf-8")
            cmd = [str(llama_imatrix), "-m", str(model), "-f", str(text_file), "-o", str(out_tmp),
                   "-c", str(n_ctx), "-b", str(n_ctx), "--parse-special", "-ngl", "999",
                   "--output-frequency", "1000000", "-t", str(threads or os.cpu_count() or 1)]
            chunks = _run_with_progress(cmd, "importance matrix")
            if not out_tmp.is_file():
                raise InternalError("llama-imatrix finished without writing the matrix")
            os.replace(out_tmp, tmp)
        finally:  # only the matrix is kept; the manifest records the text's hash
            text_file.unlink(missing_ok=True)
            out_tmp.unlink(missing_ok=True)
    return ImatrixInfo(out, chunks, n_ctx, n_tokens, time.monotonic() - t0)


def _run_with_progress(cmd: list[str], what: str) -> int:
    """Run llama-imatrix, driving a bar from its per-chunk perplexity; the number of chunks."""
    buf = b""
    tail = b""
    total = done = 0
    with console.step_progress() as progress:
        task = progress.add_task(what, total=None)
        with child(cmd) as proc:
            while chunk := os.read(proc.stdout.fileno(), 4096):
                buf = (buf + chunk)[-4096:]
                tail = (tail + chunk)[-8192:]
                if not total and (m := _TOTAL.search(buf)):
                    total = int(m.group(1))
                    progress.update(task, total=total)
                for m in _CHUNK.finditer(buf):
                    done = max(done, int(m.group(1)))
                progress.update(task, completed=done)
            rc = proc.wait()
    if rc != 0:
        lines = [ln for ln in tail.decode("utf-8", "replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()] or lines[-1:]
        raise InternalError(f"llama-imatrix failed (exit {rc}): {errors[-1].strip() if errors else 'no output'}")
    return total or done


def describe(info: ImatrixInfo, calib: Calibration) -> dict:
    """The manifest's record of a matrix made by toolkit."""
    return {
        "file": info.path.name,
        "sha256": sha256_file(info.path),
        "calibration": calib.source,
        "calibration_items": calib.items,
        "calibration_sha256": calib.sha256,
        "calibration_items_sha256": calib.items_sha256,
        "tokens": info.tokens,
        "chunks": info.chunks,
        "n_ctx": info.n_ctx,
        "seconds": round(info.seconds, 2),
    }
