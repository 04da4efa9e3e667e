"""Child processes (llama.cpp's converter and tools, the build): never left running behind us."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Iterator


@contextlib.contextmanager
def child(cmd: list[str], **popen: object) -> Iterator[subprocess.Popen]:
    """Popen with stdout piped (stderr into it). If the block raises, the child and everything it
    started (cmake → ninja → compilers) are killed and reaped: an error or Ctrl-C in toolkit never
    leaves llama-quantize, llama-imatrix or a build writing on."""
    # Its own process group, so that one signal reaches the grandchildren too (a Ctrl-C at the
    # terminal then reaches only toolkit, which kills the group below).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        yield proc
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
