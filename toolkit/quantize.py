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
from .adapter import Adapter, load_adapter, merge_copy_bytes, merged_checkpoint
from .convert import checkpoint_dtype, convert, resolve_outtype
from .engine import Engine, EngineSettings
from .errors import InvalidGGUF, OutputExists, UserError
from .fsutil import OUTPUT_HINT, exclusive, output_directory, require_space, same_disk, sha256_file
from .quantizer import (DEFAULT_TYPE, IMATRIX_TYPES, QUANT_TYPES, canonical_type, estimated_size, imatrix_required,
                        quantize_file, quantize_file_with_imatrix, verify_loads)
from .source import Source, fetch, locate, pending_bytes, read_config, repo_cache_dir
from .weights import count_params


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
    imatrix: str | None = None  # "auto" (computed on the calibration items) or an imatrix file
    calibration: Path | None = None  # competition JSON for "auto" (default: the bundled samples)


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
    imatrix: dict | None = None  # the manifest's record of the matrix used
    imatrix_seconds: float | None = None  # computing it (None when reused or given)

    def as_dict(self) -> dict:
        return {
            "source": self.source.identity(), "directory": str(self.directory),
            "adapter": self.adapter.source.identity() if self.adapter else None,
            "files": [{"type": f.type, "path": str(f.path), "size": f.size, "bits_per_weight": f.bits_per_weight,
                       "sha256": f.sha256, "seconds": f.seconds, "status": f.status, "intermediate": f.intermediate}
                      for f in self.files],
            "merge_seconds": self.merge_seconds, "convert_seconds": self.convert_seconds,
            "imatrix": self.imatrix, "imatrix_seconds": self.imatrix_seconds,
            "fidelity": [row.as_dict() for row in self.fidelity],
        }


def output_key(qtype: str, imatrix: bool = False) -> str:
    """A file's name suffix and manifest key: an imatrix quant lives beside the plain one."""
    return f"{qtype}-imatrix" if imatrix else qtype


def output_path(directory: Path, name: str, qtype: str, imatrix: bool = False) -> Path:
    return directory / f"{name}-{output_key(qtype, imatrix)}.gguf"


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
    return OutputFile(output_key(entry["type"], "imatrix" in entry), path, entry["size"], entry["bits_per_weight"],
                      entry["sha256"], entry["seconds"], status, entry.get("intermediate", False))


def _imatrix(settings: QuantizeSettings, calibration_items: list[dict] | None, intermediate: Path, directory: Path,
             name: str, man: dict, result: QuantizeResult, wanted: dict) -> Path:
    """The matrix to quantize with: the given file (checked by _check_inputs), or one computed
    on the calibration items (reused while the intermediate's source and the calibration text
    are unchanged)."""
    from . import imatrix as imx

    if settings.imatrix != "auto":
        given = Path(settings.imatrix).expanduser()
        result.imatrix = {"file": str(given.resolve()), "sha256": wanted["sha256"], "calibration": "given file"}
        return given
    if calibration_items is not None:
        items, source = calibration_items, settings.calibration.name
    else:
        items, source = imx.default_items()
    with Engine(intermediate, EngineSettings(n_gpu_layers="auto")) as vocab:  # vocabulary only
        calib = imx.calibration(items, source, vocab.header.chat_template, vocab.special_tokens(), name)
        n_tokens = len(vocab.tokenize(calib.text)) + 1
    path = directory / f"{name}.imatrix.gguf"
    recorded = man.get("imatrix") or {}
    if (path.is_file() and recorded.get("calibration_sha256") == calib.sha256
            and recorded.get("sha256") == sha256_file(path)):
        result.imatrix = {**recorded, "calibration_items_sha256": calib.items_sha256}  # older records lack it
        return path
    info = imx.compute(intermediate, calib, path, n_tokens, settings.threads)
    result.imatrix, result.imatrix_seconds = imx.describe(info, calib), info.seconds
    man["imatrix"] = result.imatrix
    manifest.save(directory, man)  # now: the matrix is reusable even if a quantization fails
    return path


