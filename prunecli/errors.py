"""Typed errors carrying a message, a hint and the facts, and the one mapping to exit codes.

The library raises these; the CLI turns each into one stderr line and its exit code.

A message names the library's parameters in backticks, as a Python caller spells them
(`` `min_density` 1.5 is outside [0, 1]``); the CLI renders each as its flag
(``--min-density 1.5 is outside [0, 1]``) through `one_line(parameter=...)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")  # a parameter named in a message: `min_density`

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME = 3


class PruneError(Exception):
    """Base error: `message` says what happened, `hint` says how to fix it.

    The optional facts let a caller act without parsing the text: `option` is the library
    parameter at fault ("min_density"), `value` the value given, `allowed` the accepted
    choices and `bounds` the accepted closed range (low, high).

    Example:
        >>> err = UsageError("`min_density` 1.5 is outside [0, 1]", "use a fraction",
        ...                  option="min_density", value=1.5, bounds=(0.0, 1.0))
        >>> err.one_line(parameter=lambda name: "--" + name.replace("_", "-"))
        '--min-density 1.5 is outside [0, 1]. use a fraction.'
    """

    exit_code: int = EXIT_RUNTIME

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        option: str | None = None,
        value: Any = None,
        allowed: tuple[Any, ...] | None = None,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.option = option
        self.value = value
        self.allowed = allowed
        self.bounds = bounds

    def one_line(self, parameter: Callable[[str], str] | None = None) -> str:
        """The message and the hint on a single line, for stderr (terminal colours removed).

        `parameter` renders each backticked parameter name (the CLI passes its flag names);
        without it the names keep their backticks.
        """
        text = self.message.rstrip(".") + "."
        if self.hint:
            text += f" {self.hint.rstrip('.')}."
        if parameter is not None:
            text = render_parameters(text, parameter)
        return " ".join(_ANSI.sub("", text).split())

    def renamed(self, **names: str) -> PruneError:
        """This error with some parameters renamed, for a caller whose own names differ.

        Example (`inspect` gives `Expectations.sparsity` as `expect_sparsity`):
            >>> err = UsageError("`sparsity` 2.0 is outside [0, 1]", option="sparsity", value=2.0)
            >>> err.renamed(sparsity="expect_sparsity").one_line()
            '`expect_sparsity` 2.0 is outside [0, 1].'
        """

        def rename(text: str) -> str:
            return PARAMETER.sub(lambda match: f"`{names.get(match.group(1), match.group(1))}`", text)

        option = names.get(self.option, self.option) if self.option is not None else None
        return type(self)(
            rename(self.message), rename(self.hint),
            option=option, value=self.value, allowed=self.allowed, bounds=self.bounds,
        )  # fmt: skip


def render_parameters(text: str, parameter: Callable[[str], str]) -> str:
    """`text` with each backticked parameter name rendered by `parameter` (the CLI: its flag).

    Example:
        >>> render_parameters("add `input_shape`", lambda name: "--" + name.replace("_", "-"))
        'add --input-shape'
    """
    return PARAMETER.sub(lambda match: parameter(match.group(1)), text)


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


class CommandFailed(PruneError):
    """A command prunecli ran for the user (`lottery`'s training command) failed; `value` is its
    exit status."""

    exit_code = EXIT_RUNTIME


EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_CHECK_FAILED: "a check failed (inspect --expect-sparsity / --fail-on-collapse, export --verify)",
    EXIT_BAD_INPUT: "bad usage or bad input (missing, corrupt or inconsistent files, bad options)",
    EXIT_RUNTIME: "runtime failure (NaN or infinite scores, out of memory, disk full, a failed training "
    "command, internal error)",
}
