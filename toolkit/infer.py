"""The `infer` verb: competition JSON → prompts → engine + sampler → clean → JSON with answers.

    infer(Path("test.json"), InferSettings(model=Path("models/x/x-Q4_K_M.gguf")))
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import chat_template, console, constraints, dataset, embedded, gguf, manifest, retrieve, rpc
from .answer import has_answer_form
from .clean import clean_answer
from .engine import Engine, EngineSettings, Generation, LoadInfo
from .errors import ModelNotFound, OutputExists, UserError
from .fit import KV_PAD, round_up
from .fsutil import exclusive, sha256_file
from .korean import Rouge1
from .parallel import ParallelDecoder, Request, kv_cells, shared_prefixes
from .prompts import CORRECTION, SELECTION, PromptSet, build_messages, warn_unknown_types
from .sampler import Sampler, SamplingParams, item_seed
from .vote import VOTE_RECORD, Choice, choose


@dataclass(frozen=True)
class InferSettings:
    model: Path | None = None  # None: the only GGUF under models/, else the embedded model
    output: Path | None = None  # None: <input stem>.<model stem>.json beside the input
    sampling: SamplingParams = field(default_factory=SamplingParams)
    engine: EngineSettings = field(default_factory=EngineSettings)
    prompts: PromptSet = field(default_factory=PromptSet)
    references: retrieve.RetrievalSettings = field(default_factory=retrieve.RetrievalSettings)
    examples: retrieve.ExampleSettings = field(default_factory=retrieve.ExampleSettings)
    chat_template: Path | None = None
    resume: bool = True
    dry_run: bool = False
    models_dir: Path = Path("models")
    parallel: int | None = None  # sequences decoded together; None: DEFAULT_PARALLEL for the backend
    answer_form: str = "free"  # free (the seed's), strict or choose: see constraints.py


@dataclass
class InferResult:
    output: Path
    model: Path
    load: LoadInfo
    n_ctx: int
    items: int
    resumed: int = 0
    generated: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0  # wall time of generation, prompts included
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    cut_at_max_tokens: int = 0
    form_checked: int = 0  # 선택형/교정형 answers
    missing_form: int = 0  # … of which lack "…"가 옳다
    votes: int = 1  # answers sampled per question
    agreement: dict[int, int] = field(default_factory=dict)  # votes for the kept sentence → questions
    answer_form: str = "free"
    choices: dict[str, dict] = field(default_factory=dict)  # choose: per 선택형 item, the candidate kept and its margin

    parallel: int = 1
    lora: Path | None = None
    lora_scale: float = 1.0
    references: retrieve.RetrievalSettings = field(default_factory=retrieve.RetrievalSettings)
    examples: retrieve.ExampleSettings = field(default_factory=retrieve.ExampleSettings)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # llama.cpp's buffers, MiB

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def resolve_model(settings: InferSettings) -> Path:
    if settings.model is not None:
        if settings.model.is_dir():
            raise ModelNotFound(f"{settings.model}: is a directory, not a GGUF file")
        if not settings.model.is_file():
            raise ModelNotFound(f"{settings.model}: no such model file")
        return settings.model
    # quantize and lora leave importance matrices and LoRA adapters there too: GGUFs, not models.
    found = [p for p in _ggufs_under(settings.models_dir) if gguf.general_type(p) not in gguf.NOT_MODELS]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        listing = ", ".join(str(p) for p in found)
        raise UserError(f"several models under {settings.models_dir}/ ({listing}); choose one with --model")
    path = embedded.smollm2_gguf()
    console.notice(f"no GGUF under {settings.models_dir}/: using the embedded {embedded.SMOLLM2_NAME} (--model to choose)")
    return path


def _ggufs_under(directory: Path) -> list[Path]:
    # os.walk, not Path.rglob: models/ often links to model folders on a bigger disk, and rglob
    # (before Python 3.13) does not enter linked directories. Each real folder and file once:
    # an alias (latest -> x) is not a second model, and a link back up is not a loop.
    seen_dirs: set[str] = set()
    found: dict[Path, Path] = {}
    for root, dirs, names in os.walk(directory, followlinks=True):
        dirs.sort()
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs.clear()
            continue
        seen_dirs.add(real)
        for name in sorted(names):
            if name.endswith(".gguf") and not name.startswith("."):
                found.setdefault((Path(root) / name).resolve(), Path(root) / name)
    return sorted(found.values())


def default_output(input_path: Path, model: Path, dry_run: bool, lora: Path | None = None) -> Path:
    # With a LoRA the answers are another model's: another file, so a resume never mixes them.
    suffix = "prompts" if dry_run else model.stem + (f"+{lora.stem}" if lora else "")
    return input_path.with_name(f"{input_path.stem}.{suffix}.json")


# Sequences decoded together by default: a GPU has room for many; on a few CPU cores a
# handful already hides most of the per-step cost (see scripts/bench_vs_baseline.py).
DEFAULT_PARALLEL_GPU = 16
DEFAULT_PARALLEL_CPU = 4


def default_parallel(engine: Engine) -> int:
    return DEFAULT_PARALLEL_GPU if engine.on_gpu else DEFAULT_PARALLEL_CPU


@dataclass
class _Plan:
    prefixes: list[list[int]]
    prefix_of: list[int]  # per item: index of its shared head, -1 for none
    n_ctx: int


def _plan(items: list[dict], token_ids: dict[str, list[int]], parallel: int, max_new_tokens: int,
          unified: bool, n_ctx_train: int, votes: int = 1) -> _Plan:
    """Shared heads per question type, and the KV cells the batched run needs (no sequence
    grows past the trained context: the decoder stops it there)."""
    by_type: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        by_type.setdefault(str(item["input"].get("question_type", "")), []).append(n)
    prompts = [token_ids[dataset.item_key(i)] for i in items]
    # Votes are sequences too: a type's only question, answered N times, shares its whole prompt.
    # Not in batch-invariant runs, where the prompt's split must stay the plain run's (vote i = seed + i).
    copies = votes if unified else 1
    heads = shared_prefixes([[prompts[n] for n in members] * copies for members in by_type.values()])
    prefixes, prefix_of = [], [-1] * len(items)
    for head, members in zip(heads, by_type.values()):
        if head:
            for n in members:
                prefix_of[n] = len(prefixes)
            prefixes.append(head)
    max_new_tokens = max(1, min(max_new_tokens, n_ctx_train - min(len(p) for p in prompts)))
    # Each vote is a sequence of its own: votes × items requests share the slots.
    cells = kv_cells(prefixes, prompts * votes, prefix_of * votes, parallel, max_new_tokens, unified)
    n_seq = min(parallel, len(items) * votes) + len(prefixes)
    step = KV_PAD if unified else KV_PAD * n_seq  # a split cache divides n_ctx evenly among sequences
    return _Plan(prefixes, prefix_of, round_up(cells, step))


def _check_batched_context(n_ctx: int, plan: _Plan, parallel: int, longest: int, unified: bool) -> None:
    """Refuse a context in which the longest prompt cannot fit its sequence; otherwise say what a
    tight one risks (a split cache gives each sequence n_ctx / sequences; a unified one may fill)."""
    n_seq = parallel + len(plan.prefixes)
    padded = round_up(n_ctx)  # as llama.cpp pads: n_ctx, then each sequence's share
    room = padded if unified else round_up(padded // n_seq)
    if longest >= room:
        raise UserError(f"--n-ctx {n_ctx} leaves {room} tokens per sequence ({n_seq} sequences), fewer than the "
                        f"longest prompt ({longest}); raise --n-ctx to {plan.n_ctx} or lower --parallel")
    risk = ("answers may be cut where a sequence's share runs out" if not unified else
            "the cache may fill when many long answers run together (then lower --parallel or raise --n-ctx; "
            "answers written so far are kept)")
    console.notice(f"--n-ctx {n_ctx} is below the {plan.n_ctx} this run may need at --parallel {parallel}: {risk}")


def settings_record(settings: InferSettings, params: SamplingParams, model: Path) -> dict:
    """What decides the answers' text (not how fast they come): kept beside the output, so that a
    rerun resumes only answers made the same way."""
    lora, template = settings.engine.lora, settings.chat_template
    # Name and size, and the sha256 that quantize's or lora's manifest keeps for it: a file made
    # again in place (another --calibration, lora --force) is another model. Hashing gigabytes on
    # every start is not worth it for files no manifest tracks.
    return {
        "model": model.name, "model_bytes": model.stat().st_size, "model_sha256": manifest.recorded_sha256(model),
        "lora": lora.name if lora else None,
        "lora_bytes": lora.stat().st_size if lora else None,
        "lora_sha256": manifest.recorded_sha256(lora) if lora else None,
        "lora_scale": settings.engine.lora_scale if lora else None,
        # Other numbers, other tokens: a q8_0 KV cache, or the batch-invariant kernels on the CPU.
        "cache_type": settings.engine.cache_type, "batch_invariant": settings.engine.batch_invariant,
        **asdict(params),
        "prompts": asdict(settings.prompts),
        "references": settings.references.record(),
        "examples": settings.examples.record(),
        "chat_template": sha256_file(template) if template else None,
        "answer_form": settings.answer_form,
    }


def _check_output(output: Path, items: list[dict]) -> list[dict]:
    """dataset.check_output, and: answers with no record of how they were made are neither resumed
    nor replaced. Infer always writes one; without it the file is most likely a dev file's gold
    answers named by mistake (resumed, they would score perfectly), or a copy."""
    held = dataset.check_output(output, items)
    if dataset.holds_answers(held) and dataset.read_settings(output) is None:
        raise OutputExists(f"{output} holds answers with no record of how they were made (a dev file's gold "
                           "answers, a copy, an older run?); they are neither resumed nor replaced: choose another "
                           "--output")
    return held


def _check_resume(output: Path, answered: int, record: dict) -> None:
    held = dataset.read_settings(output) or {}  # (there is one: _check_output)
    if VOTE_RECORD in held:
        raise UserError(f"{output} holds answers toolkit vote chose among {', '.join(held[VOTE_RECORD])}; "
                        "choose another --output, or --no-resume to start over")
    # Records written before these were kept: one answer each, the default cache and kernels.
    held = {"num_return_sequences": 1, "cache_type": "f16", "batch_invariant": False, "answer_form": "free", **held}
    for key in ("references", "examples"):  # turned on or off: said whole, not field by field
        if (held.get(key) is None) != (record.get(key) is None):
            held, record = ({**r, key: "none" if r.get(key) is None else "from a file"} for r in (held, record))
    if changes := dataset.settings_changes(held, record):
        changes = [c.replace("num_return_sequences", "votes", 1) for c in changes]  # as the option says it
        raise UserError(f"{output} holds {answered} answer(s) made with other settings: {', '.join(changes[:4])}; "
                        "rerun with those to go on, or --no-resume (or another --output) to start over")


def _prompts_of(keys: list[str]) -> str:
    """"the prompt of item 7 has" / "the prompts of items 3, 7 and 2 more have up to"."""
    if len(keys) == 1:
        return f"the prompt of item {keys[0]} has"
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"the prompts of items {', '.join(keys[:3])}{more} have up to"


def fit_context(longest_prompt: int, max_new_tokens: int, n_ctx_train: int) -> int:
    """Enough for the longest prompt plus max_new_tokens, in steps of 256, capped by training."""
    need = longest_prompt + max_new_tokens
    return min(n_ctx_train, round_up(need))


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[tps]:.1f} tok/s"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console.err)


def infer(input_path: Path, settings: InferSettings = InferSettings()) -> InferResult:
    params = settings.sampling.validate()
    items = dataset.load_items(input_path)
    model_path = resolve_model(settings)
    output = settings.output or default_output(input_path, model_path, settings.dry_run, settings.engine.lora)
    if output.resolve() == input_path.resolve():
        raise UserError("the output would overwrite the input file; choose another --output")
    _check_output(output, items)  # what must not be replaced is refused before any lock file
    # A bad references or examples file is said before the model loads.
    passages = retrieve.for_items(items, settings.references)
    examples = retrieve.examples_for(items, settings.examples, passages, settings.references.labels)
    # One run per output: a second would remove this one's temporary files and write its answers over ours.
    with exclusive(dataset.lock_path(output), str(output), "wait for it to finish, or choose another --output"):
        held = _check_output(output, items)  # again: a run that just ended may have added answers
        dataset.drop_leftovers(output)
        return _answer(input_path, items, output, held, model_path, params, settings, passages, examples)


def _answer(input_path: Path, items: list[dict], output: Path, held, model_path: Path, params: SamplingParams,
            settings: InferSettings, passages: dict[str, list[retrieve.Reference]],
            examples: dict[str, list[retrieve.Example]]) -> InferResult:
    """Load the model, prompt, generate and write, the output's lock held."""
    previous = dataset.previous_answers(held, items) if settings.resume and not settings.dry_run else {}
    if settings.dry_run and dataset.holds_answers(held):
        raise UserError(f"{output} holds answers; a dry run would replace them: choose another --output")

    with Engine(model_path, settings.engine) as engine:
        if engine.endpoints:  # a server lost mid-run ends the run with one line; what is written stays
            rpc.on_abort(engine.endpoints, lambda: f"the answers finished so far are kept in {output}: restart the "
                                                   "server and run the same command to resume")
        template = chat_template.load(engine.header.chat_template, engine.special_tokens(),
                                      settings.chat_template, model_path.name)
        # After the model, LoRA and template loaded (a missing one is said as such), before any answer.
        record = None if settings.dry_run else settings_record(settings, params, model_path)
        if previous:
            _check_resume(output, len(previous), record)
        fold = not template.accepts_system()
        if fold and settings.prompts.system:
            console.notice("this chat template has no system role: the system prompt opens the user message")
        warn_unknown_types(items)
        rendered: dict[str, str] = {}
        token_ids: dict[str, list[int]] = {}
        for item in items:
            key = dataset.item_key(item)
            norms = [r.render(settings.references.max_chars) for r in passages.get(key, [])]
            shown = [e.render() for e in examples.get(key, [])]
            messages = build_messages(item["input"], settings.prompts, norms, shown)
            if fold:
                messages = chat_template.fold_system(messages)
            rendered[key] = template.render(messages)
            token_ids[key] = engine.tokenize(rendered[key])
            if not token_ids[key]:
                raise UserError(f"item {key}: the chat template renders an empty prompt")
        todo = [i for i in items if dataset.item_key(i) not in previous]
        # The answer form: what each answer is held to (constraints.py); `free` holds none.
        forms = {dataset.item_key(i): constraints.plan_for(str(i["input"].get("question_type", "")),
                                                            i["input"]["question"], settings.answer_form) for i in items}
        for key in (dataset.item_key(i) for i in todo):
            if forms[key].fallback:
                console.warn(f"item {key}: a 선택형 question whose {{…}} gives no candidates (no braces, nested braces "
                             "or one alternative): its answer is held to the 교정형 form")
        openings = {key: [engine.tokenize(o) for o in f.openings] for key, f in forms.items() if f.openings}
        longest_opening = max((len(o) for ops in openings.values() for o in ops), default=0)
        # Only the prompts still to answer size the context: a resume never needs room for the rest.
        lengths = {key: len(token_ids[key]) for key in map(dataset.item_key, todo)}
        longest = max(lengths.values(), default=0)
        votes = params.num_return_sequences
        parallel = max(1, min(settings.parallel or default_parallel(engine), len(todo) * votes or 1))
        unified = not settings.engine.batch_invariant
        # One at a time takes the plain path, except batch-invariant runs: they share the
        # batched path's prompt split so that N=1 and N>1 give the same tokens.
        batched = parallel > 1 or settings.engine.batch_invariant
        # Scoring the openings (choose) holds the longest in the cache for a moment, whatever
        # max_new_tokens keeps of it.
        max_new = max(params.max_new_tokens, longest_opening)
        plan = (_plan(todo, token_ids, parallel, max_new, unified, engine.info.n_ctx_train, votes)
                if batched and todo else None)
        n_ctx = settings.engine.n_ctx or (
            plan.n_ctx if plan else fit_context(longest, max_new, engine.info.n_ctx_train))
        too_long = [key for key, n in lengths.items() if n >= engine.info.n_ctx_train]
        if too_long:  # no --n-ctx helps: the model was trained on shorter texts
            over = f"{_prompts_of(too_long)} {longest} tokens, more than the {engine.info.n_ctx_train} the model was trained on"
            if not settings.dry_run:
                raise UserError(f"{over}; shorten that question or the instructions (--dry-run writes every "
                                "prompt's token count)")
            console.notice(over)  # a dry run is how one finds them: it goes on, and says which
        elif longest >= n_ctx:  # a dry run checks the context too: a run's settings, tried in seconds
            raise UserError(f"the longest prompt has {longest} tokens but the context is {n_ctx}; raise --n-ctx")
        if plan and n_ctx < plan.n_ctx and not too_long:  # a user's --n-ctx below what this run may need
            _check_batched_context(n_ctx, plan, parallel, longest, unified)
        # A decode asks for one row of logits per sequence at most (llama.cpp counts the shared
        # heads' sequences too): sized for that, not for a whole 512-token batch, its logits
        # buffers take a few MiB instead of hundreds, on the GPU too.
        n_seq = parallel + len(plan.prefixes) if plan else 1
        # Choosing reads a row of logits for each token of an opening (in a few decodes when long).
        rows = max(n_seq, min(longest_opening, settings.engine.n_batch))
        if not settings.dry_run:  # auto: the context size is known now; the plan is shown before the weights load
            engine.place(n_ctx, logits_rows=rows, on_plan=lambda placed: console.err.print(placed.describe()))
        result = InferResult(output, model_path, engine.info, n_ctx, len(items), resumed=len(previous),
                             parallel=parallel, lora=settings.engine.lora, lora_scale=settings.engine.lora_scale,
                             votes=votes, references=settings.references, examples=settings.examples,
                             answer_form=settings.answer_form)
        _print_header(result)

        if settings.dry_run:
            outputs = {k: {"prompt": rendered[k], "prompt_tokens": len(token_ids[k])} for k in rendered}
            for k, refs in passages.items():  # which passages and examples each question got (none asked: none)
                outputs[k]["references"] = [r.title or r.text[:60] for r in refs]
            for k, shown in examples.items():
                outputs[k]["examples"] = [e.id for e in shown]
            for k, f in forms.items():  # what each 선택형 answer is held to
                if f.candidates:
                    outputs[k]["candidates"] = list(f.candidates)
            dataset.write_output(output, items, outputs)
            return result

        specials = engine.control_token_texts()
        outputs = {k: {"answer": a} for k, a in previous.items()}
        engine.open_context(n_ctx, n_seq_max=n_seq, kv_unified=unified and plan is not None, logits_rows=rows)
        vocabulary = constraints.Vocabulary.of(engine) if any(f.form for f in forms.values()) else None
        result.memory = engine.memory()
        console.err.print(describe_memory(result.memory))
        # Before the first answer: the answers kept (none with --no-resume), then this run's record.
        # A kill at any point leaves answers only under the record they were made with.
        dataset.write_output(output, items, outputs)
        if todo:  # (with nothing to answer, the record there is this run's already)
            dataset.write_settings(output, record)
        started = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task("infer", total=len(todo), tps=0.0)

            similarity = Rouge1().f1 if votes > 1 else None  # the reason most like the others' (toolkit.vote)

            def sampler(key: str, vote: int) -> Sampler:  # vote v samples as a run with --seed seed + v
                form = forms[key].form
                return Sampler(params, token_ids[key], engine.n_vocab, item_seed(params.seed + vote, key),
                               constraints.Constraint(form, vocabulary) if form else None)

            def done(key: str, gens: list[Generation]) -> None:
                answers = [clean_answer(gen.text, specials) for gen in gens]
                choice = choose(answers, similarity) if similarity else Choice(answers[0], 0, 1, 1)
                outputs[key] = {"answer": choice.answer}
                dataset.write_output(output, items, outputs)  # a kill loses only the items in flight
                kept = gens[choice.index]
                if kept.chosen >= 0:
                    result.choices[key] = {"candidate": kept.chosen, "sentence": forms[key].candidates[kept.chosen],
                                           "margin": None if kept.margin is None else round(kept.margin, 4)}
                result.generated += 1
                result.new_tokens += sum(gen.sampled for gen in gens)  # an opening written is not generated
                result.cut_at_max_tokens += gens[choice.index].stopped != "eog"
                if votes > 1:
                    result.agreement[choice.agreeing] = result.agreement.get(choice.agreeing, 0) + 1
                result.seconds = time.perf_counter() - started
                progress.update(task, advance=1, tps=result.tokens_per_second)

            if plan is None:
                for item in todo:
                    key = dataset.item_key(item)
                    gens = [engine.generate(token_ids[key], sampler(key, v), params.max_new_tokens, openings.get(key))
                            for v in range(votes)]
                    for gen in gens:
                        result.prompt_tokens += gen.prompt_tokens + gen.written
                        result.prompt_seconds += gen.prompt_seconds
                        result.gen_seconds += gen.gen_seconds
                    done(key, gens)
            else:
                keys = [dataset.item_key(i) for i in todo]
                # A generator: each sampler (a vocab-sized array) is made when its slot starts. A
                # question's votes follow one another, so its answer is written soon after its last.
                requests = (Request(key, token_ids[key], sampler(key, v), params.max_new_tokens, plan.prefix_of[n], v,
                                    openings.get(key)) for n, key in enumerate(keys) for v in range(votes))
                voted: dict[str, list[Generation | None]] = {}

                def collect(req: Request, gen: Generation) -> None:
                    gens = voted.setdefault(req.key, [None] * votes)
                    gens[req.sample] = gen
                    if all(g is not None for g in gens):
                        del voted[req.key]
                        done(req.key, gens)

                decoder = ParallelDecoder(engine, parallel, plan.prefixes, invariant=not unified)
                try:
                    stats = decoder.run(requests, collect)
                finally:
                    decoder.close()
                result.prompt_tokens += stats.prompt_tokens
                result.prompt_seconds += stats.prompt_seconds
                result.gen_seconds += stats.gen_seconds
        result.n_ctx = engine.n_ctx or n_ctx
        for item in items:
            if item["input"].get("question_type") in (SELECTION, CORRECTION):
                result.form_checked += 1
                result.missing_form += not has_answer_form(outputs[dataset.item_key(item)]["answer"])
        return result


