"""LoRA end to end on SmolLM2: merged GGUFs against transformers' merged model, the runtime GGUF
LoRA against the merged file, and the errors a user sees."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fakehub import FakeHub
from toolkit import embedded, gguf
from toolkit.engine import Engine, EngineSettings
from toolkit.errors import AdapterMismatch, UserError
from toolkit.infer import InferSettings, resolve_model
from toolkit.lora import LoraSettings, export_lora, is_lora_gguf
from toolkit.quantize import QuantizeSettings, quantize
from toolkit.quantizer import quantize_file

# Short prompts, one greedy next token each (no BOS: SmolLM2's tokenizer adds none): 40 written
# by hand and 80 from templates. Fewer are too coarse for Q8_0: on this 135M model it moves logits
# by ~0.9 (median of the max over the vocabulary), so every prompt whose top two tokens are closer
# than that is a coin toss for any Q8_0 file, merged or not.
PROMPTS = [
    "The capital of France is", "Seoul is the capital of", "One, two, three,", "The opposite of hot is",
    "Water boils at", "My favourite colour is", "def add(a, b):\n    return", "The quick brown fox",
    "Once upon a time", "The sun rises in the", "2 + 2 =", "Dogs are animals that",
    "The best way to learn a language is", "In 1492, Columbus", "import numpy as", "Hello, my name is",
    "The chemical symbol for gold is", "Monday, Tuesday,", "Rain falls from the", "Shakespeare wrote",
    "<|im_start|>user\nWhat is the capital of Korea?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n",
    "한국의 수도는", "The largest planet is", "Cats like to", "The first man on the moon was",
    "A triangle has three", "Paris is famous for the", "The weather today is", "for i in range(",
    "Coffee or tea? I prefer", "The heart pumps", "January is the first month of the", "Apples are",
    "The Pacific is an", "Thank you very", "Light travels faster than", "Mount Everest is the",
    "A week has seven", "Bread is made from",
]
_COUNTRIES = ["France", "Japan", "Italy", "Spain", "Germany", "Egypt", "Canada", "Brazil", "Mexico", "India",
              "China", "Russia", "Kenya", "Peru", "Chile", "Greece", "Norway", "Sweden", "Poland", "Turkey"]
_THINGS = ["grass", "the sky", "snow", "coal", "blood", "a banana", "an orange", "a lemon", "milk", "the sun"]
_SUMS = [(1, 1), (2, 3), (4, 4), (5, 2), (3, 3), (6, 1), (7, 2), (8, 1), (9, 0), (2, 2)]
PROMPTS += ([f"The capital of {c} is" for c in _COUNTRIES] + [f"The colour of {t} is" for t in _THINGS]
            + [f"{a} + {b} =" for a, b in _SUMS] + [f"The people of {c} speak" for c in _COUNTRIES]
            + [f"My friend from {c} likes" for c in _COUNTRIES])
# Top-two logits closer than this are a tie that rounding alone may flip (the merged file rounds
# W + BA to the checkpoint's bf16, as peft saves it; the runtime LoRA adds BA unrounded).
TIE = 0.05


@pytest.fixture(scope="module")
def merged(smollm2_hf, smollm2_lora, tmp_path_factory):
    """`toolkit quantize BASE --lora ADAPTER --f16 --q8_0`, the library call."""
    out = tmp_path_factory.mktemp("merged")
    return quantize(str(smollm2_hf), QuantizeSettings(types=("F16", "Q8_0"), output_dir=out, lora=str(smollm2_lora),
                                                      check=False))


@pytest.fixture(scope="module")
def base_ggufs(smollm2_bf16, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    files = {}
    for qtype in ("F16", "Q8_0"):
        files[qtype] = out / f"smol-{qtype}.gguf"
        quantize_file(smollm2_bf16, files[qtype], qtype)
    return files


@pytest.fixture(scope="module")
def runtime_lora(smollm2_hf, smollm2_lora, tmp_path_factory):
    return export_lora(str(smollm2_lora), str(smollm2_hf), LoraSettings(output_dir=tmp_path_factory.mktemp("rt")))


@pytest.fixture(scope="module")
def prompt_ids():
    """Token ids by llama.cpp, fed as they are to both llama.cpp and transformers."""
    with Engine(embedded.smollm2_gguf()) as e:  # SmolLM2's vocabulary, the same in every GGUF made here
        return [e.tokenize(p) for p in PROMPTS]


def llama_logits(path, prompt_ids, **settings) -> np.ndarray:
    # One thread: on a busy 2-core machine llama.cpp's spinning thread barriers turn 0.2 s into 30 s.
    with Engine(path, EngineSettings(n_gpu_layers=0, threads=1, **settings)) as e:
        e.open_context(256)
        return np.stack([e.prompt_logits(ids) for ids in prompt_ids])


@pytest.fixture(scope="module")
def logits(prompt_ids):
    """llama_logits on every prompt, once per model file and settings."""
    cache = {}

    def get(path, **settings):
        key = (str(path), tuple(sorted((k, str(v)) for k, v in settings.items())))
        if key not in cache:
            cache[key] = llama_logits(path, prompt_ids, **settings)
        return cache[key]

    return get


def hf_logits(model, prompt_ids) -> np.ndarray:
    """All prompts in one float32 batch, padded on the right: causal attention never sees the padding."""
    import torch

    width = max(map(len, prompt_ids))
    batch = torch.tensor([ids + [0] * (width - len(ids)) for ids in prompt_ids])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as above
    try:
        with torch.no_grad():
            out = model.float().eval()(batch).logits
    finally:
        torch.set_num_threads(threads)
    return np.stack([out[i, len(ids) - 1].numpy() for i, ids in enumerate(prompt_ids)])


@pytest.fixture(scope="module")
def hf(smollm2_hf, smollm2_lora_peft_merged, prompt_ids):
    """transformers: the base, and peft's merge_and_unload of the adapter (bf16, as saved), run in float32."""
    import copy

    from transformers import AutoModelForCausalLM

    base = hf_logits(AutoModelForCausalLM.from_pretrained(str(smollm2_hf)), prompt_ids)
    return {"base": base, "merged": hf_logits(copy.deepcopy(smollm2_lora_peft_merged), prompt_ids)}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of prompts where the two greedy next tokens are the same."""
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def agree_up_to_ties(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per prompt: `other`'s greedy token is `ref`'s, or within TIE of `ref`'s best logit."""
    chosen = ref[np.arange(len(ref)), other.argmax(-1)]
    return ref.max(-1) - chosen < TIE


