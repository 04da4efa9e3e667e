"""The bundled sample questions (toolkit/data): the demo's questions, the default calibration
and fidelity text, and bench's default input, with our own gold answers."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def samples_path() -> Path:
    return Path(str(resources.files("toolkit").joinpath("data", "samples.json")))


def samples_gold_path() -> Path:
    """The sample questions with our own gold answers."""
    return Path(str(resources.files("toolkit").joinpath("data", "samples_gold.json")))


def samples_with_gold() -> list[dict]:
    """The sample questions, each with its gold `output` (the default calibration/fidelity text)."""
    items = json.loads(samples_path().read_text(encoding="utf-8"))
    gold = {str(g["id"]): g for g in json.loads(samples_gold_path().read_text(encoding="utf-8"))}
    return [dict(i, output=gold.get(str(i["id"]), {}).get("output", {})) for i in items]
