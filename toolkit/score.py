"""The `score` verb: the competition's metrics, offline, by question type.

Exact match (EM) is taken on the sentence an answer declares correct — the part before the
first `가 옳다` / `이 옳다` (for a sentence in quotes, the first right after a closing quote:
the sentence may itself hold one) — after normalizing:
  * curly quotes become straight ones, surrounding whitespace goes, and one pair of quotes
    around the sentence is dropped (so `"A"가 옳다`, `“A” 가 옳다` and `A가 옳다` all give `A`);
  * a gold sentence that offers alternatives (`"A" 혹은 "B"`, also 또는) matches either.
An answer without the form scores EM 0 and its whole text counts as the reason. (The form is
read in answer.py, ROUGE-1's morphemes in korean.py.)

The reason is the text after that `옳다.`; the descriptive metrics follow the official evaluator
(teddysum/korean_evaluation). ROUGE-1: F1 of morpheme unigrams after its preparation (first
1,000 words, lower case, all but Latin letters, digits and Hangul syllables made spaces), with
kiwipiepy where it uses Mecab, so figures can differ slightly. BERTScore: bert_score's
arithmetic (bert-base-multilingual-cased, layer 9, no idf, no rescaling). BLEURT: any
checkpoint transformers loads as a regression model; the official one is BLEURT-20 under
TensorFlow, so a port of another size scores on its own scale. Both run only on a local
model — given by path or already in the HF cache — and are never downloaded.
Final = (EM + mean of the descriptive metrics computed) / 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .answer import answer_sentence, gold_sentences, split_answer, unquote
from .dataset import answer_of, read_json
from .errors import InvalidInput, UserError
from .korean import Rouge1

BERTSCORE_REPO = "bert-base-multilingual-cased"
BERTSCORE_LAYER = 9  # bert_score's choice for this model
BLEURT_REPO = "Elron/bleurt-base-512"  # a BLEURT port loadable by transformers


def exact_match(prediction: str, gold: str) -> float:
    sentence, ref = answer_sentence(prediction), split_answer(gold)
    if sentence is None:
        return 0.0
    targets = gold_sentences(ref.sentence) if ref.sentence is not None else {unquote(ref.reason)}
    return float(sentence in targets)


def _local_model(path: Path | None, repo_id: str) -> str | None:
    """A model directory: the one given, else the HF cache's copy of repo_id, else None."""
    if path is not None:
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"{path}: not a model directory (no config.json)")
        return str(path)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    return str(Path(cached).parent) if isinstance(cached, str) else None


def bertscore_f1(predictions: list[str], references: list[str], model_dir: str,
                 layer: int = BERTSCORE_LAYER, batch_size: int = 16) -> list[float]:
    """BERTScore F1 as the `bert_score` package computes it (idf off, no rescaling): greedy
    cosine matching of one layer's token embeddings, [CLS]/[SEP] matchable but weighted 0."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    layer = min(layer, model.config.num_hidden_layers)
    max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)

    def embed(texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tokenizer([t.strip() for t in texts[i:i + batch_size]], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt", return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask").bool()
            with torch.no_grad():
                hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
            for h, real, sp in zip(hidden, enc["attention_mask"].bool(), special):
                out.append((torch.nn.functional.normalize(h[real], dim=-1), (~sp[real]).float()))
        return out

    scores = []
    for (p, p_weight), (r, r_weight) in zip(embed(predictions), embed(references)):
        if not p_weight.any() or not r_weight.any():  # an empty text: bert_score gives 0
            scores.append(0.0)
            continue
        sim = p @ r.T
        precision = (sim.max(dim=1).values @ p_weight / p_weight.sum()).item()
        recall = (sim.max(dim=0).values @ r_weight / r_weight.sum()).item()
        f1 = 2 * precision * recall / (precision + recall) if precision + recall != 0 else 0.0
        scores.append(f1)
    return scores


def bleurt_scores(predictions: list[str], references: list[str], model_dir: str, batch_size: int = 16) -> list[float]:
    """BLEURT: a regression head over (reference, candidate) pairs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
    scores: list[float] = []
    for i in range(0, len(predictions), batch_size):
        enc = tokenizer(references[i:i + batch_size], predictions[i:i + batch_size], padding=True,
                        truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            scores.extend(model(**enc).logits[:, 0].tolist())
    return scores


DESCRIPTIVE = ("rouge1", "bertscore", "bleurt")


def final_score(exact: float, descriptive: dict[str, float | None]) -> tuple[float | None, float, list[str]]:
    """(descriptive average, final, metrics used): final = (EM + mean of computed descriptive) / 2."""
    used = [k for k in DESCRIPTIVE if descriptive.get(k) is not None]
    if not used:
        return None, exact, ["exact_match"]
    avg = sum(descriptive[k] for k in used) / len(used)
    return avg, (exact + avg) / 2, ["exact_match", *used]


@dataclass
class Report:
    n: int
    exact_match: float
    rouge1: float | None
    bertscore: float | None
    bleurt: float | None
    descriptive_avg: float | None
    final: float
    metrics_used: list[str]
    by_type: dict[str, "Report"] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("n", "exact_match", "rouge1", "bertscore", "bleurt",
                                           "descriptive_avg", "final", "metrics_used")}
        if self.by_type:
            d["by_type"] = {t: r.as_dict() for t, r in self.by_type.items()}
        return d


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _report(rows: list[dict]) -> Report:
    em = _mean([r["exact_match"] for r in rows])
    desc = {k: (_mean([r[k] for r in rows]) if rows and rows[0][k] is not None else None) for k in DESCRIPTIVE}
    avg, final, used = final_score(em, desc)
    return Report(len(rows), em, desc["rouge1"], desc["bertscore"], desc["bleurt"], avg, final, used)


