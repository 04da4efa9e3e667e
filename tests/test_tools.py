"""llama.cpp's command-line tools, built from the pinned sdist by `toolkit setup --tools`."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import run_cli
from toolkit import tools, vendor, versions
from toolkit.errors import ToolsNotBuilt


def test_tools_come_from_the_runtimes_sdist():
    built = tools.require()
    info = json.loads((tools.tools_dir() / "build.json").read_text())
    assert info["llama_cpp_python"] == versions.LLAMA_CPP_PYTHON
    assert built.commit == vendor.require().commit == info["llama_cpp_commit"]
    for name in tools.NAMES:
        r = subprocess.run([str(built.path(name)), "--help"], capture_output=True, text=True, timeout=60)
        assert "usage" in (r.stdout + r.stderr).lower(), name


def test_a_build_with_other_flags_is_redone(tmp_path, monkeypatch):
    """CMAKE_ARGS, CFLAGS and CXXFLAGS are the runtime's (CUDA, no-AMX): tools built otherwise are rebuilt."""
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path))
    for var, value in (("CMAKE_ARGS", ""), ("CFLAGS", " -mno-amx-tile"), ("CXXFLAGS", " -mno-amx-tile")):
        monkeypatch.setenv(var, value)
    (tools.tools_dir() / "bin").mkdir(parents=True)
    for name in tools.NAMES:
        (tools.tools_dir() / "bin" / name).write_text("#!/bin/sh\n")
        (tools.tools_dir() / "bin" / name).chmod(0o755)
    (tools.tools_dir() / "build.json").write_text(json.dumps(
        {"llama_cpp_python": versions.LLAMA_CPP_PYTHON, "llama_cpp_commit": "c" * 40, "flags": tools.build_flags()}))
    assert tools.build() == tools.find() and tools.find().flags["CXXFLAGS"] == "-mno-amx-tile"  # nothing to do

    def would_build():
        raise RuntimeError("would build")

    monkeypatch.setattr(tools.vendor, "require", would_build)
    monkeypatch.setenv("CXXFLAGS", "-O1")
    with pytest.raises(RuntimeError, match="would build"):
        tools.build()


def test_missing_tools_are_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_HOME", str(tmp_path))
    assert tools.find() is None
    with pytest.raises(ToolsNotBuilt, match="toolkit setup --tools"):
        tools.require()


def test_quantize_with_imatrix_and_no_tools_stops_before_any_work(smollm2_hf, tmp_path):
    out = tmp_path / "models"
    r = run_cli("quantize", str(smollm2_hf), "--imatrix", "auto", "--output-dir", str(out),
                env={"TOOLKIT_HOME": str(tmp_path / "empty-home")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "toolkit setup --tools" in r.stderr
    assert not out.exists()


def test_calibration_needs_imatrix(smollm2_hf, tmp_path):
    r = run_cli("quantize", str(smollm2_hf), "--calibration", str(tmp_path / "x.json"),
                "--output-dir", str(tmp_path / "models"))
    assert r.returncode == 2 and "--imatrix auto" in r.stderr
    # With a given matrix file the calibration text has no use: said so, before any work.
    from toolkit.errors import UserError
    from toolkit.quantize import QuantizeSettings, quantize

    with pytest.raises(UserError, match="an imatrix file was given: drop one of them"):
        quantize(str(smollm2_hf), QuantizeSettings(imatrix=str(tmp_path / "m.gguf"), calibration=tmp_path / "x.json",
                                                   output_dir=tmp_path / "models"))
    assert not (tmp_path / "models").exists()
