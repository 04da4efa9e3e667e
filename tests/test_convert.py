import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from toolkit import gguf
from toolkit.convert import checkpoint_dtype, convert, resolve_outtype
from toolkit import converter_entry
from toolkit.converter_entry import complete_hparams
from toolkit.errors import NotACheckpoint, UnsupportedArchitecture, UnsupportedTokenizer, UserError


@pytest.mark.parametrize("config,expected", [
    ({"torch_dtype": "bfloat16"}, "bf16"),
    ({"dtype": "bfloat16"}, "bf16"),  # transformers 5 spelling
    ({"torch_dtype": "float16"}, "f16"),
    ({"torch_dtype": "float32"}, "f16"),
    ({}, "f16"),
    ({"text_config": {"dtype": "bfloat16"}}, "bf16"),  # multimodal configs nest it
])
def test_auto_outtype_follows_checkpoint_dtype(config, expected):
    assert resolve_outtype("auto", config) == expected


def test_explicit_outtype_wins_and_unknown_is_refused():
    assert resolve_outtype("F32", {"dtype": "bfloat16"}) == "f32"
    with pytest.raises(UserError):
        resolve_outtype("q8", {})
    assert checkpoint_dtype({"torch_dtype": "bfloat16"}) == "bfloat16"


def test_converts_real_checkpoint_to_bf16(smollm2_bf16):
    info = gguf.read(smollm2_bf16)
    assert info.architecture == "llama"
    assert info.file_type_name == "BF16"
    assert info.tensor_type_counts() == {"BF16": 211, "F32": 61}
    assert info.metadata["tokenizer.ggml.pre"] == "smollm"
    assert "<|im_start|>" in info.chat_template


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(NotACheckpoint, match="config.json"):
        convert(tmp_path, tmp_path / "x.gguf", "auto")


def test_unsupported_architecture_gives_the_converters_reason(smollm2_hf, tmp_path):
    ckpt = tmp_path / "weird"
    shutil.copytree(smollm2_hf, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["HangulMagicForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="HangulMagicForCausalLM is not supported"):
        convert(ckpt, tmp_path / "out" / "weird-F16.gguf", "auto")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_tokenizer_llama_cpp_does_not_know_is_named(smollm2_hf, tmp_path):
    """llama.cpp recognises a BPE tokenizer by the hash of its tokens for a fixed text; one whose
    pre-tokenization was changed (here: a space put before the text) is not one it can run."""
    ckpt = tmp_path / "odd-tokenizer"
    shutil.copytree(smollm2_hf, ckpt)
    tokenizer = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    (ckpt / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    with pytest.raises(UnsupportedTokenizer, match=r"does not know this tokenizer's pre-tokenization \(hash [0-9a-f]{16}…\)"):
        convert(ckpt, tmp_path / "out" / "odd-F16.gguf", "auto")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

def test_ctrl_c_during_conversion_leaves_nothing_that_looks_finished(smollm2_hf, tmp_path):
    out = tmp_path / "models"
    # SIGINT as at a terminal: a suite started in the background (`pytest &`) hands its children an
    # ignored SIGINT, and Python then never turns one into KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "quantize", str(smollm2_hf), "--no-check", "--output-dir", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    # Wait until the converter is writing its temporary file, then interrupt.
    while time.monotonic() < deadline and not list(out.glob("*/*.partial")):
        time.sleep(0.05)
    assert list(out.glob("*/*.partial")), "conversion never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    # No GGUF, no partial, no intermediate: nothing at all is left.
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_exaone3_keys_reach_the_converter_under_both_names():
    """converter_entry's adaptation: as the raw config.json reads (transformers 4.57.6, llama.cpp's
    pin) and as transformers 5's ExaoneConfig renames it, the converter gets both names."""
    raw = {"architectures": ["ExaoneForCausalLM"], "activation_function": "silu", "layer_norm_epsilon": 1e-5,
           "num_layers": 32}
    renamed = {"architectures": ["ExaoneForCausalLM"], "hidden_act": "silu", "rms_norm_eps": 1e-5,
               "num_hidden_layers": 32}
    both = {**raw, **renamed}
    assert complete_hparams(dict(raw)) == both and complete_hparams(dict(renamed)) == both
    llama = {"architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "rms_norm_eps": 1e-5}
    assert complete_hparams(dict(llama)) == llama  # nothing else changes


def test_the_converter_never_runs_a_checkpoints_own_tokenizer_code(converter, tmp_path):
    """Some of the converter's vocabulary readers ask transformers for trust_remote_code=True;
    started through converter_entry, a tokenizer that ships its own code is refused, not run."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    marker = tmp_path / "code-ran"
    (ckpt / "my_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["my_tokenizer.MyTokenizer", None]}}))
    (ckpt / "config.json").write_text(json.dumps({"model_type": "my-model", "architectures": ["MyModel"]}))
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "conversion").symlink_to(converter.root / "conversion")
    (tools / "script.py").write_text("import sys\nfrom transformers import AutoTokenizer\n"
                                     "AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n")
    r = subprocess.run([sys.executable, converter_entry.__file__, str(tools / "script.py"), str(ckpt)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(converter.gguf_py)))
    assert r.returncode != 0 and "trust_remote_code" in r.stderr, r.stderr[-2000:]
    assert not marker.exists()