def test_merged_gguf_matches_transformers_merged_model(merged, hf, logits):
    f16, q8 = merged.files
    assert (f16.type, q8.type) == ("F16", "Q8_0")
    assert f16.path.name == "SmolLM2-135M-Instruct-smol-lora-F16.gguf"
    assert len(PROMPTS) == 120
    # The adapter matters: transformers' merged model differs from the base (34 of 120 here).
    assert agreement(hf["merged"], hf["base"]) <= 0.8
    # F16: every greedy token as transformers' (120 of 120); Q8_0: at least 90% (110 of 120 here).
    assert (logits(f16.path).argmax(-1) == hf["merged"].argmax(-1)).all()
    assert agreement(logits(q8.path), hf["merged"]) >= 0.9


def test_runtime_lora_gives_the_merged_files_tokens(runtime_lora, merged, base_ggufs, logits, prompt_ids):
    f16, q8 = merged.files
    merged_f16 = logits(f16.path)
    runtime_f16 = logits(base_ggufs["F16"], lora=runtime_lora.path)
    # Same token on every prompt but ties (118 of 120 exactly here; the other two are ties of
    # 0.003 and 0.014 logits).
    assert agree_up_to_ties(merged_f16, runtime_f16).all()
    assert agreement(merged_f16, runtime_f16) >= 0.95
    # Q8_0 rounds W + BA (merged) and W (runtime) differently: 113 of 120 here.
    assert agreement(logits(base_ggufs["Q8_0"], lora=runtime_lora.path), logits(q8.path)) >= 0.9
    # Scale 0 switches the adapter off.
    few = prompt_ids[:8]
    off = llama_logits(base_ggufs["Q8_0"], few, lora=runtime_lora.path, lora_scale=0.0)
    np.testing.assert_array_equal(off, llama_logits(base_ggufs["Q8_0"], few))


def test_manifest_records_the_adapter(merged, smollm2_lora, runtime_lora):
    man = json.loads((merged.directory / "manifest.json").read_text())
    ad = man["adapter"]
    assert (ad["kind"], ad["id"], ad["peft_type"], ad["r"], ad["lora_alpha"]) == ("local", str(smollm2_lora), "LORA", 8, 16)
    assert ad["target_modules"] == ["down_proj", "o_proj", "q_proj", "v_proj"]
    assert ad["tensors_changed"] == 4 * 30 and len(ad["sha256"]) == 64 and ad["fingerprint"]
    assert set(man["files"]) == {"F16", "Q8_0"}
    # Nothing of the merge is left behind.
    assert sorted(p.name for p in merged.directory.iterdir()) == [
        "SmolLM2-135M-Instruct-smol-lora-F16.gguf", "SmolLM2-135M-Instruct-smol-lora-Q8_0.gguf", "manifest.json"]
    # The runtime LoRA: a GGUF adapter, recorded in its own directory's manifest.
    assert is_lora_gguf(runtime_lora.path) and runtime_lora.path.name == "SmolLM2-135M-Instruct-smol-lora-LoRA-F16.gguf"
    info = gguf.read(runtime_lora.path)
    assert info.metadata["adapter.type"] == "lora" and info.metadata["adapter.lora.alpha"] == 16
    assert len(info.tensors) == 2 * 4 * 30
    rt = json.loads((runtime_lora.path.parent / "manifest.json").read_text())
    assert rt["adapter"]["id"] == str(smollm2_lora) and rt["files"]["LoRA-F16"]["size"] == runtime_lora.size


