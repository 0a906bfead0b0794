"""The values of every choice option, as Enums: `--help` lists them and the parser refuses others.

The CLI hands the library `member.value` (a plain string), so the library never sees these.
Each Enum mirrors a tuple of the library (`tests/test_options.py` checks that they agree);
they are spelled out here so that `--help` imports neither numpy nor torch.
"""

from __future__ import annotations

from enum import Enum


class Scope(str, Enum):
    """`--scope`: which weights compete for the kept fraction (selection.spec.SCOPES)."""

    GLOBAL = "global"
    LAYER = "layer"
    ROW = "row"


class Allocation(str, Enum):
    """`--allocation`: per-layer densities (selection.spec.ALLOCATIONS)."""

    UNIFORM = "uniform"
    ERK = "erk"


class Structure(str, Enum):
    """`--structure`: the group kept or pruned whole (selection.spec.STRUCTURES)."""

    FILTER = "filter"
    CHANNEL = "channel"


class Aggregate(str, Enum):
    """`--aggregate`: a group's score from its weights' scores (selection.spec.AGGREGATES)."""

    L1 = "l1"
    L2 = "l2"
    MEAN = "mean"
    MAX = "max"


class Schedule(str, Enum):
    """`--schedule`: the density schedule of iterative methods (calibration.context)."""

    EXP = "exp"
    LINEAR = "linear"


class BnMode(str, Enum):
    """`--bn-mode`: batch-norm mode while scoring."""

    EVAL = "eval"
    TRAIN = "train"


class ScoreDtype(str, Enum):
    """`score --dtype` / `prune --dtype`: the precision of the passes (pipelines.score.COMPUTE_DTYPES)."""

    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Loss(str, Enum):
    """`--loss`: the calibration loss (calibration.losses.LOSSES)."""

    CE = "ce"
    PSEUDO = "pseudo"
    UNIFORM = "uniform"
    NLL = "nll"
    LM = "lm"


class Hessian(str, Enum):
    """`--hessian`: how OBD gets its Hessian diagonal (scoring.obd.HESSIANS)."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"
    FISHER = "fisher"


class InitScheme(str, Enum):
    """`init --init`: the initialisation scheme (models.init.SCHEMES)."""

    KAIMING_NORMAL = "kaiming-normal"
    XAVIER_NORMAL = "xavier-normal"
    XAVIER_UNIFORM = "xavier-uniform"
    ORTHOGONAL = "orthogonal"


class ExportDtype(str, Enum):
    """`export --onnx-dtype`: the ONNX file's float type (export.to_onnx.DTYPES)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
