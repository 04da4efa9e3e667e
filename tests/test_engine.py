import re

import pytest
from llama_cpp import Llama

from conftest import run_cli
from toolkit import dataset, embedded
from toolkit.engine import Engine
from toolkit.errors import InvalidGGUF, LoadFailed
from toolkit.sampler import Sampler, SamplingParams

PROMPT = "<|im_start|>user\n한국의 수도는 어디인가요?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engine():
    with Engine(embedded.smollm2_gguf()) as e:
        e.open_context(512)
        yield e


def test_load_info(engine):
    info = engine.info
    assert info.architecture == "llama" and info.quant_type == "Q4_1"
    assert info.layers_total == 31 and info.n_ctx_train == 8192
    assert engine.n_ctx == 512


def test_tokenize_parses_specials_and_adds_no_bos(engine):
    ids = engine.tokenize(PROMPT)
    assert engine.token_text(ids[0]) == "<|im_start|>"
    assert engine.detokenize(ids) == "user\n한국의 수도는 어디인가요?\nassistant\n"  # control tokens leave no text
    assert engine.special_tokens() == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    assert engine.is_eog(engine.tokenize("<|im_end|>")[0])
    assert "<|im_end|>" in engine.control_token_texts()


def test_a_cut_inside_a_character_leaves_no_replacement_character(engine):
    ids = engine.tokenize("가나")
    assert len(ids) > 2  # byte tokens: most cuts fall inside a character
    texts = [engine.detokenize(ids[:n]) for n in range(len(ids) + 1)]
    assert not any("\ufffd" in t for t in texts) and texts[-1] == "가나" and "가" in texts


def test_greedy_matches_llama_cpp_python(engine):
    """With no penalty, our argmax loop is llama.cpp's greedy decoding."""
    ids = engine.tokenize(PROMPT)
    params = SamplingParams(do_sample=False, repetition_penalty=1.0, max_new_tokens=24)
    ours = engine.generate(ids, Sampler(params, ids, engine.n_vocab, 0), 24)
    llm = Llama(model_path=str(embedded.smollm2_gguf()), n_ctx=512, verbose=False)
    theirs = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if engine.is_eog(tok) or len(theirs) == 24:
            break
        theirs.append(tok)
    assert ours.tokens == theirs
    assert ours.stopped in ("eog", "length")


class NoEnd:
    """A constraint (the sampler's hook for answer forms) that never lets the model end: every
    end-of-generation token masked, so only the length can stop it."""

    done = False

    def __init__(self, engine):
        self.eog = [t for t in range(engine.n_vocab) if engine.is_eog(t)]

    def apply(self, logits):
        logits = logits.copy()
        logits[self.eog] = float("-inf")
        return logits

    def accept(self, token):
        pass


@pytest.mark.parametrize("limit", [1, 5, 40])
def test_generation_stops_at_max_new_tokens(engine, limit):
    ids = engine.tokenize(PROMPT)
    no_end = NoEnd(engine)
    assert engine.tokenize("<|im_end|>")[0] in no_end.eog
    gen = engine.generate(ids, Sampler(SamplingParams(), ids, engine.n_vocab, 1, no_end), limit)
    assert gen.stopped == "length" and len(gen.tokens) == limit
    assert not any(engine.is_eog(t) for t in gen.tokens)


@pytest.mark.parametrize("make", ["missing", "not_gguf", "truncated"])
def test_bad_model_files(tmp_path, make):
    path = tmp_path / "model.gguf"
    if make == "not_gguf":
        path.write_text("hello")
    elif make == "truncated":
        path.write_bytes(embedded.smollm2_gguf().read_bytes()[:5_000_000])
    with pytest.raises(InvalidGGUF):
        Engine(path)
    inp = tmp_path / "q.json"
    inp.write_text('[{"id": "1", "input": {"question_type": "선택형", "question": "고르시오."}}]', encoding="utf-8")
    out = tmp_path / "out.json"
    previous = '[{"id": "1", "output": {"answer": "이전 답"}}]'
    out.write_text(previous, encoding="utf-8")
    dataset.settings_path(out).write_text("{}", encoding="utf-8")  # an earlier run's (else refused for want of one)
    r = run_cli("infer", str(inp), "--model", str(path), "--output", str(out), "--no-resume")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert ("GGUF" if make != "missing" else "no such model file") in r.stderr
    assert out.read_text(encoding="utf-8") == previous


