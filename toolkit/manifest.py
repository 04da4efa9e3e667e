"""models/<name>/manifest.json: where each GGUF came from and what it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__, vendor, versions
from .fsutil import write_json_atomic

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
