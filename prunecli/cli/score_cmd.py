"""`prunecli score`: per-weight saliency scores into a safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, note
from prunecli.cli.parallel import data_parallel
from prunecli.distributed import DEFAULT_TIMEOUT_S


def score(
    checkpoint: opt.Checkpoint,
    method: opt.Method,
    output: Annotated[Path, typer.Option("--output", "-o", help="Scores file to write (.safetensors).")],
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
    damp: opt.Damp = None,
    block_size: opt.BlockSize = None,
    seed: opt.Seed = opt.DEFAULT_SEED,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
    dist_timeout: opt.DistTimeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Compute float32 scores (higher = keep) for every prunable tensor.

    Examples:

      prunecli score init.safetensors --method magnitude -o scores.safetensors

      prunecli score init.safetensors -m snip --arch lenet-300-100 --data mnist.npz -o snip.safetensors

      prunecli score init.safetensors -m synflow --arch lenet-5 --sparsity 0.99 -o synflow.safetensors
    """
    from prunecli.pipelines.score import score as score_checkpoint

    given = locals()
    model, method_options = opt.gather(opt.ModelOptions, given), opt.gather(opt.MethodOptions, given)
    with data_parallel(model, dist_timeout) as (model, speaks), RichProgress(quiet or not speaks) as progress:
        written = score_checkpoint(
            checkpoint, method, output, sparsity=sparsity, seed=model.seed, force=force, progress=progress,
            **opt.scoring_arguments(model, method_options),
        )  # fmt: skip
    if not speaks:
        return
    for line in written.notes:
        note(line, quiet)
    note(f"wrote {output} ({len(written.names)} tensors, method {written.metadata['method']})", quiet)
