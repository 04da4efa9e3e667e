"""Stage 1: where the checkpoint comes from — a local directory or a Hugging Face repo.

`locate` pins the identity of the source (path + fingerprint, or repo + commit) without
downloading weights, so finished outputs can be recognised before any transfer;
`fetch` then brings the files the converter needs into the HF cache (resumable).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import console
from .errors import (DiskFull, GatedRepo, HubUnavailable, InvalidAdapter, NotACheckpoint, RepoNotFound, RevisionNotFound,
                     UserError)
from .fsutil import NO_SPACE_ERRNOS, require_space, write_text_atomic

# What llama.cpp's converter reads; everything else in a repo (other formats, images,
# `original/` consolidated weights) is left on the hub.
_CONFIG_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "*.tiktoken", "chat_template.jinja", "chat_template.json",
)
_SAFETENSORS = ("*.safetensors", "model.safetensors.index.json")
_PYTORCH_BIN = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
# A PEFT adapter: its config and one weight file (safetensors preferred, as peft loads it).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
ROOM_HINT = "free some space there or set HF_HOME (or HF_HUB_CACHE) to a disk with room"


def read_json_object(path: Path, error: type[UserError], directory_is: str, object_is: str) -> dict:
    """A directory's JSON settings file (config.json, adapter_config.json), or `error` saying why not."""
    if not path.is_file():
        raise error(f"{path.parent}: no {path.name}, so not {directory_is}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: not a JSON object, so not {object_is}")
    return value


def read_config(checkpoint: Path) -> dict:
    return read_json_object(checkpoint / "config.json", NotACheckpoint, "a Hugging Face checkpoint directory",
                            "a model's config")


@dataclass
class Source:
    """A checkpoint with a stable identity: what the manifest records."""

    kind: str  # "local" or "hub"
    id: str  # absolute path, or repo id
    name: str  # short name for output files
    revision: str | None = None
    commit: str | None = None
    fingerprint: str | None = None
    files: dict[str, int] = field(default_factory=dict)  # hub: file -> size
    blobs: dict[str, str] = field(default_factory=dict)  # hub: file -> content hash, its name in the HF cache
    parameters: dict[str, int] = field(default_factory=dict)  # hub: dtype -> count, the hub's reading of the headers
    path: Path | None = None  # set once the files are local

    def identity(self) -> dict:
        d = {"kind": self.kind, "id": self.id}
        if self.kind == "hub":
            d.update(revision=self.revision, commit=self.commit)
        else:
            d.update(fingerprint=self.fingerprint)
        return d


