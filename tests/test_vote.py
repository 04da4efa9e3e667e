"""Choosing one answer among several sampled ones (our own sentences)."""

import json
import os
import re

import pytest

from conftest import run_cli
from toolkit import dataset
from toolkit.korean import Rouge1
from toolkit.score import exact_match
from toolkit.vote import VOTE_RECORD, choose, medoid, vote_files

ROUGE = Rouge1()


def words(a: str, b: str) -> float:
    """Shared words over all words: enough to tell these test reasons apart."""
    x, y = set(a.split()), set(b.split())
    return len(x & y) / len(x | y) if x | y else 1.0


def test_the_sentence_most_answers_declare_wins():
    answers = [
        '"나뭇잎이 떨어진다."가 옳다. 떨어지다는 한 낱말이다.',
        '"나뭇잎이 떨어 진다."가 옳다. 보조 용언은 띄어 쓴다.',
        '“나뭇잎이 떨어진다.” 가 옳다. 떨어지다는 합성어로 붙여 쓴다.',
        '나뭇잎이 떨어진다.가 옳다. 한 낱말이므로 붙인다.',
    ]
    choice = choose(answers, ROUGE.f1)
    # Curly quotes, a space before 가 and no quotes at all are the same sentence for exact match.
    assert (choice.agreeing, choice.total) == (3, 4)
    assert choice.index in (0, 2, 3)
    assert exact_match(choice.answer, '"나뭇잎이 떨어진다."가 옳다.') == 1.0


def test_the_kept_reason_is_the_one_most_like_the_others():
    answers = [
        '"A"가 옳다. 전혀 다른 이야기를 늘어놓는다',
        '"A"가 옳다. 어간 뒤에 어미가 붙어 한 낱말이 된다',
        '"A"가 옳다. 어간 뒤에 어미가 붙어 한 낱말이 되므로 붙여 쓴다',
        '"A"가 옳다. 어미가 붙어 한 낱말이 된다',
    ]
    choice = choose(answers, words)
    assert choice.index == 1 and choice.agreeing == 4
    assert choose(answers, ROUGE.f1).index == 1  # the metric the score uses agrees


def test_ties_go_to_the_earlier_answer():
    assert choose(['"B"가 옳다. 하나', '"A"가 옳다. 둘'], words).index == 0
    assert choose(['"B"가 옳다.', '"A"가 옳다.', '"A"가 옳다.', '"B"가 옳다.'], words).index == 0
    assert medoid(["같다", "같다", "같다"], words) == 0
    assert medoid(["하나", "둘"], words) == 0  # two texts: symmetric, the first
    # Totals equal on paper (0.6 and 0.6) but summed in another order: still the first.
    table = {(0, 1): .3, (0, 2): .2, (0, 3): .1, (1, 2): 0, (1, 3): .2, (2, 3): .3}
    assert medoid(["0", "1", "2", "3"], lambda a, b: table[min(int(a), int(b)), max(int(a), int(b))]) == 0


def test_answers_without_the_form_count_only_when_none_has_it():
    answers = ["모르겠다.", "잘 모르겠습니다.", '"가방을 메다."가 옳다. 어깨에 걸치는 것은 메다이다.']
    choice = choose(answers, words)
    assert (choice.index, choice.agreeing, choice.total) == (2, 1, 3)
    choice = choose(["정답은 없다 그렇다", "정답은 그렇다", "딴소리"], words)
    assert (choice.index, choice.agreeing) == (0, 0)
    # "옳다고" declares nothing: a hedge listed first does not win over a real answer.
    choice = choose(["이 문장이 옳다고 보기는 어렵다.", '"나뭇잎이 떨어진다."가 옳다. 한 낱말이다.'], words)
    assert (choice.index, choice.agreeing) == (1, 1)


def test_one_answer_is_kept_as_it_is():
    choice = choose(["그냥 문장"], words)
    assert (choice.answer, choice.index, choice.agreeing, choice.total) == ("그냥 문장", 0, 0, 1)
    with pytest.raises(ValueError):
        choose([], words)


# -- toolkit vote: several answers files → one -------------------------------------------------

QUESTIONS = [
    {"id": "1", "input": {"question_type": "선택형", "question": "\"가방을 {메다/매다}.\" 가운데 옳은 것을 고르시오."}},
    {"id": "2", "input": {"question_type": "교정형", "question": "다음 문장을 바르게 고치시오: \"문을 잠궜다.\""}},
]


def answers_file(path, *answers, questions=QUESTIONS):
    items = [{**q, "output": {"answer": a}} for q, a in zip(questions, answers)]
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path


