"""Answer forms: the grammar on token bytes, what each question is held to, and real runs."""

import json

import numpy as np
import pytest

from conftest import run_cli
from toolkit import embedded
from toolkit.constraints import CLOSE, Constraint, Form, Sentence, Vocabulary, plan_for
from toolkit.engine import Engine, EngineSettings
from toolkit.infer import InferSettings, infer
from toolkit.prompts import PromptSet
from toolkit.sampler import SamplingParams
from toolkit.answer import answer_sentence, has_answer_form

CHOOSE = " 가운데 올바른 것을 선택하고, 그 이유를 설명하세요."
CORRECT = "다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"

# A vocabulary of our own: tokens that merge the closing quote with what is around it, a Korean
# syllable only as its three bytes, and control tokens (no bytes).
PIECES = [b'"', b'."', '"가'.encode(), '"가 옳다.'.encode(), b" ", "옳".encode(), "다".encode(), b".", "가".encode(),
          "나".encode(), b"A", b"B", " 이유".encode(), b"", *(bytes([b]) for b in "라".encode()), b'"A', 'B."가'.encode()]
VOCAB = Vocabulary(PIECES)


def allowed(c: Constraint) -> set[bytes]:
    mask = c.allowed()
    return None if mask is None else {PIECES[t] for t in np.flatnonzero(mask)}


def write(c: Constraint, *pieces: bytes) -> None:
    for p in pieces:
        assert p in allowed(c), (p, allowed(c))
        c.accept(PIECES.index(p))


def test_a_choice_is_written_byte_for_byte_across_merged_tokens():
    c = Constraint(Form.choice(["가.", "나."]), VOCAB)
    assert allowed(c) == {b'"', '"가'.encode()}  # `"가` opens one candidate; `"A` opens none
    write(c, b'"')
    assert allowed(c) == {"가".encode(), "나".encode(), "나".encode()[:1]}  # 라's first byte is 나's too
    write(c, "나".encode())
    assert allowed(c) == {b'."', b"."}  # the full stop alone, or with the closing quote
    write(c, b'."', "가".encode(), b" ", "옳".encode(), "다".encode(), b".")
    assert not c.done and allowed(c) == {b" ", " 이유".encode()}  # the space after 옳다. belongs to the form
    write(c, " 이유".encode())  # it may come with the reason's first word
    assert c.done and c.allowed() is None  # the reason is free


def test_a_sentence_to_correct_is_any_text_without_a_quote():
    c = Constraint(Form.correction(), VOCAB)
    assert allowed(c) == {b'"', '"가'.encode(), '"가 옳다.'.encode(), b'"A'}
    write(c, b'"')
    assert b'"' not in allowed(c) and '"가'.encode() not in allowed(c)  # no empty sentence
    assert {b"A", "라".encode()[:1], " 이유".encode()} <= allowed(c)  # a syllable's first byte too
    write(c, b"A", b"B")
    assert '"가 옳다.'.encode() in allowed(c) and b'"A' not in allowed(c)  # a quote only as the form's own
    write(c, '"가 옳다.'.encode(), b" ")
    assert c.done
    merged = Constraint(Form.correction(), VOCAB)
    write(merged, b'"', b"A", 'B."가'.encode())  # one token ends the sentence and opens the form's end
    assert merged.state.left == (" 옳다. ".encode(),)


def test_a_sentence_ends_within_its_limit():
    c = Constraint(Form.correction("AB"), VOCAB)  # at most 2 * 2 + 32 bytes
    write(c, b'"', *[b"A"] * 36)
    assert allowed(c) == {b'"', '"가'.encode(), '"가 옳다.'.encode()}  # nothing but the form's end now
    lines = Constraint(Form.correction(), Vocabulary([b'"', b"\n", b"a\nb", b"a"]))
    lines.accept(0)
    assert list(lines.allowed()) == [False, False, False, True]  # no line break inside the sentence


def test_a_syllable_split_into_bytes_is_written_byte_by_byte():
    c = Constraint(Form.choice(["라"]), VOCAB)
    write(c, b'"', *(bytes([b]) for b in "라".encode()), '"가'.encode())
    assert allowed(c) == {b" "}


def test_the_mask_keeps_the_allowed_scores_and_steps_aside_when_done():
    c = Constraint(Form.choice(["가."]), VOCAB)
    logits = np.arange(len(PIECES), dtype=np.float32)
    masked = c.apply(logits)
    keep = np.isfinite(masked)
    assert set(np.flatnonzero(keep)) == {PIECES.index(b'"'), PIECES.index('"가'.encode())}
    assert np.array_equal(masked[keep], logits[keep]) and np.all(masked[~keep] == -np.inf)
    nothing = Constraint(Form.choice(["없는말"]), Vocabulary([b"x", b"y"]))  # no token can write it
    assert nothing.apply(logits[:2]) is not None and np.array_equal(nothing.apply(logits[:2]), logits[:2])


