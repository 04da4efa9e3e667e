"""The norms and examples each question gets: parsing reference files, BM25 over morphemes, the record."""

import json
from pathlib import Path

import pytest

from conftest import run_cli
from toolkit import samples
from toolkit.errors import InvalidInput
from toolkit.korean import Retriever
from toolkit.references import Reference, load_references, parse_references
from toolkit.retrieve import (Example, ExampleSettings, RetrievalSettings, examples_for, for_items, load_examples,
                              query_of)

REFS = samples.samples_path().parent / "sample_references.txt"

# As text extraction gives the reference document: titles wrapped over lines, a `<…>` inside a
# rule's examples, text before the first title (a cover page).
EXTRACTED = """국어 지식 참조 문서
<띄어쓰기 - 한글 맞춤법 제2항> 문장의 각 단어는 띄어 씀을
원칙으로 한다. <문장 부호
- 홑화살괄호 규정> 작품의 제목을 나타낼 때 쓴다. - <한강>은 사진집에 실린 작품이다. <외래어 표기법 -
외래어 표기법 제1장 제4항> 파열음 표기에는 된소리를 쓰지 않는다. <한글
맞춤법 - 한글 맞춤법 제12항> 두음 법칙에 따라 '내일'로 적는다.
"""


@pytest.fixture(scope="module")
def sample_refs():
    refs = load_references(REFS)
    return refs, Retriever([f"{r.title} {r.text}" for r in refs])


def test_titles_as_the_reference_document_writes_them():
    refs = parse_references(EXTRACTED)
    assert [r.title for r in refs] == ["띄어쓰기 - 한글 맞춤법 제2항", "문장 부호 - 홑화살괄호 규정",
                                       "외래어 표기법 - 외래어 표기법 제1장 제4항", "한글 맞춤법 - 한글 맞춤법 제12항"]
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
    lines.write_text('{"title": "조사", "text": "붙여 쓴다.\u2028"}\n\n"띄어 쓴다."\n{"title": null, "text": "셋"}\n',
                     encoding="utf-8")  # a raw U+2028 inside a string is not a line break in JSONL
    assert load_references(lines) == [Reference("조사", "붙여 쓴다."), Reference("", "띄어 쓴다."), Reference("", "셋")]


@pytest.mark.parametrize("name,content,match", [
    ("r.json", "[1, 2]", "passage 1 is neither text nor an object"),
    ("r.json", '[{"title": "조사"}]', "passage 1 has no 'text'"),
    ("r.json", '{"a": ', "not valid JSON"),
    ("r.jsonl", '{"text": "a"}\n{oops}\n', "line 2 is not valid JSON"),
    ("r.txt", "\n  \n", "no passages in it"),
    ("r.pdf", "%PDF-1.7 ...", "a PDF; extract its text first"),
    ("r.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF; extract its text first"),  # binary, misnamed
    ("r.json", '{"passages": ["a"]}', "expected a list of passages"),
    ("missing.txt", None, "no such file"),
])
def test_bad_reference_files_are_refused_in_one_line(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInput, match=match):
        load_references(path)


def test_the_query_is_what_the_question_quotes():
    q = '"장마가 {몇 일/며칠} 동안 이어졌다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.'
    assert query_of(q) == "장마가 {몇 일/며칠} 동안 이어졌다."
    assert query_of("다음 문장을 고치세요.\n“발표 자료는 내가 정리할께.”") == "발표 자료는 내가 정리할께."
    assert query_of("'깨끗이'와 '깨끗히' 가운데 표준 표기는?") == "깨끗이 깨끗히"  # the words it asks about
    assert query_of("띄어쓰기가 바른 것은?") == "띄어쓰기가 바른 것은?"
    # Other quote marks, quotes inside the sentence with the choices, an unquoted sentence on its own line.
    assert query_of("다음 문장을 고치세요.\n「내일 다시 연락할께.」") == "내일 다시 연락할께."
    assert query_of("“장마가 {몇 일/며칠} 이어졌다.\" 가운데 고르시오.") == "장마가 {몇 일/며칠} 이어졌다."
    assert query_of('"그는 "안녕"이라고 {말했다/말 했다}." 가운데 고르시오.') == '그는 "안녕"이라고 {말했다/말 했다}.'
    assert query_of("다음 문장을 고치세요.\n내일 다시 연락할께.") == "내일 다시 연락할께."
    assert query_of("’깨끗이’와 ’깨끗히’ 가운데 바른 것은?") == "깨끗이 깨끗히"


