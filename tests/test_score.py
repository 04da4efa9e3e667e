"""Hand-made prediction/gold pairs (our own sentences) with known EM and ROUGE-1 values."""

import json

import pytest

from conftest import run_cli
from toolkit import samples
from toolkit.answer import has_answer_form, split_answer
from toolkit.korean import Rouge1
from toolkit.score import exact_match, final_score, score

GOLD = '"장마가 며칠 동안 이어졌다."가 옳다. 사과 배 감 귤'


@pytest.fixture(scope="module")
def rouge():
    return Rouge1()


@pytest.mark.parametrize("pred,expected", [
    ('"장마가 며칠 동안 이어졌다."가 옳다. 이유.', 1.0),
    ('“장마가 며칠 동안 이어졌다.” 가 옳다.', 1.0),  # curly quotes, a space before 가
    ('"장마가 며칠 동안 이어졌다."이 옳다.', 1.0),  # 이 옳다
    ("  '장마가 며칠 동안 이어졌다.'가 옳다.", 1.0),  # single quotes, leading space
    ("장마가 며칠 동안 이어졌다.가 옳다.", 1.0),  # no quotes at all
    ('"장마가 몇 일 동안 이어졌다."가 옳다.', 0.0),
    ("며칠이 맞습니다.", 0.0),  # no "…"가 옳다 form
    ("", 0.0),
])
def test_exact_match_rule(pred, expected):
    assert exact_match(pred, GOLD) == expected


def test_gold_alternatives_match_either():
    gold = '"오늘은 왠지 춥다." 혹은 "오늘은 왠지 추웠다."가 옳다. 이유.'
    assert exact_match('"오늘은 왠지 춥다."가 옳다.', gold) == 1.0
    assert exact_match('"오늘은 왠지 추웠다."가 옳다.', gold) == 1.0
    assert exact_match('"오늘은 웬지 춥다."가 옳다.', gold) == 0.0
    assert exact_match('"A" 또는 "B"가 옳다.', '"B" 또는 "A"가 옳다.') == 0.0  # the prediction must pick one


def test_gold_sentences_with_quotes_inside_match_themselves():
    """Quotes of another kind inside the sentence, around 또는/혹은, are part of it, not alternatives."""
    for gold in ('"그는 \'사과\' 또는 \'배\'를 골랐다."가 옳다. 이유.', '"\'다르다\' 혹은 \'틀리다\'를 가려 쓴다."가 옳다.'):
        assert exact_match(gold, gold) == 1.0
    three = '"하나다.", "둘이다." 혹은 "셋이다."가 옳다.'
    assert all(exact_match(f'"{s}"가 옳다.', three) == 1.0 for s in ("하나다.", "둘이다.", "셋이다."))
    assert exact_match('"넷이다."가 옳다.', three) == 0.0


def test_the_form_ends_at_a_word():
    assert split_answer("이 문장이 옳다고 보기는 어렵다.").sentence is None
    assert split_answer('"A"가 옳다는 견해도 있다. 그러나 "B"가 옳다. 이유.').reason == "이유."


def test_answer_form():
    """What the summary counts: a quoted sentence declared correct, at the start, as exact match reads it."""
    assert has_answer_form(GOLD)
    assert has_answer_form('"동생은 어제 도서관에 갔대." 가 옳다.')
    assert has_answer_form('“오늘은 왠지 기분이 좋다.”가 옳다.')
    assert has_answer_form('"설렘"이 옳다.')
    for lacking in ("며칠이 맞습니다.", "", '정답: "A"가 옳다.', '**"A"가 옳다.** 이유', "이 답이 옳다고 본다."):
        assert not has_answer_form(lacking), lacking
        assert exact_match(lacking, '"A"가 옳다.') == 0.0


def test_split_answer():
    assert split_answer(GOLD).sentence == '"장마가 며칠 동안 이어졌다."'
    assert split_answer(GOLD).reason == "사과 배 감 귤"
    # A sentence that itself contains "가 옳다" is cut after its closing quote.
    tricky = split_answer('"그는 내 말이 옳다고 했다."가 옳다. 이유.')
    assert tricky.sentence == '"그는 내 말이 옳다고 했다."' and tricky.reason == "이유."
    # Inner quotes of the other kind do not end the sentence.
    inner = split_answer('"그는 \'내 말\'이 옳다고 했다."가 옳다. 이유.')
    assert inner.sentence == '"그는 \'내 말\'이 옳다고 했다."' and inner.reason == "이유."
    # An unquoted sentence ends at the first form, even if the reason quotes another one.
    first = split_answer("장마가 며칠 동안 이어졌다.가 옳다. 흔히 '몇 일'이 옳다고 여기지만 틀렸다.")
    assert first.sentence == "장마가 며칠 동안 이어졌다." and first.reason.startswith("흔히")
    assert exact_match("장마가 며칠 동안 이어졌다.가 옳다. 흔히 '몇 일'이 옳다고 여기지만 틀렸다.", GOLD) == 1.0
    assert split_answer("형식이 없는 답.").sentence is None


