"""Batched decoding: same answers as one at a time (batch-invariant mode), reproducible, complete."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from toolkit import dataset, embedded
from toolkit.engine import EngineSettings
from toolkit.infer import InferSettings, infer
from toolkit.parallel import kv_cells, shared_prefixes
from toolkit.prompts import PromptSet
from toolkit.sampler import SamplingParams

SHORT = PromptSet(system="짧게 답하시오. 반드시 한국어로 답하시오.", selection="옳은 것을 고르고 이유를 쓰시오.",
                  correction="틀린 곳을 고치고 이유를 쓰시오.", generic="답하시오.")


# Our own short questions: on two cores prompt evaluation (~200 tok/s) is most of each run, and
# these tests are about batching, not about the prompts.
SHORT_QUESTIONS = [
    ("선택형", '"{설렘/설레임}" 중 옳은 것은?'), ("교정형", '"왠일로 왔니?"를 고치시오.'),
    ("선택형", '"{며칠/몇 일}" 중 옳은 것은?'), ("단답형", "'깨끗이'의 뜻은?"),
    ("교정형", '"들릴게요"를 고치시오.'), ("선택형", '"{금세/금새}" 중 옳은 것은?'),
    ("교정형", '"할께요"를 고치시오.'), ("선택형", '"{웬만큼/왠만큼}" 중 옳은 것은?'),
    ("단답형", "'며칠'의 뜻은?"), ("교정형", '"어의없다"를 고치시오.'),
    ("선택형", '"{오랜만/오랫만}" 중 옳은 것은?'), ("교정형", '"되요"를 고치시오.'),
    ("선택형", '"{안 돼/안 되}" 중 옳은 것은?'), ("단답형", "'설렘'의 품사는?"),
    ("교정형", '"몇일"을 고치시오.'), ("단답형", "'금세'의 본말은?"),
]


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "short.json"  # 16 items, 3 question types
    path.write_text(json.dumps([{"id": f"p{i}", "input": {"question_type": t, "question": q}}
                                for i, (t, q) in enumerate(SHORT_QUESTIONS, 1)], ensure_ascii=False), encoding="utf-8")
    return path


def run(questions, out, parallel, **kw):
    sampling = kw.pop("sampling", SamplingParams(max_new_tokens=16))
    result = infer(questions, InferSettings(model=embedded.smollm2_gguf(), output=out, resume=kw.pop("resume", False),
                                            parallel=parallel, prompts=kw.pop("prompts", SHORT), sampling=sampling,
                                            **kw))
    return result, json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sampled(questions, tmp_path_factory):
    """--parallel 4, the seed's sampling: what the reproducibility and resume tests compare against."""
    return run(questions, tmp_path_factory.mktemp("sampled") / "a.json", 4)


def answers(data):
    return [d["output"]["answer"] for d in data]


def test_shared_prefixes():
    a, b, c = [1, 2, 3, 4, 5] * 6, [1, 2, 3, 4, 5] * 5 + [9, 9, 9, 9, 9], [7] * 30
    heads = shared_prefixes([[a, b], [c], [a, a]])
    assert heads == [[1, 2, 3, 4, 5] * 5, [], a[:-1]]  # one token of each prompt is always left
    assert shared_prefixes([[[1] * 10, [1] * 10]]) == [[]]  # below MIN_SHARED_PREFIX
    assert kv_cells([a[:25]], [a, b], [0, 0], 2, 100) == 25 + 2 * (30 - 25 + 100)
    assert kv_cells([a[:25]], [a, b], [0, 0], 2, 100, unified=False) == (30 + 100) * 3


def test_greedy_batched_equals_single_stream(questions, tmp_path):
    """Batch-invariant mode: every item's greedy tokens are the same at --parallel 1, 3 and 8."""
    greedy = SamplingParams(max_new_tokens=16, do_sample=False)
    bi = EngineSettings(batch_invariant=True)
    _, one = run(questions, tmp_path / "p1.json", 1, sampling=greedy, engine=bi)
    _, three = run(questions, tmp_path / "p3.json", 3, sampling=greedy, engine=bi)
    r8, eight = run(questions, tmp_path / "p8.json", 8, sampling=greedy, engine=bi)
    assert answers(one) == answers(three) == answers(eight)
    assert r8.parallel == 8 and len(set(answers(one))) > 1


def test_batched_sampling_is_reproducible_and_complete(questions, sampled, tmp_path):
    first, a = sampled
    _, b = run(questions, tmp_path / "b.json", 4)
    assert answers(a) == answers(b)
    items = json.loads(questions.read_text(encoding="utf-8"))
    assert [d["id"] for d in a] == [i["id"] for i in items]  # order kept, nothing lost or doubled
    assert first.generated == len(items) == 16 and first.parallel == 4
    # Shared heads: each question type's common prompt head is evaluated once, not 16 times.
    _, prompts = run(questions, tmp_path / "prompts.json", 4, dry_run=True)
    assert first.prompt_tokens < sum(p["output"]["prompt_tokens"] for p in prompts) / 2


