"""The explicit method registry, filled by the `@register` decorators in each method module.

Every method documents its paper and its sign (a higher score means keep), and declares what it
needs, takes and returns (`Method`): the pipelines read those declarations, never the name.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import UsageError
from prunecli.scoring.options import MethodOptions, NoOptions

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
# A model scorer: a live model with its calibration batches, and the method's typed options ->
# scores (and, for iterative methods, the final masks).
ModelScorer = Callable[["ScoringContext", Any], "ScoreResult"]


DATA = ("none", "input-shape", "batches")
LABELS = {"unused": "(no labels, no backward pass)", "optional": "(labels optional)"}
READS = ("weights", "shapes")
RETURNS = ("scores", "masks", "weights")
BN_MODES = ("eval", "train")
DTYPES = ("float32", "float64")
SCOPES = ("global", "layer", "row")


@dataclass(frozen=True)
class Method:
    """One saliency criterion: what it is, what it needs and what it returns, declared.

    The pipelines pick their path from these fields, never from the name:

    - `options`: the method's frozen options dataclass (`prunecli.scoring.options`);
      `options.params()` is what a run records.
    - `needs_model`: scored on a live model (`model_scorer`) rather than tensor by tensor
      (`scorer`, with an optional fast path `keys`).
    - `data`: "none" (checkpoint only), "input-shape" (data-free, one example's shape) or
      "batches" (calibration data); `labels`: "optional" (a loss, supervised or not) or
      "unused" (no loss at all); `reads`: "shapes" for a per-tensor method that ignores values.
    - `iterative`: takes the target sparsity at score time and runs `options.iterations` steps.
    - `returns`: "scores", "masks" (an iterative method's final mask, encoded as scores) or
      "weights" (updated weights: SparseGPT, which only `prune` runs, layer by layer).
    - `bn_mode`, `default_dtype`, `default_scope`: the reference's batch-norm mode, scoring
      precision (None: float32) and selection scope (a declaration: apply's default is global).
    - `second_order`: differentiates through a gradient (GraSP's Hg, OBD's Hessian), so a
      transformer is built with plain attention (fused attention kernels have no second derivative).
    - `layerwise`: builds the method's block pruner (`scoring.layerwise`): the method can decide
      masks layer by layer while calibrating, block by block (`prune`'s `sequential`).
    - `requirements`: what else `prunecli methods` says the user must give.
    """

    name: str
    summary: str
    paper: str
    scorer: TensorScorer | None = None
    keys: KeyFunction | None = None
    model_scorer: ModelScorer | None = None
    options: type[MethodOptions] = NoOptions
    needs_model: bool = False
    data: str = "none"
    labels: str = "unused"
    reads: str = "weights"
    bn_mode: str = "eval"
    iterative: bool = False
    returns: str = "scores"
    default_dtype: str | None = None
    default_scope: str | None = None
    second_order: bool = False
    layerwise: Callable[..., Any] | None = None
    requirements: tuple[str, ...] = ()

    @property
    def default_iterations(self) -> int | None:
        """The steps of an iterative method, as its options class declares them."""
        return self.options.default("iterations") if self.iterative else None

    @property
    def float64(self) -> bool:
        """Whether the method scores in float64 by default (`default_dtype`)."""
        return self.default_dtype == "float64"

    @property
    def needs(self) -> str:
        """What the user must give, in words, from the declarations (`prunecli methods`).

        Parameters are named in backticks (`` `arch` and `data` ``), as in error messages; the
        CLI renders them as its flags (`--arch`).
        """
        if self.needs_model:
            data = {"none": "", "input-shape": " and `input_shape` (no data)"}
            parts = ["`arch`" + data.get(self.data, f" and `data` {LABELS[self.labels]}")]
        else:
            parts = ["checkpoint only" + (" (shapes)" if self.reads == "shapes" else "")]
        if self.iterative:
            parts.append("`sparsity` at score time")
        parts += self.requirements
        if self.default_scope is not None:
            parts.append(f"compare per {self.default_scope}")
        return "; ".join(parts)


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a fully declared `Method`; one whose callables disagree with its declarations is refused."""
    problem = inconsistency(method)
    if problem:
        raise ValueError(f"method {method.name!r} is inconsistent: {problem}")
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    _METHODS[method.name] = method
    return method


def inconsistency(m: Method) -> str | None:
    """What in `m`'s declarations contradicts its callables or itself, or None."""
    checks = [
        (
            m.needs_model == (m.model_scorer is not None or m.returns == "weights"),
            "needs_model must go with a model_scorer (or, returning weights, a layerwise pruner)",
        ),
        (m.needs_model != (m.scorer is not None), "a method has a per-tensor scorer or a model_scorer"),
        (m.keys is None or m.scorer is not None, "keys is a fast path of a per-tensor scorer"),
        (m.data in DATA, f"data is one of {DATA}"),
        (m.labels in LABELS, f"labels is one of {tuple(LABELS)}"),
        (m.labels == "unused" or m.data == "batches", "only methods on batches use labels"),
        (m.needs_model or m.data == "none", "a per-tensor method reads the checkpoint only"),
        (m.reads in READS and (m.reads == "weights" or not m.needs_model), f"reads is one of {READS}"),
        (m.bn_mode in BN_MODES, f"bn_mode is one of {BN_MODES}"),
        (m.returns in RETURNS, f"returns is one of {RETURNS}"),
        (m.iterative == (m.returns == "masks"), "iterative methods, and only they, return masks"),
        (m.needs_model or m.returns == "scores", "a per-tensor method returns scores"),
        (m.returns != "weights" or m.layerwise is not None, "a method that returns weights prunes layerwise"),
        (m.default_dtype in (None, *DTYPES), f"default_dtype is None or one of {DTYPES}"),
        (m.default_scope in (None, *SCOPES), f"default_scope is None or one of {SCOPES}"),
        (_is_options(m.options), "options is a frozen MethodOptions dataclass with defaults"),
    ]
    problem = next((text for ok, text in checks if not ok), None)
    if problem is None and not m.needs_model and fields(m.options):
        problem = "a per-tensor method takes no options"
    steps = m.default_iterations
    if problem is None and m.iterative and not (isinstance(steps, int) and steps >= 1):
        problem = "an iterative method declares its default iterations (options.iterations >= 1)"
    return problem


def _is_options(options: object) -> bool:
    if not (isinstance(options, type) and issubclass(options, MethodOptions) and is_dataclass(options)):
        return False
    try:
        options()  # every field has a default
    except TypeError:
        return False
    return options.__dataclass_params__.frozen


def register(
    name: str, *, summary: str, paper: str, reads: str = "weights", keys: KeyFunction | None = None
) -> Callable[[TensorScorer], TensorScorer]:
    """Add a per-tensor scorer (no model, no data, no options) to the registry under `name`.

    `keys` optionally computes the selection keys straight from raw weights (same result as
    scoring then `scores_to_keys`, at a fraction of the cost), for `apply`'s streamed passes;
    it must be elementwise, since it is run on blocks and samples of a tensor. `reads="shapes"`
    declares a method that ignores the weights' values (random).
    """

    def decorate(fn: TensorScorer) -> TensorScorer:
        register_method(Method(name, summary, paper, scorer=fn, keys=keys, reads=reads))
        return fn

    return decorate


def register_model_method(name: str, **declared: Any) -> Callable[[ModelScorer], ModelScorer]:
    """Add a model-based scorer; `declared` gives summary, paper and the other `Method` fields.

    The scorer is called as `model_scorer(ctx, options)`, `options` an instance of the declared
    `options` class. Modules that use this import torch inside their functions, so listing the
    methods (`prunecli methods`) stays free of torch.
    """

    def decorate(fn: ModelScorer) -> ModelScorer:
        register_method(Method(name, model_scorer=fn, needs_model=True, **declared))
        return fn

    return decorate


def all_methods() -> list[Method]:
    """Every registered method: the built-in ones in `BUILTIN_MODULES` order, then the others in
    registration order (the same order whichever module a process happened to import first)."""
    _load_builtin_methods()
    return sorted(_METHODS.values(), key=_listing_rank)


def _listing_rank(method: Method) -> int:
    scorer = method.scorer or method.model_scorer or method.layerwise
    module = getattr(scorer, "__module__", "").removeprefix("prunecli.scoring.")
    return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name is a UsageError listing the known ones."""
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        known = [m.name for m in all_methods()]
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
        guess = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"unknown method {name!r}", f"{guess}choose one of: {', '.join(known)}") from None


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
    "sparsegpt",
)


def _load_builtin_methods() -> None:
    # Importing a module runs its @register decorators; listed explicitly, no discovery.
    for module in BUILTIN_MODULES:
        importlib.import_module(f"prunecli.scoring.{module}")
