"""The explicit method registry, filled by the `@register` decorator in each method module.

Every method documents its paper, the data it needs and its sign: a higher score means keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prunecli.errors import UsageError

# A per-tensor scorer: (name, float32 weights, seed, out) -> float32 scores of the same shape.
# `out` is an optional reusable float32 buffer of the right size that the scorer may fill.
TensorScorer = Callable[[str, np.ndarray, int, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class Method:
    """One saliency criterion and what the user must know about it."""

    name: str
    summary: str
    paper: str
    needs: str
    scorer: TensorScorer


_METHODS: dict[str, Method] = {}


def register(name: str, *, summary: str, paper: str, needs: str) -> Callable[[TensorScorer], TensorScorer]:
    """Add a per-tensor scorer to the registry under `name`."""

    def decorate(fn: TensorScorer) -> TensorScorer:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = Method(name, summary, paper, needs, fn)
        return fn

    return decorate


def all_methods() -> list[Method]:
    """Every registered method, in registration order."""
    _load_builtin_methods()
    return list(_METHODS.values())


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name is a UsageError listing the known ones."""
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(_METHODS)
        raise UsageError(f"unknown method {name!r}", f"choose one of: {known}") from None


def _load_builtin_methods() -> None:
    # Importing the modules runs their @register decorators; listed explicitly, no discovery.
    from prunecli.scoring import lamp, magnitude, random_baseline  # noqa: F401
