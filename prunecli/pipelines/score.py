"""Model-based scoring end to end: checkpoint + architecture + data -> float32 scores.

The library side of `score` for SNIP, GraSP, SynFlow, FORCE and Iter-SNIP: build the model
from its spec, load the checkpoint into it, move model and batches to the device, set the
batch-norm mode, run the method, and bring the scores back to the CPU once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli import __version__
from prunecli.errors import InputError, ScoreError, UsageError
from prunecli.scoring.registry import Method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import ScoreResult
    from prunecli.calibration.data import Calibration
    from prunecli.io.checkpoints import Checkpoint

DEFAULT_ITERATIONS = {"synflow": 100, "force": 10, "iter-snip": 10, "snip-it": 5}
# options that change a method's result, with their defaults: recorded in the scores' params
RECORDED_OPTIONS = {
    "obd": {"hessian": "exact", "obd_first_order": False},
    "taylor": {"fisher": False},
}


@dataclass
class ScoreRequest:
    """Everything a model-based method needs; see `prunecli score --help`."""

    checkpoint: Path
    method: Method
    arch: str
    arch_args: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    input_shape: tuple[int, ...] | None = None
    batch_size: int = 128
    num_batches: int = 1
    per_class: int | None = None
    inputs_key: str | None = None
    labels_key: str | None = None
    loss: str | None = None
    density: float | None = None
    iterations: int | None = None
    schedule: str = "exp"
    temperature: float = 200.0
    bn_mode: str | None = None
    device: str = "auto"
    dtype: str | None = None
    seed: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # method-specific (see ScoringContext)


@dataclass
class ScoredModel:
    """A method's float32 scores as a stream (name, array), with what the file needs."""

    scores: Iterator[tuple[str, np.ndarray]]
    entries: list[tuple[str, tuple[int, ...]]]  # names and shapes, in the stream's order
    metadata: dict[str, str]
    notes: list[str]


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available", "use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)", "pick another")
    return device


OPTION_METHODS = {  # method-specific options, and the methods that use them
    "hessian": ("obd",),
    "hutchinson_samples": ("obd",),
    "obd_first_order": ("obd",),
    "fisher": ("taylor",),
    "max_params": ("obd", "exact"),
}


def _validate(req: ScoreRequest) -> None:
    m = req.method
    for option in req.options:
        users = OPTION_METHODS.get(option, (m.name,))
        if m.name not in users:
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"{flag} applies to {' and '.join(users)}, not {m.name}", f"drop {flag}")
    if m.data == "batches" and req.data is None:
        raise UsageError(f"{m.name} needs calibration data", "add --data FILE (or --data random:SHAPE)")
    if m.iterative and req.density is None:
        raise UsageError(f"{m.name} is iterative and needs the target at score time", "add --sparsity S")
    if not m.iterative and req.density is not None:
        raise UsageError(f"{m.name} takes no --sparsity at score time", "give the sparsity to apply instead")
    if req.iterations is not None and req.iterations < 1:
        raise UsageError(f"--iterations {req.iterations} must be at least 1", "use e.g. --iterations 100")
    if req.bn_mode not in (None, "eval", "train"):
        raise UsageError(f"unknown --bn-mode {req.bn_mode!r}", "use eval or train")
    if req.dtype not in (None, "float32", "float64"):
        raise UsageError(f"unknown --dtype {req.dtype!r}", "use float32 or float64")
    if req.temperature <= 0:
        raise UsageError(f"--temperature {req.temperature} must be positive", "GraSP uses 200")
    if req.batch_size < 1 or req.num_batches < 1:
        raise UsageError("--batch-size and --num-batches must be at least 1", "e.g. --batch-size 100")