def describe_memory(memory: dict[str, dict[str, float]]) -> str:
    """llama.cpp's buffers in one line: `memory   CUDA0: 4403 model, 4096 KV, 164 compute · … (MiB)`."""
    parts = [f"{name}: " + ", ".join(f"{mib:.0f} {kind}" for kind, mib in kinds.items()) for name, kinds in memory.items()]
    return "memory   " + " · ".join(parts) + " (MiB)"


def _print_header(r: InferResult) -> None:
    info = r.load
    console.err.print(f"model    {info.path}")
    console.err.print(f"         {info.architecture}, {info.quant_type}, "
                      f"{info.layers_offloaded}/{info.layers_total} layers on the GPU, backend {info.backend}")
    if r.lora is not None:
        console.err.print(f"lora     {r.lora} (scale {r.lora_scale:g})")
    if r.references.path is not None:
        console.err.print(f"norms    up to {r.references.count} passages per question from {r.references.path} "
                          f"(at most {r.references.max_chars} characters each)")
    if r.examples.path is not None:
        console.err.print(f"examples up to {r.examples.count} solved questions like each one from {r.examples.path}")
    console.err.print(f"context  {r.n_ctx} tokens (trained {info.n_ctx_train}), {r.parallel} sequence(s) at a time")
    votes = f", {r.votes} votes each" if r.votes > 1 else ""
    console.err.print(f"items    {r.items} ({r.resumed} already answered in {r.output}){votes}")