def test_what_each_question_is_held_to():
    assert plan_for("선택형", '"{가/나} 다."' + CHOOSE, "free").form is None
    strict = plan_for("선택형", '"{가/나/다} 왔다."' + CHOOSE, "strict")
    assert strict.candidates == ("가 왔다.", "나 왔다.", "다 왔다.") and not strict.fallback
    assert strict.form.segments[0].options[1] == ('"나 왔다.' + CLOSE).encode()
    chose = plan_for("선택형", '"{일시: 5월/일시 : 5월} 3일"' + CHOOSE, "choose")
    assert chose.form is None and chose.openings == ('"일시: 5월 3일"가 옳다.', '"일시 : 5월 3일"가 옳다.')
    lines = plan_for("교정형", "다음 중 어문 규범에 부합하는 것을 선택하고, 그 이유를 설명하세요.\n― 네, 알겠어요.\n― 네. 알겠어요.",
                     "choose")
    assert lines.candidates == ("네, 알겠어요.", "네. 알겠어요.")  # lines are choices whatever the type says
    assert plan_for("교정형", CORRECT + '"내일 다시 연락할께."', "choose").form == Form.correction("내일 다시 연락할께.")
    for broken in ('"{과일(사과, 배)}을 샀다."', '"{호텔에는 {수건/타올}이 있다."', '"{가/}"', "가 나 다"):
        fallback = plan_for("선택형", broken + CHOOSE, "strict")
        assert fallback.fallback and isinstance(fallback.form.segments[1], Sentence) and not fallback.candidates, broken
    assert plan_for("단답형", "'며칠'의 뜻은?", "strict") == plan_for("단답형", "'며칠'의 뜻은?", "free")


# -- real runs ------------------------------------------------------------------------------------

QUESTIONS = [
    ("c1", "선택형", '"나는 {할 수 있다/할수 있다}."' + CHOOSE),
    ("c2", "선택형", '"{며칠/몇 일} 뒤에 보자."' + CHOOSE),
    ("c3", "선택형", '"그는 {웬일로/왠일로} 왔니?"' + CHOOSE),
    ("c4", "교정형", CORRECT + '"내일 다시 연락할께."'),
    ("c5", "교정형", "다음 중 어문 규범에 부합하는 것을 선택하고, 그 이유를 설명하세요.\n― 네, 좋아요.\n― 네. 좋아요."),
    ("c6", "선택형", '"{학교/학굣/학교에} 갔다."' + CHOOSE),
    ("c7", "단답형", "'며칠'의 뜻은?"),
]
SHORT = PromptSet(system="짧게 답하시오.", selection="옳은 것을 고르고 이유를 쓰시오.",
                  correction="틀린 곳을 고치고 이유를 쓰시오.", generic="답하시오.")
GEMMA_TEMPLATE = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
                  "{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n")


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("forms") / "q.json"
    path.write_text(json.dumps([{"id": i, "input": {"question_type": t, "question": q}} for i, t, q in QUESTIONS],
                               ensure_ascii=False), encoding="utf-8")
    return path


def run(questions, out, form, **kw):
    settings = InferSettings(model=kw.pop("model", embedded.smollm2_gguf()), output=out, resume=False,
                             prompts=SHORT, answer_form=form, sampling=kw.pop("sampling", SamplingParams(max_new_tokens=96)),
                             **kw)
    result = infer(questions, settings)
    return result, {d["id"]: d["output"]["answer"] for d in json.loads(out.read_text(encoding="utf-8"))}


def held_to_the_form(result, answers):
    assert result.form_checked == 6 and result.missing_form == 0
    for key, _, question in QUESTIONS[:6]:
        plan = plan_for(dict((k, t) for k, t, _ in QUESTIONS)[key], question, "strict")
        assert has_answer_form(answers[key]) and answers[key].startswith('"'), answers[key]
        if plan.candidates:
            assert answer_sentence(answers[key]).strip('"') in plan.candidates, answers[key]


@pytest.mark.parametrize("parallel", [1, 3])
def test_strict_answers_all_have_the_form_and_choose_among_the_candidates(questions, tmp_path, parallel):
    result, answers = run(questions, tmp_path / "s.json", "strict", parallel=parallel)
    held_to_the_form(result, answers)
    assert not answers["c7"].startswith('"가 옳다')  # other types are not held to it


