"""What a question asks about: candidates from {A/B} and from lines, and the difference between them."""

import pytest

from toolkit.question import PUNCT, SPACE, WORD, compare, fill, marks_in, read

CHOOSE = " 가운데 올바른 것을 선택하고, 그 이유를 설명하세요."
CORRECT = "다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"


def test_braces_give_the_candidates_filled_in():
    asked = read('"나도 그 일을 {할 수/할수} 있다."' + CHOOSE)
    assert asked.candidates == ("나도 그 일을 할 수 있다.", "나도 그 일을 할수 있다.")
    assert asked.sentence == "나도 그 일을 {할 수/할수} 있다."
    assert asked.differs == SPACE and asked.words == ("할", "수", "할수")
    # Two groups multiply; braces without a slash are text, not a choice.
    assert fill("{가/나}와 {다/라}") == ["가와 다", "가와 라", "나와 다", "나와 라"]
    assert read('"{과일(사과, 배)}을 샀다."' + CHOOSE).candidates == ()


def test_choices_as_lines_whatever_the_type_says():
    q = "다음 중 어문 규범에 부합하는 것을 선택하고, 그 이유를 설명하세요.\n― 네. 알겠습니다.\n― 네, 알겠습니다."
    asked = read(q)
    assert asked.candidates == ("네. 알겠습니다.", "네, 알겠습니다.")
    assert asked.differs == PUNCT and asked.marks == ("마침표", "쉼표")


@pytest.mark.parametrize("a,b,differs,marks", [
    ("먹을 만큼", "먹을만큼", SPACE, []),
    ("일시: 5월", "일시 : 5월", PUNCT, ["쌍점"]),  # a space beside a mark is that mark's rule
    ("3월 2일~3월 9일", "3월 2일 ~ 3월 9일", PUNCT, ["물결표"]),
    ("사과, 배", "사과. 배", PUNCT, ["쉼표", "마침표"]),
    ("케첩을", "케찹을", WORD, []),
])
def test_what_differs(a, b, differs, marks):
    kind, found, _ = compare(a, b)
    assert (kind, found) == (differs, marks)


def test_a_sentence_to_correct_and_its_marks():
    dated = read(CORRECT + "― 2019. 3. 1")
    assert dated.about_marks and dated.sentence == "2019. 3. 1" and dated.marks[0] == "마침표"
    quoting = read(CORRECT + "― 그는 집에 가자.라고 말했다.")
    assert quoting.marks[:2] == ("큰따옴표", "작은따옴표")  # quotes missing before 라고
    blank = read("다음 문장이 어문 규범에 부합하도록 문장 부호를 추가하세요.\n― 민수야( ) 이리 와")
    assert blank.about_marks and blank.marks[0] == "쉼표" and "소괄호" not in blank.marks  # ( ) is a blank
    plain = read(CORRECT + '"내일 다시 연락할께."')
    assert plain.sentence == "내일 다시 연락할께." and not plain.about_marks and plain.candidates == ()
    assert marks_in("일시: 5월… 끝?") == ["쌍점", "줄임표", "물음표"]


@pytest.mark.parametrize("question", ["", "띄어쓰기가 바른 것은?", '"{한/}"' + CHOOSE, "{{가/나}/다}", '"약속컨대/약속건대} 꼭 갚겠다."',
                                      "{", "/", "― ", '"'])
def test_nothing_errors_on_odd_questions(question):
    read(question)


def test_a_broken_brace_still_gives_the_choice():
    assert read('"약속컨대/약속건대} 꼭 갚겠다."' + CHOOSE).candidates == ("약속컨대 꼭 갚겠다.", "약속건대 꼭 갚겠다.")


def test_the_same_alternative_twice_asks_about_the_word():
    asked = read('"입력한 {자료/자료}가 사라졌다."' + CHOOSE)
    assert asked.differs == WORD and asked.words == ("자료",)


def test_candidates_that_answers_may_be_held_to():
    three = read('"그는 {학교/학굣/학교에} 갔다."' + CHOOSE)
    assert three.candidates == ("그는 학교 갔다.", "그는 학굣 갔다.", "그는 학교에 갔다.") and three.exact
    marks = read('"{9월 1일~9월 3일/9월 1일 ~ 9월 3일}, 휴관합니다."' + CHOOSE)
    assert marks.candidates == ("9월 1일~9월 3일, 휴관합니다.", "9월 1일 ~ 9월 3일, 휴관합니다.") and marks.exact
    nested = read('"{호텔에는 {수건/타올}이 있다."' + CHOOSE)
    assert nested.candidates and not nested.exact  # read for retrieval, not held to for answers
    assert not read('"약속컨대/약속건대} 꼭 갚겠다."' + CHOOSE).exact
    assert read('"{가/나}"' + CHOOSE).exact and not read('"{과일(사과, 배)}"' + CHOOSE).candidates
