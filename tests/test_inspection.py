import json

from conftest import run_cli
from toolkit import embedded
from toolkit.inspection import human_bytes, human_count, summary


def test_summary_of_the_embedded_model():
    s = summary(embedded.smollm2_gguf())
    assert s["architecture"] == "llama" and s["file_type"] == "Q4_1"
    assert s["parameters"] == 134515008 and s["layers"] == 30 and s["context_length"] == 8192
    assert s["tokenizer_model"] == "gpt2" and s["pre_tokenizer"] == "smollm"
    assert s["chat_template"] is True
    assert s["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def test_cli_inspect_text_and_json():
    path = embedded.smollm2_gguf()
    r = run_cli("inspect", str(path))
    assert r.returncode == 0
    for expected in ("architecture     llama", "file type        Q4_1", "parameters       134.52M",
                     "tensor types     Q4_1 210, F32 61, Q8_0 1", "context length   8192",
                     "tokenizer        gpt2 (pre-tokenizer smollm)", "chat template    yes"):
        assert expected in r.stdout
    data = json.loads(run_cli("inspect", str(path), "--json").stdout)
    assert data["parameters"] == 134515008 and data["chat_template"] is True


def test_cli_inspect_bad_files(tmp_path):
    r = run_cli("inspect", str(tmp_path / "none.gguf"))
    assert r.returncode == 2 and "no such file" in r.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello")
    r = run_cli("inspect", str(bad))
    assert r.returncode == 2 and "not a GGUF file" in r.stderr and "Traceback" not in r.stderr


def test_human_units():
    assert human_bytes(105453920) == "100.57 MiB"
    assert human_bytes(5 * 1024**3) == "5.00 GiB"
    assert human_count(8_030_261_248) == "8.03B"
