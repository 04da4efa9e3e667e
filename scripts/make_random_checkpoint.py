"""An HF checkpoint with a real model's shape, random weights and a real tokenizer, offline.

For measuring what size alone decides (convert/quantize time, VRAM, tok/s) without
downloading 16 GB: the GPU check builds Llama-3-8B's shape with Llama-3's own tokenizer
(rebuilt from llama.cpp's vocab-only GGUF by scripts/gpu_prepare.sh).

    python scripts/make_random_checkpoint.py --shape llama3-8b --tokenizer .gpu/llama3-tokenizer --out /tmp/ckpt
    python scripts/make_random_checkpoint.py --shape tiny ...      # the same layout, seconds on a CPU
    python scripts/make_random_checkpoint.py --shape qwen3-moe-tiny --tokenizer TOK --out /tmp/moe   # Qwen3-MoE
    python scripts/make_random_checkpoint.py --shape qwen3-30b-a3b --layers 12 ...   # its shape, fewer layers

The tests use the tiny shape with SmolLM2's tokenizer where only quantize's plumbing is on trial.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

SHAPES = {
    # meta-llama/Meta-Llama-3-8B's config.json (the sizes that matter).
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=8192, rope_theta=500000.0),
    # Qwen/Qwen3-30B-A3B's config.json: a mixture of experts, 128 of 768 a layer, 8 used per token.
    "qwen3-30b-a3b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
                          num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
    "qwen3-moe-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=64, max_position_embeddings=4096, rope_theta=1000000.0,
                           num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128),
}


def special_token_ids(tokenizer: Path) -> dict:
    """BOS/EOS ids of the model the tokenizer comes from (its config.json, when the directory is a
    checkpoint), else Llama-3's: the vocab-only tokenizer from gpu_prepare.sh has no config."""
    ids = {"bos_token_id": 128000, "eos_token_id": [128001, 128009]}
    if (tokenizer / "config.json").is_file():
        config = json.loads((tokenizer / "config.json").read_text())
        ids = {k: config[k] for k in ids if config.get(k) is not None}
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=SHAPES, default="llama3-8b")
    ap.add_argument("--tokenizer", type=Path, required=True, help="directory with tokenizer.json + tokenizer_config.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu", help="where to draw the random numbers (cuda is much faster)")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--layers", type=int, help="fewer (or more) layers than the shape has, all else the same")
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    if (args.out / "config.json").is_file():
        print(f"{args.out}: already there")
        return
    t0 = time.time()
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (args.tokenizer / name).is_file():
            shutil.copy(args.tokenizer / name, tmp / name)
    n_vocab = len(json.loads((args.tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    added = json.loads((args.tokenizer / "tokenizer.json").read_text()).get("added_tokens", [])
    n_vocab = max([n_vocab] + [t["id"] + 1 for t in added])
    s = dict(SHAPES[args.shape])
    if args.layers:
        s["num_hidden_layers"] = args.layers
    special = special_token_ids(args.tokenizer)
    moe = "num_experts" in s
    family = (dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", decoder_sparse_step=1,
                   mlp_only_layers=[], norm_topk_prob=True) if moe else
              dict(architectures=["LlamaForCausalLM"], model_type="llama", mlp_bias=False))
    config = dict(**family, vocab_size=n_vocab, **special, hidden_act="silu", rms_norm_eps=1e-5 if not moe else 1e-6,
                  tie_word_embeddings=False, attention_bias=False, torch_dtype="bfloat16", **s)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(special))

    h, ff = s["hidden_size"], s["intermediate_size"]
    head_dim = s.get("head_dim", h // s["num_attention_heads"])
    q, kv = s["num_attention_heads"] * head_dim, s["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (n_vocab, h), "model.norm.weight": (h,), "lm_head.weight": (n_vocab, h)}
    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        if moe:  # Qwen3-MoE: q/k norms, a router, and each expert's own three projections
            e_ff = s["moe_intermediate_size"]
            shapes.update({p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,),
                           p + "mlp.gate.weight": (s["num_experts"], h)})
            for e in range(s["num_experts"]):
                shapes.update({f"{p}mlp.experts.{e}.gate_proj.weight": (e_ff, h),
                               f"{p}mlp.experts.{e}.up_proj.weight": (e_ff, h),
                               f"{p}mlp.experts.{e}.down_proj.weight": (h, e_ff)})
        else:
            shapes.update({p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h),
                           p + "mlp.down_proj.weight": (h, ff)})
    gen = torch.Generator(device=args.device).manual_seed(0)
    shard, shard_bytes, index, n = {}, 0, {}, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, n
        if shard:
            n += 1
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    for key, shape in shapes.items():
        if len(shape) == 1:
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(shape, generator=gen, device=args.device, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()
        shard[key] = t
        shard_bytes += t.numel() * 2
        if shard_bytes >= args.shard_gb * 1e9:
            flush()
    flush()
    # Shard names with the total count, as transformers writes them.
    final_index = {}
    for i in range(1, n + 1):
        (tmp / f"model-{i:05d}.safetensors").rename(tmp / f"model-{i:05d}-of-{n:05d}.safetensors")
    for k, v in index.items():
        final_index[k] = v.replace(".safetensors", f"-of-{n:05d}.safetensors")
    total = sum((tmp / f).stat().st_size for f in set(final_index.values()))
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": final_index}, indent=1))
    tmp.rename(args.out)
    print(f"{args.out}: {args.shape}, {sum(1 for _ in shapes)} tensors, {total / 2**30:.2f} GiB bf16 "
          f"in {n} shard(s), {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
