"""Where the toolkit talks to people: rich on stderr, so stdout stays clean for --json."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

# Soft wrap: a message is one line however wide the terminal (and in a log file, never cut at 80).
# No markup: what is printed is paths, ids, question text and llama.cpp's lines, any of which may
# hold [brackets]; a style is given as Text (see `labelled`), never inside the string.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, soft_wrap=True, markup=False)


def labelled(label: str, style: str, message: str) -> Text:
    """`error: …`, `warning: …`: the label styled, the message as written."""
    return Text.assemble((label, style), " ", message)


def notice(message: str) -> None:
    err.print(labelled("note:", "bold", message))


def warn(message: str) -> None:
    err.print(labelled("warning:", "yellow", message))


def error(message: str) -> None:
    err.print(labelled("error:", "red", message))


def step_progress() -> Progress:
    """A bar for work measured in steps (tensors, items)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def byte_progress() -> Progress:
    """A bar for work measured in bytes (downloads, writes)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
