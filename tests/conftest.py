"""Shared fixtures: real models rebuilt offline, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import demo, embedded, vendor
from toolkit.convert import convert
from toolkit.quantize import QuantizeSettings, quantize

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m toolkit ...` as a user would, capturing both streams."""
    full_env = dict(os.environ, COLUMNS="200", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "toolkit", *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def converter() -> vendor.Converter:
    return vendor.require()


@pytest.fixture(scope="session")
def smollm2_hf(converter) -> Path:
    """SmolLM2-135M-Instruct as a real HF checkpoint (rebuilt from the embedded GGUF)."""
    return demo.checkpoint()


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """gemma-3-270m Q4_K_M, a base model: its GGUF has no chat template."""
    return embedded.gemma3_gguf(vendor.cache_root() / "checkpoints")


@pytest.fixture(scope="session")
def gemma3_hf(converter, gemma3_gguf) -> Path:
    return embedded.rebuild_checkpoint(gemma3_gguf, vendor.cache_root() / "checkpoints" / "gemma-3-270m")


@pytest.fixture(scope="session")
def smollm2_bf16(smollm2_hf, tmp_path_factory) -> Path:
    return convert(smollm2_hf, tmp_path_factory.mktemp("bf16") / "smol-BF16.gguf", "auto")


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    return quantize(str(smollm2_hf), QuantizeSettings(types=("q4_k_m", "Q8_0"), output_dir=out))
