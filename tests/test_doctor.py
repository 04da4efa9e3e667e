import json

import llama_cpp

from conftest import run_cli
from toolkit import tools, versions


def test_doctor_json_reports_the_installation(converter):
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["llama_cpp_python"] == rep["llama_cpp_python_pinned"] == versions.LLAMA_CPP_PYTHON
    assert rep["llama_cpp_commit"] == converter.commit
    assert rep["converter"] == str(converter.script)
    built = tools.require()
    assert rep["llama_cpp_tools"] == f"{built.bin} (llama.cpp {built.commit[:7]})"
    # As llama.cpp itself says (False on a CPU build, True on a CUDA one), and no GPU listed without it.
    assert rep["gpu_offload"] is bool(llama_cpp.llama_supports_gpu_offload())
    assert rep["gpu_offload"] or not [d for d in rep["devices"] if d["kind"] in ("GPU", "IGPU")], rep["devices"]
    assert any(d["kind"] == "CPU" for d in rep["devices"])
    gpus = [d for d in rep["devices"] if d["kind"] == "GPU"]
    assert all(d["total_bytes"] >= d["free_bytes"] > 0 for d in gpus)
    assert rep["torch"].startswith("2.") and rep["python"]


def test_doctor_text():
    r = run_cli("doctor")
    assert r.returncode == 0
    assert "llama cpp commit" in r.stdout and "gpu offload" in r.stdout and "torch" in r.stdout