# What each bundled sample question is about, in our own reference file (12 passages, 8 relevant).
EXPECTED = {"s1": "표준어 규정 - 설레다", "s2": "한글 맞춤법 - 어원이 분명하지 않은 말",
            "s3": "한글 맞춤법 - 줄어든 말 금세", "s4": "한글 맞춤법 - 웬과 왠", "s5": "표준어 규정 - 들르다",
            "s6": "한글 맞춤법 - 된소리로 나는 어미", "s7": "띄어쓰기 - 의존 명사",
            "s8": "한글 맞춤법 - 부사의 끝음절 '-이'와 '-히'"}


def test_each_sample_question_gets_its_norm_first():
    items = json.loads(samples.samples_path().read_text(encoding="utf-8"))
    found = for_items(items, RetrievalSettings(REFS, count=2))
    assert {k: refs[0].title for k, refs in found.items()} == EXPECTED
    assert all(1 <= len(refs) <= 2 and len(set(refs)) == len(refs) for refs in found.values())
    assert len(found["s1"]) == 2


def test_only_passages_sharing_a_term_and_no_more_than_asked(sample_refs):
    refs, retriever = sample_refs
    assert retriever.search("xyzzy", 3) == []
    # Terms in more than a tenth of the passages (here: more than 2 of 12) tell nothing apart.
    assert retriever.search("는다", 3) == []
    assert len(retriever.search("할 수 있다", 1)) == 1
    # The spelling as written counts, not only its morphemes: 할께 is quoted by one rule only.
    assert refs[retriever.search("할께", 5)[0]].title == "한글 맞춤법 - 된소리로 나는 어미"
    assert retriever.search("할께", 5, among=[0, 1, 2]) == []  # only among those asked


def test_the_norms_word_lists_match_as_questions_write_the_words():
    refs = parse_references("<표준어 - 제12항> '윗-'으로 통일한다. - ㄱ: 윗-눈썹, 윗 -목, 윗- 자리 - ㄴ: 웃-눈썹\n\n"
                            "<표준어 - 제14항> 준말만 표준어로 삼는다. - ㄱ: 무, 뱀 - ㄴ: 무우, 배암")
    retriever = Retriever([f"{r.title} {r.text}" for r in refs])
    for asked in ("{윗눈썹/웃눈썹}", "윗목", "윗자리"):
        assert retriever.search(asked, 1) == [0], asked
    import unicodedata  # a question saved decomposed (NFD, as macOS may) still matches
    assert retriever.search(unicodedata.normalize("NFD", "{무/무우}를 썰었다."), 1) == [1]


def test_a_long_passage_is_shown_from_the_word_it_was_found_for():
    long = Reference("제26항", "복수 표준어: " + "가는허리/잔허리, " * 80 + "여쭈다/여쭙다, 여태/입때")
    shown = long.around(["여쭙다"], 200)
    assert shown.text.startswith("… ") and "여쭙다" in shown.render(200) and shown.title == "제26항"
    assert long.around(["가는허리"], 200) is long  # near the start: kept as it is
    assert long.around(["없는말"], 200) is long
    assert long.around(["여쭙다"], 5000) is long  # no cut: nothing to move


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


def write_items(path, rows):
    path.write_text(json.dumps([{"id": i, "input": {"question_type": t, "question": q}, **({"output": {"answer": a}}
                                                                                          if a else {})}
                                for i, t, q, a in rows], ensure_ascii=False), encoding="utf-8")
    return path


# A train file of our own: solved questions, one of them like sample s2 (며칠) and one like s6 (-ㄹ게).
TRAIN = [
    ("t1", "선택형", '"오늘이 {몇 일/며칠}이지?" 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.',
     '"오늘이 며칠이지?"가 옳다. \'며칠\'은 소리 나는 대로 적는다.'),
    ("t2", "선택형", '"{웬만큼/왠만큼} 해 두어라." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.',
     '"웬만큼 해 두어라."가 옳다. \'웬만큼\'이 표준어이다.'),
    ("t3", "교정형", '다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"내일 다시 연락할께."',
     '"내일 다시 연락할게."가 옳다. 어미 \'-ㄹ게\'는 예사소리로 적는다.'),
    ("t4", "교정형", '다음 문장을 고치세요.\n"설겆이를 마쳤다."', '"설거지를 마쳤다."가 옳다. \'설거지\'가 표준어이다.'),
    ("t5", "선택형", '"장마가 {몇 일/며칠} 동안 이어졌다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.',
     '"장마가 며칠 동안 이어졌다."가 옳다. 같은 문제.'),  # = sample s2: never shown for it
    ("t6", "선택형", '"{왠지/웬지} 춥다." 가운데 올바른 것은?', ""),  # not answered: not an example
]


