import pytest

from toolkit.clean import clean_answer, strip_thinking

ANSWER = '"장마가 며칠 동안 이어졌다."가 옳다. \'몇 일\'이 아니라 \'며칠\'로 적는다.'


@pytest.mark.parametrize("prefix", ["[답변]\n", "[답변] ", "[답변]", "답변: ", "답변:"])
def test_each_seed_prefix_is_dropped(prefix):
    assert clean_answer(prefix + ANSWER) == ANSWER


def test_only_the_first_prefix_goes():
    assert clean_answer("[답변] 답변: " + ANSWER) == "답변: " + ANSWER


def test_prefix_in_the_middle_stays():
    text = ANSWER + " [답변]은 여기까지."
    assert clean_answer(text) == text


def test_think_block_is_removed():
    assert clean_answer("<think>\n'며칠'이 맞는지 생각해 보자.\n</think>\n\n" + ANSWER) == ANSWER
    assert clean_answer("<think>\n\n</think>\n\n[답변]\n" + ANSWER) == ANSWER


def test_unclosed_or_half_think_tags():
    assert strip_thinking("이유를 생각하면 </think>" + ANSWER) == ANSWER
    assert clean_answer(ANSWER + "</think>") == ANSWER  # a stray closing tag after the answer takes nothing
    assert clean_answer("<think>생각</think>" + ANSWER + "\n</think>\n") == ANSWER
    assert clean_answer(ANSWER + "\n<think>남은 생각이 잘렸") == ANSWER


def test_special_tokens_are_removed():
    assert clean_answer(ANSWER + "<|im_end|>") == ANSWER
    assert clean_answer(ANSWER + "<end_of_turn>\n") == ANSWER
    assert clean_answer("<|eot_id|>" + ANSWER + "</s>") == ANSWER
    assert clean_answer(ANSWER + "[EOT]", special_tokens=["[EOT]"]) == ANSWER


def test_surrounding_whitespace_goes_and_the_rest_is_verbatim():
    body = ANSWER + "\n\n둘째 줄도   그대로 둔다."
    assert clean_answer("\n  " + body + "  \n") == body