def test_rerun_skips_and_another_adapter_is_another_model(merged, smollm2_hf, smollm2_lora, runtime_lora):
    again = quantize(str(smollm2_hf), QuantizeSettings(types=("Q8_0",), output_dir=merged.directory.parent,
                                                       lora=str(smollm2_lora)))
    assert [f.status for f in again.files] == ["skipped"] and again.merge_seconds is None
    r = run_cli("lora", str(smollm2_lora), "--base", str(smollm2_hf), "--output-dir", str(runtime_lora.path.parent.parent),
                "--json")
    assert r.returncode == 0, r.stderr
    rt = json.loads(r.stdout)
    assert (rt["status"], rt["path"], rt["size"]) == ("skipped", str(runtime_lora.path), runtime_lora.size)
    assert (rt["base"]["id"], rt["adapter"]["id"], rt["r"], rt["lora_alpha"]) == (str(smollm2_hf), str(smollm2_lora), 8, 16)
    # The plain base quantized into the same output dir goes to its own directory.
    assert not (merged.directory.parent / "SmolLM2-135M-Instruct").exists()


def test_lora_for_another_base_is_refused_by_llama_cpp(runtime_lora, gemma3_gguf, tmp_path):
    with pytest.raises(AdapterMismatch, match="cannot apply"):
        Engine(gemma3_gguf, EngineSettings(n_gpu_layers=0, threads=1, lora=runtime_lora.path))
    inp = tmp_path / "q.json"
    inp.write_text('[{"id": "1", "input": {"question_type": "선택형", "question": "고르시오."}}]', encoding="utf-8")
    r = run_cli("infer", str(inp), "--model", str(gemma3_gguf), "--lora", str(runtime_lora.path))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "cannot apply" in r.stderr and runtime_lora.path.name in r.stderr


def test_infer_with_lora(runtime_lora, base_ggufs, tmp_path):
    inp = tmp_path / "q.json"
    inp.write_text(json.dumps([{"id": str(i), "input": {"question_type": "선택형", "question": q}}
                               for i, q in enumerate(["고르시오.", "옳은 것은?"])], ensure_ascii=False), encoding="utf-8")
    r = run_cli("infer", str(inp), "--model", str(base_ggufs["Q8_0"]), "--lora", str(runtime_lora.path),
                "--lora-scale", "0.5", "--greedy", "--max-new-tokens", "4", "--parallel", "1", "--threads", "1",
                "--system-prompt", "Answer.", "--selection-prompt", "Choose.")  # short prompts: a fast test
    assert r.returncode == 0, r.stderr
    assert f"lora     {runtime_lora.path} (scale 0.5)" in r.stderr
    assert re.search(r"memory   .*\d+ LoRA", r.stderr)  # the adapter's buffer in llama.cpp's figures
    # Answers with a LoRA are another model's: their own file, never resumed from the base's.
    out = tmp_path / f"q.smol-Q8_0+{runtime_lora.path.stem}.json"
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 2


def test_infer_does_not_take_the_adapter_for_a_model(runtime_lora, base_ggufs, tmp_path):
    models = tmp_path / "models"
    for path in (base_ggufs["Q8_0"], runtime_lora.path):
        (models / path.parent.name).mkdir(parents=True, exist_ok=True)
        (models / path.parent.name / path.name).symlink_to(path)
    assert resolve_model(InferSettings(models_dir=models)).name == base_ggufs["Q8_0"].name


