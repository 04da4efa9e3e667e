"""End to end on real checkpoints: SmolLM2 (llama) and gemma-3-270m (gemma3); the teams' other
architectures (Qwen3, EXAONE 3.5 and 4) as small random checkpoints with Qwen's real tokenizer."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from llama_cpp import Llama

from conftest import files_under, make_lora, run_cli
from toolkit import embedded, fit, gguf, manifest, samples
from toolkit.engine import Engine, EngineSettings
from toolkit.errors import OutputExists, UserError
from toolkit.fsutil import exclusive, sha256_file
from toolkit.quantize import QuantizeSettings, quantize


def generate(path, prompt="The capital of France is", n=8):
    llm = Llama(model_path=str(path), n_ctx=128, n_gpu_layers=0, verbose=False, seed=0)
    out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
    return out["choices"][0]["text"], out["usage"]["completion_tokens"]


def test_q4_k_m_and_q8_0_have_the_right_types(smollm2_quantized):
    q4, q8 = smollm2_quantized.files
    assert (q4.type, q8.type) == ("Q4_K_M", "Q8_0")
    assert q4.path.name == "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    i4, i8 = gguf.read(q4.path), gguf.read(q8.path)
    assert i4.file_type == 15 and i8.file_type == 7
    # Q8_0: every matrix is Q8_0, only the 1-d norms stay F32.
    assert i8.tensor_type_counts() == {"Q8_0": 211, "F32": 61}
    # Q4_K_M mixes Q4_K with Q6_K; rows of 576 (not a multiple of 256) fall back to Q5_0/Q8_0.
    types4 = i4.tensor_type_counts()
    assert {"Q4_K", "Q6_K"} <= set(types4) and types4["F32"] == 61
    assert i4.n_params == i8.n_params == 134515008
    assert q4.size < q8.size


def test_each_output_loads_and_generates(smollm2_quantized):
    for f in smollm2_quantized.files:
        text, n = generate(f.path)
        assert n > 0 and text.strip()


def test_manifest_matches_the_files(smollm2_quantized):
    directory = smollm2_quantized.directory
    man = json.loads((directory / "manifest.json").read_text())
    assert man["source"]["kind"] == "local"
    assert man["source"]["id"] == str(smollm2_quantized.source.path)
    assert man["llama_cpp"]["llama_cpp_python"] == "0.3.36"
    assert set(man["files"]) == {"Q4_K_M", "Q8_0"}
    for qtype, entry in man["files"].items():
        path = directory / entry["file"]
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == sha256_file(path)
        assert entry["file_type"] == gguf.read(path).file_type
        assert entry["bits_per_weight"] == pytest.approx(gguf.read(path).bits_per_weight, abs=1e-3)
        assert entry["seconds"] > 0
    # The intermediate was not kept.
    assert sorted(p.name for p in directory.iterdir()) == [
        "SmolLM2-135M-Instruct-Q4_K_M.gguf", "SmolLM2-135M-Instruct-Q8_0.gguf", "manifest.json"]


def test_rerun_skips_finished_outputs(smollm2_quantized):
    before = {f.path: f.path.stat().st_mtime_ns for f in smollm2_quantized.files}
    again = quantize(str(smollm2_quantized.source.path),
                     QuantizeSettings(types=("Q8_0", "Q4_K_M"), output_dir=smollm2_quantized.directory.parent))
    assert [f.status for f in again.files] == ["skipped", "skipped"]
    assert again.convert_seconds is None
    assert {f.path: f.path.stat().st_mtime_ns for f in again.files} == before


def test_output_from_another_source_is_not_clobbered(smollm2_hf, tmp_path):
    target = tmp_path / "SmolLM2-135M-Instruct" / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    target.parent.mkdir()
    target.write_bytes(b"someone else's file")
    with pytest.raises(OutputExists, match="--force"):
        quantize(str(smollm2_hf), QuantizeSettings(output_dir=tmp_path))
    assert target.read_bytes() == b"someone else's file"
    # and through the CLI: exit 2, one line, file untouched
    r = run_cli("quantize", str(smollm2_hf), "--no-check", "--output-dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--force" in r.stderr
    assert target.read_bytes() == b"someone else's file"


@pytest.mark.parametrize("extra,match", [
    (["--imatrix", "nope.imatrix.gguf"], "no such imatrix file"),
    (["--imatrix", "auto", "--calibration", "nope.json"], "no such file"),
    (["--iq2_m", "--q4_k_m"], "IQ2_M needs an importance matrix"),
])
def test_option_errors_come_before_any_conversion(smollm2_hf, tmp_path, extra, match):
    r = run_cli("quantize", str(smollm2_hf), "--output-dir", str(tmp_path), *extra)
    assert r.returncode == 2 and match in r.stderr and r.stderr.strip().count("\n") == 0
    assert not list(tmp_path.iterdir())


def test_a_wrong_imatrix_file_or_an_unwritable_place_is_refused_before_any_conversion(smollm2_hf, tmp_path):
    """Each of these used to fail only after the conversion, most with exit 1."""
    model = embedded.smollm2_gguf()
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(model.read_bytes()[:100_000])
    (tmp_path / "od").mkdir()
    (tmp_path / "od" / smollm2_hf.name).write_text("a file where the model's folder goes")
    out = tmp_path / "out"
    for kw, match in [
        ({"imatrix": str(empty)}, "not an importance matrix"),
        ({"imatrix": str(model)}, "is a model, not an importance matrix"),
        ({"imatrix": str(truncated)}, "truncated"),
        ({"imatrix": "auto", "calibration": empty}, "the list of items is empty"),
        ({"output_dir": tmp_path / "od"}, "cannot write there \\(a file, not a directory\\)"),
        ({"output_dir": Path("/proc/toolkit-models")}, "/proc/toolkit-models/SmolLM2-135M-Instruct: cannot write there"),
    ]:
        with pytest.raises(UserError, match=match):
            quantize(str(smollm2_hf), QuantizeSettings(**{"output_dir": out, "check": False, **kw}))
    assert not out.exists()
    r = run_cli("quantize", str(smollm2_hf), "--imatrix", str(empty), "--output-dir", str(out))
    assert r.returncode == 2 and "not an importance matrix" in r.stderr and r.stderr.strip().count("\n") == 0


def test_output_dir_that_is_a_file(smollm2_hf, tmp_path):
    (tmp_path / "models").write_text("x")
    r = run_cli("quantize", str(smollm2_hf), "--output-dir", str(tmp_path / "models"))
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr


def test_force_and_keep_intermediate(tiny_hf, tmp_path):
    settings = QuantizeSettings(types=("Q8_0",), output_dir=tmp_path, keep_intermediate=True, check=False)
    first = quantize(str(tiny_hf), settings)
    directory = first.directory
    inter = directory / "tiny-llama-BF16.gguf"
    assert gguf.read(inter).file_type_name == "BF16"
    man = json.loads((directory / "manifest.json").read_text())
    assert man["files"]["BF16"]["intermediate"] is True
    # A new type reuses the kept intermediate: no second conversion.
    second = quantize(str(tiny_hf), QuantizeSettings(types=("Q8_0", "Q6_K"), output_dir=tmp_path, check=False))
    assert second.convert_seconds is None
    assert [f.status for f in second.files] == ["skipped", "built"]
    forced = quantize(str(tiny_hf), QuantizeSettings(types=("Q8_0",), output_dir=tmp_path, force=True, check=False))
    assert forced.files[0].status == "built" and forced.convert_seconds is not None
    assert set(json.loads((directory / "manifest.json").read_text())["files"]) == {"BF16", "Q8_0", "Q6_K"}


def test_a_disk_too_small_is_said_before_any_conversion(tiny_hf, small_disk):
    disk = small_disk(20)
    r = run_cli("quantize", str(tiny_hf), "--output-dir", str(disk / "models"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "writing tiny-llama as BF16 + Q4_K_M needs about 73 MB under" in r.stderr and "21 MB free" in r.stderr
    assert "convert" not in r.stderr and files_under(disk) == []


def test_a_quant_bigger_than_estimated_is_checked_with_llama_cpps_own_size_first(tiny_hf, small_disk):
    """The estimate before converting counts the least a type takes; before writing each quant,
    llama.cpp's dry run gives its real size (here 21 MB against 16 estimated: rows 576 wide fall
    back from Q4_K to wider types)."""
    disk = small_disk(74)
    out = disk / "models"
    assert run_cli("quantize", str(tiny_hf), "--bf16", "--no-check", "--output-dir", str(out)).returncode == 0
    before = {f: sha256_file(out / f) for f in files_under(out)}
    r = run_cli("quantize", str(tiny_hf), "--q4_k_m", "--no-check", "--output-dir", str(out))
    assert r.returncode == 2 and "writing tiny-llama-Q4_K_M.gguf needs about 21 MB under" in r.stderr, r.stderr
    assert {f: sha256_file(out / f) for f in files_under(out)} == before


def test_a_lora_merge_is_counted_at_its_peak_and_before_it_starts(tiny_hf, small_disk, tmp_path):
    """The merge copies the shard the adapter changes (57 MB here); the copy goes once the BF16
    file is written, before any quant: the peak is 57 + 58 MB, not copy + BF16 + Q8_0."""
    lora = make_lora(tiny_hf, tmp_path / "tiny-lora")
    small = small_disk(100)
    r = run_cli("quantize", str(tiny_hf), "--lora", str(lora), "--q8_0", "--no-check", "--output-dir", str(small))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "merging tiny-lora and writing tiny-llama-tiny-lora as BF16 + Q8_0 needs about 11" in r.stderr
    assert files_under(small) == []  # refused before the merge
    roomy = small_disk(120)
    r = run_cli("quantize", str(tiny_hf), "--lora", str(lora), "--q8_0", "--no-check", "--output-dir", str(roomy))
    assert r.returncode == 0, r.stderr
    assert files_under(roomy) == ["tiny-llama-tiny-lora/manifest.json", "tiny-llama-tiny-lora/tiny-llama-tiny-lora-Q8_0.gguf"]


def test_a_rerun_with_everything_built_writes_nothing_so_a_read_only_models_dir_serves(tiny_hf, small_disk):
    disk = small_disk(100)
    assert run_cli("quantize", str(tiny_hf), "--q8_0", "--no-check", "--output-dir", str(disk)).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    r = run_cli("quantize", str(tiny_hf), "--q8_0", "--no-check", "--output-dir", str(disk))
    assert r.returncode == 0 and "skipped" in r.stdout, r.stderr
    r = run_cli("quantize", str(tiny_hf), "--q4_k_m", "--no-check", "--output-dir", str(disk))
    assert r.returncode == 2 and "cannot write there (Read-only file system)" in r.stderr


# As if another program took the space after the checks: they are switched off in that process.
NO_CHECKS = "import toolkit.quantize, toolkit.quantizer\ntoolkit.quantize.require_space = toolkit.quantizer.require_space = lambda *a, **k: None"


@pytest.mark.parametrize("mb,writing", [(20, "the BF16 GGUF"), (70, "tiny-llama-Q8_0.gguf")])
def test_a_disk_that_fills_up_while_writing_is_named_and_nothing_is_left(tiny_hf, small_disk, mb, writing):
    disk = small_disk(mb)  # 20 MB: the converter runs out; 70 MB: the 58 MB BF16 fits, the Q8_0 beside it not
    r = run_cli("quantize", str(tiny_hf), "--q8_0", "--no-check", "--output-dir", str(disk / "m"), before=NO_CHECKS)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"error: the disk under {disk / 'm' / 'tiny-llama'} ran out of space while writing {writing} (")
    assert files_under(disk) == []


def test_a_second_quantize_into_the_same_directory_stops_before_touching_it(tiny_hf, tmp_path):
    """Two runs into one directory (two terminals, say) would remove each other's temporary files
    and rewrite the manifest without the other's entries: the second stops at once."""
    out = tmp_path / "models"
    directory = out / "tiny-llama"
    directory.mkdir(parents=True)
    partial = directory / "..tiny-llama-BF16.intermediate.partial"  # the real name of one under way
    partial.write_bytes(b"the first run's conversion, under way")
    with exclusive(directory / manifest.LOCK, "first"):
        r = run_cli("quantize", str(tiny_hf), "--q8_0", "--no-check", "--output-dir", str(out))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: {directory} is being written by another toolkit process "
                                   f"(pid {os.getpid()}); wait for it to finish, or choose another --output-dir")
        assert files_under(directory) == sorted([manifest.LOCK, partial.name])
    # With the directory free, what the first run left (killed, say) is removed, whatever type it
    # was building, and nothing else: a file of the user's stays.
    (directory / ".tiny-llama-Q4_K_M.gguf.partial").write_bytes(b"x" * 2_000_000)
    (directory / ".tiny-llama.merging" / "tiny-llama").mkdir(parents=True)
    (directory / ".tiny-llama.merging" / "tiny-llama" / "model.safetensors").write_bytes(b"y" * 3_000_000)
    (directory / ".tiny-llama.imatrix.gguf.partial.txt").write_text("calibration text", encoding="utf-8")
    (directory / ".tiny-llama.fidelity-k1ll3d.logprobs").write_bytes(b"z" * 1000)
    (directory / ".my-lora.rescaled-k1ll3d").mkdir()
    (directory / ".notes.txt.partial").write_text("the user's own", encoding="utf-8")
    (directory / ".fidelity-c0mp4r3.logprobs").write_bytes(b"toolkit compare's, which runs without the lock")
    r = run_cli("quantize", str(tiny_hf), "--q8_0", "--no-check", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert (f"note: removed what a killed run left in {directory}: ..tiny-llama-BF16.intermediate.partial, "
            ".my-lora.rescaled-k1ll3d, .tiny-llama-Q4_K_M.gguf.partial, .tiny-llama.fidelity-k1ll3d.logprobs, "
            ".tiny-llama.imatrix.gguf.partial.txt, .tiny-llama.merging (5 MB)") in " ".join(r.stderr.split())
    assert files_under(directory) == [".fidelity-c0mp4r3.logprobs", ".notes.txt.partial", "manifest.json",
                                      "tiny-llama-Q8_0.gguf"]


def test_second_architecture_gemma3(gemma3_hf, tmp_path):
    # One type is enough here: the llama tests cover the type mix; this one, another architecture.
    result = quantize(str(gemma3_hf), QuantizeSettings(types=("Q4_K_M",), output_dir=tmp_path, check=False))
    (q4,) = result.files
    info = gguf.read(q4.path)
    assert info.architecture == "gemma3" and info.file_type == 15 and "Q4_K" in info.tensor_type_counts()
    assert info.n_params == 268098176
    # transformers' rebuild carries no SentencePiece model, so the converter takes the BPE path.
    assert info.metadata["tokenizer.ggml.model"] == "gpt2"
    text, n = generate(q4.path, "Seoul is the capital of")
    assert n > 0


def random_checkpoint(kind: str, tokenizer: Path, out: Path, **shape) -> Path:
    """Four layers of random weights in transformers' own layout for `kind`, saved as bf16."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = AutoConfig.for_model(kind, vocab_size=len(tok), hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=4096, tie_word_embeddings=True,
                                  eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), **shape)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def random_exaone3_checkpoint(tokenizer: Path, out: Path) -> Path:
    """EXAONE 3.0/3.5's layout (a remote-code model: transformers has its config, not its model),
    with the config keys its checkpoints on the hub use, random weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    h, ff, n_layers, n_head, n_kv, head_dim = 256, 512, 4, 4, 2, 64
    config = {"architectures": ["ExaoneForCausalLM"], "model_type": "exaone", "activation_function": "silu",
              "auto_map": {"AutoConfig": "configuration_exaone.ExaoneConfig",
                           "AutoModelForCausalLM": "modeling_exaone.ExaoneForCausalLM"},
              "hidden_size": h, "intermediate_size": ff, "num_layers": n_layers, "num_attention_heads": n_head,
              "num_key_value_heads": n_kv, "head_dim": head_dim, "layer_norm_epsilon": 1e-5,
              "max_position_embeddings": 4096, "vocab_size": len(tok), "rope_theta": 1e6,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 2048},
              "tie_word_embeddings": True, "torch_dtype": "bfloat16",
              "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>")}
    gen = torch.Generator().manual_seed(0)

    def rand(*size):
        return (torch.randn(*size, generator=gen) * 0.02).to(torch.bfloat16)

    def ones():
        return torch.ones(h, dtype=torch.bfloat16)

    tensors = {"transformer.wte.weight": rand(len(tok), h), "transformer.ln_f.weight": ones()}
    for i in range(n_layers):
        p = f"transformer.h.{i}."
        tensors.update({p + "ln_1.weight": ones(), p + "ln_2.weight": ones(),
                        p + "attn.attention.q_proj.weight": rand(n_head * head_dim, h),
                        p + "attn.attention.k_proj.weight": rand(n_kv * head_dim, h),
                        p + "attn.attention.v_proj.weight": rand(n_kv * head_dim, h),
                        p + "attn.attention.out_proj.weight": rand(h, n_head * head_dim),
                        p + "mlp.c_fc_0.weight": rand(ff, h), p + "mlp.c_fc_1.weight": rand(ff, h),
                        p + "mlp.c_proj.weight": rand(h, ff)})
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(out)
    return out


