"""Where output goes: data (JSON) to stdout, everything human to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from prunecli.errors import render_parameters


def flag(parameter: str) -> str:
    """The command-line flag of a library parameter: `min_density` -> `--min-density`."""
    return "--" + parameter.replace("_", "-")


def flags(text: str) -> str:
    """Library text with its backticked parameters shown as flags: "add `arch`" -> "add --arch"."""
    return render_parameters(text, flag)


# The width of a console that is not a terminal (a pipe, a file, a CI log): tables take their
# natural width there, so no tensor name is ever wrapped or cut and each row stays one line.
UNWRAPPED_WIDTH = 1_000_000


def stderr_console() -> Console:
    """A console on the current stderr (created per use, so tests can capture it).

    On a terminal, tables fit its width; elsewhere nothing is wrapped (`UNWRAPPED_WIDTH`), so
    `grep` and log readers see whole names.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = UNWRAPPED_WIDTH
    return console


def note(message: str, quiet: bool = False) -> None:
    """One informational line on stderr."""
    if not quiet:
        print(f"note: {message}", file=sys.stderr)


def warn(message: str) -> None:
    """One warning line on stderr (never silenced: warnings matter in CI logs)."""
    print(f"warning: {message}", file=sys.stderr)


def emit_json(data: Any) -> None:
    """Machine output: one JSON document on stdout and nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def report_applied(applied: Any, output: object, *, json_out: bool, quiet: bool) -> None:
    """What `apply` and `prune` print: notes, warnings, the totals line, and the manifest as JSON."""
    for line in applied.notes:
        note(line, quiet)
    for message in applied.warnings:
        warn(message)
    totals = applied.manifest["totals"]
    note(f"wrote {output}: kept {totals['kept']:,} of {totals['prunable']:,} "
         f"(sparsity {totals['sparsity']:.4f})", quiet)  # fmt: skip
    if json_out:
        emit_json(applied.manifest)


class _Count(MofNCompleteColumn):
    """`done/total` for a stage with a total; nothing for one without (its spinner says enough)."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.total is not None else Text("")


class RichProgress:
    """The library's Progress protocol drawn on stderr, transient, on a terminal only.

    A stage with a total draws a bar and `done/total`; one without (total 0, e.g. "building the
    model") draws a spinner and a pulsing bar, so a long load never looks frozen.
    """

    def __init__(self, quiet: bool, console: Console | None = None) -> None:
        console = console or stderr_console()
        self._progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("{task.description}"),
            BarColumn(),
            _Count(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),  # e.g. blocks left while pruning block by block
            console=console,
            transient=True,
            disable=quiet or not console.is_terminal,  # no bars in CI logs
        )
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total if total else None)

    def advance(self) -> None:
        self._progress.advance(self._task)
