"""Atomic file writes: a file under its final name is always complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import DiskFull, OutputBusy, OutputNotWritable

# Below this much free space, a write that failed failed because the disk is full.
_NEARLY_FULL = 16 << 20
# What the OS says when a write finds no room: the disk is full, or the user's quota is.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
OUTPUT_HINT = "free some space there or choose another --output-dir"


def partial_path(final: Path) -> Path:
    """The temporary name a file is written under before it is renamed into place.

    It does not end in the final suffix, so nothing mistakes it for a finished file.
    """
    return final.with_name(f".{final.name}.partial")


def ensure_writable_dir(directory: Path) -> None:
    """Make `directory` (and its parents) and create a file in it: a place that cannot take the
    output is said before any long work, not after it."""
    if directory.exists() and not directory.is_dir():
        raise OutputNotWritable(f"{directory}: cannot write there (a file, not a directory)")
    probe = directory / f".toolkit-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputNotWritable(f"{directory}: cannot write there ({e.strerror})") from None


@contextlib.contextmanager
def output_directory(directory: Path) -> Iterator[None]:
    """ensure_writable_dir for the length of a run: if the run made the directory and fails before
    writing anything there, it is removed again, so a refused download or adapter leaves no empty
    models/<name>/ behind to be mistaken for a model."""
    made = not directory.exists()
    ensure_writable_dir(directory)
    try:
        yield
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty
        raise


def _existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists: where it would be."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path`, or would hold it."""
    return shutil.disk_usage(_existing(path)).free


def same_disk(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are (or would be) on one file system, sharing its free space."""
    return os.stat(_existing(a)).st_dev == os.stat(_existing(b)).st_dev


def size_text(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def require_space(directory: Path, need: int, what: str, hint: str = OUTPUT_HINT) -> None:
    """Refuse a step that will write about `need` bytes under `directory` when its disk has less
    free: said before the work, not minutes into it."""
    free = free_bytes(directory)
    if need > free:
        raise DiskFull(f"{what} needs about {size_text(need)} under {directory}, which has {size_text(free)} free; {hint}")


def disk_full(directory: Path, what: str, hint: str = OUTPUT_HINT, said: bool = False) -> DiskFull | None:
    """The error for a write under `directory` that failed, if its disk is (nearly) full or the
    writer `said` so; call it before the partial file is removed, while its space is still taken."""
    free = free_bytes(directory)
    if free >= _NEARLY_FULL and not said:
        return None
    return DiskFull(f"the disk under {directory} ran out of space while {what} ({size_text(free)} free); "
                    f"nothing half-written was kept; {hint}")


def through_link(path: Path) -> Path:
    """Where a write to `path` must land: a symbolic link's target (a rename onto the link
    itself would replace the link and leave its target as it was)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def drop_partial(final: Path) -> Path:
    """Remove what a killed write of `final` (a link's target) left; return that temporary path."""
    tmp = partial_path(through_link(final))
    tmp.unlink(missing_ok=True)
    return tmp


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to `final` (a link's target) only if the block succeeds."""
    final = through_link(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = drop_partial(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(final: Path, data: Any, indent: int = 2) -> None:
    write_text_atomic(final, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


@contextlib.contextmanager
def exclusive(lock: Path, what: str, hint: str = "wait for it to finish, or write elsewhere") -> Iterator[bool]:
    """Hold `lock` (a file beside the output, removed afterwards) as the output's only writer;
    a second toolkit process stops at once with OutputBusy. The lock goes with the process, so a
    killed run never leaves its output locked. Yields whether the lock guards anything: False
    where the system has no locks (then nothing another run may be writing is removed)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield False
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # left by another user's killed run: a lock needs no write access
            try:
                fd = os.open(lock, os.O_RDONLY)
            except OSError as e:
                raise OutputNotWritable(f"{lock.parent}: cannot write there ({e.strerror})") from None
        except OSError as e:
            raise OutputNotWritable(f"{lock.parent}: cannot write there ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "pid unknown"
            os.close(fd)
            raise OutputBusy(f"{what} is being written by another toolkit process ({holder}); {hint}") from None
        except OSError as e:  # a file system without locks (NFS without lockd, some FUSE mounts)
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            with contextlib.suppress(OSError):
                os.unlink(lock)
            yield False  # unguarded, as before there were locks
            return
        try:  # the writer before us may have removed the file after we opened it: lock the one there
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # only for the other process's message: a full disk must not stop us
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held, so no one locks a file that is about to go
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def replace_dir(staging: Path, final: Path) -> None:
    """Put a finished directory in place of `final`. The old one is moved aside first and removed
    last, so a failure on the way leaves the old directory, never none."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
