"""--n-gpu-layers auto: the plan from a GGUF header and given free VRAM (no GPU needed)."""

from __future__ import annotations

import re

import pytest

from toolkit import embedded, fit, gguf
from toolkit.engine import Engine, EngineSettings
from toolkit.errors import InternalError

from conftest import run_cli

GIB = 2**30


def llama3_8b_q4_k_m() -> fit.ModelShape:
    """Llama-3-8B's shape with Q4_K_M-sized layers (4.58 GiB in all, 0.29 GiB of it the embedding)."""
    layer = 131_000_000  # 0.218 G parameters a layer at ≈ 4.8 bits
    # The largest tensor of a layer: ffn_down, 14336 × 4096 in Q6_K; the output matrix: Q6_K too.
    return fit.ModelShape(n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=(8,) * 32, head_dim_k=128,
                          head_dim_v=128, n_vocab=128256, layer_bytes=(layer,) * 32, output_bytes=430_000_000,
                          largest_tensor=(48_200_000,) * 32, output_matrix_bytes=430_000_000)


def test_kv_cache_estimate_equals_llama_cpp_allocation(gemma3_gguf):
    # SmolLM2: 3072 padded cells × 30 layers × 768 B. gemma-3: two caches, the sliding-window
    # layers' and the global ones' (llama.cpp sizes both for the whole context).
    for path in (embedded.smollm2_gguf(), gemma3_gguf):
        shape = fit.shape_of(path)
        req = fit.FitRequest(n_ctx=3000)
        with Engine(path, EngineSettings(n_gpu_layers=0)) as engine:
            engine.open_context(3000)
            text = "\n".join(engine.buffer_sizes)
        reported = sum(float(m) for m in re.findall(r"KV buffer size =\s+([\d.]+) MiB", text))
        estimate = sum(fit.kv_bytes_per_layer(shape, i, req) for i in range(shape.n_layer))
        assert estimate / 2**20 == pytest.approx(reported, abs=0.01), path.name


@pytest.mark.parametrize("rows", [None, 1, 16])
def test_compute_estimate_covers_llama_cpp_buffer(rows, gemma3_gguf):
    """llama.cpp's own compute buffer (CPU build, same graph as on a GPU) against the estimate:
    never below, at most 30 % (or 16 MiB) above; whole-batch logits (None) or a few rows."""
    for path in (embedded.smollm2_gguf(), gemma3_gguf):  # gemma-3: sliding-window layers, two masks
        shape = fit.shape_of(path)
        for flash in (False, True):
            with Engine(path, EngineSettings(n_gpu_layers=0, flash_attn=flash)) as engine:
                engine.open_context(8192, logits_rows=rows)
                text = "\n".join(engine.buffer_sizes)
            reported = float(re.search(r"CPU compute buffer size =\s+([\d.]+) MiB", text).group(1)) * 2**20
            req = fit.FitRequest(n_ctx=8192, flash_attn=flash, n_outputs=rows)
            estimate = fit.compute_bytes(shape, req, output_on_gpu=True)
            assert reported <= estimate <= 1.3 * reported + 16 * 2**20, (path.name, flash, rows)


def test_few_logits_rows_shrink_llama_cpp_buffers():
    with Engine(embedded.smollm2_gguf(), EngineSettings(n_gpu_layers=0)) as engine:
        sizes = {}
        for rows in (None, 4):
            engine.open_context(2048, n_seq_max=4, logits_rows=rows)
            text = "\n".join(engine.buffer_sizes)
            sizes[rows] = float(re.search(r"compute buffer size =\s+([\d.]+) MiB", text).group(1))
        assert engine.logits_rows == 4
        # 512 rows of 49,152 logits are 96 MiB of the buffer; 4 rows are 0.75 MiB.
        assert sizes[None] - sizes[4] > 75
        engine.open_context(2048, n_seq_max=4, logits_rows=1)
        assert engine.logits_rows == 4  # llama.cpp keeps one row per sequence at least
        with pytest.raises(InternalError, match="logits rows"):
            engine.score(list(range(100, 700)), 1, lambda i, row: None)


