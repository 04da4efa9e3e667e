"""llama.cpp's own converter, taken at setup time from the pinned llama-cpp-python sdist.

The sdist vendors llama.cpp at the exact commit the runtime is built from, so converting
with its `convert_hf_to_gguf.py` (and its own gguf-py) keeps converter, quantizer and
runtime in agreement. Nothing of llama.cpp is committed to this repository; it is
extracted into a cache directory and its origin is recorded in `source.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from . import versions
from .errors import InternalError, NotProvisioned, UserError
from .fsutil import replace_dir, sha256_file

SDIST_NAME = f"llama_cpp_python-{versions.LLAMA_CPP_PYTHON}.tar.gz"
# What we take from vendor/llama.cpp: the converter and what it imports, plus the
# chat templates and vocab-only GGUFs that serve as real test fixtures.
_KEEP = (
    re.compile(r"convert_hf_to_gguf\.py$"),
    re.compile(r"convert_lora_to_gguf\.py$"),
    re.compile(r"LICENSE$"),
    re.compile(r"conversion/.*"),
    re.compile(r"gguf-py/gguf/.*"),
    re.compile(r"models/templates/.*\.jinja$"),
    re.compile(r"models/ggml-vocab-[^/]*\.gguf$"),
)


def cache_root() -> Path:
    if env := os.environ.get("TOOLKIT_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "toolkit"


@dataclass(frozen=True)
class Converter:
    """A provisioned copy of llama.cpp's Python conversion tools."""

    root: Path
    llama_cpp_python: str
    commit: str

    @property
    def script(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def lora_script(self) -> Path:
        return self.root / "convert_lora_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    @property
    def templates(self) -> Path:
        return self.root / "models" / "templates"

    @property
    def vocabs(self) -> Path:
        return self.root / "models"


def converter_dir() -> Path:
    return cache_root() / "llama.cpp" / versions.LLAMA_CPP_PYTHON


def find() -> Converter | None:
    root = converter_dir()
    try:
        info = json.loads((root / "source.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("llama_cpp_python") != versions.LLAMA_CPP_PYTHON or not (root / "convert_hf_to_gguf.py").is_file():
        return None
    return Converter(root, info["llama_cpp_python"], info.get("llama_cpp_commit", "unknown"))


def require() -> Converter:
    conv = find()
    if conv is None:
        raise NotProvisioned(
            f"llama.cpp's converter (llama-cpp-python {versions.LLAMA_CPP_PYTHON}) is not set up: run `toolkit setup`"
        )
    return conv


def installed_runtime_version() -> str | None:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def download_sdist(dest_dir: Path) -> Path:
    """Fetch the pinned sdist from the package index with pip (no build, no deps)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / SDIST_NAME
    if target.is_file():
        if sha256_file(target) == versions.LLAMA_CPP_PYTHON_SDIST_SHA256:
            return target
        target.unlink()  # not the pinned file (pip would keep it as "already downloaded")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
           f"llama-cpp-python=={versions.LLAMA_CPP_PYTHON}", "-d", str(dest_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InternalError(f"could not download {SDIST_NAME} with pip: {last}")
    if (digest := sha256_file(target)) != versions.LLAMA_CPP_PYTHON_SDIST_SHA256:
        target.unlink()
        raise InternalError(f"the index served a {SDIST_NAME} that is not the pinned one (sha256 {digest[:12]}…)")
    return target


def _commit_from_sdist(tar: tarfile.TarFile, top: str) -> str:
    for name in (f"{top}/.git/modules/vendor/llama.cpp/HEAD",):
        try:
            member = tar.extractfile(name)
        except KeyError:
            continue
        if member is not None:
            head = member.read().decode().strip()
            if re.fullmatch(r"[0-9a-f]{40}", head):
                return head
    # Fallback: the changelog line "update llama.cpp to ggml-org/llama.cpp@<sha>".
    member = tar.extractfile(f"{top}/CHANGELOG.md")
    if member is not None:
        text = member.read().decode("utf-8", "replace")
        section = text.split(f"## [{versions.LLAMA_CPP_PYTHON}]", 1)[-1]
        if m := re.search(r"llama\.cpp@([0-9a-f]{7,40})", section):
            return m.group(1)
    return "unknown"


def extract_llama_cpp(tar: tarfile.TarFile, dest: Path, keep: Callable[[str], bool]) -> None:
    """Extract the sdist's vendor/llama.cpp files whose path relative to it `keep` accepts."""
    prefix = f"{SDIST_NAME.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    members = []
    for m in tar.getmembers():
        if m.isfile() and m.name.startswith(prefix) and keep(m.name[len(prefix):]):
            m.name = m.name[len(prefix):]
            members.append(m)
    tar.extractall(dest, members=members, filter="data")


def provision(sdist: Path | None = None, force: bool = False) -> Converter:
    """Extract the converter from the pinned sdist into the cache (idempotent)."""
    if not force and (existing := find()) is not None:
        return existing
    if sdist is None:
        sdist = download_sdist(cache_root() / "sdist")  # checked against the pin there
    else:
        sdist = Path(sdist)
        if not sdist.is_file():
            raise UserError(f"{sdist}: no such file")
        if (digest := sha256_file(sdist)) != versions.LLAMA_CPP_PYTHON_SDIST_SHA256:
            raise UserError(
                f"{sdist} is not llama-cpp-python {versions.LLAMA_CPP_PYTHON}'s sdist (sha256 {digest[:12]}…)"
            )
    top = SDIST_NAME.removesuffix(".tar.gz")
    root = converter_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            commit = _commit_from_sdist(tar, top)
            extract_llama_cpp(tar, staging, lambda rel: any(p.fullmatch(rel) for p in _KEEP))
        info = {
            "llama_cpp_python": versions.LLAMA_CPP_PYTHON,
            "llama_cpp_commit": commit,
            "sdist": SDIST_NAME,
            "sdist_sha256": versions.LLAMA_CPP_PYTHON_SDIST_SHA256,
            "extracted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / "source.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Keep the sdist beside it: later steps (CUDA build, llama.cpp tools) build from it.
    kept = cache_root() / "sdist" / SDIST_NAME
    if sdist.resolve() != kept.resolve():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sdist, kept)
    return require()