@pytest.mark.parametrize("invariant", [False, True])
def test_resume_with_parallel(questions, sampled, tmp_path, invariant):
    engine = EngineSettings(batch_invariant=invariant)
    made, full = run(questions, tmp_path / "full.json", 4, engine=engine) if invariant else sampled
    partial = tmp_path / "partial.json"
    data = [dict(d) for d in full]
    for d in data[5:]:
        d.pop("output")
    partial.write_text(json.dumps(data, ensure_ascii=False, indent=4), encoding="utf-8")
    shutil.copy(dataset.settings_path(made.output), dataset.settings_path(partial))  # as a killed run leaves it
    result, resumed = run(questions, partial, 4, resume=True, engine=engine)
    assert (result.resumed, result.generated) == (5, 11)
    assert answers(resumed)[:5] == answers(full)[:5] and all("output" in d for d in resumed)
    if invariant:  # other batch companions, same tokens: the run is as if never interrupted
        assert answers(resumed) == answers(full)


def test_a_batch_invariant_resume_cuts_prompts_as_the_first_run(questions, tmp_path):
    """One question of a type left to answer: it keeps the head its type shared in the first run
    (heads come from the whole file), so its prompt is evaluated in the same pieces and the
    answer is the one the uninterrupted run gave."""
    engine = EngineSettings(batch_invariant=True)
    greedy = SamplingParams(max_new_tokens=16, do_sample=False)
    made, full = run(questions, tmp_path / "full.json", 4, engine=engine, sampling=greedy)
    partial = tmp_path / "partial.json"
    data = [dict(d) for d in full]
    data[3].pop("output")  # p4, one of four 단답형 questions
    partial.write_text(json.dumps(data, ensure_ascii=False, indent=4), encoding="utf-8")
    shutil.copy(dataset.settings_path(made.output), dataset.settings_path(partial))
    result, resumed = run(questions, partial, 4, resume=True, engine=engine, sampling=greedy)
    assert (result.resumed, result.generated) == (15, 1)
    assert answers(resumed) == answers(full)


def test_kill_and_resume_with_parallel(questions, tmp_path):
    out = tmp_path / "k.json"
    prompts = tmp_path / "p.toml"
    prompts.write_text('system = "짧게 답하시오."\nselection = "고르시오."\ncorrection = "고치시오."\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "toolkit", "infer", str(questions), "--model", str(embedded.smollm2_gguf()),
           "--output", str(out), "--max-new-tokens", "16", "--parallel", "4", "--prompts", str(prompts)]

    def answered():
        return sum("output" in d for d in json.loads(out.read_text(encoding="utf-8"))) if out.exists() else 0

    kills = 0
    for _ in range(10):
        before = answered()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            if answered() >= before + 3:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait()
        if proc.returncode == 0:
            break
    data = json.loads(out.read_text(encoding="utf-8"))
    assert kills >= 1 and all("output" in d for d in data) and len(data) == 16
    assert len({d["id"] for d in data}) == 16


def test_a_sequence_stops_where_its_share_of_a_split_cache_ends(tmp_path):
    """Batch-invariant runs split the cache evenly: 768 cells for 3 sequences (2 slots and the
    shared head) give each 256. An answer that would run past its share is cut there instead
    of failing the whole batch in llama_decode."""
    questions = tmp_path / "count.json"
    questions.write_text(json.dumps([{"id": f"c{i}", "input": {"question_type": "단답형", "question":
                                      f"List the numbers from {i} to 900, separated by commas."}} for i in (1, 2)]))
    greedy = SamplingParams(max_new_tokens=400, do_sample=False)
    result, data = run(questions, tmp_path / "c.json", 2, sampling=greedy, prompts=PromptSet(system="", generic="Answer."),
                       engine=EngineSettings(batch_invariant=True, n_ctx=768))
    assert result.n_ctx == 768 and all("output" in d for d in data)
    assert result.cut_at_max_tokens >= 1 and result.new_tokens <= 2 * 256  # cut at the share, not at 400


def test_a_context_under_512_tokens_caps_each_decode(tmp_path):
    """With --n-ctx below 512, llama.cpp's batch is n_ctx tokens and a bigger decode aborts the
    process (GGML_ASSERT): three 150-token prompts without a shared head must be cut to fit."""
    items = [{"id": str(i), "input": {"question_type": t, "question": f"{i}번: 다음 {{가/나}} 중 옳은 것은? 우리는 어제 학교에서 이야기를 나누었다."}}
             for i, t in enumerate(["선택형", "교정형", "단답형"])]  # one of each type: nothing shared
    inp, out, prompts = tmp_path / "q.json", tmp_path / "a.json", tmp_path / "p.toml"
    inp.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    prompts.write_text('system = "짧게 답하시오."\nselection = "고르시오."\ncorrection = "고치시오."\ngeneric = "답하시오."\n',
                       encoding="utf-8")
    r = run_cli("infer", str(inp), "--model", str(embedded.smollm2_gguf()), "--output", str(out), "--prompts", str(prompts),
                "--n-ctx", "300", "--parallel", "3", "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr[-500:]
    summary = json.loads(r.stdout)
    assert summary["generated"] == 3 and summary["prompt_tokens"] > 300
