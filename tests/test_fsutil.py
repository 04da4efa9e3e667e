"""Atomic writes: a file under its final name is complete, or the old one is still there; a
disk that cannot hold a file is said before writing it, or named when it filled meanwhile."""

import hashlib
import os

import pytest

from toolkit.errors import DiskFull
from toolkit.fsutil import (atomic_path, disk_full, free_bytes, partial_path, replace_dir, require_space, sha256_file,
                            write_json_atomic)


def test_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    final = tmp_path / "answers.json"
    final.write_text("old and complete", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half of the new", encoding="utf-8")
            raise RuntimeError("killed mid-write")
    assert final.read_text(encoding="utf-8") == "old and complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.json"]


def test_partial_name_never_looks_finished(tmp_path):
    tmp = partial_path(tmp_path / "m-Q4_K_M.gguf")
    assert tmp.parent == tmp_path and tmp.name.startswith(".") and not tmp.name.endswith(".gguf")


def test_json_is_written_whole_in_utf8(tmp_path):
    final = tmp_path / "sub" / "x.json"
    write_json_atomic(final, [{"answer": "\"며칠\"이 옳다."}])
    assert final.read_text(encoding="utf-8") == '[\n  {\n    "answer": "\\"며칠\\"이 옳다."\n  }\n]\n'
    assert sha256_file(final) == sha256_file(final, chunk=7) == hashlib.sha256(final.read_bytes()).hexdigest()


def test_replace_dir_swaps_a_finished_directory_in(tmp_path):
    final, staging = tmp_path / "tools", tmp_path / ".tools.staging"
    (final / "old").mkdir(parents=True)
    (staging / "bin").mkdir(parents=True)
    replace_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["bin"] and not staging.exists()
    other = tmp_path / ".again"
    other.mkdir()
    replace_dir(other, tmp_path / "fresh")  # nothing there yet
    assert (tmp_path / "fresh").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "tools"]  # the old one is gone


def test_replace_dir_that_fails_keeps_the_old_directory(tmp_path, monkeypatch):
    final = tmp_path / "llama.cpp"
    (final / "convert_hf_to_gguf.py").parent.mkdir()
    (final / "convert_hf_to_gguf.py").write_text("old", encoding="utf-8")
    real = os.replace

    def fail_on_staging(src, dst):
        if "staging" in str(src):
            raise OSError("no space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_staging)
    with pytest.raises(OSError):
        replace_dir(tmp_path / ".staging", final)
    assert (final / "convert_hf_to_gguf.py").read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama.cpp"]


def test_free_space_is_that_of_the_disk_the_directory_will_be_on(small_disk):
    disk = small_disk(8)
    assert free_bytes(disk / "models" / "not-yet") == free_bytes(disk) == 8 << 20
    (disk / "x").write_bytes(b"\0" * (3 << 20))
    assert free_bytes(disk / "models") == 5 << 20


def test_require_space_says_what_needs_how_much_where(small_disk):
    disk = small_disk(8)
    require_space(disk / "models", 8 << 20, "writing m.gguf")  # exactly fits
    with pytest.raises(DiskFull) as e:
        require_space(disk / "models", 20_000_000, "writing m.gguf", "try elsewhere")
    assert str(e.value) == f"writing m.gguf needs about 20 MB under {disk / 'models'}, which has 8 MB free; try elsewhere"
    assert list(disk.iterdir()) == []  # checking writes nothing


def test_a_failed_write_is_blamed_on_the_disk_only_when_it_is_full(small_disk):
    disk = small_disk(32)
    assert disk_full(disk, "writing m.gguf") is None  # 34 MB free: the failure was something else
    with pytest.raises(OSError):
        with atomic_path(disk / "m.gguf") as tmp, open(tmp, "wb") as f:
            f.write(b"\0" * (40 << 20))
            f.flush()
            os.fsync(f.fileno())
    assert list(disk.iterdir()) == []
    with open(disk / "filler", "wb") as f:  # what the failed write's partial file held when it was judged
        with pytest.raises(OSError):
            f.write(b"\0" * (40 << 20))
            f.flush()
    error = disk_full(disk, "writing m.gguf")
    assert isinstance(error, DiskFull) and "ran out of space while writing m.gguf (0 MB free)" in str(error)


HOLD = """
import sys, time
from pathlib import Path
from toolkit.fsutil import exclusive
with exclusive(Path(sys.argv[1]), "out"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_writer_at_a_time_and_a_killed_one_never_keeps_the_lock(tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from toolkit.errors import OutputBusy
    from toolkit.fsutil import exclusive

    lock = tmp_path / ".out.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy) as e:
            with exclusive(lock, "models/x", "wait"):
                pass
        assert str(e.value) == f"models/x is being written by another toolkit process (pid {holder.pid}); wait"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.exists()  # what a killed writer leaves: a file, but no lock on it
    with exclusive(lock, "models/x") as guarded:
        assert guarded and lock.read_text() == f"pid {os.getpid()}"
    assert not lock.exists()


def test_a_file_system_without_locks_runs_unguarded_and_says_so(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    from toolkit.fsutil import exclusive

    with exclusive(tmp_path / ".out.lock", "models/x") as guarded:
        assert guarded is False  # (so nothing another run may be writing is swept)
    assert not (tmp_path / ".out.lock").exists()