def _matrix_of(man: dict, files: list[OutputFile]) -> dict | None:
    """The matrix finished imatrix files were made with, as their records say (the manifest's
    fuller record of it when it is the same matrix)."""
    made = next((man["files"][f.type]["imatrix"] for f in files if "imatrix" in man["files"].get(f.type, {})), None)
    recorded = man.get("imatrix") or {}
    return recorded if made and recorded.get("sha256") == made.get("sha256") else made


def _wanted_matrix(settings: QuantizeSettings, calibration_items: list[dict] | None) -> dict | None:
    """What identifies the matrix this run quantizes with, known before any conversion: the given
    file's hash, or the calibration items' (a matrix is computed from them)."""
    if settings.imatrix is None:
        return None
    if settings.imatrix != "auto":
        return {"sha256": sha256_file(Path(settings.imatrix).expanduser())}
    from . import imatrix as imx

    items = calibration_items if calibration_items is not None else imx.default_items()[0]
    return {"calibration_items_sha256": imx.items_sha256(items)}


def _made_with(entry: dict, wanted: dict | None) -> bool:
    used = entry.get("imatrix") or {}
    return wanted is None or all(used.get(k) == v for k, v in wanted.items())


def _check_matrix_file(path: Path) -> None:
    """llama-quantize takes a GGUF imatrix or llama-imatrix's legacy .dat (an int32 count of
    entries first); anything else would fail only after the conversion."""
    if not path.is_file():
        raise UserError(f"{path}: no such imatrix file (or use --imatrix auto)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        kind = gguf.read(path).metadata.get("general.type")  # a truncated file is said as such
        if kind != "imatrix":
            what = gguf.NOT_MODELS.get(kind, "a model")
            raise UserError(f"{path}: is {what}, not an importance matrix (llama-imatrix's output, or --imatrix auto)")
    elif len(head) < 4 or not 0 < int.from_bytes(head, "little", signed=True) < 1_000_000:
        raise UserError(f"{path}: not an importance matrix (neither a GGUF imatrix nor llama-imatrix's .dat)")


def _require_room(directory: Path, name: str, n_params: int, quants: list[str], intermediate: str | None,
                  merge: tuple[str, int] | None = None, download: tuple[str, int] | None = None) -> None:
    """Refuse, before the work, outputs the disk cannot hold at their peak: the 16-bit file stays
    until every quant is written; a LoRA merge's copy (adapter, bytes) of the shards it changes
    goes once the conversion is done; a download (repo, bytes) counts where it shares the disk."""
    need = sum(estimated_size(n_params, t) for t in quants)
    what = f"writing {name} as {' + '.join(([intermediate] if intermediate else []) + quants)}"
    hint = OUTPUT_HINT
    if intermediate:
        need = estimated_size(n_params, intermediate) + max(need, merge[1] if merge else 0)
    if merge:
        what = f"merging {merge[0]} and {what}"
    if download:
        need += download[1]
        what = f"downloading {download[0]} and {what}"
        hint = "free some space there, choose another --output-dir or set HF_HOME (or HF_HUB_CACHE) to a disk with room"
    require_space(directory, need, what, hint)


def _check_room_before_download(source: Source, directory: Path, name: str, todo: list[str], download: int,
                                outtype: str, converting: bool) -> None:
    """With the hub's parameter count, the outputs are checked before a download that would
    only be refused afterwards, together with it where the HF cache shares their disk."""
    stored = max(source.parameters, key=source.parameters.get)  # the hub's dtype name: BF16, F16, F32
    inter = outtype.upper() if outtype.lower() != "auto" else "BF16" if stored == "BF16" else "F16"
    _require_room(directory, name, sum(source.parameters.values()), [t for t in todo if t not in ("F32", "F16", "BF16")],
                  inter if converting else None,
                  download=(source.id, download) if same_disk(repo_cache_dir(source.id), directory) else None)


def _check_inputs(settings: QuantizeSettings, types: list[str]) -> list[dict] | None:
    """What can be refused from the options alone, before any download or conversion. Returns
    the --calibration items, read and checked once here."""
    if settings.calibration and settings.imatrix != "auto":
        raise UserError("--calibration is the text for --imatrix auto: add --imatrix auto" if settings.imatrix is None
                        else "--calibration is only used by --imatrix auto, and an imatrix file was given: drop one of them")
    if settings.output_dir.exists() and not settings.output_dir.is_dir():
        raise UserError(f"{settings.output_dir}: --output-dir is a file, not a directory")
    if settings.imatrix is None:
        if needing := [t for t in types if t in IMATRIX_TYPES]:
            raise imatrix_required(needing)
    elif settings.imatrix != "auto":
        _check_matrix_file(Path(settings.imatrix).expanduser())
    if not settings.calibration:
        return None
    from . import imatrix as imx

    return imx.load_items(settings.calibration)


def quantize(model: str, settings: QuantizeSettings = QuantizeSettings(), token: str | None = None) -> QuantizeResult:
    types = list(dict.fromkeys(canonical_type(t) for t in settings.types)) or [DEFAULT_TYPE]
    calibration_items = _check_inputs(settings, types)
    if settings.imatrix is not None:
        from . import tools

        tools.require()  # before any download, conversion or directory
    source = locate(model, settings.revision, token)
    lora = load_adapter(settings.lora, settings.lora_revision, token) if settings.lora else None
    # A merged model is another model: its own directory and names, <base>-<adapter>.
    name = f"{source.name}-{lora.name}" if lora else source.name
    directory = settings.output_dir / name
    if directory.is_dir() and (finished := _build(source, lora, name, directory, types, calibration_items, settings,
                                                  token, decide_only=True)):
        return finished  # nothing to write, and no lock taken: a read-only models/ serves reruns too
    # Writable before a download or conversion that could not be kept. One writer per model
    # directory: a second would remove this one's temporary files and rewrite the manifest
    # without its entries. Under the lock, everything is decided again.
    with output_directory(directory), exclusive(directory / manifest.LOCK, str(directory),
                                                "wait for it to finish, or choose another --output-dir") as guarded:
        return _build(source, lora, name, directory, types, calibration_items, settings, token, sweep=guarded)


def _build(source: Source, lora: Adapter | None, name: str, directory: Path, types: list[str],
           calibration_items: list[dict] | None, settings: QuantizeSettings, token: str | None,
           decide_only: bool = False, sweep: bool = False) -> QuantizeResult | None:
    """Skip what is finished and refuse to clobber the rest; then, under the directory's lock,
    convert, quantize and record (`decide_only`: None when anything is left to build; `sweep`:
    the lock is held, so what killed runs left can go)."""
    result = QuantizeResult(source, directory, adapter=lora)
    recorded = manifest.load(directory)
    same_source = manifest.same_origin(recorded, source.identity(), lora.source.identity() if lora else None)
    man = recorded if same_source else manifest.new(source.identity(), lora.record() if lora else None)

    # Decide everything before any work: skip what is finished, refuse to clobber the rest.
    with_imatrix = settings.imatrix is not None
    wanted = _wanted_matrix(settings, calibration_items)
    todo: list[str] = []
    for qtype in types:
        final = output_path(directory, name, qtype, with_imatrix)
        if final.exists() and not settings.force:
            entry = man["files"].get(output_key(qtype, with_imatrix)) if same_source else None
            if not _is_valid(final, entry, qtype):
                raise OutputExists(f"{final} exists but was not made by toolkit from this source; --force replaces it")
            if _made_with(entry, wanted):
                result.files.append(_output(final, entry, "skipped"))
                continue
            # Ours, from another matrix (another --calibration or --imatrix file): made again.
        todo.append(qtype)
    if not todo:
        if with_imatrix:
            result.imatrix = _matrix_of(man, result.files)
        return result
    if decide_only:
        return None

    if sweep:
        manifest.drop_leftovers(directory, name)  # before the room is counted: they may be gigabytes
    if source.parameters and (download := pending_bytes(source)):
        _check_room_before_download(source, directory, name, todo, download, settings.outtype,
                                    converting=not (same_source and any(e.get("intermediate") for e in man["files"].values())))
    checkpoint = fetch(source, token)
    config = read_config(checkpoint)
    inter_type = resolve_outtype(settings.outtype, config).upper()
    inter_final = output_path(directory, name, inter_type)
    if with_imatrix and inter_type in todo:
        raise UserError(f"{inter_type} is the unquantized intermediate: an importance matrix does not apply to it")
    keep = settings.keep_intermediate or inter_type in todo
    inter_entry = man["files"].get(inter_type)
    reuse = (not settings.force and same_source and inter_final.exists() and inter_type not in todo
             and _is_valid(inter_final, inter_entry, inter_type))
    intermediate = inter_final if (keep or reuse) else directory / f".{name}-{inter_type}.intermediate"
    n_params = count_params(checkpoint, checkpoint_dtype(config))  # a LoRA merge changes no shapes
    quants = [t for t in todo if t != inter_type]
    _require_room(directory, name, n_params, quants, None if reuse else inter_type,
                  merge=(lora.name, merge_copy_bytes(checkpoint, lora)) if lora and not reuse else None)
    try:
        if not reuse:
            with contextlib.ExitStack() as stack:
                if lora:
                    t0 = time.monotonic()
                    checkpoint = stack.enter_context(merged_checkpoint(checkpoint, lora, directory, name))
                    result.merge_seconds = time.monotonic() - t0
                t0 = time.monotonic()
                # A file kept under its final name is loaded by llama.cpp before it takes that name.
                convert(checkpoint, intermediate, settings.outtype, verify=verify_loads if keep else None)
                result.convert_seconds = time.monotonic() - t0
            if keep:
                entry = _describe(intermediate, inter_type, result.convert_seconds, intermediate=True)
                manifest.record(directory, man, inter_type, entry)
                if inter_type in todo:
                    result.files.append(_output(intermediate, entry, "built"))
        matrix = _imatrix(settings, calibration_items, intermediate, directory, name, man,
                          result, wanted) if with_imatrix else None
        for qtype in todo:
            if qtype == inter_type:
                continue
            final = output_path(directory, name, qtype, with_imatrix)
            t0 = time.monotonic()
            if matrix is not None:
                quantize_file_with_imatrix(intermediate, final, qtype, matrix, settings.threads)
            else:
                quantize_file(intermediate, final, qtype, settings.threads)
            entry = _describe(final, qtype, time.monotonic() - t0, intermediate=False)
            if result.imatrix is not None:
                entry["imatrix"] = {k: result.imatrix[k] for k in ("file", "sha256", "calibration",
                                                                   "calibration_items_sha256") if k in result.imatrix}
            manifest.record(directory, man, output_key(qtype, with_imatrix), entry)
            result.files.append(_output(final, entry, "built"))
        built = [f.path for f in result.files if f.status == "built" and not f.intermediate]
        if settings.check and built:
            from . import fidelity

            result.fidelity = fidelity.compare(intermediate, built, temp_prefix=manifest.fidelity_prefix(name))
            for row, f in zip(result.fidelity[1:], [f for f in result.files if f.path in built]):
                entry = dict(man["files"][f.type], fidelity={
                    "reference": inter_type, "texts": "bundled samples (questions + reference answers)",
                    **{k: round(v, 6) if isinstance(v, float) else v
                       for k, v in row.as_dict().items() if k not in ("file", "type")}})
                manifest.record(directory, man, f.type, entry)
    finally:
        if not (keep or reuse):
            intermediate.unlink(missing_ok=True)
    order = {output_key(t, with_imatrix): i for i, t in enumerate(types)}
    result.files.sort(key=lambda f: order.get(f.type, -1))
    return result
