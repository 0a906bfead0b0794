"""Typed method options: one frozen dataclass per method, built once at the pipeline's edge.

A method declares its options class on its registry entry (`Method.options`). The pipeline turns
the options a caller gave (a dict, as the CLI passes them) into that class with
`build_options`, refusing keys the method does not take, and records `options.params()` in the
scores file and manifest. Fields are named as the method reads them; a field given or recorded
under another key says so in its metadata (`option(key=...)`), and a field that cannot change
the scores (a memory or time limit) is not recorded (`option(recorded=False)`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from prunecli.errors import UsageError

if TYPE_CHECKING:
    from prunecli.scoring.registry import Method

SCHEDULES = ("exp", "linear")


def option(default: Any, *, key: str | None = None, recorded: bool = True) -> Any:
    """A dataclass field given and recorded as `key` (default: the field's name).

    Example:
        >>> first_order: bool = option(False, key="obd_first_order")
    """
    return field(default=default, metadata={"key": key, "recorded": recorded})


@dataclass(frozen=True)
class MethodOptions:
    """The base of every method's options: which keys a caller may give, and what is recorded."""

    @classmethod
    def keys(cls) -> dict[str, str]:
        """{key a caller gives: field name} of the fields a caller may set."""
        return {f.metadata.get("key") or f.name: f.name for f in fields(cls) if f.init}

    @classmethod
    def default(cls, name: str) -> Any:
        """The declared default of field `name` (None where it has none)."""
        found = {f.name: f.default for f in fields(cls)}.get(name, MISSING)
        return None if found is MISSING else found

    def params(self) -> dict[str, Any]:
        """What a run records as the method's parameters (scores metadata, manifest)."""
        return {
            f.metadata.get("key") or f.name: getattr(self, f.name)
            for f in fields(self)
            if f.metadata.get("recorded", True)
        }


@dataclass(frozen=True)
class NoOptions(MethodOptions):
    """A method that takes no options (magnitude, SNIP, Wanda, ...)."""


@dataclass(frozen=True)
class IterativeOptions(MethodOptions):
    """Prune-score-prune steps: T steps on a density schedule, exp d^(t/T) or linear."""

    iterations: int = 1
    schedule: str = "exp"

    def __post_init__(self) -> None:
        check_counts(iterations=self.iterations)
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown `schedule` {self.schedule!r}", "use exp or linear",
                             option="schedule", value=self.schedule, allowed=SCHEDULES)  # fmt: skip


def build_options(
    method: Method, given: Mapping[str, Any], shared: Mapping[str, Any], methods: Iterable[Method]
) -> MethodOptions:
    """`method.options` from the options a caller gave, converted once at the pipeline's edge.

    Args:
        given: method-specific options ({"hessian": "hutchinson"}); a key this method does not
            take is a UsageError naming the methods that do take it.
        shared: options every method is given (iterations, schedule, temperature): each
            method takes those it declares and ignores the others. None means the default.
        methods: every registered method, to name the ones that take a refused key.

    Example:
        >>> build_options(get_method("obd"), {"hessian": "fisher"}, {}, all_methods())
        ObdOptions(hessian='fisher', hutchinson_samples=100, first_order=False, ...)
    """
    check_keys(method, given, methods)
    keys = method.options.keys()
    values = {keys[k]: v for k, v in shared.items() if k in keys and v is not None}
    values.update({keys[k]: v for k, v in given.items() if v is not None})
    return method.options(**values)


def check_keys(method: Method, given: Iterable[str], methods: Iterable[Method]) -> None:
    """Refuse a given option key that `method` does not take, naming the methods that do."""
    keys = method.options.keys()
    for key in given:
        if key not in keys:
            value = given.get(key) if isinstance(given, Mapping) else None
            raise _not_taken(key, value, method.name, [m.name for m in methods if key in m.options.keys()])


def _not_taken(key: str, value: Any, name: str, users: list[str]) -> UsageError:
    if not users:
        return UsageError(f"unknown method option {key!r}", "see the method's options class",
                          option=key, value=value)  # fmt: skip
    return UsageError(f"`{key}` applies to {' and '.join(users)}, not {name}", f"drop `{key}`",
                      option=key, value=value)  # fmt: skip


def check_counts(**values: int | None) -> None:
    """Refuse counts below 1 (`max_params=0` names the parameter `max_params`); None is unset."""
    for key, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"`{key}` {value} must be at least 1", f"give `{key}` a positive count",
                             option=key, value=value, bounds=(1, math.inf))  # fmt: skip