def test_hub_adapter_fetches_only_the_adapter_files(smollm2_lora, gemma3_hf, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(smollm2_lora, repo)
    (repo / "training_args.bin").write_bytes(b"not needed")
    with FakeHub() as hub:
        hub.add("team/smol-lora", repo)
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        # Against another base: fetched and checked, then refused before any conversion.
        r = run_cli("lora", "team/smol-lora", "--base", str(gemma3_hf), "--output-dir", str(tmp_path / "models"), env=env)
        fetched = {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}
    assert r.returncode == 2 and "the adapter smol-lora has shape" in r.stderr, r.stderr
    assert fetched == {"adapter_config.json", "adapter_model.safetensors"}
    snapshot = tmp_path / "hf" / "hub" / "models--team--smol-lora" / "snapshots" / hub.repos["team/smol-lora"][1]
    assert sorted(p.name for p in snapshot.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("case", ["no_config", "dora", "other_base"])
def test_errors_are_one_line_and_exit_2(case, smollm2_hf, smollm2_lora, gemma3_hf, tmp_path):
    adapter = tmp_path / "my-lora"
    shutil.copytree(smollm2_lora, adapter)
    out = ["--output-dir", str(tmp_path / "models")]
    if case == "no_config":
        (adapter / "adapter_config.json").unlink()
        r = run_cli("quantize", str(smollm2_hf), "--lora", str(adapter), *out)
        expect = "my-lora: no adapter_config.json, so not a PEFT adapter directory"
    elif case == "dora":
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps(dict(config, use_dora=True)))
        r = run_cli("lora", str(adapter), "--base", str(smollm2_hf), *out)
        expect = "my-lora: DoRA (use_dora) is not supported, only plain LoRA"
    else:  # gemma-3-270m: hidden size 640, not SmolLM2's 576
        r = run_cli("quantize", str(gemma3_hf), "--lora", str(adapter), *out)
        expect = ("model.layers.0.mlp.down_proj.weight: the adapter my-lora has shape [576, 1536] for it but "
                  "gemma-3-270m has [640, 2048]: the adapter was made for another model")
        with pytest.raises(AdapterMismatch, match="has shape"):  # the runtime path checks the same
            export_lora(str(adapter), str(gemma3_hf), LoraSettings(output_dir=tmp_path / "models"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert expect in r.stderr, r.stderr
    # Nothing is left, not even an empty models/<name>/ that would look like a model.
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


def test_an_output_that_cannot_take_the_file_is_refused_before_any_conversion(smollm2_hf, smollm2_lora, tmp_path):
    with pytest.raises(UserError, match="is a directory; --output takes a file name"):
        export_lora(str(smollm2_lora), str(smollm2_hf), LoraSettings(output=tmp_path))
    with pytest.raises(UserError, match="/proc/toolkit: cannot write there"):
        export_lora(str(smollm2_lora), str(smollm2_hf), LoraSettings(output=Path("/proc/toolkit/l.gguf")))


def test_a_tensor_the_converter_cannot_map_is_a_user_error(tmp_path):
    from toolkit.convert import _lora_error
    from toolkit.errors import UnsupportedAdapter

    tail = ["INFO:hf-to-gguf:Loading model: base", "ValueError: Can not map tensor 'model.vision_tower.proj.weight'"]
    err = _lora_error(tmp_path, tail, 1)
    assert isinstance(err, UnsupportedAdapter) and "model.vision_tower.proj.weight" in str(err)


def test_lora_stops_while_quantize_lora_writes_its_directory(smollm2_hf, smollm2_lora, tmp_path):
    """`toolkit lora` and `toolkit quantize --lora` write the same directory and manifest."""
    import os

    from toolkit import manifest
    from toolkit.fsutil import exclusive

    directory = tmp_path / "models" / f"{smollm2_hf.name}-{smollm2_lora.name}"
    directory.mkdir(parents=True)
    with exclusive(directory / manifest.LOCK, "quantize --lora"):
        r = run_cli("lora", str(smollm2_lora), "--base", str(smollm2_hf), "--output-dir", str(tmp_path / "models"))
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: {directory} is being written by another toolkit process (pid {os.getpid()})"), r.stderr
    assert list(directory.iterdir()) == []
    # A file asked for in another model's directory waits for that directory's lock too (quantize
    # clears what killed runs left there).
    other = tmp_path / "models" / "other"
    other.mkdir()
    (other / manifest.FILENAME).write_text("{}", encoding="utf-8")
    with exclusive(other / manifest.LOCK, "quantize"):
        r = run_cli("lora", str(smollm2_lora), "--base", str(smollm2_hf), "--output", str(other / "x.gguf"))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {other} is being written by another toolkit process")
    # That run killed: what it left goes when lora next writes the directory.
    (directory / f".{directory.name}.merging" / directory.name).mkdir(parents=True)
    (directory / f".{directory.name}-Q8_0.gguf.partial").write_bytes(b"half a quant")
    r = run_cli("lora", str(smollm2_lora), "--base", str(smollm2_hf), "--output-dir", str(tmp_path / "models"))
    assert r.returncode == 0, r.stderr
    assert "note: removed what a killed run left" in r.stderr
    assert sorted(p.name for p in directory.iterdir()) == [f"{directory.name}-LoRA-F16.gguf", "manifest.json"]
