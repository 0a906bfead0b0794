"""`prunecli score`: per-weight saliency scores into a safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, note

if TYPE_CHECKING:
    from prunecli.pipelines.score import ScoredModel


def score(
    checkpoint: opt.Checkpoint,
    method: Annotated[str, typer.Option("--method", "-m", help="Scoring method (see `prunecli methods`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Scores file to write (.safetensors).")],
    arch: opt.Arch = None,
    arch_args: opt.ArchArgs = None,
    data: opt.Data = None,
    input_shape: opt.InputShape = None,
    batch_size: opt.BatchSize = 128,
    num_batches: opt.NumBatches = 1,
    per_class: opt.PerClass = None,
    inputs_key: opt.InputsKey = None,
    labels_key: opt.LabelsKey = None,
    loss: opt.Loss = None,
    sparsity: Annotated[
        Optional[float],
        typer.Option("--sparsity", "-s", help="Target of iterative methods (synflow, force, ...)."),
    ] = None,
    iterations: opt.Iterations = None,
    schedule: opt.Schedule = "exp",
    temperature: opt.Temperature = 200.0,
    bn_mode: opt.BnMode = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    hessian: opt.Hessian = None,
    hutchinson_samples: opt.HutchinsonSamples = None,
    obd_first_order: opt.ObdFirstOrder = False,
    fisher: opt.Fisher = False,
    max_params: opt.MaxParams = None,
    seed: opt.Seed = 0,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
) -> None:
    """Compute float32 scores (higher = keep) for every prunable tensor.

    Examples:

      prunecli score init.safetensors --method magnitude -o scores.safetensors

      prunecli score init.safetensors -m snip --arch lenet-300-100 --data mnist.npz -o snip.safetensors

      prunecli score init.safetensors -m synflow --arch lenet-5 --sparsity 0.99 -o synflow.safetensors
    """
    from prunecli.scoring import get_method

    chosen = get_method(method)
    request = score_options(
        arch=arch, arch_args=arch_args, data=data, input_shape=input_shape, batch_size=batch_size,
        num_batches=num_batches, per_class=per_class, inputs_key=inputs_key, labels_key=labels_key, loss=loss,
        sparsity=sparsity, iterations=iterations, schedule=schedule, temperature=temperature, bn_mode=bn_mode,
        device=device, dtype=dtype, seed=seed, include=include, exclude=exclude,
        method_options=opt.method_options(hessian, hutchinson_samples, obd_first_order, fisher, max_params),
    )  # fmt: skip
    with RichProgress(quiet) as progress:
        count = compute(checkpoint, chosen, output, request, force, progress, quiet)
    note(f"wrote {output} ({count} tensors, method {chosen.name})", quiet)


SCORE_DEFAULTS: dict[str, object] = {
    "arch": None, "arch_args": None, "data": None, "input_shape": None, "batch_size": 128, "num_batches": 1,
    "per_class": None, "inputs_key": None, "labels_key": None, "loss": None, "sparsity": None,
    "iterations": None, "schedule": "exp", "temperature": 200.0, "bn_mode": None, "device": "auto",
    "dtype": None, "seed": 0, "include": None, "exclude": None, "method_options": {},
}  # fmt: skip


def score_options(**given: object) -> dict[str, object]:
    """The scoring options `compute` reads, defaults filled in (score, prune and demo share it)."""
    unknown = set(given) - set(SCORE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown scoring options: {', '.join(sorted(unknown))}")
    return {**SCORE_DEFAULTS, **given}


def compute(checkpoint: Path, method: object, output: Path, options: dict, force: bool, progress: object,
            quiet: bool) -> int:  # fmt: skip
    """Score with a data-free per-tensor method or a model-based one; returns the tensor count."""
    from prunecli.errors import UsageError
    from prunecli.io.checkpoints import checkpoint_files, open_checkpoint
    from prunecli.io.outputs import existing_inputs, guard_output_file, require_suffix
    from prunecli.io.scores_file import compute_scores, write_scores
    from prunecli.selection.prunable import prunable_names

    require_suffix(output, ".safetensors", "scores file")
    inputs = checkpoint_files(checkpoint) + existing_inputs(options["arch"], options["data"])
    guard_output_file(output, force, inputs)  # early, before minutes of scoring
    include, exclude = tuple(options["include"] or ()), tuple(options["exclude"] or ())
    if not method.needs_model:
        if options["sparsity"] is not None:
            raise UsageError(f"{method.name} takes no --sparsity at score time", "give the sparsity to apply")
        with open_checkpoint(checkpoint) as ckpt:
            for line in ckpt.notes:
                note(line, quiet)
            names = prunable_names(ckpt.tensors, include, exclude)
            progress.stage(f"scoring ({method.name})", len(names))
            compute_scores(
                ckpt, names, method, output, seed=options["seed"], force=force, on_tensor=progress.advance
            )
        return len(names)
    scored = run_model_method(checkpoint, method, options, progress)
    for line in scored.notes:
        note(line, quiet)
    write_scores(output, scored.entries, scored.scores, scored.metadata, force, inputs)
    return len(scored.entries)


def run_model_method(checkpoint: Path, method: object, options: dict, progress: object) -> ScoredModel:
    """Build the ScoreRequest from CLI options (validated here, once) and run it."""
    from prunecli.calibration.data import parse_shape
    from prunecli.errors import UsageError
    from prunecli.models import parse_arch_args
    from prunecli.pipelines.score import ScoreRequest, run_method

    if options["arch"] is None:
        raise UsageError(f"{method.name} needs a model", "add --arch (e.g. --arch lenet-300-100)")
    request = ScoreRequest(
        checkpoint=checkpoint,
        method=method,
        arch=options["arch"],
        arch_args=parse_arch_args(options["arch_args"]),
        data=options["data"],
        input_shape=parse_shape(options["input_shape"]) if options["input_shape"] else None,
        batch_size=options["batch_size"],
        num_batches=options["num_batches"],
        per_class=options["per_class"],
        inputs_key=options["inputs_key"],
        labels_key=options["labels_key"],
        loss=options["loss"],
        density=None
        if options["sparsity"] is None
        else 1.0 - opt.fraction(options["sparsity"], "--sparsity"),
        iterations=options["iterations"],
        schedule=options["schedule"],
        temperature=options["temperature"],
        bn_mode=options["bn_mode"],
        device=options["device"],
        dtype=options["dtype"],
        seed=options["seed"],
        include=tuple(options["include"] or ()),
        exclude=tuple(options["exclude"] or ()),
        options=dict(options["method_options"]),
    )
    return run_method(request, progress)
