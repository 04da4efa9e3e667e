"""infer, retrieve, bench: answering the questions, the rules each one gets, and how fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from .. import printing
from ..constraints import FORMS
from ..errors import UserError
from ..retrieve import DEFAULT_CHARS, DEFAULT_COUNT, DEFAULT_EXAMPLES, ExampleSettings, RetrievalSettings
from ..sampler import SamplingParams
from ._options import (GPU, MODEL, OUTPUT, POSITIVE, PROMPTS, SAMPLING, AnswerFormOpt, BatchInvariantOpt, CacheTypeOpt,
                       ExamplesCountOpt, ExamplesOpt, GpuLayersOpt, LabelsOpt, OverrideTensorOpt, PromptsFileOpt,
                       ReferencesCharsOpt, ReferencesCountOpt, ReferencesOpt, RpcOpt, SplitModeOpt, TensorSplitOpt,
                       VramLimitOpt, at_least, command, examples, finite, placement)

_D = SamplingParams()


def retrieval_settings(references, references_count, references_chars, labels, examples_file, examples_count):
    """--references and --examples with their counts; a count without its file is a mistake, said."""
    for value, option, needs, given in (
            (references_count, "references-count", "references", references),
            (references_chars, "references-chars", "references", references),
            (labels, "references-labels", "references", references),
            (examples_count, "examples-count", "examples", examples_file)):
        if value is not None and given is None:
            raise UserError(f"--{option} needs --{needs} FILE")
    return (RetrievalSettings(references, references_count or DEFAULT_COUNT, references_chars or DEFAULT_CHARS, labels),
            ExampleSettings(examples_file, examples_count or DEFAULT_EXAMPLES))


@command("infer", help="answer every question of a competition JSON file with a GGUF model",
         epilog=examples("toolkit infer test.json",
                         "toolkit infer test.json --model models/m/m-Q4_K_M.gguf --references norms.txt "
                         "--references-labels train.json --examples train.json --answer-form choose",
                         "toolkit infer dev.json --votes 5 --output dev.votes.json",
                         "toolkit infer test.json --dry-run"))
def infer(
    input_: Annotated[Path, typer.Argument(metavar="INPUT", help="competition JSON (a list of {id, input: "
                                                                 "{question_type, question}})")],
    model: Annotated[Optional[Path], typer.Option(
        rich_help_panel=MODEL,
        help="GGUF file (default: the only one under models/, else the embedded model)")] = None,
    lora: Annotated[Optional[Path], typer.Option(metavar="FILE.gguf", rich_help_panel=MODEL,
                                                 help="GGUF LoRA (from `toolkit lora`) applied on the model")] = None,
    lora_scale: Annotated[float, typer.Option(parser=finite, rich_help_panel=MODEL,
                                              help="LoRA strength (default 1.0: as trained)")] = 1.0,
    chat_template: Annotated[Optional[Path], typer.Option(
        rich_help_panel=MODEL, help="jinja chat template to use instead of the model's")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(
        rich_help_panel=PROMPTS, help="system message (text or @file; default: the seed's)")] = None,
    selection_prompt: Annotated[Optional[str], typer.Option(
        rich_help_panel=PROMPTS, help="instruction for 선택형 (text or @file)")] = None,
    correction_prompt: Annotated[Optional[str], typer.Option(
        rich_help_panel=PROMPTS, help="instruction for 교정형 (text or @file)")] = None,
    prompts: PromptsFileOpt = None,
    references: ReferencesOpt = None,
    references_labels: LabelsOpt = None,
    references_count: ReferencesCountOpt = None,
    references_chars: ReferencesCharsOpt = None,
    examples_file: ExamplesOpt = None,
    examples_count: ExamplesCountOpt = None,
    answer_form: AnswerFormOpt = "free",
    temperature: Annotated[float, typer.Option(rich_help_panel=SAMPLING)] = _D.temperature,
    top_p: Annotated[float, typer.Option(rich_help_panel=SAMPLING)] = _D.top_p,
    top_k: Annotated[int, typer.Option(rich_help_panel=SAMPLING, help="0 turns top-k off")] = _D.top_k,
    repetition_penalty: Annotated[float, typer.Option(rich_help_panel=SAMPLING)] = _D.repetition_penalty,
    max_new_tokens: Annotated[int, typer.Option(rich_help_panel=SAMPLING)] = _D.max_new_tokens,
    greedy: Annotated[bool, typer.Option("--greedy", rich_help_panel=SAMPLING,
                                         help="do_sample=False: argmax after the repetition penalty")] = False,
    num_beams: Annotated[int, typer.Option(rich_help_panel=SAMPLING,
                                           help="only 1: beam search is not supported")] = _D.num_beams,
    seed: Annotated[int, typer.Option(rich_help_panel=SAMPLING, help="same seed, same answers (per item)")] = _D.seed,
    votes: Annotated[int, typer.Option(
        parser=POSITIVE, metavar="N", rich_help_panel=SAMPLING,
        help="sample N answers per question (those of --seed, seed+1, …) and keep the sentence most of them "
             "declare correct, with the most typical reason (default 1)")] = _D.num_return_sequences,
    n_gpu_layers: GpuLayersOpt = -1,
    vram_limit: VramLimitOpt = None,
    cache_type: CacheTypeOpt = "f16",
    n_ctx: Annotated[Optional[int], typer.Option(
        parser=POSITIVE, rich_help_panel=GPU,
        help="KV cells for all --parallel sequences together (default: fitted to them: each one's prompt + "
             "max-new-tokens, shared prompt heads once)")] = None,
    threads: Annotated[Optional[int], typer.Option(parser=at_least(0), rich_help_panel=GPU,
                                                   help="CPU threads (default or 0: all cores)")] = None,
    flash_attn: Annotated[Literal["auto", "on", "off"], typer.Option(rich_help_panel=GPU)] = "auto",
    parallel: Annotated[Optional[int], typer.Option(
        parser=POSITIVE, rich_help_panel=GPU,
        help="questions decoded together (default: 16 on a GPU, 4 on the CPU; 1: one at a time)")] = None,
    batch_invariant: BatchInvariantOpt = False,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
    split_mode: SplitModeOpt = "layer",
    override_tensor: OverrideTensorOpt = None,
    output: Annotated[Optional[Path], typer.Option(
        rich_help_panel=OUTPUT, help="where to write (default: <input stem>.<model stem>.json)")] = None,
    no_resume: Annotated[bool, typer.Option(
        "--no-resume", rich_help_panel=OUTPUT,
        help="start over instead of keeping answers already in the output")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", rich_help_panel=OUTPUT,
        help="write each item's rendered prompt and its token count instead of generating")] = False,
    json_: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                                        help="print the summary as one JSON object")] = False,
) -> int:
    """Build the competition prompts, sample as HF generate does (the seed's defaults), and write the
    same JSON back with output.answer on every item. Default output: <input stem>.<model stem>.json
    beside the input."""
    from ..engine import EngineSettings
    from ..infer import InferSettings, infer as run
    from ..prompts import PromptSet, load_prompt_file, text_or_file

    prompt_set = load_prompt_file(prompts) if prompts else PromptSet()
    overrides = {"system": system_prompt, "selection": selection_prompt, "correction": correction_prompt}
    prompt_set = replace(prompt_set, **{k: text_or_file(v) for k, v in overrides.items() if v is not None})
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                              max_new_tokens=max_new_tokens, do_sample=not greedy, num_beams=num_beams,
                              num_return_sequences=votes, seed=seed)
    engine = EngineSettings(n_gpu_layers=n_gpu_layers, vram_limit=vram_limit, cache_type=cache_type, n_ctx=n_ctx,
                            threads=threads, flash_attn={"auto": None, "on": True, "off": False}[flash_attn],
                            batch_invariant=batch_invariant, lora=lora, lora_scale=lora_scale,
                            **placement(rpc, tensor_split, split_mode, override_tensor))
    found, shown = retrieval_settings(references, references_count, references_chars, references_labels,
                                      examples_file, examples_count)
    settings = InferSettings(model=model, output=output, sampling=sampling, engine=engine, prompts=prompt_set,
                             references=found, examples=shown, chat_template=chat_template, resume=not no_resume,
                             dry_run=dry_run, parallel=parallel, answer_form=answer_form)
    result = run(input_, settings)
    if dry_run:
        printing.print_dry_run(result)
    elif json_:
        printing.print_json(printing.infer_summary(result))
    else:
        printing.print_infer_result(result)
    return 0


@command("retrieve", help="the rules infer --references finds for each question, and how often the right one "
                          "(output.article) is among them",
         epilog=examples("toolkit retrieve test.json --references norms.txt --references-labels train.json",
                         "toolkit retrieve dev.json --references norms.txt --eval",
                         "toolkit retrieve dev.json --references norms.txt --eval --json"))
def retrieve(
    questions: Annotated[Path, typer.Argument(help="competition JSON (with output.article for --eval)")],
    references: Annotated[Path, typer.Option(
        metavar="FILE", rich_help_panel=PROMPTS,
        help="the task's reference document as text (as infer takes it)")],
    references_labels: Annotated[Optional[Path], typer.Option(
        "--references-labels", metavar="FILE.json", rich_help_panel=PROMPTS,
        help="labelled questions (output.article); a question never uses its own label, so the questions file "
             "itself measures leave-one-out")] = None,
    count: Annotated[Optional[int], typer.Option(parser=POSITIVE, metavar="N", rich_help_panel=PROMPTS,
                                                 help=f"rules per question (default {DEFAULT_COUNT})")] = None,
    examples_file: Annotated[Optional[Path], typer.Option(
        "--examples", metavar="FILE.json", rich_help_panel=PROMPTS,
        help="solved questions, as infer takes: also shows which rule each chosen example is about")] = None,
    examples_count: ExamplesCountOpt = None,
    eval_: Annotated[bool, typer.Option(
        "--eval", rich_help_panel=OUTPUT,
        help="R@1, R@3, R@5 and MRR overall, per type and per section, the commonest misses")] = False,
    json_: Annotated[bool, typer.Option(
        "--json", rich_help_panel=OUTPUT,
        help="a list of {id, titles, scores}; with --eval one object (n, r@1, r@3, r@5, mrr, by_type, by_section, "
             "misses)")] = False,
) -> int:
    """No model is loaded."""
    from .. import recall

    found, shown = retrieval_settings(references, count, None, references_labels, examples_file, examples_count)
    result = recall.run(questions, found, shown)
    if eval_:
        report = recall.evaluate(result)
        if json_:
            printing.print_json(report)
        else:
            printing.print_recall(report, result)
    elif json_:
        printing.print_json([{"id": f.id, "titles": f.titles, "scores": f.scores,
                              **({"examples": f.examples} if shown.path else {})} for f in result.found])
    else:
        printing.print_found(result)
    return 0


@command("bench", help="prompt / generation / aggregate tok/s and memory at several --parallel",
         epilog=examples("toolkit bench models/m/m-Q4_K_M.gguf",
                         "toolkit bench models/m/m-Q4_K_M.gguf --input test.json --parallel 1 --parallel 8 "
                         "--parallel 16 --json"))
def bench(
    model: Annotated[Path, typer.Argument(help="GGUF file")],
    input_: Annotated[Optional[Path], typer.Option(
        "--input", help="competition JSON (default: the bundled sample questions)")] = None,
    repeat: Annotated[int, typer.Option(parser=POSITIVE, help="use the questions this many times over")] = 1,
    parallel: Annotated[Optional[list[int]], typer.Option(parser=POSITIVE, rich_help_panel=GPU,
                                                          help="repeatable (default: 1 and 4)")] = None,
    max_new_tokens: Annotated[int, typer.Option(rich_help_panel=SAMPLING)] = 128,
    prompts: Annotated[Optional[Path], typer.Option(
        rich_help_panel=PROMPTS, help="TOML with system / selection / correction / generic, as infer takes (default: "
                                      "the seed's prompts)")] = None,
    references: Annotated[Optional[Path], typer.Option(
        metavar="FILE", rich_help_panel=PROMPTS, help="norms for each question's prompt, as infer takes")] = None,
    references_labels: Annotated[Optional[Path], typer.Option(
        metavar="FILE.json", rich_help_panel=PROMPTS, help="labelled questions, as infer takes")] = None,
    references_count: ReferencesCountOpt = None,
    references_chars: ReferencesCharsOpt = None,
    examples_file: Annotated[Optional[Path], typer.Option(
        "--examples", metavar="FILE.json", rich_help_panel=PROMPTS,
        help="solved questions for each prompt, as infer takes")] = None,
    examples_count: ExamplesCountOpt = None,
    answer_form: Annotated[Literal[FORMS], typer.Option(
        rich_help_panel=PROMPTS, help="as infer takes it (default free)")] = "free",
    n_gpu_layers: GpuLayersOpt = -1,
    vram_limit: VramLimitOpt = None,
    cache_type: CacheTypeOpt = "f16",
    batch_invariant: BatchInvariantOpt = False,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
    split_mode: SplitModeOpt = "layer",
    override_tensor: OverrideTensorOpt = None,
    json_: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT, help="print a list of objects")] = False,
) -> int:
    """Runs infer on the questions (default: the bundled samples) once per --parallel setting, each
    in a fresh process, with the seed's sampling and prompts."""
    from ..bench import BenchSettings, bench as run
    from ..engine import EngineSettings
    from ..prompts import PromptSet, load_prompt_file
    from ..retrieve import load_examples, read_inputs

    found, shown = retrieval_settings(references, references_count, references_chars, references_labels,
                                      examples_file, examples_count)
    if references:  # a bad file is said once, not by each --parallel's process
        read_inputs(found)
    if examples_file:
        load_examples(examples_file)
    settings = BenchSettings(parallel=tuple(parallel or (1, 4)),
                             prompts=load_prompt_file(prompts) if prompts else PromptSet(),
                             references=found, examples=shown, answer_form=answer_form,
                             sampling=SamplingParams(max_new_tokens=max_new_tokens).validate(),
                             engine=EngineSettings(n_gpu_layers=n_gpu_layers, vram_limit=vram_limit,
                                                   cache_type=cache_type, batch_invariant=batch_invariant,
                                                   **placement(rpc, tensor_split, split_mode, override_tensor)))
    rows = run(model, input_, settings, repeat=repeat)
    if json_:
        printing.print_json(rows, ensure_ascii=True)
    else:
        printing.print_bench(rows, model.name)
    return 0