def test_a_model_llama_cpp_rejects_is_named_with_the_loaders_reason(tmp_path):
    """A well-formed GGUF whose header disagrees with its tensors: the reason is the loader's own
    line, not the "failed to load model" that follows it."""
    data = bytearray(embedded.smollm2_gguf().read_bytes())
    key = b"llama.feed_forward_length"
    at = data.index(key) + len(key)
    assert data[at:at + 8] == (4).to_bytes(4, "little") + (1536).to_bytes(4, "little")  # uint32 1536
    data[at + 4:at + 8] = (1024).to_bytes(4, "little")
    path = tmp_path / "odd.gguf"
    path.write_bytes(data)
    reason = "check_tensor_dims: tensor 'blk.0.ffn_gate.weight' has wrong shape; expected 576, 1024, got 576, 1536, 1, 1"
    with pytest.raises(LoadFailed, match="^" + re.escape(f"llama.cpp cannot load odd.gguf: {reason}") + "$"):
        Engine(path)


def _failure(log: str):
    from toolkit import llama_log

    tail = llama_log.LogTail()
    tail.feed(log)
    return tail.allocation_failure(), list(tail.lines)


def test_out_of_memory_messages_say_what_did_not_fit_and_what_to_change(monkeypatch):
    from test_llama_log import CPU_KV, CUDA_WEIGHTS
    from toolkit import backend, engine as eng

    gpu = backend.Device("CUDA0", "NVIDIA GeForce RTX 3070", "GPU", free_bytes=3900 << 20, total_bytes=8 << 30)
    monkeypatch.setattr(backend, "gpus", lambda: [gpu])
    failure, _ = _failure(CUDA_WEIGHTS)
    assert eng.weights_do_not_fit("x-Q4_K_M.gguf", failure, -1) == (
        "x-Q4_K_M.gguf does not fit: llama.cpp could not allocate 4,403 MiB on CUDA0 (3,900 MiB free there) for its "
        "weights with every layer on the GPU; --n-gpu-layers auto puts only the layers that fit there, or take a smaller quant")
    assert eng.weights_do_not_fit("x.gguf", failure, 28, planned=True).endswith(
        "with 28 layers on the GPU; the memory went elsewhere after auto planned: give a lower --vram-limit")
    failure, lines = _failure(
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4403.49 MiB on device 0: cudaMalloc failed: out of memory\n"
        "ggml_gallocr_reserve_n_impl: failed to allocate CUDA0 buffer of size 4617388032\n"
        "graph_reserve: failed to allocate compute buffers\n"
        "llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers\n")
    message = eng.context_does_not_fit(failure, lines, 32768, planned=False)
    assert message.startswith("a context of 32768 tokens does not fit: llama.cpp could not allocate 4,403 MiB on CUDA0 "
                              "(3,900 MiB free there) for the compute buffers;")
    assert message.endswith("or --n-gpu-layers auto (only as many layers as leave room for the context)")
    assert eng.context_does_not_fit(failure, lines, 32768, planned=True).endswith("or a lower --vram-limit")
    # Host memory: no GPU advice, no free-VRAM figure.
    failure, lines = _failure(CPU_KV)
    assert "for the KV cache;" in eng.context_does_not_fit(failure, lines, 3_000_000, planned=False)
    assert "--n-gpu-layers" not in eng.context_does_not_fit(failure, lines, 3_000_000, planned=False)
    assert eng.weights_do_not_fit("x.gguf", failure, 0).endswith("65,919 MiB on CPU for its weights; take a smaller quant or free some RAM")
