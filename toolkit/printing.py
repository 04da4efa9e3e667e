"""What the commands print: tables and summary lines for people, on the console's streams.

Every text here is printed as written (the consoles parse no markup): paths, ids, titles and
question text may hold [brackets]. Styles are given as rich Text, never as markup in a string."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table
from rich.text import Text

from . import console
from .inspection import human_bytes, human_count


def print_json(value, *, indent: int | None = None, ensure_ascii: bool = False) -> None:
    """--json: one object on stdout, nothing else there."""
    print(json.dumps(value, ensure_ascii=ensure_ascii, indent=indent))


def print_setup(conv, built=None, names=()) -> None:
    console.out.print(f"llama.cpp converter: {conv.script}")
    console.out.print(f"from llama-cpp-python {conv.llama_cpp_python}, llama.cpp commit {conv.commit}")
    if built is not None:
        console.out.print(f"llama.cpp tools: {built.bin} ({', '.join(names)})")


def print_doctor(rep: dict) -> None:
    for key, value in rep.items():
        if key == "devices":
            for d in value:
                mem = f", {human_bytes(d['free_bytes'])} free of {human_bytes(d['total_bytes'])}" if d["kind"] != "CPU" else ""
                console.out.print(f"{'device':<24} {d['name']}: {d['description']} ({d['kind']}{mem})")
            if not any(d["kind"] in ("GPU", "IGPU") for d in value):
                console.out.print(f"{'cuda devices':<24} none visible to llama.cpp")
        elif key == "fit":
            console.out.print(f"{'plan':<24} {value['request']}")
            for line in value["plan"].splitlines():
                console.out.print(f"{'':<24} {line}")
        else:
            console.out.print(f"{key.replace('_', ' '):<24} {value}")


def print_quantize_result(result) -> None:
    table = Table(title=f"{result.source.id}", title_justify="left")
    for col in ("type", "size", "BPW", "seconds", "status", "path"):
        table.add_column(col, justify="right" if col in ("size", "BPW", "seconds") else "left",
                         overflow="fold")
    for f in result.files:
        table.add_row(f.type, human_bytes(f.size), f"{f.bits_per_weight:.2f}", f"{f.seconds:.1f}", f.status, str(f.path))
    captions = []
    if result.adapter is not None:
        config = result.adapter.config
        captions.append(f"LoRA {result.adapter.source.id} (r={config.get('r')}, alpha={config.get('lora_alpha')})")
    if result.merge_seconds is not None:
        captions.append(f"merge: {result.merge_seconds:.1f} s")
    if result.convert_seconds is not None:
        captions.append(f"conversion: {result.convert_seconds:.1f} s")
    if result.imatrix is not None:
        built = any(f.status == "built" for f in result.files)
        how = (f"computed in {result.imatrix_seconds:.1f} s" if result.imatrix_seconds is not None
               else "given" if result.imatrix.get("calibration") == "given file"
               else "reused" if built else "as recorded")
        on = (f" on {result.imatrix['calibration']} ({result.imatrix['calibration_items']} items, "
              f"{result.imatrix['tokens']} tokens)" if "tokens" in result.imatrix else "")
        captions.append(f"imatrix {Path(result.imatrix['file']).name}{on}, {how}")
    table.caption = "; ".join(captions) or None
    console.out.print(table)


def print_fidelity(rows, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("file", "type", "top-1 agreement", "KLD mean", "KLD p99", "PPL", "positions"):
        table.add_column(col, justify="left" if col in ("file", "type") else "right")
    for r in rows:
        table.add_row(r.file, r.type, f"{100 * r.top1_agreement:.1f} %", f"{r.kld_mean:.4f}", f"{r.kld_p99:.4f}",
                      f"{r.ppl:.3f}", str(r.positions))
    console.out.print(table)


def print_lora(r) -> None:
    config = r.adapter.config
    console.out.print(f"{r.status} {r.path} ({human_bytes(r.size)}, {r.seconds:.1f} s): LoRA r={config.get('r')} "
                      f"alpha={config.get('lora_alpha')} on {len(r.adapter.updates)} tensors of {r.base.id}")
    console.out.print(f"use it: toolkit infer FILE.json --model <a GGUF of {r.base.name}> --lora {r.path}")


def print_inspect(s: dict) -> None:
    rows = [
        ("file", s["file"]), ("architecture", s["architecture"]), ("name", s["name"]),
        ("file type", s["file_type"]), ("size", human_bytes(s["size_bytes"])),
        ("parameters", human_count(s["parameters"])), ("bits per weight", f"{s['bits_per_weight']:.2f}"),
        ("tensor types", ", ".join(f"{k} {v}" for k, v in s["tensor_types"].items())),
        ("layers", s["layers"]), ("context length", s["context_length"]),
        ("tokenizer", f"{s['tokenizer_model']} (pre-tokenizer {s['pre_tokenizer']})"),
        ("chat template", "yes" if s["chat_template"] else "no"),
    ]
    for key, value in rows:
        console.out.print(f"{key:<16} {value}")


def infer_summary(r) -> dict:
    """infer's --json object (and the figures of its summary lines)."""
    return {
        "output": str(r.output), "model": str(r.model), "items": r.items, "resumed": r.resumed,
        "generated": r.generated, "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens,
        "seconds": round(r.seconds, 2), "tokens_per_second": round(r.tokens_per_second, 2),
        "prompt_tokens_per_second": round(r.prompt_tokens / r.prompt_seconds, 2) if r.prompt_seconds else 0.0,
        "generation_tokens_per_second": round(r.new_tokens / r.gen_seconds, 2) if r.gen_seconds else 0.0,
        "cut_at_max_new_tokens": r.cut_at_max_tokens, "missing_answer_form": r.missing_form,
        "answer_form_checked": r.form_checked, "parallel": r.parallel, "n_ctx": r.n_ctx,
        "votes": r.votes, "agreement": agreement_json(r.agreement),
        "layers_on_gpu": f"{r.load.layers_offloaded}/{r.load.layers_total}", "backend": r.load.backend,
        "llama_cpp_offload_log": r.load.offload_log,
        "memory_mib": r.memory,
        "answer_form": r.answer_form, "choices": r.choices,
    }