def test_rouge1_prepares_text_as_the_official_script(rouge):
    # Quotes, periods, hyphens, jamo and other symbols are spaces; Latin letters lower-cased.
    assert rouge.tokens("'사과'·배-감! ㅋㅋ ABC") == ["사과", "배", "감", "abc"]
    assert rouge.f1('"사과", "배".', "사과 배") == 1.0
    assert rouge.tokens("…!?") == [] and rouge.f1("…", "사과") == 0.0
    # Only the first 1,000 whitespace-separated words count.
    assert rouge.tokens("사과 " * 1000 + "배") == ["사과"] * 1000


def test_rouge1_on_morphemes(rouge):
    assert rouge.tokens("사과 배 감 귤") == ["사과", "배", "감", "귤"]
    assert rouge.f1("사과 배 감 귤", "사과 배 감 귤") == 1.0
    assert rouge.f1("사과 배", "사과 배 감 귤") == pytest.approx(2 / 3)  # P 1, R 1/2
    assert rouge.f1("책상 의자 연필", "학교 도서관 책상 의자") == pytest.approx(4 / 7)  # P 2/3, R 1/2
    assert rouge.f1("", "사과") == 0.0 and rouge.f1("연필", "사과") == 0.0


def test_final_score_reproduces_the_baseline_table():
    avg, final, used = final_score(0.3454, {"rouge1": 0.2603, "bertscore": 0.7036, "bleurt": 0.5313})
    assert round(final, 4) == 0.4219 and round(avg, 4) == 0.4984
    assert used == ["exact_match", "rouge1", "bertscore", "bleurt"]
    avg, final, used = final_score(0.5, {"rouge1": 0.3, "bertscore": None, "bleurt": None})
    assert (avg, final, used) == (0.3, 0.4, ["exact_match", "rouge1"])


def write(path, items):
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path


def item(i, qtype, answer):
    return {"id": i, "input": {"question_type": qtype, "question": "q"}, "output": {"answer": answer}}


@pytest.fixture
def pair(tmp_path):
    gold = [item("1", "선택형", '"사과가 좋다."가 옳다. 사과 배 감 귤'),
            item("2", "교정형", '"책을 읽는다."가 옳다. 학교 도서관 책상 의자'),
            item("3", "교정형", '"밥을 먹는다."가 옳다. 사과')]
    pred = [item("1", "선택형", '“사과가 좋다.” 가 옳다. 사과 배'),  # EM 1, ROUGE 2/3
            item("3", "교정형", ""),  # empty answer: EM 0, ROUGE 0
            item("2", "교정형", "책을 읽는다고 생각한다. 책상 의자 연필")]  # no form: EM 0
    return write(tmp_path / "pred.json", pred), write(tmp_path / "gold.json", gold)


def test_report_by_type(pair, rouge):
    report = score(*pair)
    assert report.n == 3
    assert report.exact_match == pytest.approx(1 / 3)
    # Item 2 has no form, so its whole answer is the reason.
    r2 = rouge.f1("책을 읽는다고 생각한다. 책상 의자 연필", "학교 도서관 책상 의자")
    assert report.rouge1 == pytest.approx((2 / 3 + r2 + 0.0) / 3)
    assert report.final == pytest.approx((report.exact_match + report.rouge1) / 2)
    assert (report.bertscore, report.bleurt) == (None, None)
    assert report.by_type["선택형"].exact_match == 1.0 and report.by_type["선택형"].rouge1 == pytest.approx(2 / 3)
    assert report.by_type["교정형"].n == 2 and report.by_type["교정형"].exact_match == 0.0


def test_gold_items_without_an_input_object_count_as_unknown_type(pair, tmp_path):
    pred, gold = pair
    items = json.loads(gold.read_text(encoding="utf-8"))
    for item in items:
        item["input"] = item["input"]["question"]  # text instead of an object
    plain = tmp_path / "gold.json"
    plain.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    report = score(pred, plain)
    assert set(report.by_type) == {"unknown"} and report.final == pytest.approx(score(pred, gold).final)


