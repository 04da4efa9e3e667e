"""Child processes end with toolkit: an error or Ctrl-C inside the block kills and reaps them."""

import signal
import sys

import pytest

from toolkit.process import child

SLEEPER = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_child_is_killed_when_the_block_raises(interrupt):
    with pytest.raises(type(interrupt)):
        with child(SLEEPER, text=True) as proc:
            assert proc.stdout.readline() == "started\n"  # it runs
            raise interrupt
    assert proc.returncode == -signal.SIGKILL  # killed and reaped: no zombie, nothing writing on


def test_output_is_read_through_the_pipe():
    with child([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], text=True) as proc:
        lines = proc.stdout.read().split()
        assert proc.wait() == 0
    assert sorted(lines) == ["err", "out"]  # stderr comes through the same pipe


def test_grandchildren_are_killed_too():
    """A build is cmake → ninja → compilers: killing cmake alone would leave them writing."""
    import time
    from pathlib import Path

    def gone(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    script = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             "print(p.pid, flush=True); time.sleep(60)"
    with pytest.raises(RuntimeError):
        with child([sys.executable, "-c", script], text=True) as proc:
            grandchild = int(proc.stdout.readline())
            assert not gone(grandchild)
            raise RuntimeError("build failed elsewhere")
    deadline = time.monotonic() + 10
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(grandchild)