def _load_model(req: ScoreRequest) -> tuple[torch.nn.Module, list[str], list[str]]:
    """The model with the checkpoint's weights, its prunable names, and notes for the user.

    The checkpoint is checked against the model from its header alone, then copied in tensor
    by tensor, so loading holds the model plus one tensor, not two copies of the model.
    """
    import torch

    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.io.torch_files import torch_dtype
    from prunecli.models import check_weights, resolve_model
    from prunecli.selection.prunable import prunable_names

    model = resolve_model(req.arch, req.arch_args)
    with open_checkpoint(req.checkpoint) as ckpt:
        shapes = {
            n: torch.empty(i.shape, dtype=torch_dtype(i.dtype), device="meta")
            for n, i in ckpt.tensors.items()
        }
        check_weights(model, shapes, str(req.checkpoint))
        state = model.state_dict()
        with torch.no_grad():
            for name, info in ckpt.tensors.items():
                _copy_into(state[name], ckpt, name, info.dtype)
                if state[name].is_floating_point() and not torch.isfinite(state[name]).all():
                    raise ScoreError(
                        f"weights of {name} contain NaN or infinite values", "check the checkpoint"
                    )
        names = prunable_names(ckpt.tensors, req.include, req.exclude)
        notes = list(ckpt.notes)
    parameters = dict(model.named_parameters())
    names = [n for n in names if n in parameters]
    if not names:
        raise InputError("no prunable parameter in the model", "choose them with --include GLOB")
    return model, names, notes


def _copy_into(target: torch.Tensor, ckpt: Checkpoint, name: str, dtype: str) -> None:
    """Read a checkpoint tensor straight into the model's storage when the dtypes agree
    (no intermediate copy), else through a temporary cast by `copy_`."""
    import torch

    from prunecli.io.torch_files import raw_to_torch, torch_dtype

    if target.device.type == "cpu" and target.is_contiguous() and target.dtype == torch_dtype(dtype):
        ckpt.read(name, target.view(-1).view(torch.uint8).numpy())  # fills target's bytes
    else:
        target.copy_(raw_to_torch(ckpt.read(name), dtype))


def _calibration(req: ScoreRequest, model: torch.nn.Module) -> Calibration | None:
    from prunecli.calibration.data import load_calibration

    if req.data is None:
        return None
    return load_calibration(
        req.data, batch_size=req.batch_size, num_batches=req.num_batches, per_class=req.per_class,
        seed=req.seed, inputs_key=req.inputs_key, labels_key=req.labels_key,
    )  # fmt: skip


def _check_fit(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    """Run one forward pass; inputs that the model rejects are a clear input error."""
    import torch

    mode = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(inputs[:2])
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:150]
        raise InputError(
            f"inputs of shape {list(inputs.shape[1:])} do not fit the model ({reason})",
            "check --data / --input-shape against --arch",
        ) from None
    finally:
        model.train(mode)
    if out.ndim != 2:
        raise InputError(
            f"the model's output has shape {list(out.shape)}, not (batch, classes)",
            "use a classifier",
        )
    return out.shape[1]


def _input_shape(req: ScoreRequest, calibration: Calibration | None) -> tuple[int, ...]:
    from prunecli.models import default_input_shape

    shape = req.input_shape or (
        calibration.example_shape if calibration else default_input_shape(req.arch, req.arch_args)
    )
    if shape is None:
        raise UsageError(f"{req.method.name} needs an input shape", "add --input-shape, e.g. 3x32x32")
    return tuple(shape)


