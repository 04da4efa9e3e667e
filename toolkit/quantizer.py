"""Stage 3: a 16/32-bit GGUF → a quantized GGUF, by llama.cpp's quantizer in-process."""

from __future__ import annotations

import ctypes
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from . import console, gguf, llama_log
from .errors import ImatrixRequired, LoadFailed, QuantizationFailed, UnknownQuantType
from .fsutil import atomic_path, disk_full, require_space
from .gguf import FILE_TYPES, GGML_TYPES
from .process import child

# Every llama_ftype the quantizer accepts, by llama-quantize's names, and its aliases.
QUANT_TYPES: dict[str, int] = {name: ftype for ftype, name in FILE_TYPES.items()}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
DEFAULT_TYPE = "Q4_K_M"
# Types llama.cpp refuses without an importance matrix, whatever the model (checked against its
# own dry run in tests); the dry run before each quantization still catches any other case.
IMATRIX_TYPES = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S"})
_TENSOR_STEP = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")
_QUANT_SIZE = re.compile(r"quant size\s*=\s*([\d.]+) MiB")
# The ggml type a file type writes most weights in, where the names differ (llama_ftype_get_default_type;
# otherwise Q4_K_M → Q4_K, MXFP4_MOE → MXFP4). IQ3_XS: IQ3_S by default, but some tensors go down to
# IQ3_XXS, and the estimate must stay below the file.
_MAIN_TYPE = {"IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S", "IQ3_M": "IQ3_S", "IQ3_XS": "IQ3_XXS"}
_TYPE_SIZES = {name: (block, nbytes) for name, block, nbytes in GGML_TYPES.values()}


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


@dataclass(frozen=True)
class QuantPlan:
    needs_imatrix: bool
    size: int | None  # bytes the file will take (tensor data as llama.cpp plans it, plus the metadata)


def plan(src: Path, qtype: str) -> QuantPlan:
    """Ask llama.cpp (a dry run, nothing written) whether this model+type needs an imatrix, and
    how big the quantized file will be."""
    import llama_cpp

    params = _params(qtype, 1, dry_run=True)
    with llama_log.capture() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), os.devnull.encode(), ctypes.byref(params))
    text = log.text()
    needs = "require an imatrix" in text or (rc != 0 and "importance matrix" in text)
    return QuantPlan(needs, _quant_size(text, src))


def _quant_size(log: str, src: Path) -> int | None:
    """The file size a dry run's log gives: tensor data ("quant size = … MiB") plus the metadata."""
    m = _QUANT_SIZE.search(log)
    return int(float(m.group(1)) * (1 << 20)) + gguf.read(src).data_offset if m else None


def _run_tool(cmd: list[str]) -> str:
    with child(cmd, text=True, errors="replace") as proc:
        out = proc.stdout.read()
        proc.wait()
    return out


def estimated_size(n_params: int, qtype: str) -> int:
    """About the least a `qtype` file of `n_params` weights takes, before there is a file to ask
    llama.cpp about: every weight in the type's main ggml type. llama.cpp keeps some tensors
    wider, so the file comes out bigger: by a few percent for 8B models, by a third for
    SmolLM2, whose 576-wide rows do not fit Q4_K's 256-weight blocks."""
    main = _MAIN_TYPE.get(qtype) or next((n for n in (qtype, qtype.rsplit("_", 1)[0]) if n in _TYPE_SIZES), "IQ1_S")
    block, nbytes = _TYPE_SIZES[main]
    return n_params * nbytes // block


def imatrix_required(types: list[str], scope: str = "") -> ImatrixRequired:
    verb = "needs" if len(types) == 1 else "need"
    return ImatrixRequired(
        f"{', '.join(types)} {verb} an importance matrix{scope}: add --imatrix auto (calibrated on the "
        "task's questions; needs `toolkit setup --tools`) or use a type such as Q4_K_M, IQ4_XS or Q8_0"
    )


def quantize_file(src: Path, dst: Path, qtype: str, nthread: int = 0) -> None:
    """Quantize `src` into `dst` (atomically), with a progress bar over tensors."""
    import llama_cpp

    dry = plan(src, qtype)
    if dry.needs_imatrix:
        raise imatrix_required([qtype], " for this model")
    if dry.size:
        require_space(dst.parent, dry.size, f"writing {dst.name}")
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
            raise disk_full(dst.parent, f"writing {dst.name}") or QuantizationFailed(
                f"llama.cpp could not quantize {src.name} to {qtype}: {reason}")
        verify_loads(tmp, dst.name)


def quantize_file_with_imatrix(src: Path, dst: Path, qtype: str, imatrix: Path, nthread: int = 0) -> None:
    """Quantize with an importance matrix: llama.cpp's llama-quantize from the same sdist (the C
    API takes the matrix only as a C++ object)."""
    from . import tools

    llama_quantize = tools.require().path("llama-quantize")
    # Its own dry run, with the matrix: for IQ types the matrix decides some tensors' types.
    if size := _quant_size(_run_tool([str(llama_quantize), "--dry-run", "--imatrix", str(imatrix), str(src), qtype]), src):
        require_space(dst.parent, size, f"writing {dst.name}")
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
            raise disk_full(dst.parent, f"writing {dst.name}") or QuantizationFailed(
                f"llama-quantize could not quantize {src.name} to {qtype}: {reason}")
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
