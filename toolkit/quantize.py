"""The `quantize` verb: source (→ LoRA merge) → convert → quantize → manifest, one call.

    quantize("LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", QuantizeSettings(types=("Q4_K_M", "Q8_0")))
    quantize("Qwen/Qwen3-8B", QuantizeSettings(lora="team/qwen3-8b-norm-lora"))
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import gguf, manifest
from .adapter import Adapter, load_adapter, merged_checkpoint
from .convert import convert, read_config, resolve_outtype
from .errors import InvalidGGUF, OutputExists
from .fsutil import sha256_file
from .quantizer import DEFAULT_TYPE, QUANT_TYPES, canonical_type, quantize_file, verify_loads
from .source import Source, fetch, locate


@dataclass(frozen=True)
class QuantizeSettings:
    types: tuple[str, ...] = (DEFAULT_TYPE,)
    outtype: str = "auto"  # the intermediate: auto | bf16 | f16 | f32
    revision: str | None = None
    output_dir: Path = Path("models")
    keep_intermediate: bool = False
    force: bool = False
    threads: int = 0  # 0: every core
    check: bool = True  # fidelity report of each new quant against the 16-bit intermediate
    lora: str | None = None  # a PEFT LoRA adapter (directory or hub id) merged into the model first
    lora_revision: str | None = None


@dataclass(frozen=True)
class OutputFile:
    type: str
    path: Path
    size: int
    bits_per_weight: float
    sha256: str
    seconds: float
    status: str  # "built" or "skipped"
    intermediate: bool = False


@dataclass
class QuantizeResult:
    source: Source
    directory: Path
    files: list[OutputFile] = field(default_factory=list)
    convert_seconds: float | None = None
    fidelity: list = field(default_factory=list)  # fidelity.FidelityRow, reference first
    adapter: Adapter | None = None
    merge_seconds: float | None = None


def output_path(directory: Path, name: str, qtype: str) -> Path:
    return directory / f"{name}-{qtype}.gguf"


def _is_valid(path: Path, entry: dict | None, qtype: str) -> bool:
    """A finished output: recorded for this source, same size, complete, of the right type."""
    if not entry or entry.get("size") != path.stat().st_size:
        return False
    try:
        return gguf.read(path).file_type == QUANT_TYPES[qtype]
    except InvalidGGUF:
        return False


def _describe(path: Path, qtype: str, seconds: float, intermediate: bool) -> dict:
    info = gguf.read(path)
    return {
        "type": qtype,
        "file": path.name,
        "file_type": info.file_type,
        "size": path.stat().st_size,
        "bits_per_weight": round(info.bits_per_weight, 4),
        "n_params": info.n_params,
        "sha256": sha256_file(path),
        "seconds": round(seconds, 2),
        "intermediate": intermediate,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _output(path: Path, entry: dict, status: str) -> OutputFile:
    return OutputFile(entry["type"], path, entry["size"], entry["bits_per_weight"], entry["sha256"],
                      entry["seconds"], status, entry.get("intermediate", False))


def quantize(model: str, settings: QuantizeSettings = QuantizeSettings(), token: str | None = None) -> QuantizeResult:
    types = list(dict.fromkeys(canonical_type(t) for t in settings.types)) or [DEFAULT_TYPE]
    source = locate(model, settings.revision, token)
    lora = load_adapter(settings.lora, settings.lora_revision, token) if settings.lora else None
    # A merged model is another model: its own directory and names, <base>-<adapter>.
    name = f"{source.name}-{lora.name}" if lora else source.name
    directory = settings.output_dir / name
    result = QuantizeResult(source, directory, adapter=lora)
    recorded = manifest.load(directory)
    same_source = manifest.same_origin(recorded, source.identity(), lora.source.identity() if lora else None)
    man = recorded if same_source else manifest.new(source.identity(), lora.record() if lora else None)

    # Decide everything before any work: skip what is finished, refuse to clobber the rest.
    todo: list[str] = []
    for qtype in types:
        final = output_path(directory, name, qtype)
        if final.exists() and not settings.force:
            entry = man["files"].get(qtype) if same_source else None
            if _is_valid(final, entry, qtype):
                result.files.append(_output(final, entry, "skipped"))
                continue
            raise OutputExists(f"{final} exists but was not made by toolkit from this source; --force replaces it")
        todo.append(qtype)
    if not todo:
        return result

    checkpoint = fetch(source, token)
    inter_type = resolve_outtype(settings.outtype, read_config(checkpoint)).upper()
    inter_final = output_path(directory, name, inter_type)
    keep = settings.keep_intermediate or inter_type in todo
    inter_entry = man["files"].get(inter_type)
    reuse = (not settings.force and same_source and inter_final.exists() and inter_type not in todo
             and _is_valid(inter_final, inter_entry, inter_type))
    intermediate = inter_final if (keep or reuse) else directory / f".{name}-{inter_type}.intermediate"
    try:
        if not reuse:
            with contextlib.ExitStack() as stack:
                if lora:
                    t0 = time.monotonic()
                    checkpoint = stack.enter_context(merged_checkpoint(checkpoint, lora, directory, name))
                    result.merge_seconds = time.monotonic() - t0
                t0 = time.monotonic()
                convert(checkpoint, intermediate, settings.outtype)
                result.convert_seconds = time.monotonic() - t0
            if keep:
                verify_loads(intermediate)
                entry = _describe(intermediate, inter_type, result.convert_seconds, intermediate=True)
                manifest.record(directory, man, inter_type, entry)
                if inter_type in todo:
                    result.files.append(_output(intermediate, entry, "built"))
        for qtype in todo:
            if qtype == inter_type:
                continue
            final = output_path(directory, name, qtype)
            t0 = time.monotonic()
            quantize_file(intermediate, final, qtype, settings.threads)
            entry = _describe(final, qtype, time.monotonic() - t0, intermediate=False)
            manifest.record(directory, man, qtype, entry)
            result.files.append(_output(final, entry, "built"))
        built = [f.path for f in result.files if f.status == "built" and not f.intermediate]
        if settings.check and built:
            from . import fidelity

            result.fidelity = fidelity.compare(intermediate, built)
            for row, f in zip(result.fidelity[1:], [f for f in result.files if f.path in built]):
                entry = dict(man["files"][f.type], fidelity={
                    "reference": inter_type, "texts": "bundled samples (questions + reference answers)",
                    **{k: round(v, 6) if isinstance(v, float) else v
                       for k, v in row.as_dict().items() if k not in ("file", "type")}})
                manifest.record(directory, man, f.type, entry)
    finally:
        if not (keep or reuse):
            intermediate.unlink(missing_ok=True)
    order = {t: i for i, t in enumerate(types)}
    result.files.sort(key=lambda f: order.get(f.type, -1))
    return result
