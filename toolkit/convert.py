"""Stage 2: an HF checkpoint directory → one 16/32-bit GGUF, by llama.cpp's own converter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from . import console, vendor
from .errors import ConversionFailed, NotACheckpoint, UnsupportedArchitecture, UserError
from .fsutil import atomic_path

OUTTYPES = ("auto", "bf16", "f16", "f32")
_PERCENT = re.compile(rb"Writing:\s+(\d+)%")
_UNSUPPORTED = re.compile(r"Model (\S+) is not supported")


def read_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.json"
    if not path.is_file():
        raise NotACheckpoint(f"{checkpoint}: no config.json, so not a Hugging Face checkpoint directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise NotACheckpoint(f"{path}: not valid JSON ({e})") from None


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


def convert(checkpoint: Path, out: Path, outtype: str) -> Path:
    """Run convert_hf_to_gguf.py on `checkpoint`, writing `out` atomically."""
    config = read_config(checkpoint)
    outtype = resolve_outtype(outtype, config)
    converter = vendor.require()
    # Its own gguf-py first on the path (the script also prepends it): never a gguf wheel.
    pythonpath = os.pathsep.join(filter(None, [str(converter.gguf_py), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", PYTHONPATH=pythonpath)
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not a wheel
    tail: deque[str] = deque(maxlen=40)
    with atomic_path(out) as tmp, console.step_progress() as progress:
        task = progress.add_task(f"convert → {outtype.upper()}", total=100)
        cmd = [sys.executable, str(converter.script), str(checkpoint),
               "--outfile", str(tmp), "--outtype", outtype]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            assert proc.stdout is not None
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
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            raise _conversion_error(checkpoint, config, list(tail), code)
        progress.update(task, completed=100)
    return out


def _conversion_error(checkpoint: Path, config: dict, tail: list[str], code: int) -> Exception:
    text = "\n".join(tail)
    if m := _UNSUPPORTED.search(text):
        return UnsupportedArchitecture(
            f"{checkpoint}: architecture {m.group(1)} is not supported by llama.cpp's converter "
            f"(llama-cpp-python {vendor.versions.LLAMA_CPP_PYTHON})"
        )
    if not config.get("architectures"):
        return UnsupportedArchitecture(f"{checkpoint}: config.json names no architectures; the converter cannot tell the model type")
    errors = [line for line in tail if "Error" in line or "error" in line.lower()]
    reason = (errors or tail or [f"exit code {code}"])[-1].strip()
    return ConversionFailed(f"llama.cpp's converter failed on {checkpoint}: {reason}")