def _fingerprint(directory: Path) -> str:
    """Cheap identity of a local checkpoint: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    for p in sorted(directory.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def select_files(repo_files: list[str], adapter: bool = False) -> list[str]:
    """The top-level files conversion needs: configs, tokenizer, one weight format.

    For a PEFT adapter: adapter_config.json and one adapter weight file.
    """
    top = [f for f in repo_files if "/" not in f]
    if adapter:
        weights = next((w for w in ADAPTER_WEIGHTS if w in top), None)
        return [f for f in top if f in (ADAPTER_CONFIG, weights)]
    weights = _SAFETENSORS if any(f.endswith(".safetensors") for f in top) else _PYTORCH_BIN
    patterns = _CONFIG_FILES + weights
    return [f for f in top if any(fnmatch.fnmatch(f, p) for p in patterns)]


def locate(model: str, revision: str | None = None, token: str | None = None) -> Source:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotACheckpoint(f"{model}: is a file, not a checkpoint directory")
        path = path.resolve()
        read_config(path)  # raises NotACheckpoint without config.json
        if not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
            raise NotACheckpoint(f"{model}: no *.safetensors or pytorch_model*.bin weights beside config.json")
        return Source("local", str(path), path.name, fingerprint=_fingerprint(path), path=path)
    if model.startswith((".", "/", "~")) or os.sep + os.sep in model or model.count("/") > 1 or not _REPO_ID.fullmatch(model):
        raise _not_found(model, adapter=False)
    return _locate_hub(model, revision, token)


def locate_adapter(adapter: str, revision: str | None = None, token: str | None = None) -> Source:
    """A PEFT adapter: a local directory with adapter_config.json, or a hub repo id."""
    path = Path(adapter).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InvalidAdapter(f"{adapter}: is a file; a PEFT adapter is a directory with adapter_config.json")
        path = path.resolve()
        if not (path / ADAPTER_CONFIG).is_file():
            raise InvalidAdapter(f"{adapter}: no {ADAPTER_CONFIG}, so not a PEFT adapter directory")
        return Source("local", str(path), path.name, fingerprint=_fingerprint(path), path=path)
    if adapter.startswith((".", "/", "~")) or adapter.count("/") > 1 or not _REPO_ID.fullmatch(adapter):
        raise _not_found(adapter, adapter=True)
    return _locate_hub(adapter, revision, token, adapter=True)


def _not_found(spec: str, adapter: bool) -> Exception:
    """Neither a local directory nor something the hub could hold."""
    error = InvalidAdapter if adapter else NotACheckpoint
    return error(f"{spec}: no such directory, and not a Hugging Face repo id (owner/name)")


def _hub_errors():
    from huggingface_hub import errors

    return errors


def _locate_hub(repo_id: str, revision: str | None, token: str | None, adapter: bool = False) -> Source:
    from huggingface_hub import HfApi

    errors = _hub_errors()
    name = repo_id.split("/")[-1]
    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token, files_metadata=True)
    except errors.HFValidationError:  # "--", "..", too long: never a repo on the hub
        raise _not_found(repo_id, adapter) from None
    except errors.GatedRepoError:
        raise GatedRepo(
            f"{repo_id} is gated: accept its terms on huggingface.co, then set HF_TOKEN to a token with access"
        ) from None
    except errors.RevisionNotFoundError:
        raise RevisionNotFound(f"{repo_id} has no revision {revision!r}") from None
    except errors.RepositoryNotFoundError:
        hint = "check the id" if token or os.environ.get("HF_TOKEN") else "if it is private, set HF_TOKEN"
        raise RepoNotFound(f"{repo_id}: no such model on the hub or no access ({hint})") from None
    except errors.OfflineModeIsEnabled:
        return _cached_source(repo_id, name, revision, adapter)
    except Exception as e:  # httpx, requests and OS errors all mean "no hub" here
        if _is_connection_error(e):
            return _cached_source(repo_id, name, revision, adapter)
        raise
    files = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
    wanted = select_files(list(files), adapter)
    if adapter:
        if ADAPTER_CONFIG not in wanted:
            raise InvalidAdapter(f"{repo_id}: the repo has no {ADAPTER_CONFIG}, so it is not a PEFT adapter")
        if len(wanted) < 2:
            raise InvalidAdapter(f"{repo_id}: the repo has no {' or '.join(ADAPTER_WEIGHTS)}")
    elif "config.json" not in wanted:
        raise NotACheckpoint(f"{repo_id}: the repo has no config.json, so it is not a transformers checkpoint")
    if not any(f.endswith((".safetensors", ".bin")) for f in wanted):
        raise NotACheckpoint(f"{repo_id}: the repo has no safetensors or pytorch weights (a GGUF-only repo?)")
    blobs = {s.rfilename: s.lfs.sha256 if s.lfs else s.blob_id for s in (info.siblings or [])}
    return Source("hub", repo_id, name, revision=revision or "main", commit=info.sha,
                  files={f: files[f] for f in wanted}, blobs={f: blobs[f] for f in wanted if blobs.get(f)},
                  parameters=_text_parameters(info, files))


def _text_parameters(info, files: dict[str, int]) -> dict[str, int]:
    """The hub's parameter count by dtype, where it is the language model's alone: a repo with an
    image or audio processor holds towers the converter leaves out, so it gives none."""
    if not info.safetensors or any(f in files for f in ("preprocessor_config.json", "processor_config.json")):
        return {}
    return dict(info.safetensors.parameters)


def _is_connection_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("connect", "timeout", "timed out", "resolve", "network", "unreachable"))


def _cached_source(repo_id: str, name: str, revision: str | None, adapter: bool = False) -> Source:
    """Offline: use the snapshot already in the HF cache, if there is one."""
    from huggingface_hub import snapshot_download

    errors = _hub_errors()
    try:
        local = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (errors.LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        raise HubUnavailable(f"{repo_id}: the hub cannot be reached and the model is not in the HF cache") from None
    if adapter:
        if not (local / ADAPTER_CONFIG).is_file():
            raise InvalidAdapter(f"{repo_id}: the cached snapshot has no {ADAPTER_CONFIG}")
    else:
        read_config(local)
    return Source("hub", repo_id, name, revision=revision or "main", commit=local.name, path=local)


def fetch(source: Source, token: str | None = None) -> Path:
    """Make the source's files local (hub: only what conversion needs), resuming partial downloads."""
    if source.path is not None:
        return source.path
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    total = sum(source.files.values())
    done = threading.Event()
    cache_dir = repo_cache_dir(source.id)
    require_space(cache_dir, pending_bytes(source), f"downloading {source.id}", ROOM_HINT)
    start = _dir_bytes(cache_dir)
    disable_progress_bars()  # rich shows one bar for the whole transfer instead
    try:
        with console.byte_progress() as progress:
            task = progress.add_task(f"download {source.id}", total=total or None)

            def watch() -> None:
                while not done.wait(0.5):
                    progress.update(task, completed=min(total, _dir_bytes(cache_dir) - start))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                snapshot = _download_snapshot(source, cache_dir, token)
            finally:
                done.set()
                watcher.join()
            progress.update(task, completed=total)
    finally:
        enable_progress_bars()
    source.path = snapshot
    return snapshot


