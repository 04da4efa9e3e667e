import re
import tomllib
from importlib import metadata

import pytest

from conftest import REPO
from toolkit import vendor, versions
from toolkit.errors import UserError


def test_runtime_converter_and_pyproject_share_one_pin(converter):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert f"llama-cpp-python=={versions.LLAMA_CPP_PYTHON}" in pyproject["project"]["dependencies"]
    assert metadata.version("llama-cpp-python") == versions.LLAMA_CPP_PYTHON
    assert converter.llama_cpp_python == versions.LLAMA_CPP_PYTHON
    assert converter.commit == versions.LLAMA_CPP_COMMIT


def test_converter_tree_is_complete(converter):
    assert converter.script.is_file() and converter.lora_script.is_file()
    assert (converter.root / "conversion" / "__init__.py").is_file()
    # Its own gguf-py, newer than any wheel: the converter must import this one.
    assert (converter.gguf_py / "gguf" / "gguf_writer.py").is_file()
    assert (converter.templates / "Qwen-Qwen3-0.6B.jinja").is_file()
    assert (converter.vocabs / "ggml-vocab-llama-bpe.gguf").is_file()


def test_provision_extracts_from_the_pinned_sdist(tmp_path, monkeypatch):
    sdist = vendor.cache_root() / "sdist" / vendor.SDIST_NAME
    if not sdist.is_file():
        pytest.skip("setup keeps the sdist in the cache; not present here")
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path))
    conv = vendor.provision(sdist)
    assert conv.root == tmp_path / "llama.cpp" / versions.LLAMA_CPP_PYTHON
    assert re.fullmatch(r"[0-9a-f]{40}", conv.commit)
    assert conv.script.read_text().startswith("#!/usr/bin/env python3")
    # Nothing else of llama.cpp's source (C++, docs) is taken.
    assert not (conv.root / "src").exists() and not (conv.root / "ggml").exists()
    assert vendor.find() == conv


def test_provision_refuses_a_different_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path))
    fake = tmp_path / vendor.SDIST_NAME
    fake.write_bytes(b"not the sdist")
    with pytest.raises(UserError, match="is not llama-cpp-python"):
        vendor.provision(fake)
    assert vendor.find() is None


def test_require_says_how_to_set_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path))
    with pytest.raises(UserError, match="toolkit setup"):
        vendor.require()


def test_download_keeps_only_the_pinned_sdist(tmp_path, monkeypatch):
    """A file of another content under the sdist's name is replaced, and one pip hands over that is
    not the pinned file is refused (pip itself keeps a file it finds "already downloaded")."""
    import shutil
    import subprocess

    from toolkit.errors import InternalError

    real = vendor.cache_root() / "sdist" / vendor.SDIST_NAME
    if not real.is_file():
        pytest.skip("setup keeps the sdist in the cache; not present here")
    target = tmp_path / vendor.SDIST_NAME
    target.write_bytes(b"an older or broken download")
    served = [real]

    def fake_pip(cmd, **kw):  # pip download, as it would behave, from a local file
        assert "download" in cmd and not target.exists()  # the stale file went first
        shutil.copyfile(served[0], target)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(vendor.subprocess, "run", fake_pip)
    assert vendor.download_sdist(tmp_path) == target and vendor.sha256_file(target) == versions.LLAMA_CPP_PYTHON_SDIST_SHA256
    target.unlink()
    served[0] = tmp_path / "other.tar.gz"
    served[0].write_bytes(b"not llama-cpp-python")
    with pytest.raises(InternalError, match="not the pinned one"):
        vendor.download_sdist(tmp_path)
    assert not target.exists()