def kv_estimate_and_llama_cpps_mib(path: Path, n_ctx: int = 3000) -> tuple[float, float]:
    """auto-fit's KV-cache estimate and llama.cpp's own KV buffer for the same context, in MiB."""
    model_shape = fit.shape_of(path)
    with Engine(path, EngineSettings(n_gpu_layers=0)) as engine:
        engine.open_context(n_ctx, n_seq_max=4)
        reported = sum(float(m) for m in re.findall(r"KV buffer size =\s+([\d.]+) MiB", "\n".join(engine.buffer_sizes)))
    estimate = sum(fit.kv_bytes_per_layer(model_shape, i, fit.FitRequest(n_ctx=n_ctx)) for i in range(model_shape.n_layer))
    return estimate / 2**20, reported


@pytest.mark.parametrize("kind, shape, keys", [
    # Qwen3-4B's attention is wider than its hidden size (32 heads × 128 > 2560): so is this one's.
    ("qwen3", {"head_dim": 128}, {"qwen3.attention.key_length": 128, "qwen3.embedding_length": 256}),
    # EXAONE 4: three sliding-window layers to one global.
    ("exaone4", {"head_dim": 64, "sliding_window": 128, "sliding_window_pattern": 4},
     {"exaone4.attention.sliding_window": 128}),
    # EXAONE 3.0/3.5: llama.cpp's converter needs toolkit.converter_entry's adaptation for it.
    ("exaone", None, {"exaone.attention.layer_norm_rms_epsilon": pytest.approx(1e-5), "exaone.block_count": 4}),
])
def test_qwen3_and_exaone_quantize_fit_and_answer(kind, shape, keys, qwen_tokenizer, tmp_path):
    checkpoint = (random_exaone3_checkpoint(qwen_tokenizer, tmp_path / "tiny-exaone") if kind == "exaone" else
                  random_checkpoint(kind, qwen_tokenizer, tmp_path / f"tiny-{kind}", **shape))
    (q4,) = quantize(str(checkpoint), QuantizeSettings(types=("Q4_K_M",), output_dir=tmp_path / "models",
                                                       check=False)).files
    info = gguf.read(q4.path)
    assert info.architecture == kind and info.file_type == 15
    assert {k: info.metadata[k] for k in keys} == keys
    # auto-fit's KV estimate is llama.cpp's own allocation for these layouts too.
    estimate, reported = kv_estimate_and_llama_cpps_mib(q4.path)
    assert estimate == pytest.approx(reported, abs=0.01)
    # Qwen3's real template, with thinking off as the baseline asks; answers for every item.
    out = tmp_path / "answers.json"
    r = run_cli("infer", str(samples.samples_path()), "--model", str(q4.path), "--output", str(out), "--greedy",
                "--max-new-tokens", "4", "--dry-run")
    assert r.returncode == 0, r.stderr
    prompts = [item["output"]["prompt"] for item in json.loads(out.read_text(encoding="utf-8"))]
    assert all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
               for p in prompts)
    out.unlink()
    r = run_cli("infer", str(samples.samples_path()), "--model", str(q4.path), "--output", str(out), "--greedy",
                "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["generated"] == 8 and 8 <= summary["new_tokens"] <= 32
    items = json.loads(out.read_text(encoding="utf-8"))
    assert len(items) == 8 and all(isinstance(item["output"]["answer"], str) for item in items)


def test_qwen3_moe_converts_quantizes_and_answers(qwen_tokenizer, tmp_path):
    """A mixture-of-experts layout (Qwen3-30B-A3B's kind, 8 experts of which 2 per token): llama.cpp's
    converter stacks each layer's experts into one tensor per projection, the quantizer takes them,
    auto-fit's KV estimate is still llama.cpp's own, and infer answers."""
    checkpoint = random_checkpoint("qwen3_moe", qwen_tokenizer, tmp_path / "tiny-qwen3-moe", head_dim=64,
                                   num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
                                   decoder_sparse_step=1)
    (q4,) = quantize(str(checkpoint), QuantizeSettings(types=("Q4_K_M",), output_dir=tmp_path / "models",
                                                       check=False)).files
    info = gguf.read(q4.path)
    assert info.architecture == "qwen3moe" and info.file_type == 15
    assert {k: info.metadata[k] for k in ("qwen3moe.expert_count", "qwen3moe.expert_used_count",
                                          "qwen3moe.expert_feed_forward_length")} == {
        "qwen3moe.expert_count": 8, "qwen3moe.expert_used_count": 2, "qwen3moe.expert_feed_forward_length": 128}
    experts = {t.name: t.shape for t in info.tensors if "_exps." in t.name}
    assert len(experts) == 4 * 3  # gate, up and down of each of the 4 layers
    assert experts["blk.0.ffn_gate_exps.weight"] == (256, 128, 8) and experts["blk.0.ffn_down_exps.weight"] == (128, 256, 8)
    estimate, reported = kv_estimate_and_llama_cpps_mib(q4.path)
    assert estimate == pytest.approx(reported, abs=0.01)
    out = tmp_path / "answers.json"
    r = run_cli("infer", str(samples.samples_path()), "--model", str(q4.path), "--output", str(out), "--greedy",
                "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["generated"] == 8
    items = json.loads(out.read_text(encoding="utf-8"))
    assert len(items) == 8 and all(isinstance(item["output"]["answer"], str) for item in items)


def test_a_converted_file_llama_cpp_rejects_is_named_with_its_reason_and_not_left(qwen_tokenizer, tmp_path):
    """llama.cpp's EXAONE 4 needs heads × head_dim = hidden size: this checkpoint (4 × 128 ≠ 256)
    converts, but does not load."""
    checkpoint = random_checkpoint("exaone4", qwen_tokenizer, tmp_path / "odd-exaone4", head_dim=128)
    models = tmp_path / "models"
    for flag in ("--bf16", "--q4_k_m"):  # the 16-bit intermediate as the output, and a quant of it
        r = run_cli("quantize", str(checkpoint), flag, "--output-dir", str(models), "--no-check")
        name = f"odd-exaone4-{flag[2:].upper()}.gguf"
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
            f"error: llama.cpp cannot load {name}: check_tensor_dims: tensor 'blk.0.attn_output.weight' "
            "has wrong shape; expected 256, 256, got 512, 256, 1, 1"), r.stderr  # (after the progress bars)
        assert not (models / "odd-exaone4").exists()  # nothing was kept: not even the directory


def test_a_tokenizer_labelled_gpt2_is_read_from_its_tokenizer_json(qwen_tokenizer, tmp_path):
    """EXAONE's tokenizer_config.json names GPT2Tokenizer over a tokenizer.json with its own
    pre-tokenizer. transformers 5 would build GPT-2's pre-tokenizer instead and the converter would
    not recognise the tokenizer; read as the file is (converter_entry), Qwen's tokenizer under that
    label is still Qwen's, and llama.cpp tokenizes as tokenizer.json does."""
    from tokenizers import Tokenizer

    checkpoint = random_checkpoint("qwen3", qwen_tokenizer, tmp_path / "gpt2-labelled", head_dim=64)
    config_path = checkpoint / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "GPT2Tokenizer"
    config.pop("add_prefix_space", None)
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (q8,) = quantize(str(checkpoint), QuantizeSettings(types=("Q8_0",), output_dir=tmp_path / "models",
                                                       check=False)).files
    assert gguf.read(q8.path).metadata["tokenizer.ggml.pre"] == "qwen2"
    text = "2025년 3월 14일, '웬지'가 아니라 '왠지'가 옳다. 12345 + 678 = 13023"
    with Engine(q8.path, EngineSettings(n_gpu_layers=0)) as engine:
        assert engine.tokenize(text) == Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode(text).ids
