"""The hub path against a fake endpoint (no network), and local-path checks."""

import json
import shutil
import subprocess

import pytest

from conftest import files_under, run_cli
from fakehub import FakeHub
from toolkit.errors import NotACheckpoint
from toolkit.source import locate, select_files
from toolkit.weights import count_params

SECRET = "hf_SECRETtokenNEVERprinted123"


def test_select_files_takes_one_weight_format_and_no_subfolders():
    files = ["config.json", "tokenizer.json", "tokenizer_config.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "original/consolidated.00.pth", "original/model.safetensors", "README.md", "model.gguf",
             "generation_config.json", "special_tokens_map.json", "tokenizer.model"]
    assert sorted(select_files(files)) == sorted([
        "config.json", "tokenizer.json", "tokenizer_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "generation_config.json",
        "special_tokens_map.json", "tokenizer.model"])
    assert "pytorch_model.bin" in select_files(["config.json", "pytorch_model.bin", "vocab.json", "merges.txt"])


def test_local_paths(tmp_path):
    with pytest.raises(NotACheckpoint, match="config.json"):
        locate(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(NotACheckpoint, match="is a file"):
        locate(str(tmp_path / "weights.bin"))
    with pytest.raises(NotACheckpoint, match="no such directory"):
        locate(str(tmp_path / "missing"))
    with pytest.raises(NotACheckpoint, match="no such directory"):
        locate("./not/a/repo/id")
    with pytest.raises(NotACheckpoint, match="not a Hugging Face repo id"):
        locate("team--x/model")  # "--" and ".." are refused by the hub's own validator, before any request


def test_a_local_checkpoint_needs_weights_and_a_config_object(tmp_path):
    """Said before the converter writes a GGUF without tensors that llama.cpp then cannot load."""
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(NotACheckpoint, match="no \\*.safetensors or pytorch_model\\*.bin weights"):
        locate(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert locate(str(tmp_path)).kind == "local"
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(NotACheckpoint, match="not a JSON object"):
        locate(str(tmp_path))


def test_local_identity_changes_when_the_checkpoint_changes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = locate(str(tmp_path))
    assert first.kind == "local" and first.name == tmp_path.name
    (tmp_path / "model.safetensors").write_bytes(b"new weights")
    assert locate(str(tmp_path)).fingerprint != first.fingerprint


SHARD = "model-00001-of-00001.safetensors"


@pytest.fixture(scope="module")
def hub(tiny_hf, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for p in tiny_hf.iterdir():
        if p.is_file() and not p.name.startswith("."):
            shutil.copy(p, repo / p.name)
    (repo / "README.md").write_text("# not needed for conversion\n")
    (repo / "pytorch_model.bin").write_bytes(b"a second weight format that must not be downloaded")
    with FakeHub() as fake:
        fake.add("team/smol-ko", repo)
        fake.add("team/private-ko", repo)
        fake.private["team/private-ko"] = SECRET
        fake.gated.add("team/gated-ko")
        yield fake


def hub_env(hub, tmp_path, **extra):
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.update(extra)
    return env


def test_hub_download_convert_quantize_and_rerun(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    out = tmp_path / "models"
    r = run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(out), env=env)
    assert r.returncode == 0, r.stderr
    gguf_path = out / "smol-ko" / "smol-ko-Q8_0.gguf"
    assert gguf_path.is_file()
    man = json.loads((out / "smol-ko" / "manifest.json").read_text())
    assert man["source"] == {"kind": "hub", "id": "team/smol-ko", "revision": "main",
                             "commit": hub.repos["team/smol-ko"][1]}
    fetched = {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}
    assert "README.md" not in fetched and "pytorch_model.bin" not in fetched
    assert {"config.json", "model.safetensors.index.json", SHARD, "tokenizer.json"} <= fetched

    # Rerun: same commit, so nothing is downloaded or rebuilt.
    n = len(hub.requests)
    r = run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(out), env=env)
    assert r.returncode == 0 and "skipped" in r.stdout
    assert not any("/resolve/" in p for _, p, _ in hub.requests[n:])

    # Offline with a warm cache: works without asking the hub.
    n = len(hub.requests)
    r = run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(out), env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert len(hub.requests) == n


def test_unreachable_hub_falls_back_to_the_cache(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    out = tmp_path / "models"
    assert run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(out), env=env).returncode == 0
    dead = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    r = run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(tmp_path / "again"), env=dead)
    assert r.returncode == 0, r.stderr
    # An uncached repo with no hub: a clear one-line error.
    r = run_cli("quantize", "team/never-seen", "--output-dir", str(out), env=dead)
    assert r.returncode == 2 and "cannot be reached" in r.stderr and r.stderr.strip().count("\n") == 0


def test_missing_repo_says_to_set_hf_token(hub, tmp_path):
    r = run_cli("quantize", "team/no-such-model", env=hub_env(hub, tmp_path))
    assert r.returncode == 2
    assert "no such model" in r.stderr and "HF_TOKEN" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_private_repo_needs_the_token_which_is_never_printed(hub, tmp_path):
    r = run_cli("quantize", "team/private-ko", "--output-dir", str(tmp_path / "m"), env=hub_env(hub, tmp_path))
    assert r.returncode == 2 and "HF_TOKEN" in r.stderr
    r = run_cli("quantize", "team/private-ko", "--q8_0", "--no-check", "--output-dir", str(tmp_path / "m"),
                env=hub_env(hub, tmp_path, HF_TOKEN=SECRET))
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    assert any(h.get("authorization") == f"Bearer {SECRET}" for _, _, h in hub.requests)


def test_gated_repo(hub, tmp_path):
    for extra in ({}, {"HF_TOKEN": SECRET}):
        r = run_cli("quantize", "team/gated-ko", env=hub_env(hub, tmp_path, **extra))
        assert r.returncode == 2 and "gated" in r.stderr and "HF_TOKEN" in r.stderr
        assert SECRET not in r.stdout + r.stderr


def test_unknown_revision(hub, tmp_path):
    r = run_cli("quantize", "team/smol-ko", "--revision", "v9", env=hub_env(hub, tmp_path))
    assert r.returncode == 2 and "no revision 'v9'" in r.stderr


def test_interrupted_download_resumes(hub, tmp_path):
    """A partial blob left by a killed download is continued with a Range request."""
    import hashlib

    env = hub_env(hub, tmp_path)
    repo_dir, _ = hub.repos["team/smol-ko"]
    data = (repo_dir / SHARD).read_bytes()
    blobs = tmp_path / "hf" / "hub" / "models--team--smol-ko" / "blobs"
    blobs.mkdir(parents=True)
    half = len(data) // 2
    (blobs / (hashlib.sha256(data).hexdigest() + ".incomplete")).write_bytes(data[:half])
    n = len(hub.requests)
    r = run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(tmp_path / "m"), env=env)
    assert r.returncode == 0, r.stderr
    ranges = [h.get("range") for m, p, h in hub.requests[n:] if m == "GET" and p.endswith(SHARD)]
    assert ranges == [f"bytes={half}-"]


