"""End to end on real GGUFs over the bundled sample set (our own sentences)."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace

import pytest

from conftest import REPO, files_under, header_only, run_cli
from toolkit import dataset, embedded, samples
from toolkit.answer import has_answer_form
from toolkit.engine import Engine, EngineSettings
from toolkit.errors import UserError
from toolkit.fsutil import exclusive, partial_path
from toolkit.infer import InferSettings, default_output, fit_context, infer, resolve_model, settings_record
from toolkit.korean import Rouge1
from toolkit.prompts import PromptSet
from toolkit.retrieve import ExampleSettings, RetrievalSettings
from toolkit.sampler import SamplingParams
from toolkit.vote import choose, vote_files

SAMPLES = samples.samples_path()
REFERENCES = SAMPLES.parent / "sample_references.txt"
FAST = SamplingParams(max_new_tokens=24)
# Short instructions keep prompts near 100 tokens: SmolLM2's English tokenizer spends ~850 on
# the default Korean ones, and prompt evaluation runs ~200 tok/s on two cores.
SHORT = PromptSet(system="짧게 답하시오.", selection="옳은 것을 고르시오.", correction="고치시오.", generic="답하시오.")
SHORT_TOML = 'system = "짧게 답하시오."\nselection = "옳은 것을 고르시오."\ncorrection = "고치시오."\ngeneric = "답하시오."\n'


def settings(**kw):
    # One at a time: the single-stream contract (tests/test_parallel.py covers batching).
    return InferSettings(**{"model": embedded.smollm2_gguf(), "sampling": FAST, "prompts": SHORT, "parallel": 1, **kw})


@pytest.fixture
def short_prompts(tmp_path):
    path = tmp_path / "short.toml"
    path.write_text(SHORT_TOML, encoding="utf-8")
    return str(path)


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def check_contract(output, inp=SAMPLES):
    items, out = read(inp), read(output)
    assert [o["id"] for o in out] == [i["id"] for i in items]
    for i, o in zip(items, out):
        assert o["input"] == i["input"]
        assert set(o) == set(i) | {"output"}
        assert isinstance(o["output"]["answer"], str)
        assert o["output"]["answer"] == o["output"]["answer"].strip()
        assert "<|im_end|>" not in o["output"]["answer"]
    text = output.read_text(encoding="utf-8")
    assert text == json.dumps(out, ensure_ascii=False, indent=4) and "\\u" not in text


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("infer") / "answers.json"
    result = infer(SAMPLES, settings(output=out))
    return result, out


def test_embedded_model_answers_every_item(embedded_run):
    result, out = embedded_run
    check_contract(out)
    assert result.items == result.generated == 8 and result.resumed == 0
    assert 0 < result.new_tokens <= 8 * 24 and result.tokens_per_second > 0
    # 선택형 and 교정형 answers are checked for the form (`"…"가 옳다`), the 단답형 one is not; the
    # count of those without it is that of the answers written.
    asked = [(i, o) for i, o in zip(read(SAMPLES), read(out)) if i["input"]["question_type"] in ("선택형", "교정형")]
    assert result.form_checked == len(asked) == 7
    assert result.missing_form == sum(not has_answer_form(o["output"]["answer"]) for _, o in asked)
    assert result.votes == 1 and result.agreement == {}  # one answer per question: nothing was voted on
    assert result.load.layers_total == 31 and result.load.backend == "CPU"


def test_quantized_file_from_toolkit_quantize(smollm2_quantized, tmp_path):
    q4 = smollm2_quantized.files[0].path
    out = tmp_path / "a.json"
    result = infer(SAMPLES, settings(model=q4, output=out, parallel=None))  # the default: batched
    check_contract(out)
    assert result.load.quant_type == "Q4_K_M"


def test_same_seed_same_answers(embedded_run, tmp_path):
    _, first = embedded_run
    again = tmp_path / "again.json"
    infer(SAMPLES, settings(output=again))
    assert read(again) == read(first)
    # Another seed: other answers (three items are enough to see it).
    few = tmp_path / "few.json"
    few.write_text(json.dumps(read(SAMPLES)[:3], ensure_ascii=False), encoding="utf-8")
    other = tmp_path / "other.json"
    infer(few, settings(output=other, sampling=replace(FAST, seed=123)))
    assert [o["output"] for o in read(other)] != [o["output"] for o in read(first)[:3]]


def test_votes_keep_the_majority_of_the_answers_successive_seeds_give(tmp_path):
    """--votes 3 --seed 0: per question, the choice among the answers of seeds 0, 1 and 2, one
    at a time and batched (batch-invariant, so the batched votes are those same answers)."""
    few = tmp_path / "few.json"
    few.write_text(json.dumps(read(SAMPLES)[:3], ensure_ascii=False), encoding="utf-8")
    runs, new_tokens = [], 0
    for seed in (0, 1, 2):
        new_tokens += infer(few, settings(output=tmp_path / f"seed{seed}.json",
                                          sampling=replace(FAST, seed=seed))).new_tokens
        runs.append(read(tmp_path / f"seed{seed}.json"))
    similarity = Rouge1().f1
    choices = [choose([run[n]["output"]["answer"] for run in runs], similarity) for n in range(3)]
    voting = replace(FAST, num_return_sequences=3)
    for kw in ({}, {"parallel": 4, "engine": EngineSettings(batch_invariant=True)}):
        out = tmp_path / f"voted{len(kw)}.json"
        result = infer(few, settings(output=out, sampling=voting, **kw))
        check_contract(out, few)
        assert [o["output"]["answer"] for o in read(out)] == [c.answer for c in choices]
        assert result.votes == 3 and result.agreement == dict(Counter(c.agreeing for c in choices))
        assert result.new_tokens == new_tokens and result.generated == 3  # every vote generated, once
    # The votes are part of how the answers were made: a rerun with another count does not resume them.
    with pytest.raises(UserError, match=r"other settings: votes 3 \(now 1\)"):
        infer(few, settings(output=out, parallel=4, engine=EngineSettings(batch_invariant=True)))
    with pytest.raises(UserError, match="votes need sampling"):
        infer(few, settings(output=tmp_path / "g.json", sampling=replace(voting, do_sample=False)))


def test_resume_records_from_before_votes_and_other_fields_and_from_toolkit_vote(embedded_run, tmp_path):
    _, first = embedded_run
    out = tmp_path / "old.json"
    shutil.copy(first, out)
    record = json.loads(dataset.settings_path(first).read_text(encoding="utf-8"))
    for newer in ("num_return_sequences", "cache_type", "batch_invariant", "references", "answer_form"):  # kept since
        del record[newer]
    dataset.settings_path(out).write_text(json.dumps(record), encoding="utf-8")
    assert infer(SAMPLES, settings(output=out)).resumed == 8
    # The KV cache's type and the kernels change the numbers, so the tokens: not resumed across them.
    before = out.read_bytes()
    with pytest.raises(UserError, match=r"other settings: batch_invariant False \(now True\), cache_type f16 "
                                        r"\(now q8_0\)"):
        infer(SAMPLES, settings(output=out, engine=EngineSettings(cache_type="q8_0", batch_invariant=True)))
    assert out.read_bytes() == before
    # Answers `toolkit vote` chose are nobody's run: not resumed as this one's.
    other = tmp_path / "other.json"
    shutil.copy(first, other)
    vote_files([out, other], tmp_path / "final.json")
    before = (tmp_path / "final.json").read_bytes()
    with pytest.raises(UserError, match="holds answers toolkit vote chose among old.json, other.json; .*--no-resume"):
        infer(SAMPLES, settings(output=tmp_path / "final.json"))
    assert (tmp_path / "final.json").read_bytes() == before


def test_a_run_stopped_before_its_first_answer_leaves_its_record_and_no_other_runs_answers(embedded_run, tmp_path,
                                                                                          monkeypatch):
    """The record is written before the first answer, after the kept ones: a kill anywhere leaves
    answers only under the record they were made with (never the next run's record over the last
    run's answers, nor an answer without a record, which no rerun would take)."""
    _, first = embedded_run
    out = tmp_path / "a.json"
    shutil.copy(first, out)
    shutil.copy(dataset.settings_path(first), dataset.settings_path(out))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "generate", stopped)
    with pytest.raises(KeyboardInterrupt):
        infer(SAMPLES, settings(output=out, sampling=replace(FAST, max_new_tokens=8), resume=False))
    assert not dataset.holds_answers(read(out)) and dataset.read_settings(out)["max_new_tokens"] == 8
    few = tmp_path / "few.json"
    few.write_text(json.dumps(read(SAMPLES)[:2], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        infer(few, settings(output=tmp_path / "fresh.json"))
    monkeypatch.undo()
    assert infer(few, settings(output=tmp_path / "fresh.json")).generated == 2  # not refused: it goes on


def test_rerun_resumes_and_no_resume_starts_over(embedded_run, tmp_path):
    _, first = embedded_run
    out = tmp_path / "r.json"
    shutil.copy(first, out)
    shutil.copy(dataset.settings_path(first), dataset.settings_path(out))
    result = infer(SAMPLES, settings(output=out))
    assert (result.resumed, result.generated) == (8, 0) and read(out) == read(first)
    result = infer(SAMPLES, settings(output=out, resume=False))
    assert (result.resumed, result.generated) == (0, 8)


@pytest.mark.parametrize("kind", ["copy", "gold"])
def test_answers_with_no_record_are_neither_resumed_nor_replaced(embedded_run, tmp_path, kind):
    """Without infer's record the answers may be a dev file's gold ones, named as --output by
    mistake for the same questions: resumed, they would score perfectly; replaced, they are lost."""
    _, first = embedded_run
    out = tmp_path / f"{kind}.json"
    if kind == "copy":
        shutil.copy(first, out)  # copied without the hidden record
    else:
        gold = [dict(i, output={"answer": '"바른 문장."이 옳다. 이유.'}) for i in read(SAMPLES)]
        out.write_text(json.dumps(gold, ensure_ascii=False), encoding="utf-8")
    before = out.read_bytes()
    for resume in (True, False):
        with pytest.raises(UserError, match=r"holds answers with no record of how they were made \(a dev file's gold "
                                            r"answers, a copy, an older run\?\); .*choose another --output"):
            infer(SAMPLES, settings(output=out, resume=resume))
        assert out.read_bytes() == before


def test_a_rerun_with_other_settings_keeps_the_old_answers_and_says_what_changed(tmp_path):
    """A quick trial (--max-new-tokens 2) and then the real run, to the same default output name:
    the trial's answers are not taken as the real run's."""
    few = tmp_path / "few.json"
    few.write_text(json.dumps(read(SAMPLES)[:2], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "a.json"
    trial = replace(FAST, max_new_tokens=2)
    infer(few, settings(output=out, sampling=trial))
    before = out.read_bytes()
    with pytest.raises(UserError, match=r"2 answer\(s\) made with other settings: max_new_tokens 2 \(now 24\), "
                                        r"seed 0 \(now 5\); .*--no-resume"):
        infer(few, settings(output=out, sampling=replace(FAST, seed=5)))
    assert out.read_bytes() == before
    with pytest.raises(UserError, match="prompts.system 짧게 답하시오. \\(now 답하라.\\)"):
        infer(few, settings(output=out, sampling=trial, prompts=replace(SHORT, system="답하라.")))
    assert (infer(few, settings(output=out, sampling=trial)).resumed) == 2  # the same settings go on
    fresh = infer(few, settings(output=out, sampling=replace(FAST, seed=5), resume=False))
    assert fresh.generated == 2 and infer(few, settings(output=out, sampling=replace(FAST, seed=5))).resumed == 2
    assert read(out) != json.loads(before)


def test_references_go_into_the_prompts_and_the_record(tmp_path):
    """The norms retrieved for a question are part of how its answer was made: a rerun without
    them, or with another count, does not take the answers as its own."""
    few = tmp_path / "few.json"
    few.write_text(json.dumps(read(SAMPLES)[5:7], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "a.json"
    refs = RetrievalSettings(REFERENCES, count=1, max_chars=60)  # short: SmolLM2 spends ~2 tokens a syllable
    assert infer(few, settings(output=out, references=refs)).generated == 2
    before = out.read_bytes()
    with pytest.raises(UserError, match=r"other settings: references from a file \(now none\)"):
        infer(few, settings(output=out))
    with pytest.raises(UserError, match=r"other settings: references.count 1 \(now 2\)"):
        infer(few, settings(output=out, references=replace(refs, count=2)))
    with pytest.raises(UserError, match=r"other settings: examples none \(now from a file\)"):
        infer(few, settings(output=out, references=refs, examples=ExampleSettings(SAMPLES.parent / "samples_gold.json")))
    assert out.read_bytes() == before
    assert infer(few, settings(output=out, references=refs)).resumed == 2


def test_dry_run_shows_the_norms_and_examples_each_question_got(tmp_path):
    out = tmp_path / "p.json"
    gold = SAMPLES.parent / "samples_gold.json"  # the samples' own answers as examples: never an item's own
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--dry-run", "--output", str(out),
                "--references", str(REFERENCES), "--references-count", "2", "--references-chars", "80",
                "--examples", str(gold), "--examples-count", "1")
    assert r.returncode == 0, r.stderr
    assert f"up to 2 passages per question from {REFERENCES}" in r.stderr
    assert f"up to 1 solved questions like each one from {gold}" in r.stderr
    data = read(out)
    assert all(1 <= len(i["output"]["references"]) <= 2 for i in data) and len(data[0]["output"]["references"]) == 2
    item = data[5]["output"]  # s6: 정리할께
    assert item["references"][0] == "한글 맞춤법 - 된소리로 나는 어미"
    norms = item["prompt"].split("[참고 규범]\n", 1)[1].split("\n\n[", 1)[0].splitlines()
    assert norms[1].startswith("<한글 맞춤법 - 된소리로 나는 어미> 어미 '-ㄹ게'") and norms[1].endswith(" …")
    assert len(norms) == 1 + len(item["references"])  # the lead-in, then the passages
    # The instruction still opens the user message: a type's questions share it as their head.
    p = item["prompt"]
    assert p.index("[지침]") < p.index("[참고 규범]") < p.index("[참고 예시]") < p.index("[질문]")
    golds = {g["id"]: g for g in read(gold)}
    for d in data:
        assert len(d["output"]["examples"]) <= 1 and d["id"] not in d["output"]["examples"]
        for e in d["output"]["examples"]:
            assert golds[e]["input"]["question_type"] == d["input"]["question_type"]
            assert "답변: " + golds[e]["output"]["answer"] in d["output"]["prompt"]
    assert sum(len(d["output"]["examples"]) for d in data) >= 4


def test_kill_and_resume(embedded_run, tmp_path, short_prompts):
    """Killed mid-run again and again: the JSON always parses, and the finished file is the
    uninterrupted run's (per-item seeds make resumed answers identical)."""
    _, reference = embedded_run
    out = tmp_path / "k.json"
    cmd = [sys.executable, "-m", "toolkit", "infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()),
           "--output", str(out), "--max-new-tokens", "24", "--prompts", short_prompts, "--parallel", "1"]
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = len([o for o in read(out) if "output" in o]) if out.exists() else 0
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and len([o for o in read(out) if "output" in o]) > before:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait()
        assert isinstance(read(out), list)  # parses after every kill
        if proc.returncode == 0:
            break
    assert kills >= 2
    assert read(out) == read(reference)
    assert not list(tmp_path.glob(".*partial"))


def test_a_rerun_with_nothing_to_answer_drops_a_killed_runs_temporary_files(embedded_run, tmp_path):
    """A kill while the settings record was being written leaves its temporary file; when every
    answer was already in, the rerun writes no record that would replace it: it is removed."""
    _, reference = embedded_run
    out = tmp_path / "answers.json"
    shutil.copy(reference, out)
    shutil.copy(dataset.settings_path(reference), dataset.settings_path(out))
    leftovers = [partial_path(out), partial_path(dataset.settings_path(out))]
    for path in leftovers:
        path.write_text('{"half": ', encoding="utf-8")
    result = infer(SAMPLES, settings(output=out))
    assert result.resumed == 8 and result.generated == 0
    assert not [p for p in leftovers if p.exists()] and read(out) == read(reference)

def test_a_full_disk_stops_infer_with_one_line_and_keeps_the_answers_so_far(embedded_run, tmp_path, small_disk,
                                                                             short_prompts):
    _, reference = embedded_run
    disk = small_disk(1)
    out = disk / "answers.json"
    items = read(reference)
    del items[-1]["output"]  # one answer still to make
    out.write_text(json.dumps(items, ensure_ascii=False, indent=4), encoding="utf-8")
    shutil.copy(dataset.settings_path(reference), dataset.settings_path(out))
    before = out.read_bytes()
    with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 4096)
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--output", str(out),
                "--max-new-tokens", "24", "--prompts", short_prompts, "--parallel", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"error: {out}: cannot write the answers (No space left on device); "
                                                 "what was there is kept")
    assert out.read_bytes() == before
    assert files_under(disk) == sorted(["answers.json", dataset.settings_path(out).name, "filler"])


def test_a_second_run_on_the_same_output_leaves_the_first_ones_files_alone(embedded_run, tmp_path, short_prompts):
    _, reference = embedded_run
    out = tmp_path / "answers.json"
    shutil.copy(reference, out)
    shutil.copy(dataset.settings_path(reference), dataset.settings_path(out))
    in_flight = partial_path(out)
    in_flight.write_text('[{"id": "1", ', encoding="utf-8")  # the first run, rewriting it
    with exclusive(dataset.lock_path(out), "first"):
        r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--output", str(out),
                    "--max-new-tokens", "24", "--prompts", short_prompts, "--no-resume")
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: {out} is being written by another toolkit process (pid {os.getpid()}); wait for it to finish, "
        "or choose another --output"), r.stderr
    assert in_flight.read_text(encoding="utf-8") == '[{"id": "1", ' and read(out) == read(reference)


def test_dry_run_writes_prompts_and_token_counts(tmp_path):
    out = tmp_path / "p.json"
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--dry-run", "--output", str(out))
    assert r.returncode == 0, r.stderr
    data = read(out)
    assert len(data) == 8
    first = data[0]["output"]
    assert first["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant.")
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    assert "[질문]\n" + data[0]["input"]["question"] in first["prompt"]
    assert "[기타 정보]\n- topic: 띄어쓰기" in data[6]["output"]["prompt"]
    assert 150 < first["prompt_tokens"] < 1500


def test_dry_run_never_replaces_answers(embedded_run, tmp_path):
    _, answers = embedded_run
    out = tmp_path / "answers.json"
    out.write_text(answers.read_text(encoding="utf-8"), encoding="utf-8")
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--dry-run", "--output", str(out))
    assert r.returncode == 2 and "holds answers" in r.stderr
    assert read(out) == read(answers)


def test_cli_summary_and_json(tmp_path, short_prompts):
    out = tmp_path / "c.json"
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--output", str(out),
                "--max-new-tokens", "8", "--greedy", "--json", "--prompts", short_prompts, "--parallel", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["items"] == summary["generated"] == 8 and summary["new_tokens"] > 0
    assert "llama, Q4_1, 0/31 layers on the GPU, backend CPU" in r.stderr
    assert "context  256 tokens" in r.stderr  # fitted: longest prompt + 8, in steps of 256
    # llama.cpp's own buffers: the weights, a 256-cell KV cache (30 layers × 768 B a cell), and a
    # compute buffer sized for one row of logits, not 512 (those alone would be 96 MiB).
    memory = summary["memory_mib"]
    assert memory["CPU"]["KV"] == pytest.approx(256 * 30 * 768 / 2**20, abs=0.01)
    assert 0 < memory["CPU"]["compute"] < 32
    assert sum(kinds.get("model", 0) for kinds in memory.values()) > 50
    assert "memory   " in r.stderr and "6 KV" in r.stderr
    check_contract(out)


def test_cli_votes(tmp_path, short_prompts):
    few = tmp_path / "few.json"
    few.write_text(json.dumps(read(SAMPLES)[:2], ensure_ascii=False), encoding="utf-8")
    args = ("infer", str(few), "--model", str(embedded.smollm2_gguf()), "--max-new-tokens", "8", "--prompts",
            short_prompts, "--votes", "2")
    r = run_cli(*args, "--output", str(tmp_path / "v.json"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"the kept sentence had [0-2]/2 votes on [12] question", r.stdout), r.stdout
    check_contract(tmp_path / "v.json", few)
    r = run_cli(*args, "--greedy", "--output", str(tmp_path / "g.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "votes need sampling" in r.stderr
    assert not (tmp_path / "g.json").exists()


def test_model_resolution(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    assert resolve_model(InferSettings(models_dir=models)) == embedded.smollm2_gguf()
    assert "embedded" in capsys.readouterr().err
    one = models / "a" / "a-Q4_K_M.gguf"
    one.parent.mkdir()
    one.write_bytes(b"x")
    (models / "a" / ".a-Q8_0.gguf.partial").write_bytes(b"x")
    assert resolve_model(InferSettings(models_dir=models)) == one
    (models / "a" / "a-Q8_0.gguf").write_bytes(b"x")
    with pytest.raises(UserError, match="several models.*--model"):
        resolve_model(InferSettings(models_dir=models))


def test_model_resolution_follows_links_and_skips_what_is_not_a_model(tmp_path):
    """models/ often links to a folder on a bigger disk; quantize and lora leave an importance
    matrix and a LoRA adapter beside the quants."""
    elsewhere = tmp_path / "disk2" / "x"
    elsewhere.mkdir(parents=True)
    (elsewhere / "x-Q4_K_M.gguf").write_bytes(b"x")
    header_only(elsewhere / "x.imatrix.gguf", "imatrix")
    header_only(elsewhere / "x-LoRA-F16.gguf", "adapter")
    models = tmp_path / "models"
    models.mkdir()
    (models / "x").symlink_to(elsewhere, target_is_directory=True)
    assert resolve_model(InferSettings(models_dir=models)) == models / "x" / "x-Q4_K_M.gguf"
    # An alias and a link back up: still one model, found once.
    (models / "y-latest").symlink_to(models / "x", target_is_directory=True)
    (elsewhere / "up").symlink_to(tmp_path, target_is_directory=True)
    assert resolve_model(InferSettings(models_dir=models)) == models / "x" / "x-Q4_K_M.gguf"


def test_a_resume_sizes_the_context_for_the_items_left(tmp_path):
    """An answered item's long prompt needs no room in this run's context."""
    items = [{"id": "long", "input": {"question_type": "교정형", "question": "가나다 " * 300}}] + read(SAMPLES)[:2]
    inp, out = tmp_path / "q.json", tmp_path / "a.json"
    inp.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    out.write_text(json.dumps([{**items[0], "output": {"answer": "이미 답함"}}] + items[1:], ensure_ascii=False),
                   encoding="utf-8")
    run = settings(output=out, parallel=2, sampling=replace(FAST, max_new_tokens=4))
    dataset.write_settings(out, settings_record(run, run.sampling, run.model))  # as if this run made it
    result = infer(inp, run)
    assert (result.resumed, result.generated) == (1, 2) and result.n_ctx < 1024
    assert read(out)[0]["output"]["answer"] == "이미 답함" and all("output" in o for o in read(out))


def test_output_paths(tmp_path):
    inp = tmp_path / "test.json"
    assert default_output(inp, tmp_path / "m-Q4_K_M.gguf", False) == tmp_path / "test.m-Q4_K_M.json"
    assert default_output(inp, tmp_path / "m-Q4_K_M.gguf", True) == tmp_path / "test.prompts.json"
    inp.write_text(SAMPLES.read_text(encoding="utf-8"), encoding="utf-8")
    r = run_cli("infer", str(inp), "--model", str(embedded.smollm2_gguf()), "--output", str(inp))
    assert r.returncode == 2 and "overwrite the input" in r.stderr
    assert read(inp) == read(SAMPLES)


def test_context_fit():
    assert fit_context(300, 1024, 8192) == 1536
    assert fit_context(7000, 1024, 8192) == 8192


@pytest.mark.parametrize("content,match", [
    ("not json", "not valid JSON"), ("{}", "expected a JSON list"), ("[]", "empty"),
    ('[{"input": {"question": "q"}}]', "no 'id'"), ('[{"id": 1}]', "no 'input'"),
    ('[{"id": 1, "input": {}}]', "input.question"),
    ('[{"id": 1, "input": {"question": "a"}}, {"id": "1", "input": {"question": "b"}}]', "duplicate id"),
])
def test_bad_input_exits_2_and_keeps_existing_output(tmp_path, content, match):
    inp = tmp_path / "in.json"
    inp.write_text(content, encoding="utf-8")
    out = tmp_path / "out.json"
    out.write_text("earlier answers", encoding="utf-8")
    r = run_cli("infer", str(inp), "--model", str(embedded.smollm2_gguf()), "--output", str(out), "--no-resume")
    assert r.returncode == 2 and match in r.stderr and r.stderr.strip().count("\n") == 0
    assert out.read_text(encoding="utf-8") == "earlier answers"


def test_missing_model_file(tmp_path):
    r = run_cli("infer", str(SAMPLES), "--model", str(tmp_path / "none.gguf"))
    assert r.returncode == 2 and "no such model file" in r.stderr


def test_beam_search_is_refused():
    r = run_cli("infer", str(SAMPLES), "--num-beams", "4")
    assert r.returncode == 2 and "beam search is not supported" in r.stderr


def test_a_batched_context_too_small_is_refused_before_any_work(tmp_path, capsys):
    """The competition prompts (~850–970 tokens here) at --parallel 4: a split cache (batch-invariant)
    gives each of its sequences n_ctx / sequences, which 2048 makes too small for them."""
    from toolkit.engine import EngineSettings

    out = tmp_path / "a.json"
    base = {"model": embedded.smollm2_gguf(), "output": out, "parallel": 4, "dry_run": True}
    with pytest.raises(UserError, match=r"--n-ctx 2048 leaves 512 tokens per sequence .* lower --parallel"):
        infer(SAMPLES, InferSettings(**base, engine=EngineSettings(batch_invariant=True, n_ctx=2048)))
    assert not out.exists()
    # A unified cache shares all of it: the run goes ahead, saying what a tight context risks.
    infer(SAMPLES, InferSettings(**base, engine=EngineSettings(n_ctx=2048)))
    assert "--n-ctx 2048 is below the" in capsys.readouterr().err and len(read(out)) == 8


def test_split_cache_room_is_counted_as_llama_cpp_pads_it():
    """n_ctx is padded to 256, then each of the sequences' shares is: 2049 over 8 sequences gives
    ceil256(2304 / 8) = 512 per sequence, 2048 gives 256."""
    from toolkit.infer import _check_batched_context, _Plan

    plan = _Plan(prefixes=[[1] * 20], prefix_of=[0] * 7, n_ctx=4096)  # 7 slots + 1 shared head = 8 sequences
    _check_batched_context(2049, plan, 7, 300, unified=False)  # fits: a note, no refusal
    with pytest.raises(UserError, match="leaves 256 tokens per sequence"):
        _check_batched_context(2048, plan, 7, 300, unified=False)
    _check_batched_context(2048, plan, 7, 2000, unified=True)  # one shared cache: the whole of it


def test_an_empty_rendered_prompt_is_refused(tmp_path):
    empty = tmp_path / "empty.jinja"
    empty.write_text("", encoding="utf-8")
    out = tmp_path / "o.json"
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--chat-template", str(empty),
                "--output", str(out), "--max-new-tokens", "4")
    assert r.returncode == 2 and "renders an empty prompt" in r.stderr and not out.exists()


def test_the_batched_context_is_capped_by_the_trained_one(tmp_path):
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--dry-run", "--parallel", "2",
                "--max-new-tokens", "100000000", "--output", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    n_ctx = int(re.search(r"context +(\d+) tokens \(trained 8192\)", r.stderr).group(1))
    assert 2 * 8192 <= n_ctx <= 3 * 8192  # two sequences of at most 8192, plus the shared heads


def test_a_prompt_longer_than_the_context_is_refused_with_the_right_remedy(tmp_path):
    model = str(embedded.smollm2_gguf())
    r = run_cli("infer", str(SAMPLES), "--model", model, "--n-ctx", "64", "--output", str(tmp_path / "a.json"))
    assert r.returncode == 2 and "but the context is 64; raise --n-ctx" in r.stderr
    long = tmp_path / "long.json"  # past the trained context no --n-ctx helps
    long.write_text(json.dumps([{"id": "1", "input": {"question_type": "교정형", "question": "가나다 " * 4000}}],
                               ensure_ascii=False), encoding="utf-8")
    r = run_cli("infer", str(long), "--model", model, "--n-ctx", "65536", "--output", str(tmp_path / "b.json"))
    assert r.returncode == 2 and "the prompt of item 1 has" in r.stderr and "--n-ctx" not in r.stderr
    assert "more than the 8192 the model was trained on" in " ".join(r.stderr.split())
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()
    # A dry run is how one finds such items: it writes every prompt's count and names the long ones.
    r = run_cli("infer", str(long), "--model", model, "--dry-run", "--output", str(tmp_path / "p.json"))
    assert r.returncode == 0 and "the prompt of item 1 has" in r.stderr, r.stderr
    assert read(tmp_path / "p.json")[0]["output"]["prompt_tokens"] > 8192


def _address_space(gib: int):
    # A cap on the child's address space makes a big allocation fail on any machine, whatever its
    # memory overcommit policy (two threads: few stacks and malloc arenas under the cap).
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (gib << 30, gib << 30))


def test_a_context_that_does_not_fit_is_named_and_the_answers_are_kept(embedded_run, tmp_path):
    _, answers = embedded_run
    out = tmp_path / "answers.json"
    out.write_text(answers.read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copy(dataset.settings_path(answers), dataset.settings_path(out))
    model = str(embedded.smollm2_gguf())
    # 3M cells of SmolLM2's KV cache (30 layers × 768 B each) are 64 GiB.
    r = run_cli("infer", str(SAMPLES), "--model", model, "--n-ctx", "3000000", "--parallel", "1", "--threads", "2",
                "--output", str(out), "--no-resume", preexec_fn=_address_space(16))
    assert r.returncode == 2, r.stderr
    error = r.stderr.strip().splitlines()[-1]
    assert error == ("error: a context of 3000000 tokens does not fit: llama.cpp could not allocate 65,919 MiB on CPU "
                     "for the KV cache; lower --parallel or --n-ctx, or use --cache-type q8_0 (half the KV cache)")
    assert read(out) == read(answers)
    # 1G cells: llama.cpp's own bookkeeping of them fails first (std::bad_alloc), before any buffer.
    r = run_cli("infer", str(SAMPLES), "--model", model, "--n-ctx", "1000000000", "--parallel", "1", "--threads", "2",
                "--output", str(out), "--no-resume", preexec_fn=_address_space(4))
    assert r.returncode == 2 and "does not fit: llama.cpp ran out of RAM setting it up (std::bad_alloc)" in r.stderr
    assert read(out) == read(answers)


def test_a_file_that_is_not_ours_is_never_replaced(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes", encoding="utf-8")
    r = run_cli("infer", str(SAMPLES), "--model", str(embedded.smollm2_gguf()), "--output", str(notes), "--no-resume")
    assert r.returncode == 2 and "not an answers file" in r.stderr
    assert notes.read_text(encoding="utf-8") == "my notes"


def test_the_batched_context_counts_every_vote_as_a_sequence():
    from toolkit.fit import KV_PAD, round_up
    from toolkit.infer import _plan

    items = [{"id": str(n), "input": {"question_type": "선택형", "question": "q"}} for n in (1, 2)]
    head = list(range(30))
    token_ids = {"1": head + list(range(100, 110)), "2": head + list(range(200, 210))}
    # 2 questions × 5 votes fill 10 slots: each holds its 10 own prompt tokens and 100 new ones.
    for votes, streams in ((1, 2), (5, 10)):
        plan = _plan(items, token_ids, 10, 100, True, 10_000, votes)
        assert plan.prefixes == [head] and plan.n_ctx == round_up(30 + streams * (10 + 100), KV_PAD)
    # A type's only question: its votes share its whole prompt but the last token (evaluated once).
    plan = _plan(items[:1], token_ids, 10, 100, True, 10_000, 5)
    assert plan.prefixes == [token_ids["1"][:-1]] and plan.prefix_of == [0]
    assert plan.n_ctx == round_up(39 + 5 * (1 + 100), KV_PAD)
    assert _plan(items[:1], token_ids, 10, 100, True, 10_000, 1).prefixes == []  # no votes: nothing to share
    # Batch-invariant (split cache): the prompt is cut where the plain run cuts it, so vote i stays seed + i's answer.
    assert _plan(items[:1], token_ids, 10, 100, False, 10_000, 5).prefixes == []
