"""score, vote, demo: the competition's metrics, one answers file from several, the tour."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import printing
from ._options import MODEL, OUTPUT, JsonOpt, command, examples


@command("score", help="the competition's metrics for predictions against gold answers",
         epilog=examples("toolkit score dev.answers.json dev.json",
                         "toolkit score dev.answers.json dev.json --bertscore-model ./bert-base-multilingual-cased "
                         "--bleurt-model ./BLEURT-20 --json"))
def score(
    predictions: Annotated[Path, typer.Argument(help="JSON written by `toolkit infer`")],
    gold: Annotated[Path, typer.Argument(help="the same items with gold output.answer")],
    bertscore_model: Annotated[Optional[Path], typer.Option(
        rich_help_panel=MODEL, help="local bert-base-multilingual-cased (else the HF cache's, if any)")] = None,
    bleurt_model: Annotated[Optional[Path], typer.Option(
        rich_help_panel=MODEL,
        help="local BLEURT checkpoint loadable by transformers (the official evaluator uses BLEURT-20)")] = None,
    json_: JsonOpt = False,
) -> int:
    """Exact match on the "…"가 옳다 sentence, ROUGE-1 on Korean morphemes, and BERTScore / BLEURT
    when their models are local. Never downloads."""
    from ..score import score as run

    report = run(predictions, gold, bertscore_model, bleurt_model)
    if json_:
        printing.print_json(report.as_dict())
    else:
        printing.print_score(report)
    return 0


@command("vote", help="one answers file from several (models, prompts, seeds): the majority's answer",
         epilog=examples("toolkit vote test.exaone.json test.kanana.json test.qwen3.json --output test.vote.json"))
def vote(
    answers: Annotated[list[Path], typer.Argument(help="JSON files written by `toolkit infer` for one question file")],
    output: Annotated[Path, typer.Option(help="where to write the chosen answers", rich_help_panel=OUTPUT)],
    json_: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                                        help="print the summary as one JSON object")] = False,
) -> int:
    """Per question, keep the "…"가 옳다 sentence most of the files declare correct, with the reason
    most like the others' (ROUGE-1); ties go to the earlier file."""
    from ..vote import vote_files

    r = vote_files(answers, output)
    if json_:
        printing.print_json(printing.vote_summary(r))
    else:
        printing.print_vote(r)
    return 0


@command("demo", help="quantize the embedded SmolLM2-135M-Instruct, answer and score the sample questions",
         epilog=examples("toolkit demo"))
def demo() -> int:
    from .. import demo as tour
    from ..inspection import summary

    quantized, answers, scores = tour.run()
    printing.print_quantize_result(quantized)
    if quantized.fidelity:
        printing.print_fidelity(quantized.fidelity, f"fidelity vs the {quantized.fidelity[0].type} intermediate")
    printing.print_inspect(summary(quantized.files[0].path))
    printing.print_infer_result(answers)
    printing.print_score(scores)
    printing.print_answers(answers.output, 3)
    return 0