def test_a_download_the_disk_cannot_hold_is_refused_before_it_starts(hub, tmp_path, small_disk):
    disk = small_disk(20)
    n = len(hub.requests)
    r = run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(tmp_path / "m"),
                env=hub_env(hub, tmp_path, HF_HOME=str(disk / "hf")))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "downloading team/smol-ko needs about 60 MB under" in r.stderr and "21 MB free" in r.stderr
    assert "set HF_HOME (or HF_HUB_CACHE) to a disk with room" in r.stderr
    assert not any("/resolve/" in p for _, p, _ in hub.requests[n:]) and files_under(disk) == []


def test_a_download_that_fills_the_disk_is_named_and_resumes_once_there_is_room(hub, tmp_path, small_disk):
    disk = small_disk(30)
    env = hub_env(hub, tmp_path, HF_HOME=str(disk / "hf"))
    args = ("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(tmp_path / "m"))
    # As if another program took the space after the check: it is switched off in that process.
    r = run_cli(*args, env=env, before="import toolkit.source\ntoolkit.source.require_space = lambda *a, **k: None")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"error: the disk under {disk / 'hf' / 'hub' / 'models--team--smol-ko'} ran out of space while downloading "
        f"team/smol-ko ({SHARD}); free some space there or set HF_HOME (or HF_HUB_CACHE) to a disk with room, and rerun "
        "to resume")
    partial = [p for p in files_under(disk) if p.endswith(".incomplete")]
    assert len(partial) == 1 and (disk / partial[0]).stat().st_size > 20 << 20
    assert not (tmp_path / "m" / "smol-ko").exists()  # no empty model directory either
    subprocess.run(["mount", "-o", "remount,size=100m", str(disk)], check=True)
    n = len(hub.requests)
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    ranges = [h.get("range") for m, p, h in hub.requests[n:] if m == "GET" and p.endswith(SHARD)]
    assert len(ranges) == 1 and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"


