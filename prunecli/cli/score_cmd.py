"""`prunecli score`: per-weight saliency scores into a safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, note

if TYPE_CHECKING:
    from prunecli.pipelines.score import ScoredModel
    from prunecli.progress import Progress
    from prunecli.scoring.registry import Method


def score(
    checkpoint: opt.Checkpoint,
    method: opt.Method,
    output: Annotated[Path, typer.Option("--output", "-o", help="Scores file to write (.safetensors).")],
    arch: opt.Arch = None,
    arch_args: opt.ArchArgs = None,
    data: opt.Data = None,
    input_shape: opt.InputShape = None,
    batch_size: opt.BatchSize = opt.MODEL.batch_size,
    num_batches: opt.NumBatches = opt.MODEL.num_batches,
    per_class: opt.PerClass = None,
    inputs_key: opt.InputsKey = None,
    labels_key: opt.LabelsKey = None,
    loss: opt.Loss = None,
    sparsity: opt.ScoreSparsity = None,
    iterations: opt.Iterations = None,
    schedule: opt.Schedule = opt.MODEL.schedule,
    temperature: opt.Temperature = opt.METHOD.temperature,
    bn_mode: opt.BnMode = None,
    device: opt.Device = opt.MODEL.device,
    dtype: opt.Dtype = None,
    hessian: opt.Hessian = None,
    hutchinson_samples: opt.HutchinsonSamples = None,
    obd_first_order: opt.ObdFirstOrder = False,
    fisher: opt.Fisher = False,
    max_params: opt.MaxParams = None,
    seed: opt.Seed = opt.DEFAULT_SEED,
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

    given = locals()
    model, method_options = opt.gather(opt.ModelOptions, given), opt.gather(opt.MethodOptions, given)
    chosen = get_method(method)
    with RichProgress(quiet) as progress:
        count = compute(checkpoint, chosen, output, model=model, method_options=method_options,
                        sparsity=sparsity, force=force, progress=progress, quiet=quiet)  # fmt: skip
    note(f"wrote {output} ({count} tensors, method {chosen.name})", quiet)


def compute(
    checkpoint: Path,
    method: Method,
    output: Path,
    *,
    model: opt.ModelOptions,
    method_options: opt.MethodOptions = opt.METHOD,
    sparsity: float | None = None,
    force: bool,
    progress: Progress,
    quiet: bool,
) -> int:
    """Score with a data-free per-tensor method or a model-based one; returns the tensor count.

    `sparsity` is the target of iterative methods; `score`, `prune` and `demo` share this.
    """
    from prunecli.errors import UsageError
    from prunecli.io.checkpoints import checkpoint_files, open_checkpoint
    from prunecli.io.outputs import existing_inputs, guard_output_file, require_suffix
    from prunecli.io.scores_file import compute_scores, write_scores
    from prunecli.selection.prunable import prunable_names

    require_suffix(output, ".safetensors", "scores file")
    inputs = checkpoint_files(checkpoint) + existing_inputs(model.arch, model.data)
    guard_output_file(output, force, inputs)  # early, before minutes of scoring
    if not method.needs_model:
        if sparsity is not None:
            raise UsageError(f"{method.name} takes no --sparsity at score time", "give the sparsity to apply")
        with open_checkpoint(checkpoint) as ckpt:
            for line in ckpt.notes:
                note(line, quiet)
            names = prunable_names(ckpt.tensors, model.include, model.exclude)
            progress.stage(f"scoring ({method.name})", len(names))
            compute_scores(
                ckpt, names, method, output, seed=model.seed, force=force, on_tensor=progress.advance
            )
        return len(names)
    scored = run_model_method(checkpoint, method, model, method_options, sparsity, progress)
    for line in scored.notes:
        note(line, quiet)
    write_scores(output, scored.entries, scored.scores, scored.metadata, force, inputs)
    return len(scored.entries)


def run_model_method(
    checkpoint: Path,
    method: Method,
    model: opt.ModelOptions,
    method_options: opt.MethodOptions,
    sparsity: float | None,
    progress: Progress,
) -> ScoredModel:
    """Build the ScoreRequest from the option groups (validated here, once) and run it."""
    from prunecli.calibration.data import parse_shape
    from prunecli.errors import UsageError
    from prunecli.models import parse_arch_args
    from prunecli.pipelines.score import ScoreRequest, run_method

    if model.arch is None:
        raise UsageError(f"{method.name} needs a model", "add --arch (e.g. --arch lenet-300-100)")
    request = ScoreRequest(
        checkpoint=checkpoint,
        method=method,
        arch=model.arch,
        arch_args=parse_arch_args(model.arch_args),
        data=model.data,
        input_shape=parse_shape(model.input_shape) if model.input_shape else None,
        batch_size=model.batch_size,
        num_batches=model.num_batches,
        per_class=model.per_class,
        inputs_key=model.inputs_key,
        labels_key=model.labels_key,
        loss=model.loss,
        density=None if sparsity is None else 1.0 - opt.fraction(sparsity, "--sparsity"),
        iterations=model.iterations,
        schedule=model.schedule,
        temperature=method_options.temperature,
        bn_mode=model.bn_mode,
        device=model.device,
        dtype=model.dtype,
        seed=model.seed,
        include=model.include,
        exclude=model.exclude,
        options=method_options.given(),
    )
    return run_method(request, progress)
