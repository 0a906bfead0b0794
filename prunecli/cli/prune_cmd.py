"""`prunecli prune`: `score` and `apply` in one run, with the same flags."""

from __future__ import annotations

from prunecli.cli import options as opt
from prunecli.cli import values
from prunecli.cli.output import RichProgress, report_applied
from prunecli.cli.parallel import data_parallel
from prunecli.distributed import DEFAULT_TIMEOUT_S


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
    isometry_steps: opt.IsometrySteps = 0,
    isometry_lr: opt.IsometryLr = None,
    max_shard_size: opt.MaxShardSize = None,
    arch: opt.Arch = None,
    arch_args: opt.ArchArgs = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    data: opt.Data = None,
    input_shape: opt.InputShape = None,
    batch_size: opt.BatchSize = opt.MODEL.batch_size,
    num_batches: opt.NumBatches = opt.MODEL.num_batches,
    seq_len: opt.SeqLen = opt.MODEL.seq_len,
    num_samples: opt.NumSamples = opt.MODEL.num_samples,
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
    damp: opt.Damp = None,
    block_size: opt.BlockSize = None,
    sequential: opt.Sequential = None,
    offload_dir: opt.OffloadDir = None,
    seed: opt.Seed = opt.DEFAULT_SEED,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    force: opt.Force = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    dist_timeout: opt.DistTimeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Score and apply in one run: the scores stay in memory, no scores file is written.

    Examples:

      prunecli prune init.safetensors -m snip --arch lenet-300-100 --data mnist.npz --sparsity 0.95 -o out/

      prunecli prune init.safetensors -m synflow --arch resnet20 --sparsity 0.98 -o out/

      prunecli prune llama/ -m wanda --data c4.jsonl --seq-len 2048 --pattern 2:4 --max-shard-size 5GB -o out/
    """
    from prunecli.pipelines.prune import prune as prune_checkpoint

    given = locals()
    model, method_options = opt.gather(opt.ModelOptions, given), opt.gather(opt.MethodOptions, given)
    spec = opt.gather(opt.SelectionOptions, given).spec()
    with data_parallel(model, dist_timeout) as (model, speaks), RichProgress(quiet or not speaks) as progress:
        applied = prune_checkpoint(
            checkpoint, output, spec, method, seed=model.seed, force=force, progress=progress,
            isometry=values.isometry(isometry_steps, isometry_lr),
            max_shard_size=opt.shard_size(max_shard_size), sequential=sequential, offload_dir=offload_dir,
            **opt.scoring_arguments(model, method_options),
        )  # fmt: skip
    if speaks:
        report_applied(applied, output, json_out=json_out, quiet=quiet)
