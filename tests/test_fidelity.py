"""Fidelity of quantized files against their 16-bit original, from real logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from toolkit import fidelity, samples
from toolkit.fidelity import compare

PROSE = samples.samples_path().parent / "prose_ko.txt"


def files(smollm2_quantized):
    return {f.type: f.path for f in smollm2_quantized.files}


def test_quantize_reports_fidelity_into_the_manifest(smollm2_quantized):
    rows = {r.type: r for r in smollm2_quantized.fidelity}
    assert set(rows) == {"BF16", "Q4_K_M", "Q8_0"}
    ref, q8, q4 = rows["BF16"], rows["Q8_0"], rows["Q4_K_M"]
    assert ref.top1_agreement == 1.0 and ref.kld_mean == 0.0
    # More bits, closer to the original: on every measure.
    assert 1.0 > q8.top1_agreement > q4.top1_agreement > 0.5
    assert 0 < q8.kld_mean < q4.kld_mean and q8.kld_p99 < q4.kld_p99
    assert abs(q8.ppl - ref.ppl) < abs(q4.ppl - ref.ppl)
    man = json.loads((smollm2_quantized.directory / "manifest.json").read_text())
    assert man["files"]["Q8_0"]["fidelity"]["reference"] == "BF16"
    assert man["files"]["Q8_0"]["fidelity"]["kld_mean"] == pytest.approx(q8.kld_mean, abs=1e-6)


def test_figures_recomputed_independently(smollm2_bf16, smollm2_quantized, tmp_path):
    """The same figures from llama-cpp-python's high-level Llama (logits_all) and numpy."""
    from llama_cpp import Llama

    q8 = files(smollm2_quantized)["Q8_0"]
    text = tmp_path / "prose.txt"  # a third of the prose: ~16 chunks of 64 tokens
    prose = PROSE.read_text(encoding="utf-8")
    text.write_text(prose[:len(prose) // 3], encoding="utf-8")
    rows = compare(smollm2_bf16, [q8], text, n_ctx=64)

    def chunk_logits(path):
        llm = Llama(str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False)
        tokens = llm.tokenize(text.read_text(encoding="utf-8").encode(), add_bos=llm._model.add_bos_token(),
                              special=False)
        out = []
        for start in range(0, len(tokens) - 64 + 1, 64):
            chunk = tokens[start:start + 64]
            llm.reset()
            llm.eval(chunk)
            out.append((chunk, np.array(llm.scores[:64], dtype=np.float64)))
        return out

    ref, quant = chunk_logits(smollm2_bf16), chunk_logits(q8)
    kld, same, nll = [], [], []
    for (chunk, lr), (_, lq) in zip(ref, quant):
        for j in range(32, 63):  # logits at j predict token j+1; the second half is scored
            p = lr[j] - np.logaddexp.reduce(lr[j])
            q = lq[j] - np.logaddexp.reduce(lq[j])
            kld.append(np.sum(np.exp(p) * (p - q)))
            same.append(np.argmax(p) == np.argmax(q))
            nll.append(-q[chunk[j + 1]])
    assert rows[1].positions == len(kld)
    assert rows[1].kld_mean == pytest.approx(np.mean(kld), rel=1e-3)
    assert rows[1].top1_agreement == pytest.approx(np.mean(same))
    assert rows[1].ppl == pytest.approx(np.exp(np.mean(nll)), rel=1e-4)


def test_text_chunks_follow_llama_perplexity():
    chunks = fidelity.text_chunks(list(range(1, 300)), 128, bos=0)
    assert len(chunks) == 2 and all(len(c.tokens) == 128 and c.tokens[0] == 0 and c.first == 65 for c in chunks)
    assert chunks[1].tokens[1:] == list(range(130, 257))
    with pytest.raises(Exception, match="fewer than one chunk"):
        fidelity.text_chunks([1, 2, 3], 128, bos=None)


def test_compare_cli_json(smollm2_bf16, smollm2_quantized, tmp_path):
    q4 = files(smollm2_quantized)["Q4_K_M"]
    items = [{"id": "a", "input": {"question_type": "교정형", "question": "다음 문장을 바르게 고치세요. \"금새 끝났다.\""}},
             {"id": "b", "input": {"question_type": "선택형", "question": "\"{며칠/몇 일}\" 가운데 옳은 것은?"},
              "output": {"answer": "\"며칠\"이 옳다. 한 단어이므로 소리 나는 대로 적는다."}}]
    prompts = tmp_path / "dev.json"
    prompts.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    r = run_cli("compare", str(smollm2_bf16), str(q4), "--prompts", str(prompts), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["type"] for row in rows] == ["BF16", "Q4_K_M"]
    for row in rows:
        assert {"file", "type", "top1_agreement", "kld_mean", "kld_p99", "ppl"} <= set(row)
    assert rows[0]["top1_agreement"] == 1.0 and rows[1]["kld_mean"] > 0
    # The reference's log-probabilities (a temporary file) are gone.
    assert not list(smollm2_bf16.parent.glob(".fidelity-*")) and not list(smollm2_bf16.parent.glob("*.logprobs"))
    missing = run_cli("compare", str(smollm2_bf16), str(tmp_path / "nope.gguf"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_bad_inputs_are_refused_before_scoring(smollm2_bf16, smollm2_quantized, gemma3_gguf, tmp_path):
    q4 = files(smollm2_quantized)["Q4_K_M"]
    strings = tmp_path / "strings.json"
    strings.write_text('["한 문장", "두 문장"]', encoding="utf-8")
    r = run_cli("compare", str(smollm2_bf16), str(q4), "--prompts", str(strings))
    assert r.returncode == 2 and "item 1 is not an object" in r.stderr and "scoring" not in r.stderr
    r = run_cli("compare", str(smollm2_bf16), str(gemma3_gguf))
    assert r.returncode == 2 and "not the same model" in r.stderr and "scoring" not in r.stderr
    r = run_cli("compare", str(smollm2_bf16), str(strings))
    assert r.returncode == 2 and "not a GGUF file" in r.stderr and "scoring" not in r.stderr


def test_reference_logprobs_go_beside_the_reference(smollm2_bf16, smollm2_quantized, tmp_path, monkeypatch):
    """Not to /tmp, which is often memory: for a 128k vocabulary they are gigabytes."""
    seen, real = [], fidelity._Reference
    monkeypatch.setattr(fidelity, "_Reference", lambda n, v, d, p: seen.append((d, p)) or real(n, v, d, p))
    text = tmp_path / "prose.txt"
    text.write_text(PROSE.read_text(encoding="utf-8")[:400], encoding="utf-8")
    compare(smollm2_bf16, [files(smollm2_quantized)["Q8_0"]], text, n_ctx=64)
    # `toolkit compare`'s own name there: quantize's (.<name>.fidelity-) is swept under its lock.
    assert seen == [(smollm2_bf16.parent, ".fidelity-")]
