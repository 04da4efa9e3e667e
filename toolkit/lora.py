"""The `lora` verb: a PEFT LoRA adapter → a GGUF LoRA, which llama.cpp applies at run time on
top of any GGUF of the same base (F16, Q8_0, Q4_K_M …) with `toolkit infer --lora`.

    export_lora("team/exaone-norm-lora", "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import gguf, manifest
from .adapter import Adapter, base_tensors, check_base, load_adapter, runtime_adapter_dir
from .convert import LORA_OUTTYPES, convert_lora
from .errors import OutputExists, UserError
from .fsutil import exclusive, output_directory, sha256_file, through_link
from .source import Source, fetch, locate


@dataclass(frozen=True)
class LoraSettings:
    outtype: str = "f16"  # f16 | bf16 | f32
    output: Path | None = None  # None: <output_dir>/<base>-<adapter>/<base>-<adapter>-LoRA-F16.gguf
    output_dir: Path = Path("models")
    revision: str | None = None  # the adapter's
    base_revision: str | None = None
    force: bool = False


@dataclass
class LoraResult:
    adapter: Adapter
    base: Source
    path: Path
    size: int
    seconds: float
    status: str  # "built" or "skipped"

    def as_dict(self) -> dict:
        return {"status": self.status, "path": str(self.path), "size": self.size, "seconds": self.seconds,
                "base": self.base.identity(), "adapter": self.adapter.source.identity(),
                "r": self.adapter.config.get("r"), "lora_alpha": self.adapter.config.get("lora_alpha"),
                "tensors": len(self.adapter.updates)}


def is_lora_gguf(path: Path) -> bool:
    return gguf.general_type(path) == "adapter"


def export_lora(adapter_spec: str, base_spec: str, settings: LoraSettings = LoraSettings(),
                token: str | None = None) -> LoraResult:
    outtype = settings.outtype.lower()
    if outtype not in LORA_OUTTYPES:
        raise UserError(f"unknown LoRA --outtype {settings.outtype!r}; choose one of {', '.join(LORA_OUTTYPES)}")
    base = locate(base_spec, settings.base_revision, token)
    lora = load_adapter(adapter_spec, settings.revision, token)
    name = f"{base.name}-{lora.name}"
    key = f"LoRA-{outtype.upper()}"
    directory = settings.output_dir / name
    out = settings.output or directory / f"{name}-{key}.gguf"
    # The manifest beside the merged GGUFs records the file only in its default place.
    tracked = settings.output is None
    if out.is_dir():
        raise UserError(f"{out}: is a directory; --output takes a file name")
    target = through_link(out)

    def finished() -> tuple[dict, LoraResult | None]:
        """The manifest to extend, and the result when the file is already made (else None)."""
        recorded = manifest.load(directory) if tracked else {}
        same = tracked and manifest.same_origin(recorded, base.identity(), lora.source.identity())
        man = recorded if same else manifest.new(base.identity(), lora.record())
        if out.exists() and not settings.force:
            entry = man["files"].get(key) if same else None
            if entry and entry.get("size") == out.stat().st_size and is_lora_gguf(out):
                return man, LoraResult(lora, base, out, entry["size"], entry["seconds"], "skipped")
            raise OutputExists(f"{out} exists but was not made by toolkit from this adapter and base; --force replaces it")
        return man, None

    if (done := finished()[1]) is not None:
        return done  # nothing written, no lock taken: a read-only models/ serves reruns too
    # Writable before the download and conversion. One writer at a time: of a model's directory
    # (its own, which `quantize --lora` also writes, or any other with a manifest, where quantize
    # clears leftovers such as a rescaled adapter's copy), else of the one file asked for.
    shared = tracked or (target.parent / manifest.FILENAME).exists() or target.parent.resolve() == directory.resolve()
    lock = target.parent / manifest.LOCK if shared else target.with_name(f".{target.name}.lock")
    with output_directory(target.parent), exclusive(lock, str(target.parent if shared else out)) as guarded:
        man, done = finished()  # again, under the lock: another run may have made it meanwhile
        if done is not None:
            return done
        if tracked and guarded:
            manifest.drop_leftovers(directory, name)
        checkpoint = fetch(base, token)
        # Refuse before converting: the converter's own failure for a foreign base is an assert.
        check_base(lora, base_tensors(checkpoint), checkpoint.name, runtime=True)
        t0 = time.monotonic()
        with runtime_adapter_dir(lora, out.parent) as adapter_dir:
            convert_lora(adapter_dir, checkpoint, out, outtype)
        seconds = time.monotonic() - t0
        size = out.stat().st_size
        info = gguf.read(out)  # complete, or a clear error
        if tracked:
            manifest.record(directory, man, key, {
                "type": key, "file": out.name, "lora": True, "size": size, "tensors": len(info.tensors),
                "sha256": sha256_file(out), "seconds": round(seconds, 2),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
        return LoraResult(lora, base, out, size, seconds, "built")
