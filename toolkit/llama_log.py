"""Capture llama.cpp's log instead of letting it spill onto the terminal.

llama.cpp reports progress (tensor i/n while quantizing) and errors only through its log
callback; we read it to drive progress bars and to give one-line error reasons.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator


# ggml's line when a buffer cannot be had, with llama.cpp's buffer type and the bytes asked for
# ("alloc_tensor_range: failed to allocate CUDA0 buffer of size 4617388032"): the weights, the
# KV cache and the compute buffers all come through it, on every backend.
_ALLOC_FAILED = re.compile(r"failed to allocate (\S+) buffer of size (\d+)")
# The loader's own reason; the line after it ("llama_model_load_from_file_impl: failed to load
# model") only says that it failed.
_LOAD_ERROR = re.compile(r"error loading model: (.+)")


@dataclass(frozen=True)
class AllocationFailure:
    buffer: str  # llama.cpp's buffer type: CUDA0, CPU, CUDA_Host …
    size: int  # bytes

    @property
    def mib(self) -> int:
        return round(self.size / 2**20)


class LogTail:
    """The last lines llama.cpp logged, plus an optional per-line hook."""

    def __init__(self, on_line: Callable[[str], None] | None = None, keep: int = 200):
        self.lines: deque[str] = deque(maxlen=keep)
        self.on_line = on_line
        self._partial = ""
        self._lock = threading.Lock()

    def feed(self, text: str) -> None:
        with self._lock:
            self._partial += text
            *complete, self._partial = self._partial.split("\n")
        for line in complete:
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

    def text(self) -> str:
        return "\n".join(self.lines)

    def last_error(self) -> str | None:
        for line in reversed(self.lines):
            low = line.lower()
            if "error" in low or "failed" in low:
                return line.strip()
        return None

    def load_error(self) -> str | None:
        """Why llama.cpp could not load a model (a tensor of the wrong shape, an unknown
        architecture …), else the last error line."""
        for line in reversed(self.lines):
            if m := _LOAD_ERROR.search(line):
                return " ".join(m.group(1).split())  # its shapes are padded: "expected    256,    256"
        return self.last_error()

    def allocation_failure(self) -> AllocationFailure | None:
        """The last buffer llama.cpp could not allocate, if that is why it failed."""
        for line in reversed(self.lines):
            if m := _ALLOC_FAILED.search(line):
                return AllocationFailure(m.group(1), int(m.group(2)))
        return None


# Callbacks stay referenced for the life of the process: a worker thread still inside
# llama.cpp (after Ctrl-C) may call one after its `capture` block has ended.
_callbacks: list = []


@contextlib.contextmanager
def capture(on_line: Callable[[str], None] | None = None) -> Iterator[LogTail]:
    import llama_cpp
    from llama_cpp import _logger

    tail = LogTail(on_line)

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        tail.feed(text.decode("utf-8", errors="replace"))

    _callbacks.append(callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield tail
    finally:
        # Back to llama-cpp-python's own logger (quiet unless verbose). Its level stays unset,
        # which prints everything, until a Llama object sets it: set it to quiet here. (Some
        # calls log later, outside any capture: the first decode after a LoRA is set re-plans
        # the graph at debug level.)
        if _logger.logger.level == logging.NOTSET:
            _logger.set_verbose(False)
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
