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
    placed = fit.plan(llama3_8b_q4_k_m(), fit.FitRequest(n_ctx=16 * 2048), 23 * GIB)
    plan = placed.devices[0]
    assert placed.all_layers and placed.n_gpu_layers == 33
    assert plan.kv_bytes == 32 * 32768 * 8 * 256 * 2  # 4 GiB of f16 KV for 32k cells
    assert plan.used_bytes <= 23 * GIB - plan.margin_bytes


def test_six_gb_cap_keeps_the_first_layers_on_the_cpu():
    shape = llama3_8b_q4_k_m()
    req = fit.FitRequest(n_ctx=16 * 2048, n_outputs=16)
    placed = fit.plan(shape, req, 6 * GIB)
    plan = placed.devices[0]
    assert 0 < placed.n_gpu_layers <= shape.n_layer and not placed.all_layers
    # As llama.cpp's -ngl N: the output layer and the last N-1 repeating layers, with their KV.
    n = placed.n_gpu_layers
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
    assert one.devices[0].weights_bytes == shape.output_bytes and one.devices[0].kv_bytes == 0
    assert one.describe().startswith("auto-fit: 1/19 layers on GPU — ")


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
    monkeypatch.setattr(backend, "offload_devices", lambda: [card])
    with Engine(embedded.smollm2_gguf(), EngineSettings(n_gpu_layers="auto", vram_limit=int(1.5 * GIB))) as engine:
        plan = engine.place(2048)
    (device,) = plan.devices
    assert device.free_bytes == (1536 - 524) << 20  # 524 MiB in use, taken as the context
    assert plan.n_gpu_layers > 0
    assert device.used_bytes <= device.free_bytes - device.margin_bytes


# -- several devices and MoE experts (fit.place) ------------------------------------------------

def qwen3_30b_a3b_q4_k_m() -> fit.ModelShape:
    """Qwen3-30B-A3B's shape with Q4_K_M-sized tensors: 48 layers of 128 experts (8 used) of
    768, 0.37 GB of experts and 12.5 MB of attention and router a layer (17.6 GB in all)."""
    experts, rest = 366_000_000, 12_500_000
    return fit.ModelShape(n_layer=48, n_embd=2048, n_ff=6144, n_head=32, n_head_kv=(4,) * 48, head_dim_k=128,
                          head_dim_v=128, n_vocab=151936, layer_bytes=(experts + rest,) * 48,
                          output_bytes=255_000_000, largest_tensor=(130_000_000,) * 48,
                          output_matrix_bytes=255_000_000, expert_bytes=(experts,) * 48,
                          largest_expert=(130_000_000,) * 48)


def _check_placement(shape: fit.ModelShape, req: fit.FitRequest, p: fit.Placement) -> None:
    """What llama.cpp will do with the plan's -ngl and tensor split: contiguous layers in device
    order ending at the last layer, the output on the last device that holds any, each device
    within its budget, and its figures the sum of its layers'."""
    held = [d for d in p.devices if d.units]
    assert [d.output for d in p.devices].count(True) == (1 if held else 0) and (not held or held[-1].output)
    first = shape.n_layer - sum(d.n_layers for d in p.devices)
    for d in p.devices:
        assert d.first_layer == first or d.n_layers == 0
        first += d.n_layers
        layers = range(d.first_layer, d.first_layer + d.n_layers)
        experts = shape.expert_bytes or (0,) * shape.n_layer
        assert d.weights_bytes == (sum(shape.layer_bytes[i] - (experts[i] if i in p.cpu_experts else 0) for i in layers)
                                   + (shape.output_bytes if d.output else 0))
        assert d.kv_bytes == sum(fit.kv_bytes_per_layer(shape, i, req) for i in layers)
        assert d.units == 0 or d.used_bytes <= d.free_bytes - d.margin_bytes
    assert first == shape.n_layer
    assert p.tensor_split == tuple(float(d.units) for d in p.devices) and p.n_gpu_layers == sum(p.tensor_split)