def print_infer_result(r) -> None:
    summary = infer_summary(r)
    console.out.print(f"wrote {r.output}: {r.items} items ({r.generated} generated, {r.resumed} resumed)")
    console.out.print(f"{r.new_tokens} new tokens in {r.seconds:.1f} s = {r.tokens_per_second:.1f} tok/s overall; "
                      f"prompts {summary['prompt_tokens_per_second']:.0f} tok/s ({r.prompt_tokens} tokens), "
                      f"generation {summary['generation_tokens_per_second']:.1f} tok/s; "
                      f"{r.cut_at_max_tokens} cut at max-new-tokens")
    if r.form_checked:
        console.out.print(f'{r.missing_form} of {r.form_checked} 선택형/교정형 answers lack the "…"가 옳다 form')
    if r.votes > 1 and r.agreement:
        console.out.print(describe_agreement(r.agreement, r.votes))
    if r.choices:
        console.out.print(describe_choices(r.choices))


def print_dry_run(r) -> None:
    console.out.print(f"wrote {r.items} rendered prompts to {r.output}")


def describe_choices(choices: dict[str, dict]) -> str:
    """`choose: 4 선택형 answer(s) opened with the likeliest candidate; margins … 0.62 to 8.29, median
    6.44: s1 #1 (6.44); s2 #2 (2.56); …` (item, candidate's number, margin); past 20 items, --json lists each."""
    margins = sorted(c["margin"] for c in choices.values() if c["margin"] is not None)
    text = f"choose: {len(choices)} 선택형 answer(s) opened with the likeliest candidate"
    if margins:
        text += (f"; margins (log-probability over the next best) {margins[0]:.2f} to {margins[-1]:.2f}, "
                 f"median {margins[len(margins) // 2]:.2f}")
    if len(choices) <= 20:  # each, while that stays readable
        return text + ": " + "; ".join(
            f"{key} #{c['candidate'] + 1}" + (f" ({c['margin']:.2f})" if c["margin"] is not None else "")
            for key, c in choices.items())
    return text + " (--json lists each)"


def agreement_json(agreement: dict[int, int]) -> dict[str, int]:
    return {str(k): n for k, n in sorted(agreement.items(), reverse=True)}


def describe_agreement(agreement: dict[int, int], votes: int) -> str:
    """`the kept sentence had 3/3 votes on 5 questions, 2/3 on 2, 0/3 on 1 (0: no answer had the form)`."""
    (top, n), *rest = sorted(agreement.items(), reverse=True)
    text = f"the kept sentence had {top}/{votes} votes on {n} question{'s' if n != 1 else ''}"
    text += "".join(f", {k}/{votes} on {m}" for k, m in rest)
    return text + (" (0: no answer had the form)" if 0 in agreement else "")


