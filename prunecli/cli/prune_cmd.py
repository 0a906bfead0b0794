"""`prunecli prune`: `score` and `apply` in one run, with the same flags."""

from __future__ import annotations

import shutil
from typing import Annotated

import typer

from prunecli.cli import options as opt
from prunecli.cli.apply_cmd import run_apply, selection_spec
from prunecli.cli.output import RichProgress
from prunecli.cli.score_cmd import compute, score_options


def prune(
    checkpoint: opt.Checkpoint,
    method: Annotated[str, typer.Option("--method", "-m", help="Scoring method (see `prunecli methods`).")],
    output: opt.OutputFolder,
    sparsity: opt.Sparsity = None,
    density: opt.Density = None,
    scope: opt.Scope = None,
    allocation: opt.Allocation = "uniform",
    min_density: opt.MinDensity = 0.0,
    pattern: opt.Pattern = None,
    structure: opt.Structure = None,
    aggregate: opt.Aggregate = "l1",
    shuffle: opt.Shuffle = False,
    invert: opt.Invert = False,
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
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Score and apply in one run: the scores live in a temporary file that is removed after.

    Examples:

      prunecli prune init.safetensors -m snip --arch lenet-300-100 --data mnist.npz --sparsity 0.95 -o out/

      prunecli prune init.safetensors -m synflow --arch resnet20 --sparsity 0.98 -o out/
    """
    from prunecli.io.checkpoints import checkpoint_files
    from prunecli.io.outputs import check_output_folder, create_temp_dir, existing_inputs
    from prunecli.scoring import get_method

    chosen = get_method(method)
    inputs = checkpoint_files(checkpoint) + existing_inputs(arch, data)
    check_output_folder(output, force, inputs)  # early, before minutes of scoring
    spec = selection_spec(
        sparsity, density, scope, allocation, min_density, pattern, shuffle, invert, include, exclude,
        structure=structure, aggregate=aggregate,
    )  # fmt: skip
    target = spec.density
    options = score_options(
        arch=arch, arch_args=arch_args, data=data, input_shape=input_shape, batch_size=batch_size,
        num_batches=num_batches, per_class=per_class, inputs_key=inputs_key, labels_key=labels_key, loss=loss,
        sparsity=1.0 - target if chosen.iterative else None, iterations=iterations,
        schedule=schedule, temperature=temperature, bn_mode=bn_mode, device=device, dtype=dtype, seed=seed,
        include=include, exclude=exclude,
        method_options=opt.method_options(hessian, hutchinson_samples, obd_first_order, fisher, max_params),
    )  # fmt: skip
    tmp = create_temp_dir(output)  # beside the output: removed below, or swept by a later run
    try:
        scores = tmp / "scores.safetensors"
        with RichProgress(quiet) as progress:
            compute(checkpoint, chosen, scores, options, False, progress, quiet)
        run_apply(checkpoint, output, spec, scores=scores, seed=seed, force=force, json_out=json_out,
                  quiet=quiet, scores_label=f"(computed by prune: {chosen.name})", inputs=inputs)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