def test_examples_are_the_most_alike_solved_questions_of_the_type(tmp_path):
    train = write_items(tmp_path / "train.json", TRAIN)
    assert [e.id for e in load_examples(train)] == ["t1", "t2", "t3", "t4", "t5"]
    items = json.loads(samples.samples_path().read_text(encoding="utf-8"))
    found = examples_for(items, ExampleSettings(train, count=2))
    assert [e.id for e in found["s2"]] == ["t1"]  # t5 is the same question: its answer is not shown
    # Asked in other words about the same sentence: still the same question.
    reworded = [{"id": "r", "input": {"question_type": "선택형", "question": '“장마가 {몇 일/며칠} 동안 이어졌다.” 중 '
                                                                             "바른 것은?"}}]
    assert [e.id for e in examples_for(reworded, ExampleSettings(train))["r"]] == ["t1"]
    assert [e.id for e in found["s6"]] == ["t3"]  # 교정형: among t3 and t4, the one about 할께
    assert all(e.question_type == "선택형" for key in ("s1", "s2", "s3", "s7") for e in found[key])
    # A type without examples (서술형 here) is shown those of any type.
    other = examples_for([{"id": "x", "input": {"question_type": "서술형", "question": "'며칠'을 설명하시오."}}],
                         ExampleSettings(train, count=1))
    assert [e.id for e in other["x"]] == ["t1"]
    assert found["s2"][0].render() == "질문: " + TRAIN[0][2] + "\n답변: " + TRAIN[0][3]


def test_a_file_without_answers_gives_no_examples(tmp_path):
    questions = write_items(tmp_path / "test.json", [("1", "선택형", "문제", "")])
    with pytest.raises(InvalidInput, match="no item has an output.answer to show as an example"):
        load_examples(questions)
    assert ExampleSettings().record() is None
    assert ExampleSettings(questions, 2).record() != ExampleSettings(questions, 3).record()
    assert examples_for([{"id": "1", "input": {"question": "문제"}}], ExampleSettings()) == {}
    assert Example("1", "선택형", "문제", "답").render() == "질문: 문제\n답변: 답"


@pytest.mark.parametrize("command", ["infer", "bench"])
def test_a_count_without_its_file_is_refused(command, tmp_path):
    target = [str(samples.samples_path())] if command == "infer" else [str(tmp_path / "x.gguf")]
    for option, needs in (("--references-count", "--references"), ("--references-chars", "--references"),
                          ("--examples-count", "--examples")):
        r = run_cli(command, *target, option, "2")
        assert r.returncode == 2 and f"{option} needs {needs} FILE" in r.stderr, r.stderr


def test_examples_of_the_rules_found_come_first(tmp_path):
    fixtures = Path(__file__).parent / "fixtures"
    settings = RetrievalSettings(fixtures / "norms_small.txt", count=2)
    c = " 가운데 올바른 것을 선택하고, 그 이유를 설명하세요."
    train = tmp_path / "train.json"
    train.write_text(json.dumps([
        {"id": "alike", "input": {"question_type": "선택형", "question": '"우리는 {학교처럼/학교 처럼} 갈 수 있다."' + c},
         "output": {"answer": "a", "article": "<띄어쓰기 - 한글 맞춤법 제41항>"}},
        {"id": "rule", "input": {"question_type": "선택형", "question": '"밥을 {먹을 만큼/먹을만큼} 먹어라."' + c},
         "output": {"answer": "b"}},  # its rule comes from the labels file below
        {"id": "other", "input": {"question_type": "선택형", "question": '"{케찹/케첩}을 뿌렸다."' + c},
         "output": {"answer": "c", "article": "<외래어 표기법 - 외래어 표기법 제2장 표1>"}}], ensure_ascii=False),
        encoding="utf-8")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"id": "x", "input": {"question": '"밥을 {먹을 만큼/먹을만큼} 먹어라."' + c},
                                   "output": {"article": "<띄어쓰기 - 한글 맞춤법 제42항>"}}], ensure_ascii=False),
                      encoding="utf-8")
    items = [{"id": "q", "input": {"question_type": "선택형", "question": '"우리는 {갈 수/갈수} 있다."' + c}}]
    rules = for_items(items, settings)
    assert [r.title for r in rules["q"]] == ["띄어쓰기 - 한글 맞춤법 제42항", "띄어쓰기 - 한글 맞춤법 제2항"]
    plain = examples_for(items, ExampleSettings(train, count=2))
    assert [e.id for e in plain["q"]][0] == "alike" and "rule" not in [e.id for e in plain["q"]]  # likeness alone
    ruled = examples_for(items, ExampleSettings(train, count=2), rules, labels)
    assert [e.id for e in ruled["q"]] == ["rule", "alike"]  # the rule found first, then likeness
    assert ruled["q"][0].title == "띄어쓰기 - 한글 맞춤법 제42항"