def test_the_outputs_are_checked_before_a_download_that_shares_their_disk(hub, tmp_path, small_disk):
    """The hub's parameter count sizes the outputs before any byte is fetched: 60 MB of download
    and 88 MB of BF16 + Q8_0 do not fit 105 MB, however they are taken in turn."""
    disk = small_disk(100)
    n = len(hub.requests)
    r = run_cli("quantize", "team/smol-ko", "--q8_0", "--no-check", "--output-dir", str(disk / "models"),
                env=hub_env(hub, tmp_path, HF_HOME=str(disk / "hf")))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "downloading team/smol-ko and writing smol-ko as BF16 + Q8_0 needs about 14" in r.stderr
    assert "105 MB free; free some space there, choose another --output-dir or set HF_HOME" in r.stderr
    assert not any("/resolve/" in p for _, p, _ in hub.requests[n:]) and files_under(disk) == []


def test_a_new_commit_downloads_only_what_changed(hub, tmp_path, small_disk):
    """A new commit (a README edit, say) has a snapshot of its own but the same weights: they are
    linked from the cache, neither downloaded nor counted against the disk again."""
    disk = small_disk(70)  # room for the model once, not twice
    env = hub_env(hub, tmp_path, HF_HOME=str(disk / "hf"))
    repo_dir, _ = hub.repos["team/smol-ko"]
    hub.add("team/smol-edited", repo_dir)
    args = ("quantize", "team/smol-edited", "--q8_0", "--no-check")
    assert run_cli(*args, "--output-dir", str(tmp_path / "m1"), env=env).returncode == 0
    hub.repos["team/smol-edited"] = (repo_dir, "e" * 40)
    n = len(hub.requests)
    r = run_cli(*args, "--output-dir", str(tmp_path / "m2"), env=env)
    assert r.returncode == 0, r.stderr
    assert not [p for m, p, _ in hub.requests[n:] if m == "GET" and "/resolve/" in p]
    assert (disk / "hf" / "hub" / "models--team--smol-edited" / "snapshots" / ("e" * 40) / SHARD).is_file()


def test_the_hubs_count_is_used_only_where_it_is_the_language_models(hub, tmp_path, monkeypatch):
    """A repo with an image processor holds a vision tower that the converter leaves out, so the
    hub's count would overstate the outputs; the check before the download then does without it."""
    repo_dir, _ = hub.repos["team/smol-ko"]
    vlm = tmp_path / "vlm"
    shutil.copytree(repo_dir, vlm)
    (vlm / "preprocessor_config.json").write_text("{}")
    hub.add("team/smol-vl", vlm)
    for key, value in hub_env(hub, tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
    assert locate("team/smol-ko").parameters == {"BF16": count_params(repo_dir)}
    assert locate("team/smol-vl").parameters == {}
