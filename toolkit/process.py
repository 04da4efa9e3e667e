"""Child processes (llama.cpp's converter and tools, the build): never left running behind us."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator


@contextlib.contextmanager
def child(cmd: list[str], **popen: object) -> Iterator[subprocess.Popen]:
    """Popen with stdout piped (stderr into it); killed and reaped if the block raises, so an
    error or Ctrl-C in toolkit never leaves llama-quantize, llama-imatrix or ninja writing on."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