def test_layers_left_on_the_cpu_cost_a_weight_copy_on_the_gpu():
    shape = llama3_8b_q4_k_m()
    req = fit.FitRequest(n_ctx=16 * 2048, n_outputs=16)
    everything = fit.compute_bytes(shape, req, True)
    assert fit.compute_bytes(shape, req, True, range(4)) == everything + 48_200_000  # one ffn_down copied
    # With the output layer on the CPU too (-ngl 0), from 32 rows of logits llama.cpp computes
    # it on the GPU as well, its matrix copied.
    many = fit.FitRequest(n_ctx=16 * 2048)
    assert fit.compute_bytes(shape, many, False, range(32)) == fit.compute_bytes(shape, many, True) + 430_000_000
    assert fit.compute_bytes(shape, req, False, range(32)) == everything + 48_200_000  # 16 rows stay on the CPU


def test_shape_of_real_ggufs_accounts_for_every_weight(gemma3_gguf):
    for path in (embedded.smollm2_gguf(), gemma3_gguf):
        header = gguf.read(path)
        shape = fit.shape_of(path)
        assert shape.n_layer == header.block_count and len(shape.layer_bytes) == shape.n_layer
        embd = next(t.nbytes for t in header.tensors if t.name == "token_embd.weight")
        tied = not any(t.name == "output.weight" for t in header.tensors)
        # Layers + output (+ the embedding, counted twice when tied) = every tensor in the file.
        assert sum(shape.layer_bytes) + shape.output_bytes + embd - (embd if tied else 0) == header.tensor_bytes
        assert shape.n_vocab > 0 and shape.head_dim_k > 0


def test_everything_fits_a_24gb_card():
    plan = fit.plan(llama3_8b_q4_k_m(), fit.FitRequest(n_ctx=16 * 2048), 23 * GIB)
    assert plan.all_layers and plan.n_gpu_layers == 33
    assert plan.kv_bytes == 32 * 32768 * 8 * 256 * 2  # 4 GiB of f16 KV for 32k cells
    assert plan.used_bytes <= 23 * GIB - plan.margin_bytes


def test_six_gb_cap_keeps_the_first_layers_on_the_cpu():
    shape = llama3_8b_q4_k_m()
    req = fit.FitRequest(n_ctx=16 * 2048, n_outputs=16)
    plan = fit.plan(shape, req, 6 * GIB)
    assert 0 < plan.n_gpu_layers <= shape.n_layer and not plan.all_layers
    # As llama.cpp's -ngl N: the output layer and the last N-1 repeating layers, with their KV.
    n = plan.n_gpu_layers
    gpu_layers = range(shape.n_layer - (n - 1), shape.n_layer)
    assert plan.weights_bytes == shape.output_bytes + sum(shape.layer_bytes[i] for i in gpu_layers)
    assert plan.kv_bytes == sum(fit.kv_bytes_per_layer(shape, i, req) for i in gpu_layers)
    assert plan.used_bytes <= 6 * GIB - plan.margin_bytes
    # One more layer would not fit: the plan takes the most that do.
    more = fit.plan(shape, req, 100 * GIB)  # to read the figures of n + 1 layers from
    layer = shape.n_layer - n
    extra = shape.layer_bytes[layer] + fit.kv_bytes_per_layer(shape, layer, req)
    assert plan.used_bytes + extra > 6 * GIB - plan.margin_bytes and more.all_layers


def test_one_layer_on_the_gpu_is_the_output_layer(gemma3_gguf):
    shape = fit.shape_of(gemma3_gguf)
    req = fit.FitRequest(n_ctx=2048, n_outputs=1)
    one = next(fit.plan(shape, req, free) for free in range(2**29, 2**33, 2**20)
               if fit.plan(shape, req, free).n_gpu_layers == 1)
    assert one.weights_bytes == shape.output_bytes and one.kv_bytes == 0
    assert "1/19 layers on the GPU" in one.describe()


def test_more_memory_or_a_smaller_cache_never_means_fewer_layers():
    shape = llama3_8b_q4_k_m()
    long_ctx = fit.FitRequest(n_ctx=16 * 4096)
    layers = [fit.plan(shape, long_ctx, g * GIB).n_gpu_layers for g in (1, 2, 4, 6, 8, 12, 16, 24)]
    assert layers == sorted(layers) and layers[0] == 0 and layers[-1] == 33
    f16 = fit.plan(shape, long_ctx, 8 * GIB)
    q8 = fit.plan(shape, fit.FitRequest(n_ctx=16 * 4096, cache_type="q8_0"), 8 * GIB)
    assert q8.n_gpu_layers > f16.n_gpu_layers