def files(tmp_path):
    return [
        answers_file(tmp_path / "a.json", '"가방을 매다."가 옳다. 끈을 묶는 것이다.', '"문을 잠갔다."가 옳다. 기본형이 잠그다이다.'),
        answers_file(tmp_path / "b.json", '"가방을 메다."가 옳다. 어깨에 걸치는 것은 메다이다.', '"문을 잠궜다."가 옳다.'),
        answers_file(tmp_path / "c.json", '“가방을 메다.” 가 옳다. 어깨에 걸치므로 메다가 맞다.', '"문을 잠갔다."가 옳다. 잠그다의 활용이다.'),
    ]


def test_vote_keeps_the_majority_answer_of_each_question(tmp_path):
    out = tmp_path / "final.json"
    result = vote_files(files(tmp_path), out)
    final = json.loads(out.read_text(encoding="utf-8"))
    assert [i["id"] for i in final] == ["1", "2"] and [i["input"] for i in final] == [q["input"] for q in QUESTIONS]
    assert final[0]["output"]["answer"] == '"가방을 메다."가 옳다. 어깨에 걸치는 것은 메다이다.'  # b: first of equals
    assert final[1]["output"]["answer"] == '"문을 잠갔다."가 옳다. 기본형이 잠그다이다.'
    assert result.kept == [1, 1, 0] and result.agreement == {2: 2}
    r = run_cli("vote", *map(str, files(tmp_path)), "--output", str(out), "--json")  # replaces its own output
    assert r.returncode == 0, r.stderr
    # Files infer did not write could be gold answers: said, for each.
    assert " ".join(r.stderr.split()).count("has no record of how its answers were made") == 3
    summary = json.loads(r.stdout)
    assert summary["items"] == 2 and summary["agreement"] == {"2": 2} and list(summary["kept"].values()) == [1, 1, 0]


def test_vote_records_its_files_and_replaces_only_its_own_output(tmp_path):
    """(infer then refuses to resume the chosen answers as its own: tests/test_infer.py)"""
    out = tmp_path / "final.json"
    vote_files(files(tmp_path), out)
    assert dataset.read_settings(out) == {VOTE_RECORD: ["a.json", "b.json", "c.json"]}
    # An infer run's answers, a gold file or the question file named as --output by mistake: kept.
    for name, record in (("run.json", '{"model": "x.gguf"}'), ("gold.json", None), ("questions.json", None)):
        other = tmp_path / name
        if name == "questions.json":
            other.write_text(json.dumps(QUESTIONS, ensure_ascii=False), encoding="utf-8")
        else:
            answers_file(other, "다른 답", "다른 답")
        if record:
            dataset.settings_path(other).write_text(record, encoding="utf-8")
        before = other.read_bytes()
        r = run_cli("vote", *map(str, files(tmp_path)), "--output", str(other))
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith(f"error: {other} exists and was not written by toolkit vote")
        assert other.read_bytes() == before


@pytest.mark.parametrize("case, match", [
    ("one file", "two answers files or more"),
    ("twice", "a.json is given twice"),
    ("hard link", "a2.json is given twice"),
    ("other ids", "b.json answers other questions than .*a.json"),
    ("other questions", "b.json holds other questions than .*a.json under the same ids \\(2\\)"),
    ("unfinished", "c.json: item 2 has no output.answer \\(1 such items"),
    ("onto an input", "would overwrite one of the answers files"),
    ("not an answers file", "final.json exists and is not an answers file"),
])
def test_vote_refuses_what_it_cannot_vote_on_and_writes_nothing(tmp_path, case, match):
    a, b, c = files(tmp_path)
    out = tmp_path / "final.json"
    paths = [a, b, c]
    if case == "one file":
        paths = [a]
    elif case == "twice":
        paths = [a, b, tmp_path / "." / "a.json"]
    elif case == "hard link":
        os.link(a, tmp_path / "a2.json")
        paths = [a, b, tmp_path / "a2.json"]
    elif case == "other ids":
        answers_file(b, "x", questions=QUESTIONS[:1])
    elif case == "other questions":
        answers_file(b, "x", "y", questions=[QUESTIONS[0], {**QUESTIONS[1], "input": {**QUESTIONS[1]["input"], "question": "다른 질문"}}])
    elif case == "unfinished":
        c.write_text(json.dumps([{**QUESTIONS[0], "output": {"answer": "x"}}, QUESTIONS[1]], ensure_ascii=False),
                     encoding="utf-8")
    elif case == "onto an input":
        out = b
    elif case == "not an answers file":
        out.write_text('{"not": "answers"}', encoding="utf-8")
    before = {p: p.read_bytes() for p in (a, b, c, out) if p.exists()}
    r = run_cli("vote", *map(str, paths), "--output", str(out))
    error = r.stderr.strip().splitlines()[-1]  # (after the notes on files without a record)
    assert r.returncode == 2 and error.startswith("error: ") and re.search(match, error), r.stderr
    assert {p: p.read_bytes() for p in (a, b, c, out) if p.exists()} == before
