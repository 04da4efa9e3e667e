import json

import pytest

from toolkit.dataset import (answer_of, check_output, holds_answers, load_items, previous_answers, render_output,
                             settings_changes, write_output)
from toolkit.errors import InvalidInput, OutputNotWritable

ITEMS = [{"id": "1", "input": {"question_type": "선택형", "question": "가?"}},
         {"id": 2, "input": {"question_type": "교정형", "question": "나?", "extra": "x"}, "note": "kept"}]


def write(tmp_path, data, name="in.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return p


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": "1"}), "expected a JSON list"),
    ("[]", "empty"),
    (json.dumps([{"input": {"question": "q"}}]), "item 1 has no 'id'"),
    (json.dumps([{"id": "1", "question": "q"}]), "has no 'input' object"),
    (json.dumps([{"id": "1", "input": {"question_type": "선택형"}}]), "no 'input.question'"),
    (json.dumps([{"id": "1", "input": {"question": "  "}}]), "no 'input.question'"),
    (json.dumps([ITEMS[0], {"id": "1", "input": {"question": "q"}}]), "duplicate id '1' \\(items 1 and 2\\)"),
    (json.dumps([ITEMS[0], "text"]), "item 2 is not an object"),
    (json.dumps([{"id": [1], "input": {"question": "q"}}]), "'id' must be a string or a whole number"),
    (json.dumps([{"id": "1", "input": {"question": 123}}]), "'input.question' must be text"),
])
def test_bad_input_is_refused(tmp_path, content, match):
    with pytest.raises(InvalidInput, match=match):
        load_items(write(tmp_path, content))


def test_missing_and_non_utf8(tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        load_items(tmp_path / "none.json")
    p = tmp_path / "latin.json"
    p.write_bytes('[{"id": "é"}]'.encode("latin-1"))
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load_items(p)
    with pytest.raises(InvalidInput, match="is a directory, not a competition JSON file"):
        load_items(tmp_path)


def test_every_user_json_reader_says_why_in_one_line(tmp_path):
    """score's and --calibration's files go through the same reader as infer's input."""
    from toolkit.imatrix import load_items as calibration_items
    from toolkit.score import score

    with pytest.raises(InvalidInput, match="is a directory, not a prediction file"):
        score(tmp_path, tmp_path)
    with pytest.raises(InvalidInput, match="is a directory, not a calibration file"):
        calibration_items(tmp_path)


def test_answer_of_any_shape_of_output():
    """compare's --prompts and quantize's --calibration read answers through it too: an output of
    another shape is no answer (it was an AttributeError there)."""
    assert answer_of({"id": "1", "output": {"answer": "\"설렘\"이 옳다."}}) == "\"설렘\"이 옳다."
    for item in ({"id": "1"}, {"id": "1", "output": "\"설렘\"이 옳다."}, {"id": "1", "output": {"answer": 3}},
                 {"id": "1", "output": None}, "not an item"):
        assert answer_of(item) is None


def test_settings_changes_name_each_difference():
    old = {"model": "m-Q4_K_M.gguf", "lora": None, "max_new_tokens": 8, "seed": 0,
           "prompts": {"system": "짧게.", "selection": "가" * 50}}
    new = {"model": "m-Q8_0.gguf", "lora": "x.gguf", "max_new_tokens": 8, "seed": 0,
           "prompts": {"system": "짧게.", "selection": "나" * 50}}
    assert settings_changes(old, new) == ["lora None (now x.gguf)", "model m-Q4_K_M.gguf (now m-Q8_0.gguf)",
                                          "prompts.selection changed"]
    assert settings_changes(old, dict(old)) == []


def test_output_keeps_order_fields_and_hangul(tmp_path):
    out = tmp_path / "out.json"
    write_output(out, ITEMS, {"2": {"answer": '"나"가 옳다.'}, "1": {"answer": "가"}})
    text = out.read_text(encoding="utf-8")
    assert '"나"가 옳다' not in text and '\\"나\\"가 옳다' in text  # JSON-escaped quotes, Hangul as is
    assert "\\u" not in text
    data = json.loads(text)
    assert [d["id"] for d in data] == ["1", 2]
    assert data[1]["note"] == "kept" and data[1]["input"]["extra"] == "x"
    assert data[0]["output"] == {"answer": "가"}
    assert text == json.dumps(data, ensure_ascii=False, indent=4)


def test_unanswered_items_have_no_output():
    data = json.loads(render_output(ITEMS, {"1": {"answer": "가"}}))
    assert "output" in data[0] and "output" not in data[1]


def test_gold_answers_in_the_input_are_neither_written_nor_resumed(tmp_path):
    dev = [{**ITEMS[0], "output": {"answer": "gold 1"}}, {**ITEMS[1], "output": {"answer": "gold 2"}}]
    out = tmp_path / "out.json"
    write_output(out, dev, {"1": {"answer": "model 1"}})  # a run killed after one item
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data[0]["output"] == {"answer": "model 1"} and "output" not in data[1]
    assert previous_answers(check_output(out, dev), dev) == {"1": "model 1"}
    # A copy of the dev file given as --output: its gold answers are not taken as done.
    out.write_text(json.dumps(dev, ensure_ascii=False), encoding="utf-8")
    assert previous_answers(check_output(out, dev), dev) == {}


def test_previous_answers_are_found_by_id(tmp_path):
    out = tmp_path / "out.json"
    write_output(out, ITEMS, {"2": {"answer": "나"}})
    assert previous_answers(check_output(out, ITEMS), ITEMS) == {"2": "나"}
    assert previous_answers(check_output(tmp_path / "none.json", ITEMS), ITEMS) == {}


def test_output_of_another_input_is_refused(tmp_path):
    out = write(tmp_path, [{"id": "zzz", "input": {"question": "q"}, "output": {"answer": "a"}}], "out.json")
    with pytest.raises(InvalidInput, match="other questions"):
        previous_answers(check_output(out, ITEMS), ITEMS)
    out.write_text('{"a": 1}')
    with pytest.raises(InvalidInput, match="not an answers file"):
        previous_answers(check_output(out, ITEMS), ITEMS)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ITEMS, ensure_ascii=False).encode("utf-8"))
    assert load_items(path) == ITEMS


