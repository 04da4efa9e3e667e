"""The adapter stage: reading and checking PEFT adapters, and the streamed merge against peft's own."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_lora
from toolkit.adapter import base_tensors, check_base, load_adapter, merge, runtime_adapter_dir
from toolkit.errors import AdapterMismatch, InvalidAdapter, UnsupportedAdapter, UserError

PREFIX = "base_model.model."


def merged_tensors(directory):
    out = {}
    for path in sorted(directory.glob("model*.safetensors")):
        out.update(load_file(str(path)))
    return out


def peft_merged(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()


def assert_same_as_peft(ours: dict, theirs: dict):
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype, name
        assert torch.equal(tensor, theirs[name]), name  # bit for bit: the same float32 sums, one rounding


@pytest.fixture(scope="module")
def merged_single(smollm2_hf, smollm2_lora, tmp_path_factory):
    return merge(smollm2_hf, load_adapter(str(smollm2_lora)), tmp_path_factory.mktemp("merge") / "merged")


def test_streamed_merge_equals_peft_merge_and_unload(smollm2_hf, smollm2_lora, smollm2_lora_peft_merged, merged_single):
    adapter = load_adapter(str(smollm2_lora))
    out = merged_single
    ours = merged_tensors(out)
    assert_same_as_peft(ours, smollm2_lora_peft_merged.state_dict())
    base = load_file(str(smollm2_hf / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], ours[k])}
    assert changed == set(adapter.updates) and len(changed) == 4 * 30
    # Configs and tokenizer are links to the base, not copies.
    assert (out / "config.json").is_symlink() and not (out / "model.safetensors").is_symlink()


def test_patterns_embeddings_and_modules_to_save_merge_as_peft_does(smollm2_hf, tmp_path):
    """rank_pattern / alpha_pattern, a LoRA on the (tied) token embeddings, a module trained in full."""
    adapter_dir = make_lora(smollm2_hf, tmp_path / "variants", std=0.05, seed=1,
                            target_modules=["q_proj", "v_proj", "embed_tokens"], rank_pattern={"v_proj": 4},
                            alpha_pattern={"layers.3.self_attn.q_proj": 64}, modules_to_save=["model.norm"])
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    weights[PREFIX + "model.norm.weight"] = weights[PREFIX + "model.norm.weight"] * 1.5  # "trained"
    save_file(weights, str(adapter_dir / "adapter_model.safetensors"))

    adapter = load_adapter(str(adapter_dir))
    assert adapter.updates["model.layers.0.self_attn.v_proj.weight"].rank == 4
    assert adapter.updates["model.layers.3.self_attn.q_proj.weight"].scale == 64 / 8
    assert adapter.updates["model.embed_tokens.weight"].transpose
    assert set(adapter.full) == {"model.norm.weight"} and set(adapter.base_copies) == {"model.embed_tokens.weight"}
    ours = merged_tensors(merge(smollm2_hf, adapter, tmp_path / "merged"))
    assert_same_as_peft(ours, peft_merged(smollm2_hf, adapter_dir))


def test_sharded_base_is_merged_shard_by_shard(smollm2_hf, smollm2_lora, merged_single, tmp_path):
    base = tmp_path / "sharded"
    base.mkdir()
    for p in smollm2_hf.iterdir():
        if p.name != "model.safetensors":
            shutil.copy(p, base / p.name)
    tensors = load_file(str(smollm2_hf / "model.safetensors"))
    names = sorted(tensors)
    # Shard 1 holds what the adapter does not touch (embeddings, final norm): it must stay a link.
    groups = [[n for n in names if "layers" not in n], [n for n in names if ".layers.1" in n],
              [n for n in names if "layers" in n and ".layers.1" not in n]]
    weight_map = {}
    for i, group in enumerate(groups, 1):
        file = f"model-{i:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in group}, str(base / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    adapter = load_adapter(str(smollm2_lora))
    sharded = merge(base, adapter, tmp_path / "merged-sharded")
    single = merged_single
    assert (sharded / "model-00001-of-00003.safetensors").is_symlink()
    assert not (sharded / "model-00002-of-00003.safetensors").is_symlink()
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = merged_tensors(sharded), merged_tensors(single)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- reading and checking, on small synthetic adapters -------------------------------------------


def write_adapter(directory, tensors: dict, **config):
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], **config}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "adapter_model.safetensors"))
    return directory


def q_proj(layer=0, rank=2, width=576, out=576):
    key = f"{PREFIX}model.layers.{layer}.self_attn.q_proj"
    return {f"{key}.lora_A.weight": torch.randn(rank, width), f"{key}.lora_B.weight": torch.randn(out, rank)}


@pytest.mark.parametrize("change,error,match", [
    ({"peft_type": "IA3"}, UnsupportedAdapter, "a IA3 adapter; only LoRA adapters"),
    ({"peft_type": "PREFIX_TUNING"}, UnsupportedAdapter, "only LoRA"),
    ({"use_dora": True}, UnsupportedAdapter, "DoRA"),
    ({"lora_bias": True}, UnsupportedAdapter, "lora_bias"),
    ({"layer_replication": [[0, 4]]}, UnsupportedAdapter, "layer replication"),
])
def test_unsupported_configs(tmp_path, change, error, match):
    with pytest.raises(error, match=match):
        load_adapter(str(write_adapter(tmp_path / "a", q_proj(), **change)))


def test_malformed_adapters(tmp_path):
    with pytest.raises(InvalidAdapter, match="no adapter_config.json"):
        load_adapter(str(tmp_path))
    with pytest.raises(InvalidAdapter, match="not a Hugging Face repo id"):
        load_adapter("./no/such/adapter")
    only_a = {k: v for k, v in q_proj().items() if "lora_A" in k}
    with pytest.raises(InvalidAdapter, match="only one of its two LoRA matrices"):
        load_adapter(str(write_adapter(tmp_path / "half", only_a)))
    conv = {f"{PREFIX}model.conv.lora_A.weight": torch.randn(2, 3, 1, 1),
            f"{PREFIX}model.conv.lora_B.weight": torch.randn(4, 2, 1, 1)}
    with pytest.raises(UnsupportedAdapter, match="not a linear or embedding layer"):
        load_adapter(str(write_adapter(tmp_path / "conv", conv)))
    weights_missing = write_adapter(tmp_path / "w", q_proj())
    (weights_missing / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match="no adapter_model.safetensors or adapter_model.bin"):
        load_adapter(str(weights_missing))


def test_checks_against_the_base(smollm2_hf, tmp_path):
    base = base_tensors(smollm2_hf)
    # A layer SmolLM2 (30 layers) does not have.
    far = load_adapter(str(write_adapter(tmp_path / "far", q_proj(layer=40))))
    with pytest.raises(AdapterMismatch, match="changes model.layers.40.self_attn.q_proj.weight, which .* does not have"):
        check_base(far, base, "SmolLM2")
    # lm_head: SmolLM2 ties it to the embeddings, so its checkpoint has no lm_head tensor.
    head = {f"{PREFIX}lm_head.lora_A.weight": torch.randn(2, 576), f"{PREFIX}lm_head.lora_B.weight": torch.randn(49152, 2)}
    with pytest.raises(AdapterMismatch, match="ties lm_head to the token embeddings"):
        check_base(load_adapter(str(write_adapter(tmp_path / "head", head))), base, "SmolLM2")
    # Another hidden size.
    wide = load_adapter(str(write_adapter(tmp_path / "wide", q_proj(width=640, out=640))))
    with pytest.raises(AdapterMismatch, match=r"has shape \[640, 640\] for it but SmolLM2 has \[576, 576\]"):
        check_base(wide, base, "SmolLM2")
    # A module trained in full merges, but llama.cpp's runtime LoRA cannot carry it.
    full = load_adapter(str(write_adapter(tmp_path / "full", {**q_proj(), f"{PREFIX}model.norm.weight": torch.ones(576)})))
    check_base(full, base, "SmolLM2")
    with pytest.raises(UnsupportedAdapter, match="modules_to_save.*toolkit quantize BASE --lora ADAPTER"):
        check_base(full, base, "SmolLM2", runtime=True)


def test_pytorch_bin_base_is_refused_for_merging(smollm2_hf, tmp_path):
    base = tmp_path / "bin"
    base.mkdir()
    shutil.copy(smollm2_hf / "config.json", base)
    (base / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="needs safetensors"):
        base_tensors(base)


@pytest.mark.parametrize("config", [{"use_rslora": True}, {"alpha_pattern": {"q_proj": 10}}])
def test_runtime_copy_keeps_peft_scale(tmp_path, config):
    """llama.cpp scales a GGUF LoRA by alpha / rank with one alpha: rsLoRA and alpha_pattern get B rescaled."""
    adapter = load_adapter(str(write_adapter(tmp_path / "a", {**q_proj(0, rank=4), **q_proj(1, rank=2)}, **config)))
    for u in adapter.updates.values():
        alpha = 10 if "alpha_pattern" in config else 4
        assert u.scale == pytest.approx(alpha / math.sqrt(u.rank) if "use_rslora" in config else alpha / u.rank)
    with runtime_adapter_dir(adapter, tmp_path / "work") as directory:
        assert directory != adapter.path
        copy = json.loads((directory / "adapter_config.json").read_text())
        assert copy["use_rslora"] is False and copy["alpha_pattern"] == {} and copy["lora_alpha"] == 4
        weights = load_file(str(directory / "adapter_model.safetensors"))
        for u in adapter.updates.values():
            # What llama.cpp computes from the copy == what peft computes from the original.
            runtime = (4 / u.rank) * weights[u.b_key] @ weights[u.a_key]
            torch.testing.assert_close(runtime, u.scale * u.b @ u.a)
    assert not (tmp_path / "work" / ".a.rescaled").exists()
    plain = load_adapter(str(write_adapter(tmp_path / "plain", q_proj())))
    with runtime_adapter_dir(plain, tmp_path / "work") as directory:
        assert directory == plain.path
