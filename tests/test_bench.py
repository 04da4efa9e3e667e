"""bench: one fresh process per --parallel setting, figures as a table or JSON."""

import json

import pytest

from conftest import run_cli
from toolkit import embedded, samples
from toolkit.bench import repeated


def test_repeated_makes_ids_unique_and_keeps_the_order(tmp_path):
    path = repeated(samples.samples_path(), 3, tmp_path)
    items = json.loads(samples.samples_path().read_text(encoding="utf-8"))
    many = json.loads(path.read_text(encoding="utf-8"))
    assert len(many) == 3 * len(items) and len({m["id"] for m in many}) == len(many)
    assert [m["input"] for m in many] == [i["input"] for i in items] * 3
    assert repeated(samples.samples_path(), 1, tmp_path) == samples.samples_path()  # once: the file itself


def test_bench_json(tmp_path):
    one = tmp_path / "one.json"  # one question, twice
    one.write_text(json.dumps(json.loads(samples.samples_path().read_text(encoding="utf-8"))[:1]), encoding="utf-8")
    # Short prompts, as infer would take them: the seed's system prompt is ~900 tokens here.
    prompts = tmp_path / "short.toml"
    prompts.write_text('system = "짧게 답하시오."\nselection = "고르시오."\ncorrection = "고치시오."\n', encoding="utf-8")
    r = run_cli("bench", str(embedded.smollm2_gguf()), "--input", str(one), "--repeat", "2", "--parallel", "1",
                "--parallel", "2", "--max-new-tokens", "4", "--prompts", str(prompts), "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["parallel"] for row in rows] == [1, 2]
    for row in rows:
        assert {"parallel", "prompt_tps", "gen_tps", "aggregate_tps", "seconds_per_item", "peak_rss_mb"} <= set(row)
        assert row["prompt_tps"] > 0 and row["peak_rss_mb"] > 50 and row["items"] == 2
        assert row["new_tokens"] > 0 and row["gen_tps"] > 0
    # The prompts given are the ones benched: two items at --parallel 1, each far below the seed's ~900 tokens.
    dry = run_cli("infer", str(one), "--model", str(embedded.smollm2_gguf()), "--prompts", str(prompts), "--dry-run",
                  "--output", str(tmp_path / "dry.json"))
    assert dry.returncode == 0, dry.stderr
    n = json.loads((tmp_path / "dry.json").read_text(encoding="utf-8"))[0]["output"]["prompt_tokens"]
    assert rows[0]["prompt_tokens"] == 2 * n < 400


def test_bench_bad_model(tmp_path):
    from toolkit.bench import bench
    from toolkit.errors import InvalidGGUF

    with pytest.raises(InvalidGGUF, match="no such file"):  # the library, before any worker starts
        bench(tmp_path / "none.gguf")
    r = run_cli("bench", str(tmp_path / "none.gguf"))
    assert r.returncode == 2 and "no such file" in r.stderr
    (tmp_path / "q.json").write_text("[]", encoding="utf-8")
    r = run_cli("bench", str(tmp_path / "q.json"))  # not a model: said before any worker runs
    assert r.returncode == 2 and "not a GGUF file" in r.stderr and "failed" not in r.stderr


def test_a_worker_that_dies_is_reported_not_waited_for():
    import multiprocessing as mp
    import os

    from toolkit.bench import _row

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=os._exit, args=(3,))  # as a segfault or the OOM killer would: no row sent
    proc.start()
    assert _row(proc, queue) == {"error": "the worker process died (exit code 3)"}
    proc.join()


def test_a_request_that_cannot_be_met_stays_a_user_error(tmp_path):
    # A worker's UserError (here a question longer than SmolLM2's 8192-token context) is exit 2, as in infer.
    long = tmp_path / "long.json"
    long.write_text(json.dumps([{"id": "1", "input": {"question_type": "교정형", "question": "가나다 " * 4000}}],
                               ensure_ascii=False), encoding="utf-8")
    r = run_cli("bench", str(embedded.smollm2_gguf()), "--input", str(long), "--parallel", "1")
    assert r.returncode == 2, r.stderr
    assert "bench at --parallel 1 failed: UserError: the prompt of item 1 has" in r.stderr
    assert "more than the 8192 the model was trained on" in r.stderr


def test_bench_takes_infer_s_references_and_examples(tmp_path):
    """Retrieved norms and examples lengthen the prompts, so prompt time: benched as infer would run them."""
    one = tmp_path / "one.json"
    one.write_text(json.dumps(json.loads(samples.samples_path().read_text(encoding="utf-8"))[5:6]), encoding="utf-8")
    prompts = tmp_path / "short.toml"
    prompts.write_text('system = "짧게 답하시오."\ncorrection = "고치시오."\n', encoding="utf-8")
    refs = samples.samples_path().parent / "sample_references.txt"
    gold = samples.samples_path().parent / "samples_gold.json"
    common = ["--prompts", str(prompts), "--references", str(refs), "--references-count", "1",
              "--examples", str(gold), "--examples-count", "1"]
    r = run_cli("bench", str(embedded.smollm2_gguf()), "--input", str(one), "--parallel", "1", "--max-new-tokens",
                "2", "--json", *common, timeout=600)
    assert r.returncode == 0, r.stderr
    dry = run_cli("infer", str(one), "--model", str(embedded.smollm2_gguf()), "--dry-run", "--output",
                  str(tmp_path / "dry.json"), *common)
    assert dry.returncode == 0, dry.stderr
    n = json.loads((tmp_path / "dry.json").read_text(encoding="utf-8"))[0]["output"]["prompt_tokens"]
    assert json.loads(r.stdout)[0]["prompt_tokens"] == n > 300  # the passage and the example are in
    bad = run_cli("bench", str(embedded.smollm2_gguf()), "--input", str(one), "--references", str(one))
    assert bad.returncode == 2 and "passage 1 has no 'text'" in bad.stderr and bad.stderr.strip().count("\n") == 0
