"""A checkpoint's weights read from their headers: what the disk-space plan counts."""

import json

import torch
from safetensors.torch import load_file

from toolkit import gguf
from toolkit.weights import count_params, safetensors_tensors


def test_the_count_is_what_llama_cpps_converter_writes(tiny_hf, smollm2_hf, smollm2_bf16, tmp_path):
    assert count_params(smollm2_hf) == gguf.read(smollm2_bf16).n_params == 134_515_008
    tensors = safetensors_tensors(tiny_hf)
    config = json.loads((tiny_hf / "config.json").read_text())
    assert tensors["model.embed_tokens.weight"].shape == (config["vocab_size"], config["hidden_size"])
    assert {t.dtype for t in tensors.values()} == {"BF16"}
    assert safetensors_tensors(tmp_path) == {}


def test_pytorch_bin_weights_are_counted_from_their_size_and_saved_dtype(tiny_hf, tmp_path):
    state = {k: v.float() for f in sorted(tiny_hf.glob("model*.safetensors")) for k, v in load_file(f).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    exact = sum(v.numel() for v in state.values())
    assert exact <= count_params(tmp_path, "float32") < exact * 1.01
    assert count_params(tmp_path) == count_params(tmp_path, "float32")  # unknown: counted low, never high
    assert count_params(tmp_path, "bfloat16") == 2 * count_params(tmp_path, "float32")


def test_a_vision_tower_is_not_counted_as_the_converter_leaves_it_out(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(8, 4, dtype=torch.bfloat16),
               "model.vision_tower.blocks.0.weight": torch.zeros(16, 16, dtype=torch.bfloat16),
               "model.multi_modal_projector.linear.weight": torch.zeros(4, 4, dtype=torch.bfloat16)},
              str(tmp_path / "model.safetensors"))
    assert count_params(tmp_path) == 32
    assert len(safetensors_tensors(tmp_path)) == 3