def test_without_flash_attention_the_scores_count():
    shape = llama3_8b_q4_k_m()
    on = fit.compute_bytes(shape, fit.FitRequest(n_ctx=32768, n_outputs=16, flash_attn=True), True)
    off = fit.compute_bytes(shape, fit.FitRequest(n_ctx=32768, n_outputs=16, flash_attn=False), True)
    assert off > on + 32 * 32768 * 512 * 4  # one layer's scores: heads × cells × micro-batch × f32


def test_auto_on_the_cpu_loads_every_layer_on_the_cpu_and_generates():
    from toolkit.sampler import Sampler, SamplingParams

    with Engine(embedded.smollm2_gguf(), EngineSettings(n_gpu_layers="auto")) as engine:
        prompt = engine.tokenize("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")  # vocabulary only so far
        engine.open_context(512)
        assert engine.fit_plan is None and engine.info.layers_offloaded == 0
        gen = engine.generate(prompt, Sampler(SamplingParams(do_sample=False), prompt, engine.n_vocab, 0), 4)
    with Engine(embedded.smollm2_gguf(), EngineSettings(n_gpu_layers=0)) as engine:
        engine.open_context(512)
        plain = engine.generate(prompt, Sampler(SamplingParams(do_sample=False), prompt, engine.n_vocab, 0), 4)
    assert gen.tokens == plain.tokens and len(gen.tokens) == 4


def test_doctor_prints_the_plan_for_given_vram():
    model = str(embedded.smollm2_gguf())
    r = run_cli("doctor", "--model", model, "--vram", "0.6", "--parallel", "16", "--json")
    assert r.returncode == 0, r.stderr
    import json

    plan = json.loads(r.stdout)["fit"]
    assert 0 < plan["n_gpu_layers"] < 31 and plan["free_bytes"] == int(0.6 * GIB)
    assert plan["weights_bytes"] + plan["kv_bytes"] + plan["compute_bytes"] <= plan["free_bytes"] - plan["margin_bytes"]
    bad = run_cli("infer", "x.json", "--n-gpu-layers", "most")
    assert bad.returncode == 2 and "neither a number of layers nor 'auto'" in bad.stderr


def test_vram_limit_counts_the_cuda_context():
    """--vram-limit caps the run's GPU memory in all. On an H200 a plan that filled 6 GiB (less the
    margin) made a process of 6145 MiB: the CUDA context, 0.5 GiB in use before any buffer, had
    not been counted."""
    h200 = dict(free_bytes=139.29 * GIB, total_bytes=139.80 * GIB)
    assert fit.within_limit(6 * GIB, **h200) == pytest.approx(5.49 * GIB)
    # Another process's 10 GiB is not this run's: at most CONTEXT_MAX of what is in use counts.
    assert fit.within_limit(6 * GIB, free_bytes=14 * GIB, total_bytes=24 * GIB) == 6 * GIB - fit.CONTEXT_MAX
    assert fit.within_limit(6 * GIB, free_bytes=3 * GIB, total_bytes=24 * GIB) == 3 * GIB  # never more than is free
    assert fit.within_limit(GIB // 4, **h200) == 0


def test_auto_plans_within_the_limit_less_the_context(monkeypatch):
    from toolkit import backend

    card = backend.Device("CUDA0", "NVIDIA GeForce RTX 3060", "GPU", free_bytes=11_764 << 20, total_bytes=12 << 30)
    monkeypatch.setattr(backend, "gpus", lambda: [card])
    with Engine(embedded.smollm2_gguf(), EngineSettings(n_gpu_layers="auto", vram_limit=int(1.5 * GIB))) as engine:
        plan = engine.place(2048)
    assert plan.free_bytes == (1536 - 524) << 20  # 524 MiB in use, taken as the context
    assert plan.n_gpu_layers > 0
    assert plan.weights_bytes + plan.kv_bytes + plan.compute_bytes <= plan.free_bytes - plan.margin_bytes
