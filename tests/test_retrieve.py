"""The norms each question gets: parsing reference files, BM25 over morphemes, the record."""

import json

import pytest

from toolkit import demo
from toolkit.errors import InvalidInput
from toolkit.retrieve import (Reference, RetrievalSettings, Retriever, for_items, load_references,
                              parse_references, query_of)

REFS = demo.samples_path().parent / "sample_references.txt"

# As text extraction gives the reference document: titles wrapped over lines, a `<…>` inside a
# rule's examples, text before the first title (a cover page).
EXTRACTED = """국어 지식 참조 문서
<띄어쓰기 - 한글 맞춤법 제2항> 문장의 각 단어는 띄어 씀을
원칙으로 한다. <문장 부호
- 홑화살괄호 규정> 작품의 제목을 나타낼 때 쓴다. - <한강>은 사진집에 실린 작품이다. <외래어 표기법 -
외래어 표기법 제1장 제4항> 파열음 표기에는 된소리를 쓰지 않는다.
"""


@pytest.fixture(scope="module")
def sample_retriever():
    return Retriever(load_references(REFS))


def test_titles_as_the_reference_document_writes_them():
    refs = parse_references(EXTRACTED)
    assert [r.title for r in refs] == ["띄어쓰기 - 한글 맞춤법 제2항", "문장 부호 - 홑화살괄호 규정",
                                       "외래어 표기법 - 외래어 표기법 제1장 제4항"]
    assert refs[0].text == "문장의 각 단어는 띄어 씀을 원칙으로 한다."  # lines joined, the cover page dropped
    assert refs[1].text == "작품의 제목을 나타낼 때 쓴다. - <한강>은 사진집에 실린 작품이다."


def test_markdown_headings_and_paragraphs():
    md = parse_references("# 규범\n\n## 의존 명사\n앞말과 띄어 쓴다.\n\n## 조사\n앞말에 붙여 쓴다.\n")
    assert [(r.title, r.text) for r in md] == [("의존 명사", "앞말과 띄어 쓴다."), ("조사", "앞말에 붙여 쓴다.")]
    plain = parse_references("의존 명사는 띄어 쓴다.\n예: 할 수 있다.\n\n  \n조사는 붙여 쓴다.\n")
    assert [(r.title, r.text) for r in plain] == [("", "의존 명사는 띄어 쓴다. 예: 할 수 있다."), ("", "조사는 붙여 쓴다.")]


def test_json_and_jsonl(tmp_path):
    listed = tmp_path / "r.json"
    listed.write_text(json.dumps(["조사는 붙여 쓴다.", {"title": "의존 명사", "text": "띄어 쓴다."},
                                  {"content": "단위 명사는 띄어 쓴다."}], ensure_ascii=False), encoding="utf-8")
    assert load_references(listed) == [Reference("", "조사는 붙여 쓴다."), Reference("의존 명사", "띄어 쓴다."),
                                       Reference("", "단위 명사는 띄어 쓴다.")]
    mapping = tmp_path / "m.json"
    mapping.write_text('{"의존 명사": "띄어 쓴다."}', encoding="utf-8")
    assert load_references(mapping) == [Reference("의존 명사", "띄어 쓴다.")]
    lines = tmp_path / "r.jsonl"
    lines.write_text('{"title": "조사", "text": "붙여 쓴다."}\n\n"띄어 쓴다."\n', encoding="utf-8")
    assert load_references(lines) == [Reference("조사", "붙여 쓴다."), Reference("", "띄어 쓴다.")]


@pytest.mark.parametrize("name,content,match", [
    ("r.json", "[1, 2]", "passage 1 is neither text nor an object"),
    ("r.json", '[{"title": "조사"}]', "passage 1 has no 'text'"),
    ("r.json", '{"a": ', "not valid JSON"),
    ("r.jsonl", '{"text": "a"}\n{oops}\n', "line 2 is not valid JSON"),
    ("r.txt", "\n  \n", "no passages in it"),
    ("r.pdf", "%PDF-1.7 ...", "a PDF; extract its text first"),
    ("missing.txt", None, "no such file"),
])
def test_bad_reference_files_are_refused_in_one_line(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInput, match=match):
        load_references(path)


def test_the_query_is_what_the_question_quotes():
    q = '"장마가 {몇 일/며칠} 동안 이어졌다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.'
    assert query_of(q) == "장마가 {몇 일/며칠} 동안 이어졌다."
    assert query_of("다음 문장을 고치세요.\n“발표 자료는 내가 정리할께.”") == "발표 자료는 내가 정리할께."
    assert query_of("'깨끗이'와 '깨끗히' 가운데 표준 표기는?") == "깨끗이 깨끗히"  # the words it asks about
    assert query_of("띄어쓰기가 바른 것은?") == "띄어쓰기가 바른 것은?"


# What each bundled sample question is about, in our own reference file (12 passages, 8 relevant).
EXPECTED = {"s1": "표준어 규정 - 설레다", "s2": "한글 맞춤법 - 어원이 분명하지 않은 말",
            "s3": "한글 맞춤법 - 줄어든 말 금세", "s4": "한글 맞춤법 - 웬과 왠", "s5": "표준어 규정 - 들르다",
            "s6": "한글 맞춤법 - 된소리로 나는 어미", "s7": "띄어쓰기 - 의존 명사",
            "s8": "한글 맞춤법 - 부사의 끝음절 '-이'와 '-히'"}


def test_each_sample_question_gets_its_norm_first():
    items = json.loads(demo.samples_path().read_text(encoding="utf-8"))
    found = for_items(items, RetrievalSettings(REFS, count=2))
    assert {k: refs[0].title for k, refs in found.items()} == EXPECTED
    assert all(1 <= len(refs) <= 2 and len(set(refs)) == len(refs) for refs in found.values())
    assert len(found["s1"]) == 2


def test_only_passages_sharing_a_term_and_no_more_than_asked(sample_retriever):
    assert sample_retriever.search("xyzzy", 3) == []
    # Terms in more than a tenth of the passages (here: more than 2 of 12) tell nothing apart.
    assert sample_retriever.search("는다", 3) == []
    assert len(sample_retriever.search("할 수 있다", 1)) == 1
    # The spelling as written counts, not only its morphemes: 할께 is quoted by one rule only.
    assert sample_retriever.search("할께", 5)[0].title == "한글 맞춤법 - 된소리로 나는 어미"


def test_long_passages_are_cut_at_a_word():
    ref = Reference("쉼표", "같은 자격의 어구를 열거할 때 그 사이에 쓴다. " * 10)
    text = ref.render(40)
    assert text.startswith("<쉼표> 같은 자격의") and text.endswith(" …")
    assert len(text) <= len("<쉼표> ") + 40 + 2 and "쓴다" in text and not text[:-2].endswith(" ")
    assert Reference("", "짧다.").render(40) == "짧다."


def test_the_record_follows_the_content_not_the_name(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("조사는 붙여 쓴다.", encoding="utf-8")
    b.write_text("조사는 붙여 쓴다.", encoding="utf-8")
    assert RetrievalSettings(a).record() == RetrievalSettings(b).record()
    b.write_text("조사는 앞말에 붙여 쓴다.", encoding="utf-8")
    assert RetrievalSettings(a).record()["sha256"] != RetrievalSettings(b).record()["sha256"]
    assert RetrievalSettings(a, count=2).record() != RetrievalSettings(a).record()
    assert RetrievalSettings().record() is None
