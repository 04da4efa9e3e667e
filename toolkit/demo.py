"""The demo: the embedded SmolLM2-135M-Instruct, rebuilt as an HF checkpoint, quantized."""

from __future__ import annotations

from pathlib import Path

from . import embedded, vendor
from .quantize import QuantizeResult, QuantizeSettings, quantize


def checkpoint() -> Path:
    """The embedded model as a Hugging Face checkpoint (built once, cached)."""
    target = vendor.cache_root() / "checkpoints" / embedded.SMOLLM2_NAME
    return embedded.rebuild_checkpoint(embedded.smollm2_gguf(), target)


def run(output_dir: Path = Path("models")) -> QuantizeResult:
    return quantize(str(checkpoint()), QuantizeSettings(types=("Q4_K_M",), output_dir=output_dir))
