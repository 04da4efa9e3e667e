"""Ranking routed by what a question asks about, on a reference file of our own (tests/fixtures)."""

from pathlib import Path

import pytest

from toolkit.labels import Labelled
from toolkit.references import load_references, parse_references
from toolkit.route import LOANWORDS, MARKS_SECTION, SPACING, SPELLING, Ranker, section_of

NORMS = Path(__file__).parent / "fixtures" / "norms_small.txt"
CHOOSE = " 가운데 올바른 것을 선택하고, 그 이유를 설명하세요."
CORRECT = "다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"


@pytest.fixture(scope="module")
def ranker():
    return Ranker(load_references(NORMS))


def first(ranker, question, count=1):
    return [ranker.refs[n].title.split(" - ")[1] for n, _ in ranker.rank(question, count)]


def test_sections_are_read_from_the_part_before_the_dash():
    assert section_of("띄어쓰기 - 한글 맞춤법 제42항") == SPACING  # not spelling, though it names 맞춤법
    assert section_of("한글 맞춤법, 표준어 규정 - 한글 맞춤법 제51항") == SPELLING
    assert section_of("문장 부호 - 문장 부호 쉼표 규정") == MARKS_SECTION
    assert section_of("외래어 표기법 - 외래어 표기법 제2장 표1") == LOANWORDS
    assert section_of("의존 명사") is None


@pytest.mark.parametrize("question,section", [
    ('"그 영화를 {본 적이/본적이} 있다."' + CHOOSE, SPACING),  # a space only
    ('"우리는 {집에서부터/집에서 부터} 걸었다."' + CHOOSE, SPACING),
    ('"감자튀김에 {케찹/케첩}을 뿌렸다."' + CHOOSE, LOANWORDS),  # a loanword's spelling
    ('"오늘은 {스파게티/스파게띠}를 먹자."' + CHOOSE, LOANWORDS),
    ('"방을 {깨끗이/깨끗히} 치웠다."' + CHOOSE, SPELLING),  # a Korean word's spelling
    ('"회의는 {9:30/9 : 30}에 시작한다."' + CHOOSE, MARKS_SECTION),  # a mark
    (CORRECT + "― 2019. 3. 1", MARKS_SECTION),  # a line to correct
])
def test_routed_by_the_difference(ranker, question, section):
    assert ranker.reading(question).section == section
    found = ranker.rank(question, 3)
    assert section_of(ranker.refs[found[0][0]].title) == section


def test_the_mark_and_the_part_of_speech_pick_the_passage(ranker):
    assert first(ranker, '"{3월 2일~3월 9일/3월 2일 ~ 3월 9일}에 열린다."' + CHOOSE) == ["문장 부호 물결표 규정"]
    assert first(ranker, '"{사과, 배/사과. 배}를 샀다."' + CHOOSE, 2) == ["문장 부호 쉼표 규정", "문장 부호 마침표 규정"]
    assert first(ranker, CORRECT + "― 2019. 3. 1") == ["문장 부호 마침표 규정"]
    assert first(ranker, CORRECT + "― 언제 오니 ?") == ["문장 부호 물음표 규정"]
    # The space is before a bound noun (의존 명사) or a particle (조사): that rule, then the general one.
    assert first(ranker, '"그 영화를 {본 적이/본적이} 있다."' + CHOOSE, 2) == ["한글 맞춤법 제42항", "한글 맞춤법 제2항"]
    assert first(ranker, '"{너마저/너 마저} 떠나는구나."' + CHOOSE) == ["한글 맞춤법 제41항"]
    # A loanword with no particular rule: the general table first.
    assert first(ranker, '"{케찹/케첩}을 뿌렸다."' + CHOOSE) == ["외래어 표기법 제2장 표1"]
    assert first(ranker, CORRECT + '"내일 다시 연락할께."') == ["한글 맞춤법 제53항"]  # kiwipiepy's typo model


def test_a_question_that_shows_nothing_to_route_by_is_ranked_by_its_words(ranker):
    asked = ranker.reading("띄어쓰기에서 의존 명사는 어떻게 쓰나요?")
    assert asked.sections == {} and asked.query == "띄어쓰기에서 의존 명사는 어떻게 쓰나요?"
    assert first(ranker, "띄어쓰기에서 의존 명사는 어떻게 쓰나요?") == ["한글 맞춤법 제42항"]


def test_without_sections_it_is_bm25_over_the_words(ranker):
    refs = parse_references("## 조사\n조사는 붙여 쓴다. 너마저\n\n## 의존 명사\n의존 명사는 띄어 쓴다. 본 적이 있다")
    plain = Ranker(refs)
    assert plain.reading('"{본 적이/본적이} 있다."' + CHOOSE).sections == {}
    assert [plain.refs[n].title for n, _ in plain.rank('"그 영화를 {본 적이/본적이} 있다."' + CHOOSE, 1)] == ["의존 명사"]
    assert plain.rank("xyzzy", 3) == []


def labelled(question, title):
    return Labelled("x", "선택형", question, title)


def test_labels_vote_but_never_for_their_own_question():
    own = '"나는 {스파게티/스파게띠}를 좋아한다."' + CHOOSE
    others = [labelled('"{스파게티/스파게띠}가 맛있다."' + CHOOSE, "외래어 표기법 - 외래어 표기법 제1장 제4항"),
              labelled('"저녁은 {스파게티/스파게띠}였다."' + CHOOSE, "외래어 표기법 - 외래어 표기법 제1장 제4항")]
    # Its own label, also as written with other spaces and quote marks: never counted.
    mine = [labelled(own, "외래어 표기법 - 외래어 표기법 제2장 표1"),
            labelled("“나는 {스파게티/스파게띠}를  좋아한다.”" + CHOOSE, "외래어 표기법 - 외래어 표기법 제2장 표1")]
    ranker = Ranker(load_references(NORMS), others + mine)
    votes = ranker.parts(own)["labels"]
    voted = {ranker.refs[n].title for n in votes}
    assert voted == {"외래어 표기법 - 외래어 표기법 제1장 제4항"}
    # The other questions' label outranks the general table, which the question's own label names.
    assert first(ranker, own) == ["외래어 표기법 제1장 제4항"]
    alone = Ranker(load_references(NORMS), mine)
    assert alone.parts(own)["labels"] == {}  # only its own label: nothing to go by
