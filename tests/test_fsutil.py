"""Atomic writes: a file under its final name is complete, or the old one is still there."""

import hashlib
import os

import pytest

from toolkit.fsutil import atomic_path, partial_path, replace_dir, sha256_file, write_json_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    final = tmp_path / "answers.json"
    final.write_text("old and complete", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half of the new", encoding="utf-8")
            raise RuntimeError("killed mid-write")
    assert final.read_text(encoding="utf-8") == "old and complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.json"]


def test_partial_name_never_looks_finished(tmp_path):
    tmp = partial_path(tmp_path / "m-Q4_K_M.gguf")
    assert tmp.parent == tmp_path and tmp.name.startswith(".") and not tmp.name.endswith(".gguf")


def test_json_is_written_whole_in_utf8(tmp_path):
    final = tmp_path / "sub" / "x.json"
    write_json_atomic(final, [{"answer": "\"며칠\"이 옳다."}])
    assert final.read_text(encoding="utf-8") == '[\n  {\n    "answer": "\\"며칠\\"이 옳다."\n  }\n]\n'
    assert sha256_file(final) == sha256_file(final, chunk=7) == hashlib.sha256(final.read_bytes()).hexdigest()


def test_replace_dir_swaps_a_finished_directory_in(tmp_path):
    final, staging = tmp_path / "tools", tmp_path / ".tools.staging"
    (final / "old").mkdir(parents=True)
    (staging / "bin").mkdir(parents=True)
    replace_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["bin"] and not staging.exists()
    other = tmp_path / ".again"
    other.mkdir()
    replace_dir(other, tmp_path / "fresh")  # nothing there yet
    assert (tmp_path / "fresh").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "tools"]  # the old one is gone


def test_replace_dir_that_fails_keeps_the_old_directory(tmp_path, monkeypatch):
    final = tmp_path / "llama.cpp"
    (final / "convert_hf_to_gguf.py").parent.mkdir()
    (final / "convert_hf_to_gguf.py").write_text("old", encoding="utf-8")
    real = os.replace

    def fail_on_staging(src, dst):
        if "staging" in str(src):
            raise OSError("no space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_staging)
    with pytest.raises(OSError):
        replace_dir(tmp_path / ".staging", final)
    assert (final / "convert_hf_to_gguf.py").read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama.cpp"]
