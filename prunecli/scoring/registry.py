"""The explicit method registry, filled by the `@register` decorator in each method module.

Every method documents its paper, the data it needs and its sign: a higher score means keep.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import UsageError

if TYPE_CHECKING:
    from prunecli.calibration.context import ScoreResult, ScoringContext

# A per-tensor scorer: (name, float32 weights, seed, out) -> float32 scores of the same shape.
# `out` is an optional reusable float32 buffer of the right size that the scorer may fill.
TensorScorer = Callable[[str, np.ndarray, int, np.ndarray | None], np.ndarray]
# A fast path from raw weights straight to selection keys: (raw, dtype name, out) -> keys, or
# None where it does not apply (then the scores go through prunecli.selection.threshold.scores_to_keys).
# It must be elementwise (each key depends on its own weight alone): apply runs it on blocks
# and on strided samples of a tensor.
KeyFunction = Callable[[np.ndarray, str, np.ndarray], "np.ndarray | None"]
# A model scorer: a live model, calibration batches and options -> scores (and final masks).
ModelScorer = Callable[["ScoringContext"], "ScoreResult"]


@dataclass(frozen=True)
class Method:
    """One saliency criterion and what the user must know about it.

    `data` is "none" (checkpoint only), "input-shape" (data-free, needs --input-shape) or
    "batches" (calibration data). `bn_mode` is the batch-norm mode of the reference code.
    Iterative methods take the target sparsity at score time.
    """

    name: str
    summary: str
    paper: str
    needs: str
    scorer: TensorScorer | None = None
    keys: KeyFunction | None = None
    model_scorer: ModelScorer | None = None
    data: str = "none"
    bn_mode: str = "eval"
    iterative: bool = False
    float64: bool = False

    @property
    def needs_model(self) -> bool:
        return self.model_scorer is not None


_METHODS: dict[str, Method] = {}


def _add(method: Method) -> None:
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    _METHODS[method.name] = method


def register(
    name: str, *, summary: str, paper: str, needs: str, keys: KeyFunction | None = None
) -> Callable[[TensorScorer], TensorScorer]:
    """Add a per-tensor scorer (no model, no data) to the registry under `name`.

    `keys` optionally computes the selection keys straight from raw weights (same result as
    scoring then `scores_to_keys`, at a fraction of the cost), for `apply`'s streamed passes;
    it must be elementwise, since it is run on blocks and samples of a tensor.
    """

    def decorate(fn: TensorScorer) -> TensorScorer:
        _add(Method(name, summary, paper, needs, scorer=fn, keys=keys))
        return fn

    return decorate


def register_model_method(name: str, **info: Any) -> Callable[[ModelScorer], ModelScorer]:
    """Add a model-based scorer; `info` gives summary, paper, needs, data, bn_mode, ...

    Modules that use this import torch inside their functions, so listing the methods
    (`prunecli methods`) stays free of torch.
    """

    def decorate(fn: ModelScorer) -> ModelScorer:
        _add(Method(name, model_scorer=fn, **info))
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


# The built-in method modules, in the order `prunecli methods` lists them.
BUILTIN_MODULES = (
    "magnitude",
    "random_baseline",
    "lamp",
    "snip",
    "grasp",
    "synflow",
    "force",
    "snip_it",
    "obd",
    "exact",
    "taylor",
    "wanda",
)


def _load_builtin_methods() -> None:
    # Importing a module runs its @register decorators; listed explicitly, no discovery.
    for module in BUILTIN_MODULES:
        importlib.import_module(f"prunecli.scoring.{module}")