def test_gemma_with_its_sentencepiece_tokenizer(questions, gemma3_gguf, tmp_path):
    template = tmp_path / "gemma.jinja"
    template.write_text(GEMMA_TEMPLATE, encoding="utf-8")
    for form in ("strict", "choose"):
        result, answers = run(questions, tmp_path / f"{form}.json", form, model=gemma3_gguf, chat_template=template,
                              parallel=2)
        held_to_the_form(result, answers)


def test_choose_keeps_the_opening_of_highest_log_probability(questions, tmp_path):
    result, answers = run(questions, tmp_path / "c.json", "choose", parallel=1)
    held_to_the_form(result, answers)
    assert set(result.choices) == {"c1", "c2", "c3", "c5", "c6"}  # the 선택형 ones and the lines
    # Computed again on their own: teacher-forced over prompt + opening, as `toolkit compare` scores.
    infer(questions, InferSettings(model=embedded.smollm2_gguf(), output=tmp_path / "p.json", prompts=SHORT,
                                   answer_form="choose", dry_run=True))
    prompts = {d["id"]: d["output"] for d in json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))}
    with Engine(embedded.smollm2_gguf(), EngineSettings()) as engine:
        engine.open_context(2048)
        for key, picked in result.choices.items():
            prompt = engine.tokenize(prompts[key]["prompt"])
            scores = []
            for candidate in prompts[key]["candidates"]:
                tokens = prompt + engine.tokenize(f'"{candidate}"가 옳다.')
                total = []
                engine.score(tokens, len(prompt), lambda i, row: total.append(
                    float(row[tokens[i]] - np.log(np.exp(row.astype(np.float64) - row.max()).sum()) - row.max())))
                scores.append(sum(total))
            best = int(np.argmax(scores))
            runner_up = sorted(scores)[-2]
            assert picked["candidate"] == best or abs(scores[best] - scores[picked["candidate"]]) < 1e-2, (key, scores)
            assert abs(picked["margin"] - (max(scores) - runner_up)) < 0.05, (key, picked, scores)
            assert answers[key].startswith(f'"{picked["sentence"]}"가 옳다.')


@pytest.mark.parametrize("form", ["strict", "choose"])
def test_batched_constrained_runs_equal_single_stream_ones(questions, tmp_path, form):
    greedy = SamplingParams(max_new_tokens=48, do_sample=False)
    bi = EngineSettings(batch_invariant=True)
    r1, one = run(questions, tmp_path / "1.json", form, parallel=1, engine=bi, sampling=greedy)
    r3, three = run(questions, tmp_path / "3.json", form, parallel=3, engine=bi, sampling=greedy)
    assert one == three and r1.choices == r3.choices


def test_a_choice_question_without_candidates_falls_back_with_a_warning(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"id": "[x]", "input": {"question_type": "선택형", "question": '"{과일(사과, 배)}"' + CHOOSE}},
                                {"id": "ok", "input": {"question_type": "선택형", "question": '"{가/나}"' + CHOOSE}}],
                               ensure_ascii=False), encoding="utf-8")
    r = run_cli("infer", str(path), "--answer-form", "strict", "--dry-run", "--output", str(tmp_path / "d.json"))
    assert r.returncode == 0, r.stderr
    assert "item [x]: a 선택형 question whose {…} gives no candidates" in r.stderr
    dry = {d["id"]: d["output"] for d in json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))}
    assert dry["ok"]["candidates"] == ["가", "나"] and "candidates" not in dry["[x]"]


def test_the_answer_form_is_part_of_the_resume_record(tmp_path):
    out, one = tmp_path / "a.json", tmp_path / "one.json"
    one.write_text(json.dumps([{"id": "1", "input": {"question_type": "선택형", "question": '"{가/나}"' + CHOOSE}}],
                              ensure_ascii=False), encoding="utf-8")
    args = [str(one), "--output", str(out), "--max-new-tokens", "4"]
    assert run_cli("infer", *args).returncode == 0
    r = run_cli("infer", *args, "--answer-form", "strict")
    assert r.returncode == 2 and "answer_form" in r.stderr and "--no-resume" in r.stderr
    r = run_cli("infer", *args, "--answer-form", "choose", "--no-resume")
    assert r.returncode == 0 and "choose: 1 선택형 answer(s) opened with the likeliest candidate" in r.stdout
    assert "; 1 #" in r.stdout or ": 1 #" in r.stdout, r.stdout
