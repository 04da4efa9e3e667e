"""Stage: several sampled answers to one question → the one to submit (self-consistency).

Exact match, half of the score, looks only at the sentence an answer declares correct. So the
answers are grouped by that sentence, normalized as exact match compares it, and the biggest
group wins. Of its answers, the one whose reason is most like the others' (the medoid under
`similarity`, ROUGE-1 in `infer`) is kept: the group's typical reason, not a random draw.
Answers without the `"…"가 옳다` form count only when no answer has it. Ties go to the earlier
answer, so with `infer --votes` the first vote (the answer a run without votes gives) wins them.

`toolkit vote A.json B.json …` does the same across answers files: several models, prompts or
seeds answering one question file (an ensemble); ties go to the earlier file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import console, dataset
from .answer import answer_sentence, split_answer
from .errors import InvalidInput, OutputExists, UserError
from .fsutil import exclusive
from .korean import Rouge1

Similarity = Callable[[str, str], float]
VOTE_RECORD = "chosen_by_vote_among"  # the settings record of an output `toolkit vote` wrote


@dataclass(frozen=True)
class Choice:
    answer: str
    index: int  # of the chosen answer among those given
    agreeing: int  # answers that declare the same sentence (0: none has the form)
    total: int


def choose(answers: Sequence[str], similarity: Similarity) -> Choice:
    if not answers:
        raise ValueError("no answers to choose from")
    groups: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        sentence = answer_sentence(answer)  # as exact match reads it: quoted or not
        if sentence is not None:
            groups.setdefault(sentence, []).append(i)
    if groups:  # dicts keep insertion order, and max keeps the first of equals: ties go to the earlier answer
        members = max(groups.values(), key=len)
        texts = [split_answer(answers[i]).reason for i in members]
        agreeing = len(members)
    else:
        members, texts, agreeing = list(range(len(answers))), list(answers), 0
    best = medoid(texts, similarity)
    return Choice(answers[members[best]], members[best], agreeing, len(answers))


def medoid(texts: Sequence[str], similarity: Similarity) -> int:
    """The index of the text most similar to all the others (the first of equals)."""
    if len(texts) <= 2:  # similarity is symmetric: two texts tie
        return 0
    totals = [0.0] * len(texts)
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            s = similarity(texts[i], texts[j])
            totals[i] += s
            totals[j] += s
    # Rounded: sums of the same terms in another order can differ in the last bit.
    return max(range(len(texts)), key=lambda i: (round(totals[i], 9), -i))


# -- the `vote` verb: answers files of several runs (models, seeds, prompts) → one ---------------

@dataclass
class VoteResult:
    output: Path
    items: int
    sources: list[Path]
    kept: list[int]  # per source: the answers kept from it
    agreement: dict[int, int] = field(default_factory=dict)  # answers declaring the kept sentence → questions


def vote_files(paths: Sequence[Path], output: Path) -> VoteResult:
    """Per question, choose among the answers the files give it; write the first file's items
    with the chosen answers to `output`. Ties go to the earlier file."""
    if len(paths) < 2:
        raise UserError("give two answers files or more to vote among")
    files = [dataset.load_items(p) for p in paths]
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:  # by inode: a link or another spelling of a path is the same file
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:
            raise UserError(f"{path} is given twice (as {seen[st.st_dev, st.st_ino]}): each file is one vote")
        seen[st.st_dev, st.st_ino] = path
    first = files[0]
    keys = [dataset.item_key(i) for i in first]
    questions = {dataset.item_key(i): i["input"] for i in first}
    answers: list[dict[str, str]] = []
    for path, items in zip(paths, files):
        by_id = {dataset.item_key(i): i for i in items}
        if set(by_id) != set(keys):
            raise InvalidInput(f"{path} answers other questions than {paths[0]} (other ids); vote among answers "
                               "to one question file")
        if changed := [k for k in keys if by_id[k]["input"] != questions[k]]:
            raise InvalidInput(f"{path} holds other questions than {paths[0]} under the same ids "
                               f"({', '.join(changed[:3])}{', …' if len(changed) > 3 else ''})")
        if missing := [k for k in keys if dataset.answer_of(by_id[k]) is None]:
            raise InvalidInput(f"{path}: item {missing[0]} has no output.answer ({len(missing)} such items: "
                               "an unfinished infer run? run it again to finish it)")
        answers.append({k: dataset.answer_of(by_id[k]) for k in keys})
        if dataset.read_settings(path) is None:  # a dev file's gold answers would vote too
            console.notice(f"{path} has no record of how its answers were made (not written by toolkit infer, or "
                           "copied without it): make sure it is not a file of gold answers")
    if output.exists() and any(os.path.samefile(output, p) for p in paths):
        raise UserError("the output would overwrite one of the answers files; choose another --output")
    _check_output(output, first)
    with exclusive(dataset.lock_path(output), str(output), "wait for it to finish, or choose another --output"):
        _check_output(output, first)
        similarity = Rouge1().f1
        result = VoteResult(output, len(keys), list(paths), [0] * len(paths))
        outputs = {}
        for key in keys:
            choice = choose([a[key] for a in answers], similarity)
            outputs[key] = {"answer": choice.answer}
            result.kept[choice.index] += 1
            result.agreement[choice.agreeing] = result.agreement.get(choice.agreeing, 0) + 1
        # Recorded before the answers, in place of an infer run's record that would no longer
        # describe them: `infer --output` this file then refuses to resume them as its own.
        dataset.write_settings(output, {VOTE_RECORD: [Path(p).name for p in paths]})
        dataset.write_output(output, first, outputs)
        return result


def _check_output(output: Path, items: list[dict]) -> None:
    """Only an earlier vote's output is replaced: never an infer run's answers, a gold or a question file."""
    held = dataset.check_output(output, items)
    if held and VOTE_RECORD not in (dataset.read_settings(output) or {}):
        raise OutputExists(f"{output} exists and was not written by toolkit vote (an infer run's answers, a gold "
                           "or question file?); choose another --output")