def test_outputs_that_must_not_be_replaced_are_refused_before_any_work(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes", encoding="utf-8")
    with pytest.raises(InvalidInput, match="not an answers file"):
        check_output(notes, ITEMS)
    with pytest.raises(InvalidInput, match="not an answers file"):
        previous_answers(check_output(notes, ITEMS), ITEMS)
    assert notes.read_text(encoding="utf-8") == "my notes"
    with pytest.raises(InvalidInput, match="is a directory"):
        check_output(tmp_path, ITEMS)
    with pytest.raises(OutputNotWritable, match="cannot write there"):
        check_output(notes / "out.json", ITEMS)  # a file where a directory should be
    (tmp_path / "empty.json").touch()
    check_output(tmp_path / "empty.json", ITEMS)  # an empty file holds nothing to lose
    write_output(tmp_path / "answers.json", ITEMS, {"1": {"answer": "가"}})
    check_output(tmp_path / "answers.json", ITEMS)  # ours: resumed, or replaced with --no-resume
    # A file of other questions (a dev file given as --output by mistake) is never replaced.
    dev = write(tmp_path, [{"id": "d1", "input": {"question": "q"}, "output": {"answer": "gold"}}], "dev.json")
    with pytest.raises(InvalidInput, match="other questions"):
        check_output(dev, ITEMS)
    assert not list(tmp_path.glob(".*.partial"))


def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path):
    (tmp_path / "out.json").mkdir()  # os.replace cannot put a file there
    with pytest.raises(OutputNotWritable, match="what was there is kept"):
        write_output(tmp_path / "out.json", ITEMS, {"1": {"answer": "가"}})
    assert (tmp_path / "out.json").is_dir()


def test_holds_answers_reads_a_byte_order_mark(tmp_path):
    out = tmp_path / "answers.json"
    write_output(out, ITEMS, {"1": {"answer": "가"}})
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())
    assert holds_answers(check_output(out, ITEMS))
    write_output(out, ITEMS, {"1": {"prompt": "p", "prompt_tokens": 3}})  # a dry run's file
    assert not holds_answers(check_output(out, ITEMS)) and not holds_answers(check_output(tmp_path / "none.json", ITEMS))


def test_an_output_with_other_questions_under_the_same_ids_is_refused(tmp_path):
    """Resume goes by id: an answer to another question under the same id (an edited input, another
    round's file) must not be kept as this question's."""
    out = tmp_path / "answers.json"
    write_output(out, ITEMS, {"1": {"answer": "가"}})
    before = out.read_bytes()
    edited = [ITEMS[0], {**ITEMS[1], "input": {**ITEMS[1]["input"], "question": "다른 질문?"}}]
    with pytest.raises(InvalidInput, match=r"other questions under the same ids \(2\)"):
        check_output(out, edited)
    assert out.read_bytes() == before
    assert check_output(out, ITEMS)  # the same questions: resumed as before


def test_answers_go_through_a_linked_output_to_its_target(tmp_path):
    target = tmp_path / "shared" / "submit.json"
    target.parent.mkdir()
    target.write_text("[]", encoding="utf-8")
    link = tmp_path / "submit.json"
    link.symlink_to(target)
    check_output(link, ITEMS)
    write_output(link, ITEMS, {"1": {"answer": "가"}})
    assert link.is_symlink() and answer_of(json.loads(target.read_text(encoding="utf-8"))[0]) == "가"
    assert not list(target.parent.glob(".*")) and not list(tmp_path.glob(".*"))
