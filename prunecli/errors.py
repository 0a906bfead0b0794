"""Typed errors carrying a message and a hint, and the one mapping to exit codes.

The library raises these; the CLI turns each into one stderr line and its exit code.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME = 3


class PruneError(Exception):
    """Base error: `message` says what happened, `hint` says how to fix it."""

    exit_code: int = EXIT_RUNTIME

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint on a single line, for stderr (terminal colours removed)."""
        text = self.message.rstrip(".") + "."
        if self.hint:
            text += f" {self.hint.rstrip('.')}."
        return " ".join(_ANSI.sub("", text).split())


class UsageError(PruneError):
    """An option or argument that makes no sense (sparsity 1.5, unknown method)."""

    exit_code = EXIT_BAD_INPUT


class InputError(PruneError):
    """A file that is missing, unreadable or inconsistent with another input."""

    exit_code = EXIT_BAD_INPUT


class CheckpointError(InputError):
    """A checkpoint that cannot be read safely (truncated, corrupt, pickled code)."""


class ManifestError(InputError):
    """A manifest that is malformed or written by a newer schema."""


class OutputExistsError(InputError):
    """The output already exists and --force was not given."""


class OutputBusyError(InputError):
    """Another live run holds the output's lock."""


class DiskFullError(PruneError):
    """The disk (or a file-size limit) ran out while writing an output; nothing was left behind."""

    exit_code = EXIT_RUNTIME


class CheckFailed(PruneError):
    """A check the user asked for did not hold (e.g. `inspect --expect-sparsity`)."""

    exit_code = EXIT_CHECK_FAILED


class ScoreError(PruneError):
    """Scores that cannot be used: NaN or infinite values."""

    exit_code = EXIT_RUNTIME


EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_CHECK_FAILED: "a check failed (inspect --expect-sparsity / --fail-on-collapse, export --verify)",
    EXIT_BAD_INPUT: "bad usage or bad input (missing, corrupt or inconsistent files, bad options)",
    EXIT_RUNTIME: "runtime failure (NaN or infinite scores, out of memory, disk full, internal error)",
}