def run_method(req: ScoreRequest, progress: object = None) -> ScoredModel:
    """Score with a model-based method; the scores stream out of `ScoredModel.scores`."""
    import torch

    from prunecli.calibration.context import ScoringContext
    from prunecli.calibration.data import check_labels
    from prunecli.calibration.losses import check_loss, default_loss
    from prunecli.progress import NoProgress

    _validate(req)
    device = resolve_device(req.device)
    precision = req.dtype or ("float64" if req.method.float64 else "float32")
    dtype = torch.float64 if precision == "float64" else torch.float32
    model, names, notes = _load_model(req)
    model.to(device=device, dtype=dtype).requires_grad_(False)
    calibration = _calibration(req, model)
    batches = []
    if calibration is not None:
        batches = [(x.to(device, dtype), None if y is None else y.to(device)) for x, y in calibration.batches]
    shape = _input_shape(req, calibration)
    probe = batches[0][0] if batches else torch.ones((1, *shape), dtype=dtype, device=device)
    outputs = _check_fit(model, probe)
    if calibration is not None:
        check_labels(calibration, outputs)
    has_labels = bool(batches) and batches[0][1] is not None
    loss = req.loss or default_loss(has_labels)
    if req.method.data == "batches":
        check_loss(loss, has_labels)
    bn_mode = req.bn_mode or req.method.bn_mode
    model.train(bn_mode == "train")
    iterations = req.iterations or DEFAULT_ITERATIONS.get(req.method.name, 1)
    ctx = ScoringContext(
        model=model, names=names, batches=batches, loss=loss, input_shape=shape, density=req.density,
        iterations=iterations, schedule=req.schedule, temperature=req.temperature,
        progress=progress or NoProgress(), options={**req.options, "seed": req.seed},
    )  # fmt: skip
    result = req.method.model_scorer(ctx)
    params: dict[str, Any] = {"bn_mode": bn_mode, "dtype": precision, "device": device.type}
    if req.method.data == "batches" and req.method.name != "wanda":
        params["loss"] = loss
    if req.method.name == "grasp":
        params["temperature"] = req.temperature
    if req.method.iterative:
        schedule = "snip-it" if req.method.name == "snip-it" else req.schedule
        params.update(iterations=iterations, schedule=schedule, sparsity=round(1 - req.density, 12))
    params.update(
        {k: req.options.get(k, default) for k, default in RECORDED_OPTIONS.get(req.method.name, {}).items()}
    )
    if params.get("hessian") == "hutchinson":
        params["hutchinson_samples"] = req.options.get("hutchinson_samples", 100)
    if req.arch_args:
        params["arch_args"] = req.arch_args
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in result.scores}
    entries = [(n, shapes[n]) for n in result.scores]
    return ScoredModel(float32_scores(result), entries, _metadata(req, params, calibration), notes)


def _metadata(req: ScoreRequest, params: dict[str, Any], calibration: Calibration | None) -> dict[str, str]:
    """String metadata of a scores file: method, options, provenance of model and data."""
    from prunecli.io.checkpoints import sha256_of_files

    metadata = {
        "format": "prunecli.scores",
        "method": req.method.name,
        "params": json.dumps(params, sort_keys=True),
        "seed": str(req.seed),
        "source_sha256": sha256_of_files([req.checkpoint]),
        "arch": req.arch,
        "data_fingerprint": calibration.fingerprint if calibration else "",
        "data": json.dumps(calibration.record(), sort_keys=True) if calibration else "",
        "prunecli_version": __version__,
    }
    if req.method.iterative:
        metadata["sparsity"] = repr(round(1 - req.density, 12))
    return metadata


def float32_scores(result: ScoreResult) -> Iterator[tuple[str, np.ndarray]]:
    """Scores on the CPU as float32, one tensor at a time (higher = keep).

    float64 scores are divided by their largest magnitude first (the ranking is unchanged;
    float32 could not hold SynFlow's range). For iterative methods the final mask is
    encoded: kept weights score in [0, 1], pruned ones −1, so `apply` at the same sparsity
    reproduces the method's own final mask exactly. NaN or infinite scores raise ScoreError.
    """
    import torch

    scores, masks = result.scores, result.masks
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
            raise ScoreError(f"scores of {name} contain NaN or infinite values", "try --dtype float64")
        if masks is not None:
            s = torch.where(masks[name], s.clamp(min=0) * scale, -1.0)
        elif scale is not None:
            s = s * scale
        yield name, s.to("cpu", torch.float32).numpy()