def _load(path: Path, role: str) -> list[dict]:
    data = read_json(path, f"{role} file")
    if not isinstance(data, list) or not data:
        raise InvalidInput(f"{path}: expected a non-empty JSON list of {role} items")
    seen = set()
    for n, item in enumerate(data, 1):
        if not isinstance(item, dict) or "id" not in item:
            raise InvalidInput(f"{path}: item {n} has no 'id'")
        key = str(item["id"])
        if key in seen:
            raise InvalidInput(f"{path}: duplicate id {key!r}")
        seen.add(key)
        if answer_of(item) is None:
            raise InvalidInput(f"{path}: item {key!r} has no output.answer")
    return data


def score(pred_path: Path, gold_path: Path, bertscore_model: Path | None = None,
          bleurt_model: Path | None = None) -> Report:
    preds, golds = _load(pred_path, "prediction"), _load(gold_path, "gold")
    if len(preds) != len(golds):
        raise InvalidInput(f"{pred_path} has {len(preds)} items but {gold_path} has {len(golds)}")
    gold_by_id = {str(g["id"]): g for g in golds}
    missing = [str(p["id"]) for p in preds if str(p["id"]) not in gold_by_id]
    if missing:
        raise InvalidInput(f"{pred_path}: id {missing[0]!r} is not in {gold_path} ({len(missing)} such ids)")
    # The official evaluator looks ids up as written: 1 and "1" are different ids there.
    retyped = [(p["id"], gold_by_id[str(p["id"])]["id"]) for p in preds
               if type(p["id"]) is not type(gold_by_id[str(p["id"])]["id"])]
    if retyped:
        ours, theirs = retyped[0]
        raise InvalidInput(f"{pred_path}: id {ours!r} is {theirs!r} in {gold_path} ({len(retyped)} such ids); the "
                           "official evaluator compares ids as written and would reject the file")
    pairs = [(p["output"]["answer"], gold_by_id[str(p["id"])]) for p in preds]
    pred_reasons = [split_answer(a).reason for a, _ in pairs]
    gold_reasons = [split_answer(g["output"]["answer"]).reason for _, g in pairs]

    rouge = Rouge1()
    columns: dict[str, list[float] | None] = {
        "exact_match": [exact_match(a, g["output"]["answer"]) for a, g in pairs],
        "rouge1": [rouge.f1(p, r) for p, r in zip(pred_reasons, gold_reasons)],
        "bertscore": None,
        "bleurt": None,
    }
    if (bert := _local_model(bertscore_model, BERTSCORE_REPO)) is not None:
        columns["bertscore"] = bertscore_f1(pred_reasons, gold_reasons, bert)
    if (bleurt := _local_model(bleurt_model, BLEURT_REPO)) is not None:
        columns["bleurt"] = bleurt_scores(pred_reasons, gold_reasons, bleurt)

    rows = []
    for i, (_, gold) in enumerate(pairs):
        row = {k: (v[i] if v is not None else None) for k, v in columns.items()}
        inp = gold.get("input")  # only for the by-type table: a gold item without one is "unknown"
        row["type"] = str(inp.get("question_type", "unknown")) if isinstance(inp, dict) else "unknown"
        rows.append(row)
    report = _report(rows)
    for qtype in dict.fromkeys(r["type"] for r in rows):
        report.by_type[qtype] = _report([r for r in rows if r["type"] == qtype])
    return report