def print_answers(path: Path, count: int) -> None:
    """The demo's first answers: the id in bold, the question, the answer."""
    for item in json.loads(path.read_text(encoding="utf-8"))[:count]:
        console.out.print(Text.assemble("\n", (str(item["id"]), "bold"), f" {item['input']['question']}\n→ ",
                                        item["output"]["answer"]))


def print_score(report) -> None:
    def fmt(v):
        return "—" if v is None else f"{v:.4f}"

    table = Table(title="scores", title_justify="left")
    for col in ("type", "n", "EM", "ROUGE-1", "BERTScore", "BLEURT", "descriptive", "final"):
        table.add_column(col, justify="left" if col == "type" else "right")
    rows = list(report.by_type.items()) + [("overall", report)]
    for name, r in rows:
        table.add_row(name, str(r.n), fmt(r.exact_match), fmt(r.rouge1), fmt(r.bertscore), fmt(r.bleurt),
                      fmt(r.descriptive_avg), fmt(r.final))
    table.caption = "final = (EM + mean of " + ", ".join(report.metrics_used[1:] or ["no descriptive metric"]) + ") / 2"
    console.out.print(table)


def print_vote(r) -> None:
    kept = ", ".join(f"{n} from {p.name}" for p, n in zip(r.sources, r.kept))
    console.out.print(f"wrote {r.output}: {r.items} items; answers kept: {kept}")
    console.out.print(describe_agreement(r.agreement, len(r.sources)))


def vote_summary(r) -> dict:
    return {"output": str(r.output), "items": r.items, "kept": {str(p): n for p, n in zip(r.sources, r.kept)},
            "agreement": agreement_json(r.agreement)}


def print_found(result) -> None:
    """retrieve without --eval: each question's rules with their scores."""
    for f in result.found:
        shown = "; ".join(f"{t} ({s:.2f})" for t, s in zip(f.titles, f.scores)) or "—"
        console.out.print(f"{f.id}\t{shown}")
    console.notice(f"{len(result.found)} questions in {result.seconds:.1f} s")


def print_recall(report: dict, result) -> None:
    table = Table(title="retrieval", title_justify="left")
    for col in ("", "n", "R@1", "R@3", "R@5", "MRR"):
        table.add_column(col, justify="left" if not col else "right")
    rows = [("all", report)] + [(f"type {k}", v) for k, v in report["by_type"].items()] \
        + [(f"section {k}", v) for k, v in report["by_section"].items()]
    for name, r in rows:
        table.add_row(name, str(r["n"]), *(f"{r[k]:.3f}" for k in ("r@1", "r@3", "r@5", "mrr")))
    labels = f", {result.labelled} labelled questions" if result.labelled else ", no labels"
    table.caption = f"{len(result.titles)} rules{labels}; {report['seconds']:.1f} s for {len(result.found)} questions"
    console.out.print(table)
    if report["misses"]:
        console.out.print("commonest misses (gold → first found):")
        for m in report["misses"]:
            console.out.print(f"  {m['count']:>3}  {m['gold']} → {m['found'] or '—'}")
    if report["unknown_gold"]:
        console.warn(f"{report['unknown_gold']} gold titles are not titles of the reference document")
    if "examples" in report:
        ex = report["examples"]
        if ex["titled"]:
            console.out.print(f"examples about the question's own rule: first {ex['first']:.1%}, "
                              f"any of those shown {ex['any']:.1%}")
        else:
            console.out.print("examples: none says which rule it is about (output.article, or "
                              "--references-labels for the same questions)")


BENCH_COLUMNS = [("parallel", "parallel"), ("prompt tok/s", "prompt_tps"), ("gen tok/s", "gen_tps"),
                 ("aggregate tok/s", "aggregate_tps"), ("s/item", "seconds_per_item"), ("peak RSS MB", "peak_rss_mb"),
                 ("peak VRAM MB", "peak_vram_mb")]


def print_bench(rows: list[dict], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for name, _ in BENCH_COLUMNS:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*("—" if row[key] is None else str(row[key]) for _, key in BENCH_COLUMNS))
    table.caption = "aggregate = new tokens of all sequences / wall time of the run (prompts included)"
    console.out.print(table)
