"""Stage 2: an HF checkpoint directory → one 16/32-bit GGUF, by llama.cpp's own converter
(and a PEFT LoRA adapter → a GGUF LoRA, by its convert_lora_to_gguf.py)."""

from __future__ import annotations

import os
import re
import sys
from collections import deque
from pathlib import Path
from typing import Callable

from . import console, converter_entry, vendor
from .errors import (ConversionFailed, UnsupportedAdapter, UnsupportedArchitecture, UnsupportedTokenizer,
                     UserError)
from .fsutil import atomic_path, disk_full
from .process import child
from .source import read_config

OUTTYPES = ("auto", "bf16", "f16", "f32")
_PERCENT = re.compile(rb"Writing:\s+(\d+)%")
_UNSUPPORTED = re.compile(r"Model (\S+) is not supported")
_UNMAPPED = re.compile(r"Can not map tensor '([^']+)'")
# llama.cpp knows a BPE tokenizer's pre-tokenization (how text is cut before merging) by the hash
# of its tokens for a fixed text, and cannot run one it does not know.
_UNKNOWN_PRE = re.compile(r"BPE pre-tokenizer was not recognized")
_CHKHSH = re.compile(r"chkhsh:\s+([0-9a-f]{64})")
# How the converter says the disk is full: numpy's tofile (it checks the room before a write, and
# counts a short one), the OS; and a quota.
_NO_SPACE = re.compile(r"Not enough free space|No space left on device|\d+ requested and \d+ written|Disk quota exceeded")


def checkpoint_dtype(config: dict) -> str | None:
    """The dtype the checkpoint was saved in (`torch_dtype`, or `dtype` since transformers 5)."""
    for cfg in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            if isinstance(cfg.get(key), str):
                return cfg[key]
    return None


def resolve_outtype(outtype: str, config: dict) -> str:
    """`auto` keeps bf16 checkpoints in bf16 (no range loss) and writes f16 otherwise."""
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UserError(f"unknown --outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if outtype != "auto":
        return outtype
    return "bf16" if checkpoint_dtype(config) == "bfloat16" else "f16"


def convert(checkpoint: Path, out: Path, outtype: str, verify: Callable[[Path, str], object] | None = None) -> Path:
    """Run convert_hf_to_gguf.py on `checkpoint`, writing `out` atomically; `verify(tmp, name)`,
    if given, checks the finished file before it takes its name (a failure leaves nothing)."""
    config = read_config(checkpoint)
    outtype = resolve_outtype(outtype, config)
    converter = vendor.require()
    _run(converter, [str(converter.script), str(checkpoint)], out, outtype, f"convert → {outtype.upper()}",
         lambda code, tail: _conversion_error(checkpoint, config, tail, code), verify)
    return out


LORA_OUTTYPES = ("f16", "bf16", "f32")


def convert_lora(adapter_dir: Path, base: Path, out: Path, outtype: str = "f16") -> Path:
    """Run convert_lora_to_gguf.py (same pinned source) on a PEFT adapter, against the base
    checkpoint's config, writing a GGUF LoRA to `out` atomically."""
    read_config(base)
    outtype = outtype.lower()
    if outtype not in LORA_OUTTYPES:
        raise UserError(f"unknown LoRA --outtype {outtype!r}; choose one of {', '.join(LORA_OUTTYPES)}")
    converter = vendor.require()
    # --base: the base's config and tokenizer come from disk, never from the hub.
    cmd = [str(converter.lora_script), str(adapter_dir), "--base", str(base)]
    _run(converter, cmd, out, outtype, f"LoRA → {outtype.upper()}", lambda code, tail: _lora_error(adapter_dir, tail, code))
    return out


def _run(converter: vendor.Converter, args: list[str], out: Path, outtype: str, label: str,
         error: Callable[[int, list[str]], Exception], verify: Callable[[Path, str], object] | None = None) -> None:
    """Run one of the converter's scripts into `out`, atomically; `error` makes the exception
    for a failed run from its exit code and last lines of output."""
    # Its own gguf-py first on the path (the script also prepends it): never a gguf wheel.
    pythonpath = os.pathsep.join(filter(None, [str(converter.gguf_py), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", PYTHONPATH=pythonpath)
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not a wheel
    tail: deque[str] = deque(maxlen=200)  # a traceback through runpy is long; what explains it comes before
    with atomic_path(out) as tmp, console.step_progress() as progress:
        task = progress.add_task(label, total=100)
        # Started through converter_entry (the script runs unchanged; see there for the adaptations),
        # by its path: `-m` would put the working directory first on the path and import toolkit.
        cmd = [sys.executable, converter_entry.__file__, *args, "--outfile", str(tmp), "--outtype", outtype]
        with child(cmd, env=env) as proc:
            buf = b""
            while chunk := proc.stdout.read1(4096):
                buf += chunk
                *lines, buf = re.split(rb"[\r\n]", buf)
                for line in lines:
                    if m := _PERCENT.search(line):
                        progress.update(task, completed=int(m.group(1)))
                    elif line.strip():
                        tail.append(line.decode("utf-8", "replace"))
            code = proc.wait()
        if code != 0:  # raised inside the block: the partial file is dropped
            said = any(_NO_SPACE.search(line) for line in tail)
            raise disk_full(out.parent, f"writing the {outtype.upper()} GGUF", said=said) or error(code, list(tail))
        if verify is not None:
            verify(tmp, out.name)
        progress.update(task, completed=100)


def _lora_error(adapter_dir: Path, tail: list[str], code: int) -> Exception:
    if m := _UNMAPPED.search("\n".join(tail)):
        return UnsupportedAdapter(f"{adapter_dir}: the adapter changes {m.group(1)}, which llama.cpp's converter "
                                  "has no GGUF name for in this architecture; merge it instead: "
                                  "toolkit quantize BASE --lora ADAPTER")
    errors = [line for line in tail if "error" in line.lower()]
    reason = (errors or tail or [f"exit code {code}"])[-1].strip()
    return ConversionFailed(f"llama.cpp's convert_lora_to_gguf.py failed on {adapter_dir}: {reason}")


def _conversion_error(checkpoint: Path, config: dict, tail: list[str], code: int) -> Exception:
    text = "\n".join(tail)
    if m := _UNSUPPORTED.search(text):
        return UnsupportedArchitecture(
            f"{checkpoint}: architecture {m.group(1)} is not supported by llama.cpp's converter "
            f"(llama-cpp-python {vendor.versions.LLAMA_CPP_PYTHON})"
        )
    if _UNKNOWN_PRE.search(text):
        digest = m.group(1)[:16] if (m := _CHKHSH.search(text)) else "unknown"
        return UnsupportedTokenizer(
            f"{checkpoint}: llama.cpp's converter (llama-cpp-python {vendor.versions.LLAMA_CPP_PYTHON}) does not "
            f"know this tokenizer's pre-tokenization (hash {digest}…): a model llama.cpp does not support yet, "
            "or a tokenizer changed after training"
        )
    if not config.get("architectures"):
        return UnsupportedArchitecture(f"{checkpoint}: config.json names no architectures; the converter cannot tell the model type")
    errors = [line for line in tail if "Error" in line or "error" in line.lower()]
    reason = (errors or tail or [f"exit code {code}"])[-1].strip()
    return ConversionFailed(f"llama.cpp's converter failed on {checkpoint}: {reason}")
