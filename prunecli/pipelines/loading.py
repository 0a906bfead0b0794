"""The live model a model-based method scores: built from its spec, loaded from the checkpoint,
checked against its inputs, and its calibration data (the first half of `run_method`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli.errors import InputError, ScoreError, UsageError
from prunecli.progress import NoProgress, Progress

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.data import Calibration
    from prunecli.io.checkpoints import Checkpoint
    from prunecli.pipelines.score import ScoreRequest


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"`device` {name} was asked for but CUDA is not available", "use `device` cpu",
                         option="device", value=name)  # fmt: skip
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown `device` {name!r}", "use auto, cpu, cuda or cuda:N",
                         option="device", value=name) from None  # fmt: skip
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"`device` {name}: only {torch.cuda.device_count()} CUDA device(s)", "pick another",
                         option="device", value=name)  # fmt: skip
    return device


def load_model(
    req: ScoreRequest, dtype: torch.dtype | None = None, progress: Progress | None = None
) -> tuple[torch.nn.Module, list[str], list[str]]:
    """The model with the checkpoint's weights, its prunable names, and notes for the user.

    The checkpoint is checked against the model from its header alone, then copied in tensor
    by tensor, so loading holds the model plus one tensor, not two copies of the model. A
    Hugging Face model is built in the checkpoint's floating dtype (or `dtype`), weights
    uninitialised, and each tensor is read straight into its storage.
    """
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.models.hf import is_hf_spec, linear_weights
    from prunecli.selection.prunable import prunable_names

    progress = progress or NoProgress()
    with open_checkpoint(req.checkpoint) as ckpt:
        model = _build_and_load(ckpt, str(req.checkpoint), req.arch, req.arch_args, dtype=dtype,
                                trust_remote_code=req.trust_remote_code,
                                eager_attention=req.method.second_order, progress=progress)  # fmt: skip
        names = prunable_names(ckpt.tensors, req.include, req.exclude, ckpt.config_folder is not None)
        notes = list(ckpt.notes)
    parameters = dict(model.named_parameters())
    names = [n for n in names if n in parameters]
    if is_hf_spec(req.arch) and not req.include:  # the default set: Linear and Conv1D weights only
        layers = linear_weights(model)
        names = [n for n in names if n in layers]
    if not names:
        raise InputError("no prunable parameter in the model", "choose them with `include` GLOB",
                         option="include")  # fmt: skip
    return model, names, notes


def load_checkpoint_model(
    checkpoint: Path,
    arch: str | None = None,
    arch_args: dict[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> tuple[torch.nn.Module, str, list[str]]:
    """A checkpoint's model, to run rather than score (`prunecli eval`): the model, its spec, notes.

    `checkpoint` is a file or a folder (its weights); without `arch`, a folder with
    `config.json` is built as `hf:` that folder. The model is loaded as `load_model` loads it.
    """
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.models.hf import HF_PREFIX, config_folder

    if arch is None:
        folder = config_folder(checkpoint)
        if folder is None:
            raise UsageError(f"{checkpoint} holds weights, but no config.json says which model they fit",
                             "add `arch`, e.g. `arch` lenet-300-100", option="arch")  # fmt: skip
        arch = f"{HF_PREFIX}{folder}"
    with open_checkpoint(checkpoint) as ckpt:
        model = _build_and_load(ckpt, str(checkpoint), arch, dict(arch_args or {}), dtype=dtype,
                                trust_remote_code=trust_remote_code,
                                progress=progress or NoProgress())  # fmt: skip
        return model, arch, list(ckpt.notes)


def _build_and_load(
    ckpt: Checkpoint,
    label: str,
    arch: str,
    arch_args: dict[str, Any],
    *,
    dtype: torch.dtype | None,
    trust_remote_code: bool,
    progress: Progress,
    eager_attention: bool = False,
) -> torch.nn.Module:
    """The model of `arch` holding `ckpt`'s weights, checked against it (`label` names it)."""
    import torch

    from prunecli.io.torch_files import torch_dtype
    from prunecli.models import check_weights, resolve_model
    from prunecli.models.hf import build_model, is_hf_spec, spec_folder

    progress.stage("building the model", 0)
    if is_hf_spec(arch):
        model = build_model(spec_folder(arch), dtype or _float_dtype(ckpt), trust_remote_code,
                            eager_attention=eager_attention)  # fmt: skip
    else:
        model = resolve_model(arch, arch_args)
    shapes = {
        n: torch.empty(i.shape, dtype=torch_dtype(i.dtype), device="meta") for n, i in ckpt.tensors.items()
    }
    check_weights(model, shapes, label)
    state = model.state_dict()
    progress.stage("loading the weights", len(ckpt.tensors))
    with torch.no_grad():
        for name, info in ckpt.tensors.items():
            _copy_into(state[name], ckpt, name, info.dtype)
            if not _finite(state[name]):
                raise ScoreError(f"weights of {name} contain NaN or infinite values", "check the checkpoint")
            progress.advance()
    return model


