"""Labelled questions: reading a labels file, and what makes two questions the same question."""

import json

import pytest

from toolkit.errors import InvalidInput
from toolkit.labels import load_labels, same_question, title_key


def test_titles_and_questions_as_compared():
    assert title_key("<띄어쓰기 - 한글 맞춤법 제2항 >") == title_key("띄어쓰기 -  한글 맞춤법 제2항") \
        == "띄어쓰기 - 한글 맞춤법 제2항"
    assert same_question("“나는 {가/나} 한다.”  가운데") == same_question('"나는 {가/나}\n한다." 가운데')
    assert same_question("나는 가 한다.") != same_question("나는 나 한다.")


def write(tmp_path, data):
    path = tmp_path / "labels.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_labelled_items_are_read_and_others_skipped(tmp_path):
    path = write(tmp_path, [{"id": 1, "input": {"question_type": "선택형", "question": "가"},
                             "output": {"answer": "a", "article": "<문장 부호 - 쉼표 규정>"}},
                            {"id": "2", "input": {"question": "나"}, "output": {"answer": "b"}},  # unlabelled
                            {"id": "3", "input": {"question": "다"}}])
    got = load_labels(path)
    assert [(x.id, x.question_type, x.question, x.title) for x in got] == [("1", "선택형", "가", "문장 부호 - 쉼표 규정")]


@pytest.mark.parametrize("data,match", [
    ("{oops", "not valid JSON"),
    ({"a": 1}, "expected a JSON list of labelled items"),
    ([], "expected a JSON list of labelled items"),
    ([{"id": 1, "input": {}}], "item 1 has no input.question"),
    ([{"id": 1, "input": {"question": "가"}, "output": "x"}], "item 1: 'output' must be an object"),
    ([{"id": 1, "input": {"question": "가"}, "output": {"article": 3}}], "output.article must be a rule's title"),
    ([{"id": 1, "input": {"question": "가"}, "output": {"answer": "a"}}], "no item has an output.article"),
])
def test_bad_labels_files_in_one_line(tmp_path, data, match):
    with pytest.raises(InvalidInput, match=match):
        load_labels(write(tmp_path, data))
