"""Shared option aliases and the one place that validates user-supplied numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.errors import UsageError

Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr.")]
MAX_SEED = 2**64 - 1  # the widest seed every generator used here (torch, numpy) accepts
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


def fraction(value: float, flag: str) -> float:
    """Validate a fraction in [0, 1] once, at the edge."""
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{flag} {value} is outside [0, 1]", f"give {flag} as a fraction, e.g. 0.9")
    return value


def target_density(sparsity: float | None, density: float | None, required: bool = True) -> float | None:
    """The density from exactly one of --sparsity / --density."""
    if sparsity is not None and density is not None:
        raise UsageError("--sparsity and --density were both given", "give only one of them")
    if sparsity is not None:
        return 1.0 - fraction(sparsity, "--sparsity")
    if density is not None:
        return fraction(density, "--density")
    if required:
        raise UsageError("no target given", "add --sparsity S (e.g. 0.9) or --density D")
    return None


def parse_pattern(text: str) -> tuple[int, int]:
    """`N:M` -> (N, M) with 0 < N <= M."""
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"--pattern {text!r} is not N:M", "write it like 2:4") from None
    if not 0 < n <= m:
        raise UsageError(f"--pattern {text!r} needs 0 < N <= M", "write it like 2:4") from None
    return n, m


# Options of model-based scoring, shared by `score` and `prune`.
Arch = Annotated[
    Optional[str],
    typer.Option("--arch", help="Zoo name, package.module:factory, file.py:factory, or a .pt2 archive."),
]
ArchArgs = Annotated[
    Optional[str], typer.Option("--arch-args", help="JSON keyword arguments for the factory.")
]
Data = Annotated[
    Optional[str],
    typer.Option("--data", help="Calibration data: .npz/.npy/.safetensors/.pt, random:SHAPE or ones:SHAPE."),
]
InputShape = Annotated[
    Optional[str],
    typer.Option("--input-shape", help="One example's shape, e.g. 3x32x32 (data-free methods)."),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Examples per calibration batch.")]
NumBatches = Annotated[int, typer.Option("--num-batches", help="Calibration batches.")]
PerClass = Annotated[
    Optional[int], typer.Option("--per-class", help="Class-balanced: N examples of each class (as GraSP).")
]
InputsKey = Annotated[Optional[str], typer.Option("--inputs-key", help="Array name of the inputs in --data.")]
LabelsKey = Annotated[Optional[str], typer.Option("--labels-key", help="Array name of the labels in --data.")]
Loss = Annotated[
    Optional[str],
    typer.Option("--loss", help="ce (default with labels), pseudo (default without), uniform or nll."),
]
Iterations = Annotated[
    Optional[int],
    typer.Option("--iterations", help="Steps of iterative methods (SynFlow 100, FORCE 10, SNIP-it's S 5)."),
]
Schedule = Annotated[
    str, typer.Option("--schedule", help="Density schedule of iterative methods: exp or linear.")
]
Temperature = Annotated[float, typer.Option("--temperature", help="GraSP's softmax temperature.")]
BnMode = Annotated[
    Optional[str],
    typer.Option("--bn-mode", help="Batch-norm mode while scoring: eval or train (default: the method's)."),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[
    Optional[str], typer.Option("--dtype", help="Scoring precision: float32 or float64 (SynFlow default).")
]
Hessian = Annotated[
    Optional[str],
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


def method_options(
    hessian: str | None,
    hutchinson_samples: int | None,
    obd_first_order: bool,
    fisher: bool,
    max_params: int | None,
) -> dict[str, object]:
    """The method-specific options that were given (the methods supply their own defaults)."""
    given = {"hessian": hessian, "hutchinson_samples": hutchinson_samples, "max_params": max_params}
    options: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if obd_first_order:
        options["obd_first_order"] = True
    if fisher:
        options["fisher"] = True
    return options


# Selection options, shared by `apply` and `prune`.
OutputFolder = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
Sparsity = Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction to prune.")]
Density = Annotated[Optional[float], typer.Option("--density", "-d", help="Fraction to keep.")]
Scope = Annotated[
    Optional[str],
    typer.Option("--scope", help="global (one ranking), layer (per tensor) or row (per output row)."),
]
Allocation = Annotated[
    str, typer.Option("--allocation", help="Per-layer densities: uniform or erk (layer scope).")
]
MinDensity = Annotated[float, typer.Option("--min-density", help="Floor on every tensor's density.")]
Pattern = Annotated[
    Optional[str], typer.Option("--pattern", help="N:M pattern, e.g. 2:4 (implies the sparsity).")
]
Structure = Annotated[
    Optional[str],
    typer.Option("--structure", help="Keep whole filters (output channels) or channels (input channels)."),
]
Aggregate = Annotated[
    str, typer.Option("--aggregate", help="Group score for --structure: l1, l2, mean or max.")
]
Shuffle = Annotated[
    bool, typer.Option("--shuffle", help="Permute each layer's mask at random (sanity check).")
]
Invert = Annotated[bool, typer.Option("--invert", help="Keep the lowest scores instead.")]