def pending_bytes(source: Source) -> int:
    """What `fetch` would still download into the HF cache: files neither in the commit's
    snapshot nor cached under their content hash (a new commit reuses unchanged files), less what
    interrupted downloads already hold. 0 for a local or cached source."""
    if source.path is not None:
        return 0
    cache_dir = repo_cache_dir(source.id)
    snapshot, blobs = cache_dir / "snapshots" / str(source.commit), cache_dir / "blobs"
    missing = sum(size for name, size in source.files.items()
                  if not (snapshot / name).exists() and not (name in source.blobs and (blobs / source.blobs[name]).exists()))
    resumed = sum(p.stat().st_size for p in blobs.glob("*.incomplete"))
    return max(0, missing - resumed)


def _download_snapshot(source: Source, cache_dir: Path, token: str | None) -> Path:
    """Fill the HF cache (blobs/, snapshots/<commit>/, refs/) with the selected files.

    We do this file by file rather than with snapshot_download because huggingface_hub
    1.18+ restarts interrupted downloads from zero (huggingface/huggingface_hub#4196);
    here a partial `blobs/<etag>.incomplete` is continued with an HTTP Range request.
    """
    from filelock import FileLock
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    snapshot = cache_dir / "snapshots" / source.commit
    for name in source.files:
        target = snapshot / name
        if target.exists():
            continue
        try:
            meta = get_hf_file_metadata(hf_hub_url(source.id, name, revision=source.commit), token=token)
            blob = cache_dir / "blobs" / meta.etag
            blob.parent.mkdir(parents=True, exist_ok=True)
            lock = cache_dir.parent / ".locks" / cache_dir.name / f"{meta.etag}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(lock)):  # the same lock huggingface_hub takes for this blob
                if not blob.exists():
                    partial = blob.with_name(blob.name + ".incomplete")
                    with open(partial, "ab") as f:
                        http_get(meta.location, f, resume_size=f.tell(), headers=build_hf_headers(token=token),
                                 expected_size=meta.size)
                    os.replace(partial, blob)
        except Exception as e:
            if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
                raise DiskFull(f"the disk under {cache_dir} ran out of space while downloading {source.id} "
                               f"({name}); {ROOM_HINT}, and rerun to resume") from None
            if _is_connection_error(e):
                raise HubUnavailable(f"download of {source.id} interrupted ({type(e).__name__}); "
                                     "rerun the same command to resume") from None
            raise
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    if source.revision and source.revision != source.commit:
        ref = cache_dir / "refs" / source.revision
        write_text_atomic(ref, source.commit)  # so the snapshot is found offline by its branch name
    return snapshot


def repo_cache_dir(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total

