"""Shared fixtures: real models rebuilt offline, built once per session."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import demo, embedded, vendor
from toolkit.quantize import QuantizeSettings, quantize

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600,
            preexec_fn=None, before: str = "") -> subprocess.CompletedProcess:
    """Run `python -m toolkit ...` as a user would, capturing both streams; `before` is Python
    run first in that process (to stage what a user cannot, such as a disk filling meanwhile)."""
    full_env = dict(os.environ, COLUMNS="200", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    start = ["-c", f"import sys\n{before}\nfrom toolkit.cli import main\nsys.exit(main(sys.argv[1:]))"] if before \
        else ["-m", "toolkit"]
    return subprocess.run([sys.executable, *start, *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def header_only(path, general_type: str):
    """A GGUF v3 with no tensors and one key, general.type: what llama-imatrix and
    convert_lora_to_gguf.py set to "imatrix" and "adapter"."""
    def text(s: str) -> bytes:
        return struct.pack("<Q", len(s.encode())) + s.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("general.type") + struct.pack("<I", 8) + text(general_type)
    path.write_bytes(head + b"\0" * (-len(head) % 32))
    return path


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(mb): a directory on a file system of `mb` MiB (tmpfs), to see what a full disk
    does; skipped where this process may not mount one."""
    mounts: list[Path] = []

    def make(mb: int) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("mounting a small tmpfs is not allowed here")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def files_under(directory: Path) -> list[str]:
    """Every file (not directory) under `directory`, hidden ones included, as relative paths."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir())


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
def tiny_hf(smollm2_hf, tmp_path_factory) -> Path:
    """Four llama layers of random weights with SmolLM2's tokenizer, by scripts/make_random_checkpoint.py:
    for tests of quantize's plumbing (hub, flags, reruns), where the 135M model's conversion and
    IQ4_XS search cost ~30 s a test and prove nothing more. Sharded, as the big checkpoints are."""
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_checkpoint.py"), "--shape", "tiny",
                    "--tokenizer", str(smollm2_hf), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def smollm2_kept(smollm2_hf, tmp_path_factory):
    """Q4_K_M of SmolLM2 with its BF16 intermediate kept: one conversion serves the tests that
    need the 16-bit file and the imatrix tests that quantize beside a plain quant."""
    return quantize(str(smollm2_hf), QuantizeSettings(types=("Q4_K_M",), output_dir=tmp_path_factory.mktemp("kept"),
                                                      keep_intermediate=True, check=False))


@pytest.fixture(scope="session")
def smollm2_bf16(smollm2_kept) -> Path:
    return smollm2_kept.directory / f"{smollm2_kept.directory.name}-BF16.gguf"


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    return quantize(str(smollm2_hf), QuantizeSettings(types=("q4_k_m", "Q8_0"), output_dir=out))


def make_lora(base: Path, out: Path, std: float = 0.02, seed: int = 0, **config) -> Path:
    """A PEFT LoRA adapter for `base`, saved by peft itself. peft starts B at zero (no change);
    we fill it with random values so that the adapter changes greedy tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"], **config}
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(seed)  # peft draws A from torch's global generator
    peft_model = get_peft_model(model, LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def smollm2_lora(smollm2_hf, tmp_path_factory) -> Path:
    """r=8, alpha=16 on q/v/o/down_proj of SmolLM2, random non-zero B. With std 0.12 the greedy
    token changes on 7 of test_lora's 24 prompts, and no top-2 margin is under 0.15 (float32
    logits), far above what F16 rounding moves."""
    return make_lora(smollm2_hf, tmp_path_factory.mktemp("lora") / "smol-lora", std=0.12)


@pytest.fixture(scope="session")
def smollm2_lora_peft_merged(smollm2_hf, smollm2_lora):
    """peft's own merge_and_unload of smollm2_lora into SmolLM2 (bf16, as transformers loads it):
    the reference for toolkit's streamed merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(smollm2_hf))
    return PeftModel.from_pretrained(base, str(smollm2_lora)).merge_and_unload().eval()


@pytest.fixture(scope="session")
def qwen_tokenizer(converter, tmp_path_factory) -> Path:
    """Qwen's tokenizer (llama.cpp's vocab-only ggml-vocab-qwen2.gguf, read by transformers) with
    Qwen3's chat template from the same sdist."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converter.vocabs, gguf_file="ggml-vocab-qwen2.gguf")
    tok.chat_template = (converter.templates / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    out = tmp_path_factory.mktemp("qwen-tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def moe_gguf(qwen_tokenizer, tmp_path_factory) -> Path:
    """A Qwen3-MoE (4 layers of 8 experts, 2 per token) from scripts/make_random_checkpoint.py,
    as a user makes one, quantized to Q4_K_M."""
    where = tmp_path_factory.mktemp("moe")
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_checkpoint.py"), "--shape", "qwen3-moe-tiny",
                    "--tokenizer", str(qwen_tokenizer), "--out", str(where / "moe-tiny")], check=True,
                   capture_output=True)
    (q4,) = quantize(str(where / "moe-tiny"), QuantizeSettings(types=("Q4_K_M",), output_dir=where / "models",
                                                               check=False)).files
    return q4.path

