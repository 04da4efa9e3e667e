"""Competition JSON in and out: validation, resume state, atomic writes.

Items look like {"id": "1", "input": {"question_type": "선택형", "question": "…"}, …};
the output is the same list, every field kept, with "output": {"answer": …} added.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InvalidInput, OutputNotWritable
from .fsutil import drop_partial, ensure_writable_dir, through_link, write_json_atomic, write_text_atomic


def item_key(item: dict) -> str:
    return str(item["id"])


def read_json(path: Path, what: str):
    """A user's JSON file, or one line saying why it cannot be read."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def read_text(path: Path, what: str) -> str:
    """A user's UTF-8 text file (a byte-order mark, as Windows editors write, is dropped)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory, not {_a(what)}") from None
    except OSError as e:  # permissions, I/O
        raise InvalidInput(f"{path}: cannot read the {what} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def load_items(path: Path) -> list[dict]:
    data = read_json(path, "competition JSON file")
    if not isinstance(data, list):
        raise InvalidInput(f"{path}: expected a JSON list of items, found a JSON {type(data).__name__}")
    if not data:
        raise InvalidInput(f"{path}: the list of items is empty")
    first_seen: dict[str, int] = {}
    for n, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise InvalidInput(f"{path}: item {n} is not an object")
        if "id" not in item:
            raise InvalidInput(f"{path}: item {n} has no 'id'")
        if not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool):
            raise InvalidInput(f"{path}: item {n}: 'id' must be a string or a whole number")
        key = item_key(item)
        inp = item.get("input")
        if not isinstance(inp, dict):
            raise InvalidInput(f"{path}: item {n} (id {key}) has no 'input' object")
        if "question" in inp and not isinstance(inp["question"], str):
            raise InvalidInput(f"{path}: item {n} (id {key}): 'input.question' must be text")
        if not isinstance(inp.get("question"), str) or not inp["question"].strip():
            raise InvalidInput(f"{path}: item {n} (id {key}) has no 'input.question' text")
        if key in first_seen:
            raise InvalidInput(f"{path}: duplicate id {key!r} (items {first_seen[key]} and {n})")
        first_seen[key] = n
    return data


def check_output(output: Path, items: list[dict]) -> list[dict]:
    """What `output` holds now ([] for none), read once, before any work. Refused: an output we
    must not replace (another kind of file, or other questions: a dev or train file, say; not
    even with --no-resume), and one that cannot be written."""
    held: list[dict] = []
    if output.is_dir():
        raise InvalidInput(f"{output}: is a directory; --output takes a file name")
    if output.exists() and output.stat().st_size:
        held = _answers_list(output)
        if held is None:
            raise InvalidInput(f"{output} exists and is not an answers file; choose another --output")
        inputs = {item_key(i): i["input"] for i in items}
        if {str(i.get("id")) for i in held} - set(inputs):
            raise InvalidInput(f"{output} holds other questions than this input; choose another --output")
        # Same id, another question (an edited or another round's file): its answer is not this one's.
        # (Items without an input, as a hand-made file may have, can only be matched by id.)
        if changed := [str(i["id"]) for i in held if "input" in i and i["input"] != inputs[str(i["id"])]]:
            raise InvalidInput(f"{output} holds other questions under the same ids ({', '.join(changed[:3])}"
                               f"{', …' if len(changed) > 3 else ''}); choose another --output")
    ensure_writable_dir(through_link(output).parent)  # where the temporary file and the rename happen
    return held


def _answers_list(path: Path) -> list | None:
    """The file's items if it is a JSON list of objects with ids (what infer writes), else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError:
        return None
    except OSError as e:
        raise OutputNotWritable(f"{path}: cannot read it to see what it holds ({e.strerror})") from None
    if not isinstance(data, list) or not all(isinstance(i, dict) and "id" in i for i in data):
        return None
    return data


def previous_answers(held: list[dict], items: list[dict]) -> dict[str, str]:
    """Answers in the output's items (from check_output) for these items: what a rerun does not redo."""
    # A dev or train file carries gold answers: one copied through unchanged is not ours.
    # (Redoing an item costs time only; its seed gives the same answer again.)
    gold = {item_key(i): answer_of(i) for i in items}
    return {item_key(i): a for i in held if (a := answer_of(i)) is not None and a != gold.get(item_key(i))}


def holds_answers(held: list[dict]) -> bool:
    """At least one answer among the output's items (what a dry run must not replace)."""
    return any(answer_of(i) is not None for i in held)


def answer_of(item) -> str | None:
    """An item's output.answer when it is text; None for none, or for an output of another shape."""
    out = item.get("output") if isinstance(item, dict) else None
    return out["answer"] if isinstance(out, dict) and isinstance(out.get("answer"), str) else None


def _without_output(item: dict) -> dict:
    return {k: v for k, v in item.items() if k != "output"}


def render_output(items: list[dict], outputs: dict[str, dict]) -> str:
    merged = []
    for item in items:
        key = item_key(item)
        # An item not answered yet carries no "output", not even the input's gold answer.
        merged.append({**item, "output": outputs[key]} if key in outputs else _without_output(item))
    return json.dumps(merged, ensure_ascii=False, indent=4)


def write_output(path: Path, items: list[dict], outputs: dict[str, dict]) -> None:
    """The input list in order, each answered item with its "output"; atomic."""
    try:
        write_text_atomic(path, render_output(items, outputs))
    except OSError as e:  # the old file stays as it was
        raise OutputNotWritable(f"{path}: cannot write the answers ({e.strerror}); what was there is kept") from None


# What the answers in an output were made with (model, LoRA, sampling, prompts, template), in a
# hidden file beside it: a rerun resumes only answers made the same way, so a quick trial with
# --max-new-tokens 8 never becomes the submission of the run after it.
def settings_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.settings.json")


def lock_path(output: Path) -> Path:
    """The lock a run holds while it writes `output` (a link's target: one run per answers file)."""
    target = through_link(output)
    return target.with_name(f".{target.name}.lock")


def read_settings(output: Path) -> dict | None:
    """The recorded settings, or None when there is no record (infer before it kept one, or a
    file infer did not write)."""
    try:
        data = json.loads(settings_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def drop_leftovers(output: Path) -> None:
    """Remove what a killed run can leave beside the output: the temporary files of the output and
    of its settings record (never mistaken for finished files, but a rerun that answers nothing
    writes neither again)."""
    for path in (output, settings_path(output)):
        drop_partial(path)


def write_settings(output: Path, settings: dict) -> None:
    try:
        write_json_atomic(settings_path(output), settings)
    except OSError as e:
        raise OutputNotWritable(f"{settings_path(output)}: cannot write the run's settings ({e.strerror})") from None


def settings_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """What differs, one phrase each: `max_new_tokens 8 (now 1024)`, `prompts.system changed`."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes += settings_changes(a, b, f"{prefix}{key}.")
        elif isinstance(a, str) and isinstance(b, str) and max(len(a), len(b)) > 40:
            changes.append(f"{prefix}{key} changed")
        else:
            changes.append(f"{prefix}{key} {a} (now {b})")
    return changes
