"""Stage 3: a 16/32-bit GGUF → a quantized GGUF, by llama.cpp's quantizer in-process."""

from __future__ import annotations

import ctypes
import os
import re
import threading
from pathlib import Path

from . import console, llama_log
from .errors import ImatrixRequired, LoadFailed, QuantizationFailed, UnknownQuantType
from .fsutil import atomic_path
from .gguf import FILE_TYPES
from .process import child

# Every llama_ftype the quantizer accepts, by llama-quantize's names, and its aliases.
QUANT_TYPES: dict[str, int] = {name: ftype for ftype, name in FILE_TYPES.items()}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
DEFAULT_TYPE = "Q4_K_M"
# Types llama.cpp refuses without an importance matrix, whatever the model (checked against its
# own dry run in tests); the dry run before each quantization still catches any other case.
IMATRIX_TYPES = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S"})
_TENSOR_STEP = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def canonical_type(name: str) -> str:
    """Normalize a type name (case-insensitive, aliases resolved) or raise UnknownQuantType."""
    key = name.strip().upper().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in QUANT_TYPES:
        valid = ", ".join(sorted(QUANT_TYPES, key=lambda n: (QUANT_TYPES[n] > 31, n)))
        raise UnknownQuantType(f"unknown quantization type {name!r}; valid types: {valid}")
    return key


def _params(qtype: str, nthread: int, dry_run: bool = False):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = nthread
    params.dry_run = dry_run
    return params


def needs_imatrix(src: Path, qtype: str) -> bool:
    """Ask llama.cpp (a dry run, nothing written) whether this model+type needs an imatrix."""
    import llama_cpp

    params = _params(qtype, 1, dry_run=True)
    with llama_log.capture() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), os.devnull.encode(), ctypes.byref(params))
    text = log.text()
    return "require an imatrix" in text or (rc != 0 and "importance matrix" in text)


def imatrix_required(types: list[str], scope: str = "") -> ImatrixRequired:
    verb = "needs" if len(types) == 1 else "need"
    return ImatrixRequired(
        f"{', '.join(types)} {verb} an importance matrix{scope}: add --imatrix auto (calibrated on the "
        "task's questions; needs `toolkit setup --tools`) or use a type such as Q4_K_M, IQ4_XS or Q8_0"
    )


def quantize_file(src: Path, dst: Path, qtype: str, nthread: int = 0) -> None:
    """Quantize `src` into `dst` (atomically), with a progress bar over tensors."""
    import llama_cpp

    if needs_imatrix(src, qtype):
        raise imatrix_required([qtype], " for this model")
    params = _params(qtype, nthread)
    with console.step_progress() as progress, atomic_path(dst) as tmp:
        task = progress.add_task(f"quantize → {qtype}", total=None)

        def on_line(line: str) -> None:
            if m := _TENSOR_STEP.search(line):
                progress.update(task, completed=int(m.group(1)), total=int(m.group(2)))

        result: dict[str, int] = {}
        with llama_log.capture(on_line) as log:
            # A worker thread keeps the main thread free to take Ctrl-C; the partial file
            # is removed either way, so nothing half-written is ever left behind.
            worker = threading.Thread(
                target=lambda: result.update(rc=llama_cpp.llama_model_quantize(
                    str(src).encode(), str(tmp).encode(), ctypes.byref(params))),
                daemon=True,
            )
            worker.start()
            while worker.is_alive():
                worker.join(0.2)
        if result.get("rc", 1) != 0:
            reason = log.last_error() or "no reason given"
            raise QuantizationFailed(f"llama.cpp could not quantize {src.name} to {qtype}: {reason}")
        verify_loads(tmp, dst.name)


def quantize_file_with_imatrix(src: Path, dst: Path, qtype: str, imatrix: Path, nthread: int = 0) -> None:
    """Quantize with an importance matrix: llama.cpp's llama-quantize from the same sdist (the C
    API takes the matrix only as a C++ object)."""
    from . import tools

    llama_quantize = tools.require().path("llama-quantize")
    with console.step_progress() as progress, atomic_path(dst) as tmp:
        task = progress.add_task(f"quantize → {qtype} (imatrix)", total=None)
        cmd = [str(llama_quantize), "--imatrix", str(imatrix), str(src), str(tmp), qtype,
               str(nthread or os.cpu_count() or 1)]
        log = llama_log.LogTail()
        with child(cmd, text=True, errors="replace") as proc:
            for line in proc.stdout:
                log.feed(line)
                if m := _TENSOR_STEP.search(line):
                    progress.update(task, completed=int(m.group(1)), total=int(m.group(2)))
            rc = proc.wait()
        if rc != 0:
            reason = log.last_error() or "no reason given"
            raise QuantizationFailed(f"llama-quantize could not quantize {src.name} to {qtype}: {reason}")
        verify_loads(tmp, dst.name)


def verify_loads(path: Path, name: str | None = None) -> int:
    """Load the file with llama.cpp (CPU, mmap) and return its parameter count; `name` is what
    the error calls it (the final name of a file still under its temporary one)."""
    import llama_cpp

    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    with llama_log.capture() as log:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise LoadFailed(f"llama.cpp cannot load {name or path.name}: {log.load_error() or 'unknown reason'}")
    try:
        return int(llama_cpp.llama_model_n_params(model))
    finally:
        llama_cpp.llama_model_free(model)
