"""Shared option aliases, and the option groups they fill (the values are checked in `values`).

Each option is declared once here, as an `Annotated` alias. The options that several commands
share form groups (`ModelOptions`, `MethodOptions`, `SelectionOptions`): a command lists the
aliases in its signature, with the group's defaults (`MODEL.batch_size`), and `gather` builds
the group from the parsed values, so no default or option name is written twice.

Example:
    def score(..., batch_size: opt.BatchSize = opt.MODEL.batch_size, ...) -> None:
        model = opt.gather(opt.ModelOptions, locals())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from prunecli.cli import choices, completion
from prunecli.cli.values import byte_size, fraction, parse_pattern, target_density
from prunecli.errors import UsageError
from prunecli.selection.spec import SelectionSpec

Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr.")]
MAX_SEED = 2**64 - 1  # the widest seed every generator used here (torch, numpy) accepts
DEFAULT_SEED = 0
Seed = Annotated[
    int,
    typer.Option(
        "--seed", min=0, max=MAX_SEED, help="Random seed: same inputs and seed give identical files."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")]
Include = Annotated[
    Optional[list[str]],
    typer.Option("--include", help="Also prune tensors matching this glob (repeatable).", metavar="GLOB"),
]
Exclude = Annotated[
    Optional[list[str]],
    typer.Option("--exclude", help="Never prune tensors matching this glob (repeatable).", metavar="GLOB"),
]
Checkpoint = Annotated[
    Path, typer.Argument(help="Checkpoint: .safetensors, .safetensors.index.json, .pt/.pth/.bin.")
]


Method = Annotated[
    str,
    typer.Option(
        "--method", "-m", help="Scoring method (see `prunecli methods`).", autocompletion=completion.methods
    ),
]


# Option groups: one dataclass each, filled by `gather` --------------------------------------

Group = TypeVar("Group")


def gather(group: type[Group], params: Mapping[str, Any]) -> Group:
    """The option group `group` from a command's parsed parameters (pass `locals()`).

    Each field is taken by name. Enum members become their plain values and repeatable
    options tuples, so the library gets what a Python caller would pass; a repeatable option
    that was not given (None) takes the field's default.
    """
    missing = [f.name for f in fields(group) if f.name not in params]
    if missing:
        raise TypeError(f"{group.__name__} needs parameters the command lacks: {', '.join(missing)}")
    values: dict[str, Any] = {}
    for f in fields(group):
        value = params[f.name]
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, list):
            value = tuple(value)
        elif value is None and f.default is not MISSING:
            value = f.default
        values[f.name] = value
    return group(**values)


@dataclass(frozen=True)
class ModelOptions:
    """How a model-based method builds, feeds and runs the model (`score`, `prune`, `demo`).

    Text stays text (`arch_args` JSON, `input_shape` SHAPE): it is parsed where it is used.
    """

    arch: str | None = None
    arch_args: str | None = None
    data: str | None = None
    input_shape: str | None = None
    batch_size: int | None = None  # None: the data's (128 examples, 8 token windows)
    num_batches: int = 1
    per_class: int | None = None
    inputs_key: str | None = None
    labels_key: str | None = None
    loss: str | None = None  # None: ce with labels, pseudo without
    iterations: int | None = None  # None: the method's own count
    schedule: str = "exp"
    bn_mode: str | None = None  # None: the method's mode
    device: str = "auto"
    dtype: str | None = None  # None: the method's precision
    seed: int = DEFAULT_SEED
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    trust_remote_code: bool = False
    seq_len: int | None = None  # None: 2048, capped at the model's maximum
    num_samples: int | None = None  # None: 128


@dataclass(frozen=True)
class MethodOptions:
    """Options that single methods read; the others refuse them (see `given`)."""

    temperature: float | None = None  # None: GraSP's own (200)
    hessian: str | None = None
    hutchinson_samples: int | None = None
    obd_first_order: bool = False
    fisher: bool = False
    max_params: int | None = None
    damp: float | None = None
    block_size: int | None = None

    def given(self) -> dict[str, object]:
        """The method-specific options that were given (the methods supply their own defaults)."""
        optional = {
            "hessian": self.hessian, "hutchinson_samples": self.hutchinson_samples,
            "max_params": self.max_params, "damp": self.damp, "block_size": self.block_size,
        }  # fmt: skip
        options: dict[str, object] = {name: value for name, value in optional.items() if value is not None}
        if self.obd_first_order:
            options["obd_first_order"] = True
        if self.fisher:
            options["fisher"] = True
        return options


@dataclass(frozen=True)
class SelectionOptions:
    """How scores become masks, as given on the command line (`apply`, `prune`, `demo`).

    The defaults are the library's (`SelectionSpec`); `scope` None means layer with ERK,
    global otherwise.
    """

    sparsity: float | None = None
    density: float | None = None
    scope: str | None = None
    allocation: str = SelectionSpec.allocation
    min_density: float = SelectionSpec.min_density
    pattern: str | None = None  # "N:M"
    structure: str | None = SelectionSpec.structure
    aggregate: str = SelectionSpec.aggregate
    shuffle: bool = SelectionSpec.shuffle
    invert: bool = SelectionSpec.invert
    include: tuple[str, ...] = SelectionSpec.include
    exclude: tuple[str, ...] = SelectionSpec.exclude

    def spec(self) -> SelectionSpec:
        """Validate the selection options once, at the edge, into a SelectionSpec."""
        nm = parse_pattern(self.pattern) if self.pattern else None
        target = target_density(self.sparsity, self.density, required=nm is None)
        if nm and target is not None and abs(target - nm[0] / nm[1]) > 1e-9:
            raise UsageError(
                f"--pattern {self.pattern} keeps {nm[0]}/{nm[1]}, not density {target:g}", "drop --sparsity"
            )
        spec = SelectionSpec(
            density=nm[0] / nm[1] if nm else target,
            scope=self.scope or ("layer" if self.allocation == "erk" else SelectionSpec.scope),
            allocation=self.allocation,
            min_density=fraction(self.min_density, "--min-density"),
            pattern=nm,
            structure=self.structure,
            aggregate=self.aggregate,
            shuffle=self.shuffle,
            invert=self.invert,
            include=self.include,
            exclude=self.exclude,
        )
        spec.validate()
        return spec


MODEL = ModelOptions()  # the defaults, for the commands' signatures
METHOD = MethodOptions()
SELECTION = SelectionOptions()


# Model-based scoring options: ModelOptions and MethodOptions (`score`, `prune`) -------------

Arch = Annotated[
    Optional[str],
    typer.Option(
        "--arch",
        help="Zoo name, package.module:factory, file.py:factory, a .pt2 archive, or hf:DIR (a Hugging Face "
        "config folder; default for a checkpoint folder with config.json).",
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let a Hugging Face model folder run the Python code it ships (auto_map): only for folders "
        "you trust.",
    ),
]
ArchArgs = Annotated[
    Optional[str], typer.Option("--arch-args", help="JSON keyword arguments for the factory.")
]
Data = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="Calibration data: .npz/.npy/.safetensors/.pt (inputs, or input_ids), .txt/.jsonl text, "
        "random:SHAPE or ones:SHAPE.",
    ),
]
InputShape = Annotated[
    Optional[str],
    typer.Option("--input-shape", help="One example's shape, e.g. 3x32x32 (data-free methods)."),
]
BatchSize = Annotated[
    Optional[int],
    typer.Option("--batch-size", help="Examples per calibration batch (default: 128, or 8 for token data)."),
]
SeqLen = Annotated[
    Optional[int],
    typer.Option(
        "--seq-len",
        min=1,
        metavar="N",
        help="Token windows cut from text: N tokens (default 2048, capped at the model's maximum).",
    ),
]
NumSamples = Annotated[
    Optional[int],
    typer.Option(
        "--num-samples", min=1, metavar="N", help="Token windows or rows drawn from token data (default 128)."
    ),
]
NumBatches = Annotated[int, typer.Option("--num-batches", help="Calibration batches.")]
PerClass = Annotated[
    Optional[int], typer.Option("--per-class", help="Class-balanced: N examples of each class (as GraSP).")
]
InputsKey = Annotated[Optional[str], typer.Option("--inputs-key", help="Array name of the inputs in --data.")]
LabelsKey = Annotated[Optional[str], typer.Option("--labels-key", help="Array name of the labels in --data.")]
Loss = Annotated[
    Optional[choices.Loss],
    typer.Option(
        "--loss", help="Calibration loss (default: lm for token data, else ce with labels, pseudo without)."
    ),
]
ScoreSparsity = Annotated[
    Optional[float],
    typer.Option("--sparsity", "-s", help="Target of iterative methods (synflow, force, ...)."),
]
Iterations = Annotated[
    Optional[int],
    typer.Option("--iterations", help="Steps of iterative methods (SynFlow 100, FORCE 10, SNIP-it's S 5)."),
]
Schedule = Annotated[
    choices.Schedule, typer.Option("--schedule", help="Density schedule of iterative methods.")
]
BnMode = Annotated[
    Optional[choices.BnMode],
    typer.Option("--bn-mode", help="Batch-norm mode while scoring (default: the method's)."),
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="<auto|cpu|cuda|cuda:N>",
        help="Where the model runs: auto picks CUDA when present.",
    ),
]
Dtype = Annotated[
    Optional[choices.ScoreDtype],
    typer.Option(
        "--dtype",
        help="Precision of the forward and backward passes (default: the method's; SynFlow float64).",
    ),
]
Temperature = Annotated[
    Optional[float],
    typer.Option("--temperature", help="GraSP's softmax temperature (default 200)."),
]
Hessian = Annotated[
    Optional[choices.Hessian],
    typer.Option("--hessian", help="OBD's Hessian diagonal: exact (small models), hutchinson or fisher."),
]
HutchinsonSamples = Annotated[
    Optional[int],
    typer.Option("--hutchinson-samples", help="Rademacher vectors for --hessian hutchinson (100)."),
]
ObdFirstOrder = Annotated[
    bool, typer.Option("--obd-first-order", help="OBD at initialisation: −gθ + ½θ²H_jj (signed).")
]
Fisher = Annotated[
    bool, typer.Option("--fisher", help="taylor: mean of per-sample (gθ)² (empirical Fisher).")
]
MaxParams = Annotated[
    Optional[int],
    typer.Option(
        "--max-params", help="Refuse exact (1,000,000) or OBD's exact Hessian (100,000) above this."
    ),
]

Damp = Annotated[
    Optional[float],
    typer.Option("--damp", help="sparsegpt: Hessian dampening, a fraction of its mean diagonal (0.01)."),
]
BlockSize = Annotated[
    Optional[int],
    typer.Option("--block-size", help="sparsegpt: columns solved per block, lazy batched updates (128)."),
]
Sequential = Annotated[
    Optional[bool],
    typer.Option(
        "--sequential/--no-sequential",
        help="wanda, sparsegpt: prune block by block, each block calibrated on the pruned blocks' outputs "
        "(default on a transformer folder), or one-shot on the dense model.",
    ),
]
OffloadDir = Annotated[
    Optional[Path],
    typer.Option("--offload-dir", help="Keep block-by-block activations in this folder, not in memory."),
]
DistTimeout = Annotated[
    float,
    typer.Option(
        "--dist-timeout",
        metavar="SECONDS",
        min=1.0,
        help="Under torchrun or srun: how long a rank waits for the others before it gives up.",
    ),
]


# Selection options: SelectionOptions (`apply`, `prune`) ------------------------------------

OutputFolder = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
Sparsity = Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction to prune.")]
Density = Annotated[Optional[float], typer.Option("--density", "-d", help="Fraction to keep.")]
Scope = Annotated[
    Optional[choices.Scope],
    typer.Option(
        "--scope",
        help="global: one ranking; layer: per tensor; row: per output row "
        "(default: layer with --allocation erk, else global).",
    ),
]
Allocation = Annotated[
    choices.Allocation, typer.Option("--allocation", help="Per-layer densities (erk: layer scope).")
]
MinDensity = Annotated[float, typer.Option("--min-density", help="Floor on every tensor's density.")]
Pattern = Annotated[
    Optional[str], typer.Option("--pattern", help="N:M pattern, e.g. 2:4 (implies the sparsity).")
]
Structure = Annotated[
    Optional[choices.Structure],
    typer.Option("--structure", help="Keep whole filters (output channels) or channels (input channels)."),
]
Aggregate = Annotated[choices.Aggregate, typer.Option("--aggregate", help="Group score for --structure.")]
Shuffle = Annotated[
    bool, typer.Option("--shuffle", help="Permute each layer's mask at random (sanity check).")
]
Invert = Annotated[bool, typer.Option("--invert", help="Keep the lowest scores instead.")]
IsometrySteps = Annotated[
    int,
    typer.Option("--isometry-steps", help="SGD steps of the approximate-isometry fix (Lee et al. 2020)."),
]
IsometryLr = Annotated[
    Optional[float],
    typer.Option("--isometry-lr", help="Learning rate of --isometry-steps (default 0.1)."),
]
MaxShardSize = Annotated[
    Optional[str],
    typer.Option(
        "--max-shard-size",
        metavar="SIZE",
        help="Split the weights into files of at most SIZE (500MB, 2GB, 1GiB or bytes), with an index "
        "(default: shard like the input).",
    ),
]


def shard_size(text: str | None) -> int | None:
    """--max-shard-size in bytes (None: not given)."""
    return None if text is None else byte_size(text, "--max-shard-size")


def scoring_arguments(model: ModelOptions, method: MethodOptions) -> dict[str, Any]:
    """The keyword arguments of `pipelines.score.score` and `pipelines.prune.prune` (all but the
    seed, which both take on its own), from the parsed option groups."""
    return {
        "arch": model.arch,
        "arch_args": _arch_args(model.arch_args),
        "data": model.data,
        "input_shape": _shape(model.input_shape),
        "batch_size": model.batch_size,
        "num_batches": model.num_batches,
        "per_class": model.per_class,
        "inputs_key": model.inputs_key,
        "labels_key": model.labels_key,
        "loss": model.loss,
        "iterations": model.iterations,
        "schedule": model.schedule,
        "temperature": method.temperature,
        "bn_mode": model.bn_mode,
        "device": model.device,
        "dtype": model.dtype,
        "include": model.include,
        "exclude": model.exclude,
        "options": method.given(),
        "trust_remote_code": model.trust_remote_code,
        "seq_len": model.seq_len,
        "num_samples": model.num_samples,
    }


def _arch_args(text: str | None) -> dict[str, Any]:
    """--arch-args JSON; its parser lives with the models, imported only when there is some."""
    if not text:
        return {}
    from prunecli.models import parse_arch_args

    return parse_arch_args(text)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    from prunecli.calibration.data import parse_shape

    return parse_shape(text)
