"""Scoring end to end: checkpoint (+ architecture + data) -> float32 scores, higher = keep.

`score` is the one call behind `prunecli score`. A per-tensor method (magnitude, random, LAMP)
scores the checkpoint tensor by tensor; a model-based one (`Method.needs_model`) gets a live
model: built from its spec, loaded from the checkpoint, moved with its batches to the device,
in the method's batch-norm mode (`run_method`). Either way the scores stream out one tensor at a
time (`scored`), into a file here or into memory for `prune`. The path is picked from the
method's declarations (`prunecli.scoring.registry.Method`), never from its name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli import __version__
from prunecli.errors import ScoreError, UsageError
from prunecli.io.scores_file import SCORES_FORMAT
from prunecli.pipelines.loading import (
    calibration_of,
    check_fit,
    input_shape_of,
    load_model,
    resolve_device,
)
from prunecli.progress import NoProgress, Progress
from prunecli.scoring.options import MethodOptions, build_options, check_keys
from prunecli.scoring.registry import Method, all_methods, get_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import ScoreResult
    from prunecli.calibration.data import Calibration
    from prunecli.io.checkpoints import Checkpoint

COMPUTE_DTYPES = ("float32", "float64", "bfloat16", "float16")  # `dtype`: precision of the passes

__all__ = ["ScoreRequest", "ScoredModel", "ScoresWritten", "resolve_device", "run_method", "score", "scored"]


@dataclass
class ScoreRequest:
    """Everything a method needs; see `prunecli score --help`.

    `iterations`, `schedule` and `temperature` go to the methods that declare them (None: the
    method's default); `options` holds method-specific options ({"hessian": "fisher"}), refused
    by methods that do not take them.
    """

    checkpoint: Path
    method: Method
    arch: str | None
    arch_args: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    input_shape: tuple[int, ...] | None = None
    batch_size: int | None = None  # None: the data's default (128 examples, 8 token windows)
    num_batches: int = 1
    per_class: int | None = None
    inputs_key: str | None = None
    labels_key: str | None = None
    loss: str | None = None
    density: float | None = None
    iterations: int | None = None
    schedule: str | None = "exp"
    temperature: float | None = None  # None: GraSP's own default
    bn_mode: str | None = None
    device: str = "auto"
    dtype: str | None = None
    seed: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # method-specific, see Method.options
    trust_remote_code: bool = False  # run code shipped with a Hugging Face model folder
    seq_len: int | None = None  # token windows cut from text (None: 2048, capped at the model's)
    num_samples: int | None = None  # token windows or rows drawn (None: 128)
    sequential: bool | None = None  # layer-by-layer methods: block by block (None: yes, on a transformer)
    offload_dir: Path | None = None  # where block-by-block activations wait (None: in memory)


@dataclass
class ScoredModel:
    """A method's float32 scores as a stream (name, array), with what the file needs."""

    scores: Iterator[tuple[str, np.ndarray]]
    entries: list[tuple[str, tuple[int, ...]]]  # names and shapes, in the stream's order
    metadata: dict[str, str]
    notes: list[str]


@dataclass
class ScoresWritten:
    """What `score` wrote: the file, its string metadata, the scored tensors and notes for the user."""

    path: Path
    metadata: dict[str, str]
    names: list[str]
    notes: list[str]


def score(
    checkpoint: Path | str,
    method: str | Method,
    output: Path | str,
    *,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    data: str | None = None,
    input_shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    num_batches: int = 1,
    per_class: int | None = None,
    inputs_key: str | None = None,
    labels_key: str | None = None,
    loss: str | None = None,
    sparsity: float | None = None,
    iterations: int | None = None,
    schedule: str | None = None,
    temperature: float | None = None,
    bn_mode: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    seed: int = 0,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    seq_len: int | None = None,
    num_samples: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ScoresWritten:
    """Score every prunable tensor of `checkpoint` with `method` and write the scores file.

    Args:
        method: a registered name ("snip") or a `Method`.
        output: the scores file, ending in .safetensors; refused if it exists, unless `force`.
        arch, arch_args, data, input_shape, batch_size, num_batches, per_class, inputs_key,
            labels_key, loss, bn_mode, device, dtype: the model and data of a model-based
            method (see `prunecli score --help`); None means the method's default.
        sparsity: the target of iterative methods (refused by the others).
        iterations, schedule, temperature: for the methods that declare them; None: default.
        options: method-specific options, e.g. {"hessian": "hutchinson"} for OBD.
        trust_remote_code: let a Hugging Face model folder run the code it ships (`auto_map`).
        seq_len, num_samples: token calibration: the window length cut from text (None: 2048,
            capped at the model's maximum) and how many windows or rows are drawn (None: 128).
        include, exclude: globs that add or remove prunable tensors.
        progress: reports stages and steps (`prunecli.progress.Progress`); silent by default.

    Returns:
        The path, the metadata written into the file, the scored names, and notes for the
        user (e.g. a stripped `module.` prefix).

    Example:
        >>> from prunecli.pipelines.score import score
        >>> written = score("init.safetensors", "snip", "snip.safetensors",
        ...                 arch="lenet-300-100", data="random:1x28x28")
        >>> written.metadata["method"]
        'snip'
    """
    from prunecli.distributed import all_done, is_main
    from prunecli.io.checkpoints import checkpoint_files
    from prunecli.io.outputs import existing_inputs, guard_output_file, require_suffix
    from prunecli.io.scores_file import write_scores

    output = Path(output)
    request = score_request(
        checkpoint, method, arch=arch, arch_args=arch_args, data=data, input_shape=input_shape,
        batch_size=batch_size, num_batches=num_batches, per_class=per_class, inputs_key=inputs_key,
        labels_key=labels_key, loss=loss, sparsity=sparsity, iterations=iterations, schedule=schedule,
        temperature=temperature, bn_mode=bn_mode, device=device, dtype=dtype, seed=seed,
        include=include, exclude=exclude, options=options, trust_remote_code=trust_remote_code,
        seq_len=seq_len, num_samples=num_samples,
    )  # fmt: skip
    require_suffix(output, ".safetensors", "scores file")
    inputs = checkpoint_files(request.checkpoint) + existing_inputs(arch, data)
    guard_output_file(output, force, inputs)  # early, before minutes of scoring
    with scored(request, progress) as result:
        all_done()
        if is_main():  # under torchrun every rank scores, and rank 0 alone writes
            write_scores(output, result.entries, result.scores, result.metadata, force, inputs)
    return ScoresWritten(output, result.metadata, [n for n, _ in result.entries], result.notes)


def score_request(
    checkpoint: Path | str,
    method: str | Method,
    *,
    arch: str | None = None,
    sparsity: float | None = None,
    arch_args: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> ScoreRequest:
    """The ScoreRequest of `score`'s arguments (`settings`: the ScoreRequest fields by name)."""
    chosen = get_method(method) if isinstance(method, str) else method
    if arch is None and chosen.needs_model:  # a Hugging Face model folder describes its own architecture
        from prunecli.models.hf import HF_PREFIX, config_folder

        folder = config_folder(Path(checkpoint))
        arch = None if folder is None else f"{HF_PREFIX}{folder}"
    if sparsity is not None and chosen.needs_model and not 0.0 <= sparsity <= 1.0:
        raise UsageError(
            f"`sparsity` {sparsity} is outside [0, 1]", "give `sparsity` as a fraction, e.g. 0.9",
            option="sparsity", value=sparsity, bounds=(0.0, 1.0),
        )  # fmt: skip
    return ScoreRequest(
        checkpoint=Path(checkpoint),
        method=chosen,
        arch=arch,
        arch_args=dict(arch_args or {}),
        input_shape=None if input_shape is None else tuple(input_shape),
        density=None if sparsity is None else 1.0 - sparsity,
        include=tuple(include),
        exclude=tuple(exclude),
        options=dict(options or {}),
        **settings,
    )


@contextmanager
def scored(req: ScoreRequest, progress: Progress | None = None) -> Iterator[ScoredModel]:
    """The method's scores as a stream, by the path its declarations pick.

    A per-tensor method streams from the open checkpoint, so the stream is valid inside the
    block only; a model-based method runs first (`run_method`).
    """
    progress = progress or NoProgress()
    if req.method.needs_model:
        yield run_method(req, progress)
        return
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.selection.prunable import prunable_names

    if req.density is not None:
        raise UsageError(f"{req.method.name} takes no `sparsity` at score time", "give the sparsity to apply",
                         option="sparsity", value=round(1.0 - req.density, 12))  # fmt: skip
    options = build_options(req.method, req.options, {}, all_methods())
    with open_checkpoint(req.checkpoint) as ckpt:
        names = prunable_names(ckpt.tensors, req.include, req.exclude, ckpt.config_folder is not None)
        metadata = {
            "format": SCORES_FORMAT,
            "method": req.method.name,
            "params": json.dumps(options.params()),
            "seed": str(req.seed),
            "source_sha256": ckpt.sha256(),
            "prunecli_version": __version__,
        }
        progress.stage(f"scoring ({req.method.name})", len(names))
        stream = tensor_scores(ckpt, names, req.method, req.seed, progress)
        entries = [(n, ckpt.tensors[n].shape) for n in names]
        yield ScoredModel(stream, entries, metadata, list(ckpt.notes))


def tensor_scores(
    ckpt: Checkpoint, names: list[str], method: Method, seed: int, progress: Progress
) -> Iterator[tuple[str, np.ndarray]]:
    """Float32 scores of a per-tensor method, one tensor at a time; NaN or Inf is a ScoreError."""
    from prunecli.io.dtypes import finite_weights

    for name in names:
        weights = finite_weights(ckpt.read(name), ckpt.tensors[name].dtype, name)
        scores = method.scorer(name, weights, seed, None)
        if not np.isfinite(scores).all():
            raise ScoreError(
                f"scores of {name} contain NaN or infinite values", "check the checkpoint for NaN/Inf weights"
            )
        yield name, scores.astype(np.float32, copy=False)
        progress.advance()


def _validate(req: ScoreRequest) -> MethodOptions:
    """Check a model-based request once, at the edge; return the method's typed options."""
    m = req.method
    if req.arch is None:
        raise UsageError(f"{m.name} needs a model", "add `arch` (e.g. `arch` lenet-300-100)", option="arch")
    check_keys(m, req.options, all_methods())
    if m.returns == "weights":
        raise UsageError(
            f"{m.name} updates the weights it keeps, so its result is weights, not scores",
            f"run it with prunecli prune -m {m.name}", option="method", value=m.name,
        )  # fmt: skip
    if req.sequential:
        raise UsageError(
            "scores are computed on the dense model; block-by-block pruning decides masks while calibrating",
            "run it with prunecli prune", option="sequential", value=True,
        )  # fmt: skip
    if m.data == "batches" and req.data is None:
        raise UsageError(f"{m.name} needs calibration data", "add `data` FILE (or `data` random:SHAPE)",
                         option="data")  # fmt: skip
    if m.iterative and req.density is None:
        raise UsageError(f"{m.name} is iterative and needs the target at score time", "add `sparsity` S",
                         option="sparsity")  # fmt: skip
    if not m.iterative and req.density is not None:
        raise UsageError(f"{m.name} takes no `sparsity` at score time", "give the sparsity to apply instead",
                         option="sparsity", value=round(1.0 - req.density, 12))  # fmt: skip
    if req.iterations is not None and req.iterations < 1:
        raise UsageError(f"`iterations` {req.iterations} must be at least 1", "use e.g. `iterations` 100",
                         option="iterations", value=req.iterations, bounds=(1, math.inf))  # fmt: skip
    if req.bn_mode not in (None, "eval", "train"):
        raise UsageError(f"unknown `bn_mode` {req.bn_mode!r}", "use eval or train",
                         option="bn_mode", value=req.bn_mode, allowed=("eval", "train"))  # fmt: skip
    if req.dtype not in (None, *COMPUTE_DTYPES):
        raise UsageError(f"unknown `dtype` {req.dtype!r}", f"use one of {', '.join(COMPUTE_DTYPES)}",
                         option="dtype", value=req.dtype, allowed=COMPUTE_DTYPES)  # fmt: skip
    if req.temperature is not None and req.temperature <= 0:
        raise UsageError(f"`temperature` {req.temperature} must be positive", "GraSP uses 200",
                         option="temperature", value=req.temperature)  # fmt: skip
    if (req.batch_size is not None and req.batch_size < 1) or req.num_batches < 1:
        key = "batch_size" if req.batch_size is not None and req.batch_size < 1 else "num_batches"
        value = req.batch_size if key == "batch_size" else req.num_batches
        raise UsageError("`batch_size` and `num_batches` must be at least 1", "e.g. `batch_size` 100",
                         option=key, value=value, bounds=(1, math.inf))  # fmt: skip
    shared = {"iterations": req.iterations, "schedule": req.schedule, "temperature": req.temperature}
    return build_options(m, req.options, shared, all_methods())


def run_method(req: ScoreRequest, progress: Progress | None = None) -> ScoredModel:
    """Score with a model-based method; the scores stream out of `ScoredModel.scores`."""
    import torch

    from prunecli.calibration.context import ScoringContext
    from prunecli.calibration.data import check_labels
    from prunecli.calibration.losses import check_loss, default_loss
    from prunecli.distributed import world_size
    from prunecli.models.hf import is_hf_spec

    method = req.method
    options = _validate(req)
    device = resolve_device(req.device)
    precision = req.dtype or method.default_dtype or "float32"
    dtype = getattr(torch, precision)
    progress = progress or NoProgress()
    model, names, notes = load_model(req, dtype, progress)
    # a transformers model is built in `dtype`, and keeps the buffers it wants in float32
    model.to(device=device) if is_hf_spec(req.arch) else model.to(device=device, dtype=dtype)
    model.requires_grad_(False)
    calibration = calibration_of(req, model)
    tokens = (
        calibration is not None
        and calibration.num_classes is None
        and bool(calibration.batches)
        and (not calibration.batches[0][0].is_floating_point())
    )
    batches = []
    if calibration is not None:
        batches = [
            (_to(x, device, dtype), None if y is None else y.to(device)) for x, y in calibration.batches
        ]
    shape = input_shape_of(req, calibration)
    probe = batches[0][0] if batches else torch.ones((1, *shape), dtype=dtype, device=device)
    outputs = check_fit(model, probe)
    if calibration is not None and not tokens:
        check_labels(calibration, outputs)
    has_labels = bool(batches) and batches[0][1] is not None
    loss = req.loss or default_loss(has_labels, tokens)
    if method.data == "batches":
        check_loss(loss, has_labels)
    bn_mode = req.bn_mode or method.bn_mode
    model.train(bn_mode == "train")
    ctx = ScoringContext(
        model=model, names=names, batches=batches, loss=loss, input_shape=shape, density=req.density,
        seed=req.seed, progress=progress,
    )  # fmt: skip
    result = method.model_scorer(ctx, options)
    if method.returns == "masks" and result.masks is None:
        raise ScoreError(f"{method.name} returns masks, but its scorer gave none", "fix the method's scorer")
    params: dict[str, Any] = {"bn_mode": bn_mode, "dtype": precision, "device": device.type}
    if method.data == "batches" and method.labels != "unused":
        params["loss"] = loss
    params.update(options.params())
    if method.iterative:
        params["sparsity"] = round(1 - req.density, 12)
    if req.arch_args:
        params["arch_args"] = req.arch_args
    if world_size() > 1:
        params["world_size"] = world_size()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in result.scores}
    entries = [(n, shapes[n]) for n in result.scores]
    scores = float32_scores(result, masks=method.returns == "masks")
    return ScoredModel(scores, entries, _metadata(req, params, calibration), notes)


def _to(inputs: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Inputs on the device; float inputs in the compute dtype, token ids left integer."""
    return inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)


def _metadata(req: ScoreRequest, params: dict[str, Any], calibration: Calibration | None) -> dict[str, str]:
    """String metadata of a scores file: method, options, provenance of model and data."""
    from prunecli.io.checkpoints import checkpoint_files, sha256_of_files

    metadata = {
        "format": SCORES_FORMAT,
        "method": req.method.name,
        "params": json.dumps(params, sort_keys=True),
        "seed": str(req.seed),
        "source_sha256": sha256_of_files(checkpoint_files(req.checkpoint)),
        "arch": req.arch,
        "data_fingerprint": calibration.fingerprint if calibration else "",
        "data": json.dumps(calibration.record(), sort_keys=True) if calibration else "",
        "prunecli_version": __version__,
    }
    if req.method.iterative:
        metadata["sparsity"] = repr(round(1 - req.density, 12))
    return metadata


def float32_scores(result: ScoreResult, masks: bool | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Scores on the CPU as float32, one tensor at a time (higher = keep).

    float64 scores are divided by their largest magnitude first (the ranking is unchanged;
    float32 could not hold SynFlow's range). For a method that returns masks (`masks=True`;
    None: whenever the result has masks) the final mask is encoded: kept weights score in
    [0, 1], pruned ones −1, so `apply` at the same sparsity reproduces the method's own final
    mask exactly. NaN or infinite scores raise ScoreError.
    """
    import torch

    scores = result.scores
    masks = result.masks if masks is None or masks else None
    first = next(iter(scores))
    scale = None
    if masks is not None:
        top = max((float(scores[n][masks[n]].max()) for n in scores if masks[n].any()), default=0.0)
        scale = 1.0 / top if top > 0 else 1.0
    elif scores[first].dtype == torch.float64:
        top = max((float(scores[n].abs().max()) for n in scores if scores[n].numel()), default=0.0)
        scale = 1.0 / top if top > 0 else 1.0
    for name in scores:
        s = scores[name].detach()
        if not torch.isfinite(s).all():
            raise ScoreError(f"scores of {name} contain NaN or infinite values", "try `dtype` float64")
        if masks is not None:
            s = torch.where(masks[name], s.clamp(min=0) * scale, -1.0)
        elif scale is not None:
            s = s * scale
        yield name, s.to("cpu", torch.float32).numpy()
