"""models/<name>/: manifest.json (where each GGUF came from and what it is), its lock, and what killed runs left."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path
from typing import Any

from . import __version__, console, vendor, versions
from .fsutil import size_text, write_json_atomic

FILENAME = "manifest.json"
LOCK = ".toolkit.lock"  # held in a model's directory while toolkit writes there (fsutil.exclusive)


def load(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / FILENAME).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def new(source_identity: dict, adapter: dict | None = None) -> dict[str, Any]:
    """A fresh manifest; `adapter` (Adapter.record()) when a LoRA adapter is merged or converted."""
    conv = vendor.find()
    return {
        "toolkit_version": __version__,
        "source": source_identity,
        **({"adapter": adapter} if adapter else {}),
        "llama_cpp": {
            "llama_cpp_python": versions.LLAMA_CPP_PYTHON,
            "commit": conv.commit if conv else versions.LLAMA_CPP_COMMIT,
        },
        "files": {},
    }


def same_origin(manifest: dict[str, Any], source_identity: dict, adapter_identity: dict | None) -> bool:
    """Made from this source, with this adapter (or none): only then are its files reusable."""
    if manifest.get("source") != source_identity:
        return False
    recorded = manifest.get("adapter")
    if adapter_identity is None or recorded is None:
        return adapter_identity is None and recorded is None
    return {k: recorded.get(k) for k in adapter_identity} == adapter_identity


def record(directory: Path, manifest: dict[str, Any], qtype: str, entry: dict[str, Any]) -> None:
    """Add or replace one file's entry and rewrite the manifest atomically."""
    manifest["files"][qtype] = entry
    save(directory, manifest)


def save(directory: Path, manifest: dict[str, Any]) -> None:
    manifest["toolkit_version"] = __version__
    write_json_atomic(directory / FILENAME, manifest)


def recorded_sha256(path: Path) -> str | None:
    """The sha256 the manifest beside a GGUF records for it (quantize and lora outputs), while the
    file still has the recorded size; None for a file no manifest tracks."""
    for entry in load(path.parent).get("files", {}).values():
        if isinstance(entry, dict) and entry.get("file") == path.name:
            try:
                same_size = entry.get("size") == path.stat().st_size
            except OSError:
                return None
            return entry.get("sha256") if same_size else None
    return None


def fidelity_prefix(name: str) -> str:
    """The fidelity check's temporary file (gigabytes for a large vocabulary) in a model's directory:
    a name of quantize's own, not `toolkit compare`'s, which runs there without the lock."""
    return f".{name}.fidelity-"


def leftovers(directory: Path, name: str) -> list[Path]:
    """What killed quantize (or lora) runs leave in a model's directory, none of it finished:
    temporary GGUFs, the hidden 16-bit intermediate, an importance matrix being computed, a LoRA
    merge's shard copies, the fidelity check's log-probabilities, a rescaled LoRA's copy (lora
    takes this directory's lock to write there), the manifest being rewritten."""
    n = glob.escape(name)
    patterns = (f".{n}-*.gguf.partial", f".{n}-*.intermediate", f"..{n}-*.intermediate.partial",
                f".{n}.imatrix.gguf.partial", f".{n}.imatrix.gguf.partial.*", f".{n}.merging",
                f"{glob.escape(fidelity_prefix(name))}*.logprobs", ".*.rescaled-*", f".{FILENAME}.partial")
    return sorted({p for pattern in patterns for p in directory.glob(pattern)})


def drop_leftovers(directory: Path, name: str) -> None:
    """Remove every leftover, not only those of the types this run builds: a run killed while
    building Q8_0 can leave gigabytes that a later --q4_k_m run would otherwise never free. Only
    under the directory's lock, when no other toolkit run can be writing them."""
    found = leftovers(directory, name)
    if not found:
        return
    sizes = []
    for path in found:
        if path.is_dir() and not path.is_symlink():
            sizes.append(sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()))
            shutil.rmtree(path, ignore_errors=True)
        else:
            sizes.append(path.lstat().st_size)
            path.unlink(missing_ok=True)
    console.notice(f"removed what a killed run left in {directory}: {', '.join(p.name for p in found)} "
                   f"({size_text(sum(sizes))})")
