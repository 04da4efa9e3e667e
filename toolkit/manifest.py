"""models/<name>/manifest.json: where each GGUF came from and what it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__, vendor, versions
from .fsutil import write_json_atomic

FILENAME = "manifest.json"


def load(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / FILENAME).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def new(source_identity: dict) -> dict[str, Any]:
    conv = vendor.find()
    return {
        "toolkit_version": __version__,
        "source": source_identity,
        "llama_cpp": {
            "llama_cpp_python": versions.LLAMA_CPP_PYTHON,
            "commit": conv.commit if conv else versions.LLAMA_CPP_COMMIT,
        },
        "files": {},
    }


def record(directory: Path, manifest: dict[str, Any], qtype: str, entry: dict[str, Any]) -> None:
    """Add or replace one file's entry and rewrite the manifest atomically."""
    manifest["files"][qtype] = entry
    manifest["toolkit_version"] = __version__
    write_json_atomic(directory / FILENAME, manifest)
