"""Stage 1b: a PEFT LoRA adapter — read, checked against its base, merged into it.

The merge streams: the base is never loaded as a model. Each base shard the adapter
touches is copied and its targeted tensors are rewritten in place, a block of rows at a
time, as peft's `merge_and_unload` computes them (W += scale · B @ A in float32, rounded
once to the base's dtype); untouched shards, config and tokenizer files are linked. Peak
memory is the adapter plus one block of rows, whatever the size of the model.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import AdapterMismatch, InvalidAdapter, NotACheckpoint, UnsupportedAdapter, UserError
from .fsutil import atomic_path, require_space, sha256_file
from .source import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Source, fetch, locate_adapter, read_json_object
from .weights import WeightTensor, safetensors_tensors

_PREFIX = "base_model.model."  # how peft names the wrapped model's modules in adapter files
_LINEAR = re.compile(r"(.+)\.lora_([AB])\.weight")
_EMBEDDING = re.compile(r"(.+)\.lora_embedding_([AB])")
# Config switches for LoRA variants whose update is not W += scale · B @ A.
_VARIANTS = {
    "use_dora": "DoRA (use_dora)",
    "use_qalora": "QALoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "lora_bias": "LoRA biases (lora_bias)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "megatron_config": "Megatron-parallel LoRA (megatron_config)",
}
_ROW_BLOCK = 1 << 22  # float32 elements merged at a time (16 MB)


@dataclass(frozen=True, eq=False)
class Update:
    """One low-rank update of a base tensor: W += scale · B @ A (transposed for embeddings
    and fan_in_fan_out layers), with A and B in float32 as peft merges them."""

    target: str  # the base tensor, e.g. model.layers.0.self_attn.q_proj.weight
    a_key: str  # the adapter file's names for A and B
    b_key: str
    a: Any  # torch.Tensor [r, in]
    b: Any  # torch.Tensor [out, r]
    scale: float
    transpose: bool

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = int(self.b.shape[0]), int(self.a.shape[1])
        return (cols, rows) if self.transpose else (rows, cols)

    def rows(self, start: int, stop: int):
        """Rows start:stop of the update, float32 (the same products as peft's B @ A)."""
        if self.transpose:
            return (self.b @ self.a[:, start:stop]).T * self.scale
        return (self.b[start:stop] @ self.a) * self.scale


@dataclass(eq=False)
class Adapter:
    source: Source
    path: Path
    config: dict
    weights: Path
    updates: dict[str, Update]  # by base tensor name
    full: dict[str, Any]  # base tensor name -> tensor that replaces it (modules_to_save)
    base_copies: dict[str, Any]  # saved copies of base layers (peft's save_embedding_layers)

    @property
    def name(self) -> str:
        return self.source.name

    def record(self) -> dict:
        """What the manifest says about the adapter: where from, and its shape."""
        targets = self.config.get("target_modules")
        return {
            **self.source.identity(),
            "peft_type": self.config.get("peft_type"),
            "r": self.config.get("r"),
            "lora_alpha": self.config.get("lora_alpha"),
            "use_rslora": bool(self.config.get("use_rslora")),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "modules_to_save": sorted(self.config.get("modules_to_save") or []),
            "tensors_changed": len(self.updates) + len(self.full),
            "weights": self.weights.name,
            "sha256": sha256_file(self.weights),
        }


def load_adapter(spec: str, revision: str | None = None, token: str | None = None) -> Adapter:
    """Locate (local directory or hub id), fetch the adapter's two files, read and check them."""
    source = locate_adapter(spec, revision, token)
    return read(fetch(source, token), source)


def read(path: Path, source: Source) -> Adapter:
    config = read_json_object(path / ADAPTER_CONFIG, InvalidAdapter, "a PEFT adapter directory", "an adapter's config")
    check_config(config, source.id)
    weights = next((path / w for w in ADAPTER_WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        raise InvalidAdapter(f"{source.id}: no {' or '.join(ADAPTER_WEIGHTS)} beside {ADAPTER_CONFIG}")
    updates, full, copies = _parse(_load_tensors(weights), config, source.id)
    if not updates and not full:
        raise InvalidAdapter(f"{weights}: no LoRA tensors in it")
    return Adapter(source, path, config, weights, updates, full, copies)


def check_config(config: dict, where: str) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise UnsupportedAdapter(f"{where}: a {peft_type or 'untyped'} adapter; only LoRA adapters "
                                 "(peft_type LORA) can be merged or converted")
    for key, what in _VARIANTS.items():
        if config.get(key):
            raise UnsupportedAdapter(f"{where}: {what} is not supported, only plain LoRA; merge it with peft's "
                                     "merge_and_unload and quantize the merged checkpoint instead")


def _load_tensors(weights: Path) -> dict:
    import torch

    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights), device="cpu")
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files: safetensors and torch raise their own kinds
        raise InvalidAdapter(f"{weights}: cannot read it ({type(e).__name__}: {e})") from None


def pattern_value(patterns: dict, module: str, default):
    """peft's per-module rank_pattern / alpha_pattern lookup (peft.utils.other.get_pattern_key)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _parse(tensors: dict, config: dict, where: str) -> tuple[dict[str, Update], dict, dict]:
    pairs: dict[str, dict[str, tuple[str, Any]]] = {}
    full: dict[str, Any] = {}
    copies: dict[str, Any] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        if m := _LINEAR.fullmatch(name):
            pairs.setdefault(m.group(1), {})[m.group(2)] = (key, tensor)
        elif m := _EMBEDDING.fullmatch(name):
            pairs.setdefault(m.group(1), {})["emb" + m.group(2)] = (key, tensor)
        elif "lora_" in name:
            raise UnsupportedAdapter(f"{where}: tensor {key} is not a LoRA A or B matrix; only plain LoRA is supported")
        elif ".base_layer." in name:
            copies[name.replace(".base_layer.", ".")] = tensor
        else:  # a module trained in full (modules_to_save): it replaces the base tensor
            full[name.replace(".modules_to_save.", ".")] = tensor

    use_rslora = bool(config.get("use_rslora"))
    alpha_default = config.get("lora_alpha", config.get("r", 8))
    updates: dict[str, Update] = {}
    for module, parts in pairs.items():
        embedding = "embA" in parts or "embB" in parts
        a_key, a = parts.get("embA" if embedding else "A", (None, None))
        b_key, b = parts.get("embB" if embedding else "B", (None, None))
        if a is None or b is None:
            raise InvalidAdapter(f"{where}: {module} has only one of its two LoRA matrices (A and B)")
        if a.dim() != 2 or b.dim() != 2:
            raise UnsupportedAdapter(f"{where}: {module} is not a linear or embedding layer "
                                     f"(LoRA A of shape {list(a.shape)}); only those are supported")
        if b.shape[1] != a.shape[0]:
            raise InvalidAdapter(f"{where}: {module}: LoRA B {list(b.shape)} does not fit A {list(a.shape)}")
        rank = int(a.shape[0])
        alpha = pattern_value(config.get("alpha_pattern") or {}, module, alpha_default)
        scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        transpose = embedding or bool(config.get("fan_in_fan_out"))
        target = f"{module}.weight"
        updates[target] = Update(target, a_key, b_key, a.float(), b.float(), float(scale), transpose)
    return updates, full, copies


# -- the base checkpoint's tensors, from safetensors headers ---------------------------------

_FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def base_tensors(checkpoint: Path) -> dict[str, WeightTensor]:
    """Name -> dtype, shape and byte range of every tensor, read from the headers only."""
    tensors = safetensors_tensors(checkpoint)
    if not tensors:
        if list(checkpoint.glob("pytorch_model*.bin")):
            raise UserError(f"{checkpoint}: has only pytorch_model*.bin weights; merging a LoRA adapter needs "
                            "safetensors (save the base with save_pretrained(safe_serialization=True))")
        raise NotACheckpoint(f"{checkpoint}: no safetensors weights")
    return tensors


def check_base(adapter: Adapter, base: dict[str, WeightTensor], base_name: str, runtime: bool = False) -> None:
    """Every tensor the adapter changes exists in the base with the shape it expects."""

    def mismatch(target: str, theirs: tuple, ours: tuple) -> AdapterMismatch:
        return AdapterMismatch(f"{target}: the adapter {adapter.name} has shape {list(ours)} for it but {base_name} "
                               f"has {list(theirs)}: the adapter was made for another model (hidden size or layout differs)")

    changed = [(t, u.shape) for t, u in adapter.updates.items()]
    changed += [(t, tuple(x.shape)) for t, x in (*adapter.full.items(), *adapter.base_copies.items())]
    for target, shape in changed:
        if target not in base:
            hint = ""
            if target == "lm_head.weight" and "model.embed_tokens.weight" in base:
                hint = " (this base ties lm_head to the token embeddings)"
            raise AdapterMismatch(f"the adapter {adapter.name} changes {target}, which {base_name} does not have"
                                  f"{hint}: it was made for another model")
        if base[target].shape != shape:
            raise mismatch(target, base[target].shape, shape)
        if base[target].dtype not in _FLOAT_DTYPES:
            raise UserError(f"{target} is {base[target].dtype} in {base_name}; merging needs F32, F16 or BF16 weights")
    if runtime and adapter.full:
        names = ", ".join(sorted(adapter.full)[:3]) + (" …" if len(adapter.full) > 3 else "")
        raise UnsupportedAdapter(f"the adapter {adapter.name} carries full weights for {names} (modules_to_save), "
                                 "which llama.cpp's runtime LoRA cannot apply; merge it instead: "
                                 "toolkit quantize BASE --lora ADAPTER")


# -- the streamed merge ------------------------------------------------------------------------


def merge(checkpoint: Path, adapter: Adapter, out_dir: Path) -> Path:
    """Write the base with the adapter merged into `out_dir`, shard by shard; return it."""
    if adapter.config.get("alora_invocation_tokens") or adapter.config.get("invocation_string"):
        raise UnsupportedAdapter(f"{adapter.source.id}: an activated LoRA (aLoRA) applies only after its invocation "
                                 "tokens and cannot be merged; use it at runtime: toolkit lora ADAPTER --base BASE")
    base = base_tensors(checkpoint)
    check_base(adapter, base, checkpoint.name)
    by_file = _changed_shards(base, adapter)
    out_dir.mkdir(parents=True)
    require_space(out_dir, sum((checkpoint / f).stat().st_size for f in by_file),
                  f"merging {adapter.name} (a copy of the shards it changes)")
    for src in sorted(checkpoint.iterdir()):
        if not src.is_file():
            continue
        dst = out_dir / src.name
        if src.name in by_file:
            _merge_shard(src, dst, [(t, base[t]) for t in by_file[src.name]], adapter)
        else:  # untouched: config, tokenizer, shards the adapter does not change
            dst.symlink_to(src.resolve())
    return out_dir


def _changed_shards(base: dict[str, WeightTensor], adapter: Adapter) -> dict[str, list[str]]:
    """Shard file -> the tensors in it that the adapter changes (only these shards are copied)."""
    by_file: dict[str, list[str]] = {}
    for target in dict.fromkeys([*adapter.base_copies, *adapter.full, *adapter.updates]):
        by_file.setdefault(base[target].file, []).append(target)
    return by_file


def merge_copy_bytes(checkpoint: Path, adapter: Adapter) -> int:
    """What a merge writes beside the outputs: the shards the adapter changes, copied whole."""
    base = base_tensors(checkpoint)
    check_base(adapter, base, checkpoint.name)
    return sum((checkpoint / f).stat().st_size for f in _changed_shards(base, adapter))


def _merge_shard(src: Path, dst: Path, targets: list[tuple[str, WeightTensor]], adapter: Adapter) -> None:
    import torch

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        with open(tmp, "r+b") as f:
            for name, info in targets:
                dtype = getattr(torch, _FLOAT_DTYPES[info.dtype])
                # Saved base layers and modules_to_save replace the tensor (in the base's dtype,
                # as the merged model is saved); a LoRA update then adds to it, as peft loads them.
                for whole in (adapter.base_copies.get(name), adapter.full.get(name)):
                    if whole is not None:
                        f.seek(info.start)
                        f.write(whole.to(dtype).contiguous().view(torch.uint8).numpy())
                if (update := adapter.updates.get(name)) is not None:
                    _add_update(f, info, dtype, update)


def _add_update(f, info: WeightTensor, dtype, update: Update) -> None:
    import torch

    rows, cols = info.shape
    row_bytes = (info.end - info.start) // rows
    step = max(1, _ROW_BLOCK // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        offset = info.start + r0 * row_bytes
        f.seek(offset)
        block = torch.frombuffer(bytearray(f.read((r1 - r0) * row_bytes)), dtype=dtype).view(r1 - r0, cols)
        merged = (block.float() + update.rows(r0, r1)).to(dtype)
        f.seek(offset)
        f.write(merged.contiguous().view(torch.uint8).numpy())


@contextlib.contextmanager
def merged_checkpoint(checkpoint: Path, adapter: Adapter, work_dir: Path, name: str) -> Iterator[Path]:
    """The base with the adapter merged, as a checkpoint directory named `name`, removed afterwards.

    It lives beside the outputs rather than in /tmp: /tmp is often in RAM (tmpfs), and the
    changed shards of an 8B model are 16 GB.
    """
    scratch = work_dir / f".{name}.merging"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        yield merge(checkpoint, adapter, scratch / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- runtime LoRA ------------------------------------------------------------------------------


def needs_rescale(adapter: Adapter) -> bool:
    """llama.cpp scales every LoRA tensor by alpha / rank with one alpha per file: rsLoRA and
    per-module alpha_pattern need B rescaled to give peft's scale."""
    return bool(adapter.config.get("use_rslora") or adapter.config.get("alpha_pattern"))


@contextlib.contextmanager
def runtime_adapter_dir(adapter: Adapter, work_dir: Path) -> Iterator[Path]:
    """The adapter directory for llama.cpp's convert_lora_to_gguf.py (a rescaled copy if needed)."""
    if not needs_rescale(adapter):
        yield adapter.path
        return
    from safetensors.torch import save_file

    alpha = float(adapter.config.get("lora_alpha", 8))
    # A name of its own: two runs writing different --output files into one folder hold different locks.
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{adapter.name}.rescaled-", dir=work_dir))
    try:
        tensors = {}
        for u in adapter.updates.values():
            tensors[u.a_key] = u.a.contiguous()
            tensors[u.b_key] = (u.b * (u.scale * u.rank / alpha)).contiguous()
        save_file(tensors, str(scratch / "adapter_model.safetensors"))
        config = dict(adapter.config, use_rslora=False, alpha_pattern={}, lora_alpha=alpha)
        (scratch / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
