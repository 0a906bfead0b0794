"""`prunecli prune`: `score` and `apply` in one run, with the same flags."""

from __future__ import annotations

import shutil

from prunecli.cli import options as opt
from prunecli.cli.apply_cmd import run_apply
from prunecli.cli.output import RichProgress
from prunecli.cli.score_cmd import compute


def prune(
    checkpoint: opt.Checkpoint,
    method: opt.Method,
    output: opt.OutputFolder,
    sparsity: opt.Sparsity = None,
    density: opt.Density = None,
    scope: opt.Scope = None,
    allocation: opt.Allocation = opt.SELECTION.allocation,
    min_density: opt.MinDensity = opt.SELECTION.min_density,
    pattern: opt.Pattern = None,
    structure: opt.Structure = None,
    aggregate: opt.Aggregate = opt.SELECTION.aggregate,
    shuffle: opt.Shuffle = False,
    invert: opt.Invert = False,
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

    given = locals()
    model, method_options = opt.gather(opt.ModelOptions, given), opt.gather(opt.MethodOptions, given)
    selection = opt.gather(opt.SelectionOptions, given)
    chosen = get_method(method)
    inputs = checkpoint_files(checkpoint) + existing_inputs(model.arch, model.data)
    check_output_folder(output, force, inputs)  # early, before minutes of scoring
    spec = selection.spec()
    tmp = create_temp_dir(output)  # beside the output: removed below, or swept by a later run
    try:
        scores = tmp / "scores.safetensors"
        with RichProgress(quiet) as progress:
            compute(checkpoint, chosen, scores, model=model, method_options=method_options,
                    sparsity=1.0 - spec.density if chosen.iterative else None, force=False,
                    progress=progress, quiet=quiet)  # fmt: skip
        run_apply(checkpoint, output, spec, scores=scores, seed=model.seed, force=force, json_out=json_out,
                  quiet=quiet, scores_label=f"(computed by prune: {chosen.name})", inputs=inputs)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
