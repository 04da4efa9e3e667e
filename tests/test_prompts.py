import pytest

from toolkit import prompts
from toolkit.errors import UserError
from toolkit.prompts import PromptSet, build_messages, load_prompt_file, text_or_file, user_message

SELECT = {"question_type": "선택형", "question": '"{왠지/웬지} 졸리다." 가운데 올바른 것을 고르세요.'}


def test_default_system_prompt_is_the_seeds():
    assert prompts.DEFAULT_SYSTEM_PROMPT.startswith("You are a helpful AI assistant. Please answer the user's questions kindly. 당신은")
    assert prompts.DEFAULT_SYSTEM_PROMPT.endswith("단, 동일한 문장을 절대 반복하지 마시오.")
    assert "\n" not in prompts.DEFAULT_SYSTEM_PROMPT


def test_user_message_layout():
    text = user_message(SELECT, PromptSet())
    assert text.startswith(prompts.SELECTION_INSTRUCTION)
    assert text.endswith("[질문]\n" + SELECT["question"])
    assert "[기타 정보]" not in text
    assert '"완성한 문장"이 옳다.' in text


def test_instruction_per_type():
    p = PromptSet()
    assert p.instruction("선택형") == prompts.SELECTION_INSTRUCTION
    assert p.instruction("교정형") == prompts.CORRECTION_INSTRUCTION
    for other in ("선다형", "서술형", "단답형", "새로운유형"):
        assert p.instruction(other) == prompts.GENERIC_INSTRUCTION


def test_extra_input_fields_become_other_information():
    item = {**SELECT, "topic": "맞춤법", "hints": ["왜인지", "웬"]}
    text = user_message(item, PromptSet())
    assert '[기타 정보]\n- topic: 맞춤법\n- hints: ["왜인지", "웬"]\n\n[질문]' in text


def test_references_come_between_the_instruction_and_the_rest():
    item = {**SELECT, "topic": "맞춤법"}
    text = user_message(item, PromptSet(), ["<맞춤법 - 왠지> '왠지'는 '왜인지'가 줄어든 말이다.", "둘째 규범."])
    assert text.startswith(prompts.SELECTION_INSTRUCTION + "\n\n" + prompts.REFERENCES_HEADING + "\n<맞춤법 - 왠지>")
    assert "줄어든 말이다.\n둘째 규범.\n\n[기타 정보]\n- topic: 맞춤법\n\n[질문]" in text
    assert user_message(item, PromptSet(), []) == user_message(item, PromptSet())  # none found: no heading
    both = user_message(item, PromptSet(), ["규범."], ["질문: 가\n답변: 나", "질문: 다\n답변: 라"])
    assert ("규범.\n\n" + prompts.EXAMPLES_HEADING + "\n\n질문: 가\n답변: 나\n\n질문: 다\n답변: 라\n\n[기타 정보]"
            in both)


def test_messages_with_and_without_system():
    msgs = build_messages(SELECT, PromptSet())
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert [m["role"] for m in build_messages(SELECT, PromptSet(system=""))] == ["user"]


def test_prompt_file_and_at_file(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('system = "시스템"\n"선택형" = """\n고르시오.\n"""\ngeneric = "답하시오."\n', encoding="utf-8")
    p = load_prompt_file(toml)
    assert (p.system, p.selection, p.generic) == ("시스템", "고르시오.", "답하시오.")
    assert p.correction == prompts.CORRECTION_INSTRUCTION
    f = tmp_path / "c.txt"
    f.write_text("고쳐 쓰시오.\n", encoding="utf-8")
    assert text_or_file(f"@{f}") == "고쳐 쓰시오."
    assert text_or_file("그대로") == "그대로"


def test_prompt_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("selection = [1, 2]\n")
    with pytest.raises(UserError, match="must be a string"):
        load_prompt_file(bad)
    bad.write_text('oops = "x"\n')
    with pytest.raises(UserError, match="unknown keys oops"):
        load_prompt_file(bad)
    bad.write_text("not = toml = at all")
    with pytest.raises(UserError, match="not valid TOML"):
        load_prompt_file(bad)
    with pytest.raises(UserError, match="no such file"):
        text_or_file(f"@{tmp_path / 'missing.txt'}")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"\xff\xfe system")
    with pytest.raises(UserError, match="not UTF-8 text"):
        text_or_file(f"@{latin}")
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_prompt_file(latin)


def test_prompt_files_saved_with_a_byte_order_mark_are_read(tmp_path):
    # Windows Notepad writes UTF-8 with a BOM, which TOML itself refuses.
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeffsystem = \"짧게 답하시오.\"\n".encode("utf-8"))
    assert load_prompt_file(bom).system == "짧게 답하시오."
    text = tmp_path / "s.txt"
    text.write_bytes("\ufeff짧게.".encode("utf-8"))
    assert text_or_file(f"@{text}") == "짧게."


def test_unknown_type_warns(capsys):
    prompts.warn_unknown_types([{"input": {"question_type": "퀴즈형"}}, {"input": SELECT}])
    err = capsys.readouterr().err
    assert "퀴즈형" in err and "generic" in err
