"""`toolkit retrieve`: the rules found per question, and R@k / MRR against output.article."""

import json
from pathlib import Path

import pytest

from conftest import run_cli
from toolkit import samples
from toolkit.recall import Found, Retrieved, evaluate

FIXTURES = Path(__file__).parent / "fixtures"
NORMS, LABELLED = FIXTURES / "norms_small.txt", FIXTURES / "labelled_small.json"


def test_eval_arithmetic_on_a_hand_computed_case():
    def found(i, kind, gold, rank, first="X - 다른 규정"):
        return Found(str(i), kind, [first], [1.0], gold, rank)

    result = Retrieved([found(1, "선택형", "띄어쓰기 - 제42항", 1, "띄어쓰기 - 제42항"),
                        found(2, "선택형", "문장 부호 - 쉼표", 3),
                        found(3, "교정형", "문장 부호 - 마침표", 5),
                        found(4, "교정형", "띄어쓰기 - 제2항", None),
                        found(5, "교정형", None, None)],  # unlabelled: not counted
                       seconds=0.5, titles=frozenset({"띄어쓰기 - 제42항", "문장 부호 - 쉼표", "문장 부호 - 마침표"}),
                       labelled=0)
    r = evaluate(result)
    # 4 labelled: first at ranks 1, 3, 5 and never; MRR = (1 + 1/3 + 1/5 + 0) / 4.
    assert (r["n"], r["r@1"], r["r@3"], r["r@5"], r["mrr"]) == (4, 0.25, 0.5, 0.75, 0.383)
    assert r["by_type"]["선택형"] == {"n": 2, "r@1": 0.5, "r@3": 1.0, "r@5": 1.0, "mrr": 0.667}
    assert r["by_type"]["교정형"] == {"n": 2, "r@1": 0.0, "r@3": 0.0, "r@5": 0.5, "mrr": 0.1}
    assert r["by_section"]["문장 부호"] == {"n": 2, "r@1": 0.0, "r@3": 0.5, "r@5": 1.0, "mrr": 0.267}
    assert r["by_section"]["띄어쓰기"]["r@1"] == 0.5
    assert r["misses"][0] == {"gold": "문장 부호 - 쉼표", "found": "X - 다른 규정", "count": 1} and len(r["misses"]) == 3
    assert r["unknown_gold"] == 1  # 띄어쓰기 - 제2항 is no title of the document
    assert "examples" not in r


def test_retrieve_lists_and_evaluates_as_its_json_says(tmp_path):
    listed = run_cli("retrieve", str(LABELLED), "--references", str(NORMS), "--count", "2", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 11)]
    assert all(len(r["titles"]) == len(r["scores"]) == 2 and r["scores"] == sorted(r["scores"], reverse=True)
               for r in rows)
    gold = {str(x["id"]): " ".join(x["output"]["article"].strip("<> ").split())
            for x in json.loads(LABELLED.read_text(encoding="utf-8"))}
    ev = run_cli("retrieve", str(LABELLED), "--references", str(NORMS), "--count", "2", "--eval", "--json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert {"n", "r@1", "r@3", "r@5", "mrr", "by_type", "by_section", "misses"} <= set(report)
    assert report["n"] == 10
    assert report["r@1"] == round(sum(r["titles"][0] == gold[r["id"]] for r in rows) / 10, 3)
    assert report["by_type"]["교정형"]["n"] == 3 and sum(v["n"] for v in report["by_section"].values()) == 10
    human = run_cli("retrieve", str(LABELLED), "--references", str(NORMS), "--references-labels", str(LABELLED),
                    "--examples", str(LABELLED), "--eval")
    assert human.returncode == 0 and "R@3" in human.stdout and "10 labelled questions" in human.stdout
    assert "examples about the question's own rule" in human.stdout


def test_eval_needs_gold_titles():
    r = run_cli("retrieve", str(samples.samples_path()), "--references", str(NORMS), "--eval")
    assert r.returncode == 2 and "--eval needs questions with output.article" in r.stderr


@pytest.mark.parametrize("content,match", [
    ('[{"id": 1, "input": {"question": "가"}, "output": {"article": 3}}]', "output.article must be a rule's title"),
    ("not json", "not valid JSON"),
    ('[{"id": 1, "input": {"question": "가"}, "output": {"article": "<없는 - 규정>"}}]',
     "none of its rule titles is a title of"),
])
@pytest.mark.parametrize("command", ["retrieve", "infer"])
def test_a_bad_labels_file_is_one_line_and_exit_2_before_any_model(tmp_path, content, match, command):
    bad = tmp_path / "[labels].json"  # brackets in a path are text, not markup
    bad.write_text(content, encoding="utf-8")
    args = [str(LABELLED)] if command == "retrieve" else [str(samples.samples_path()), "--model",
                                                          str(tmp_path / "never-loaded.gguf")]
    if command == "infer":
        (tmp_path / "never-loaded.gguf").write_bytes(b"GGUF")  # not a model: it must not get that far
    r = run_cli(command, *args, "--references", str(NORMS), "--references-labels", str(bad))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "[labels].json" in lines[0], r.stderr


def test_labels_need_the_references():
    r = run_cli("infer", str(samples.samples_path()), "--references-labels", str(LABELLED))
    assert r.returncode == 2 and "--references-labels needs --references FILE" in r.stderr