def test_one_device_plans_are_what_llama_cpp_will_place():
    shape, req = llama3_8b_q4_k_m(), fit.FitRequest(n_ctx=16 * 2048, n_outputs=16)
    layers = []
    for g in (1, 3, 6, 23):
        placed = fit.place(shape, req, [fit.Budget("CUDA0", g * GIB)])
        _check_placement(shape, req, placed)
        layers.append(placed.n_gpu_layers)
    assert layers == sorted(layers) and layers[-1] == 33


def test_two_devices_share_the_layers_in_proportion_to_their_room():
    shape, req = llama3_8b_q4_k_m(), fit.FitRequest(n_ctx=4 * 2048, n_outputs=4)
    both = fit.place(shape, req, [fit.Budget("CUDA0", 24 * GIB), fit.Budget("CUDA1", 12 * GIB)])
    _check_placement(shape, req, both)
    assert both.all_layers and both.tensor_split == (22.0, 11.0)  # 33 units as 24 : 12
    # Too little room for the even split: the last device is filled first, the rest goes before it.
    tight = fit.place(shape, req, [fit.Budget("CUDA0", 2 * GIB), fit.Budget("CUDA1", 3 * GIB)])
    _check_placement(shape, req, tight)
    assert not tight.all_layers and all(d.units for d in tight.devices)
    alone = fit.place(shape, req, [fit.Budget("CUDA1", 3 * GIB)])
    assert tight.devices[1].units == alone.devices[0].units  # the last device holds as much as it would alone
    # A third device with room for no layer takes none and is skipped by the split.
    none = fit.place(shape, req, [fit.Budget("RPC0[h:1]", 2**28, False), fit.Budget("CUDA0", 2 * GIB),
                                  fit.Budget("CUDA1", 3 * GIB)])
    _check_placement(shape, req, none)
    assert none.devices[0].units == 0 and none.tensor_split[1:] == tight.tensor_split


def test_moe_experts_go_to_ram_before_any_layer_leaves_the_devices():
    shape = qwen3_30b_a3b_q4_k_m()
    req = fit.FitRequest(n_ctx=4 * 2048, n_outputs=4)
    roomy = fit.place(shape, req, [fit.Budget("CUDA0", 24 * GIB)])
    assert roomy.all_layers and roomy.cpu_experts == () and roomy.overrides == ()
    capped = fit.place(shape, req, [fit.Budget("CUDA0", 8 * GIB)])
    _check_placement(shape, req, capped)
    # Every layer's attention on the GPU, the experts of the first layers in RAM: as few as fit.
    assert capped.all_layers and capped.cpu_experts == tuple(range(len(capped.cpu_experts)))
    assert 0 < len(capped.cpu_experts) < shape.n_layer
    one_less = fit.Placement(shape.n_layer, fit._split(shape, req, [fit.Budget("CUDA0", 8 * GIB)], [49],
                                                       len(capped.cpu_experts) - 1) or ())
    assert not one_less.devices  # one layer's experts fewer in RAM would not fit
    (pattern, device), = capped.overrides
    assert device == "CPU"
    held = [i for i in range(shape.n_layer) if re.search(pattern, f"blk.{i}.ffn_up_exps.weight")]
    assert held == list(capped.cpu_experts)
    for name in ("blk.0.ffn_gate_inp.weight", "blk.0.attn_q.weight", f"blk.{shape.n_layer - 1}.ffn_down_exps.weight"):
        assert not re.search(pattern, name)
    # So small that attention alone does not fit: all experts in RAM, and then layers too.
    small = fit.place(shape, req, [fit.Budget("CUDA0", 2 * GIB)])
    _check_placement(shape, req, small)
    assert not small.all_layers and len(small.cpu_experts) == shape.n_layer and small.n_gpu_layers > 1


def test_moe_over_three_devices_keeps_fewer_experts_in_ram_than_over_one():
    shape = qwen3_30b_a3b_q4_k_m()
    req = fit.FitRequest(n_ctx=16 * 2048, n_outputs=16)
    three = fit.place(shape, req, [fit.Budget(f"CUDA{i}", 6 * GIB) for i in range(3)])
    one = fit.place(shape, req, [fit.Budget("CUDA0", 6 * GIB)])
    _check_placement(shape, req, three)
    _check_placement(shape, req, one)
    assert three.all_layers and one.all_layers and len(three.cpu_experts) < len(one.cpu_experts)