def test_cli_json(pair, tmp_path):
    r = run_cli("score", *map(str, pair), "--json", env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == {"n", "exact_match", "rouge1", "bertscore", "bleurt", "descriptive_avg", "final",
                         "metrics_used", "by_type"}
    assert data["bertscore"] is None and data["bleurt"] is None and data["metrics_used"] == ["exact_match", "rouge1"]
    assert set(data["by_type"]) == {"선택형", "교정형"}
    assert set(data["by_type"]["교정형"]) == set(data) - {"by_type"}
    text = run_cli("score", *map(str, pair), env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert "overall" in text.stdout and "—" in text.stdout


@pytest.mark.parametrize("change,match", [
    (lambda p, g: p[:2], "has 2 items but"),
    (lambda p, g: [p[0], p[0], p[2]], "duplicate id"),
    (lambda p, g: [p[0], p[1], {**p[2], "id": "9"}], "id '9' is not in"),
    (lambda p, g: [p[0], p[1], {"id": "2", "input": {}}], "has no output.answer"),
    (lambda p, g: [p[0], p[1], {**p[2], "id": 2}], "id 2 is '2' in"),  # the official evaluator's lookup
])
def test_checks_like_the_official_evaluator(pair, change, match):
    pred_path, gold_path = pair
    pred, gold = json.loads(pred_path.read_text()), json.loads(gold_path.read_text())
    write(pred_path, change(pred, gold))
    r = run_cli("score", str(pred_path), str(gold_path))
    assert r.returncode == 2 and match in r.stderr and r.stderr.strip().count("\n") == 0


def tiny_bert(directory, classifier=False):
    """A small random BERT with a character vocabulary: real code paths, no download."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("사과배감귤학교도서관책상의자연필좋다읽는가옳밥먹"))
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n",
                                         encoding="utf-8")
    BertTokenizer(str(directory / "vocab.txt"), tokenize_chinese_chars=False).save_pretrained(directory)
    config = BertConfig(vocab_size=5 + len(chars), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(directory)
    return directory


def test_bertscore_and_bleurt_on_local_models(pair, tmp_path):
    bert = tiny_bert(tmp_path / "bert")
    bleurt = tiny_bert(tmp_path / "bleurt", classifier=True)
    report = score(*pair, bertscore_model=bert, bleurt_model=bleurt)
    assert 0.0 <= report.bertscore <= 1.0 and isinstance(report.bleurt, float)
    assert report.metrics_used == ["exact_match", "rouge1", "bertscore", "bleurt"]
    assert report.final == pytest.approx((report.exact_match + (report.rouge1 + report.bertscore + report.bleurt) / 3) / 2)
    # Identical reasons score BERTScore 1.
    pred_path, gold_path = pair
    same = score(gold_path, gold_path, bertscore_model=bert)
    assert same.bertscore == pytest.approx(1.0, abs=1e-5)


def test_bertscore_is_bert_scores_arithmetic(tmp_path):
    """bert_score's matching recomputed on a padded batch: cosine of every token pair,
    [CLS]/[SEP] matchable but weighted 0, precision/recall averaged over the other tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from toolkit.score import bertscore_f1

    torch.manual_seed(0)
    d = tiny_bert(tmp_path / "bert")
    preds, refs = ["사과 배 감", " 학교 도서관 책상 ", "연필 의자 좋다"], ["사과 배 감 귤", "책상 의자 연필", "연필"]
    tokenizer, model = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval()

    def embed(texts):
        enc = tokenizer([t.strip() for t in texts], padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state  # 2 layers: layer 9 is capped to the last
        ids, mask = enc["input_ids"], enc["attention_mask"].float()
        weight = mask * (ids != tokenizer.cls_token_id) * (ids != tokenizer.sep_token_id)
        return h / h.norm(dim=-1, keepdim=True), mask, weight / weight.sum(1, keepdim=True)

    (hp, mp, wp), (hr, mr, wr) = embed(preds), embed(refs)
    sim = torch.bmm(hp, hr.transpose(1, 2)) * torch.bmm(mp.unsqueeze(2), mr.unsqueeze(1))
    p, r = (sim.max(2).values * wp).sum(1), (sim.max(1).values * wr).sum(1)
    assert bertscore_f1(preds, refs, str(d)) == pytest.approx((2 * p * r / (p + r)).tolist(), abs=1e-5)
    assert bertscore_f1(["", "사과"], ["사과", ""], str(d)) == [0.0, 0.0]  # an empty side scores 0


def test_bertscore_from_the_hf_cache(pair, tmp_path):
    """Already cached counts as local; nothing is downloaded."""
    repo = tmp_path / "hub" / "models--bert-base-multilingual-cased"
    tiny_bert(repo / "snapshots" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    r = run_cli("score", *map(str, pair), "--json", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bertscore"] is not None


def test_model_path_without_config(pair, tmp_path):
    r = run_cli("score", *map(str, pair), "--bertscore-model", str(tmp_path))
    assert r.returncode == 2 and "not a model directory" in r.stderr


def test_scoring_infer_output_end_to_end(tmp_path):
    from toolkit import embedded
    from toolkit.infer import InferSettings, infer
    from toolkit.prompts import PromptSet
    from toolkit.sampler import SamplingParams

    out = tmp_path / "answers.json"
    infer(samples.samples_path(), InferSettings(model=embedded.smollm2_gguf(), output=out,
                                             sampling=SamplingParams(max_new_tokens=16),
                                             prompts=PromptSet(system="", selection="고르시오.", correction="고치시오.")))
    r = run_cli("score", str(out), str(samples.samples_gold_path()), "--json",
                env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["n"] == 8 and 0 <= data["final"] <= 1
    assert set(data["by_type"]) == {"선택형", "교정형", "단답형"}
    perfect = json.loads(run_cli("score", str(samples.samples_gold_path()), str(samples.samples_gold_path()), "--json",
                                 env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")}).stdout)
    assert perfect["exact_match"] == perfect["rouge1"] == perfect["final"] == 1.0