def _float_dtype(ckpt: Checkpoint) -> torch.dtype:
    """The checkpoint's floating dtype (the most common by size), float32 when it has none."""
    import torch

    from prunecli.io.torch_files import torch_dtype

    sizes: dict[str, int] = {}
    for info in ckpt.tensors.values():
        if info.dtype in ("F64", "F32", "F16", "BF16"):
            sizes[info.dtype] = sizes.get(info.dtype, 0) + info.numel
    return torch_dtype(max(sizes, key=sizes.__getitem__)) if sizes else torch.float32


def _copy_into(target: torch.Tensor, ckpt: Checkpoint, name: str, dtype: str) -> None:
    """Read a checkpoint tensor straight into the model's storage when the dtypes agree
    (no intermediate copy), else through a temporary cast by `copy_`."""
    import torch

    from prunecli.io.torch_files import raw_to_torch, torch_dtype

    if target.device.type == "cpu" and target.is_contiguous() and target.dtype == torch_dtype(dtype):
        ckpt.read(name, target.view(-1).view(torch.uint8).numpy())  # fills target's bytes
    else:
        target.copy_(raw_to_torch(ckpt.read(name), dtype))


def calibration_of(req: ScoreRequest, model: torch.nn.Module | None = None) -> Calibration | None:
    """The calibration batches of `req.data` (None without data), seeded by `req.seed`.

    Token data (text, or arrays with `input_ids`) is checked against `model`'s vocabulary and
    length, and text is tokenized with the tokenizer of the model's folder.
    """
    from prunecli.calibration.data import load_calibration
    from prunecli.calibration.tokens import is_token_source, load_tokens
    from prunecli.models.hf import is_hf_spec, max_positions, spec_folder

    if req.data is None:
        return None
    if is_token_source(req.data):
        embeddings = getattr(model, "get_input_embeddings", lambda: None)()
        return load_tokens(
            req.data, tokenizer_folder=spec_folder(req.arch) if is_hf_spec(req.arch) else None,
            vocab_size=getattr(embeddings, "num_embeddings", None), max_len=max_positions(model),
            seq_len=req.seq_len, num_samples=req.num_samples, batch_size=req.batch_size, seed=req.seed,
            trust_remote_code=req.trust_remote_code,
        )  # fmt: skip
    for name in ("seq_len", "num_samples"):
        if getattr(req, name) is not None:
            raise UsageError(f"`{name}` is for token data, and {req.data} is not", f"drop `{name}`",
                             option=name, value=getattr(req, name))  # fmt: skip
    return load_calibration(
        req.data, batch_size=req.batch_size or 128, num_batches=req.num_batches, per_class=req.per_class,
        seed=req.seed, inputs_key=req.inputs_key, labels_key=req.labels_key,
    )  # fmt: skip


def check_fit(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    """Run one forward pass; inputs that the model rejects are a clear input error."""
    import torch

    from prunecli.calibration.forward import forward

    mode = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward(model, inputs[:2])
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:150]
        raise InputError(
            f"inputs of shape {list(inputs.shape[1:])} do not fit the model ({reason})",
            "check `data` / `input_shape` against `arch`",
        ) from None
    finally:
        model.train(mode)
    if out.ndim != 2 and not (out.ndim == 3 and not inputs.is_floating_point()):
        raise InputError(
            f"the model's output has shape {list(out.shape)}, not (batch, classes)",
            "use a classifier, or a language model on token ids",
        )
    return out.shape[-1]


def input_shape_of(req: ScoreRequest, calibration: Calibration | None) -> tuple[int, ...]:
    """One example's shape: given, from the data, or the architecture's default."""
    from prunecli.models import default_input_shape

    shape = req.input_shape or (
        calibration.example_shape if calibration else default_input_shape(req.arch, req.arch_args)
    )
    if shape is None:
        raise UsageError(f"{req.method.name} needs an input shape", "add `input_shape`, e.g. 3x32x32",
                         option="input_shape")  # fmt: skip
    return tuple(shape)


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in a float tensor: one reduction (its largest magnitude), not a bool per entry."""
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(tensor.abs().amax()))
