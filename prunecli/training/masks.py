"""Masks on live modules: read a mask set, and hold pruned weights at exactly zero in training.

`read_masks` (torch-free) and `load_masks` read the bit-packed masks that `prunecli apply`
writes; `attach_masks` keeps the pruned entries of each parameter at +0 through any training
loop; `detach_masks` lets them train again.

How a mask is held, and why:
- as a *non-persistent* bool buffer `prunecli_mask_<param>` on the module that owns the
  parameter, so it follows `model.to(...)`, is copied by `copy.deepcopy`, and stays out of
  `state_dict()` (whose keys stay those of the unmodified model class);
- a gradient hook zeroes the pruned entries of every incoming gradient, so the optimizer state
  of those entries stays zero and no step (SGD with momentum and weight decay, Adam, AdamW)
  moves them: each weight is still exactly zero right after `optimizer.step()`;
- a forward pre-hook re-zeroes pruned entries before each forward of the owning module (a
  safety net for weights changed outside autograd) and re-registers the gradient hook on any
  parameter object it has not seen: tensor hooks are lost by `copy.deepcopy` and by
  `load_state_dict(assign=True)`, module hooks are not;
- a `load_state_dict` post-hook re-zeroes after loading, so a dense state dict loads masked.
Every hook finds its mask through the module it is called with, never a closure over the
original module, so a deep copy is masked by its own buffers.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import InputError, ManifestError
from prunecli.io.checkpoints import Checkpoint, open_checkpoint
from prunecli.io.manifest import MANIFEST_FILE, read_manifest

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle

MASK_PREFIX = "prunecli_mask_"  # buffer name prefix on the owning module
_STATE = "_prunecli_masking"  # attribute holding a _MaskState on each owning module
_REGENERATE = "the masks and the manifest must come from the same prunecli apply run; rerun it"

# ---------------------------------------------------------------------------- reading masks


def read_masks(source: str | Path) -> dict[str, np.ndarray]:
    """The masks of an `apply` output as numpy bool arrays (1 = keep), without torch.

    Args:
        source: the output folder of `prunecli apply`, or its `manifest.json`. The masks file is
            the manifest's `files.masks`, next to the manifest.

    Returns:
        name → bool array shaped like the parameter, for every tensor the manifest marks pruned.

    Example:
        >>> masks = read_masks("out/")
        >>> masks["fc1.weight"].mean()  # density of fc1.weight
    """
    manifest_path = _manifest_path(Path(source))
    manifest = read_manifest(manifest_path)
    masks_path = manifest_path.parent / manifest["files"]["masks"]
    if not masks_path.is_file():
        raise InputError(
            f"masks file {masks_path} named by {manifest_path} is missing",
            "keep masks.safetensors next to manifest.json, or rerun prunecli apply",
        )
    records = [r for r in manifest["tensors"] if r["pruned"]]
    with open_checkpoint(masks_path) as ckpt:
        extra = sorted(set(ckpt.tensors) - {r["name"] for r in records})
        if extra:
            raise ManifestError(
                f"{masks_path} holds a mask for {extra[0]!r}, which the manifest does not prune", _REGENERATE
            )
        return {r["name"]: _unpack(ckpt, r, masks_path) for r in records}


def _manifest_path(path: Path) -> Path:
    if path.is_dir():
        if not (path / MANIFEST_FILE).is_file():
            raise InputError(f"{path} has no {MANIFEST_FILE}", "pass a folder written by prunecli apply")
        return path / MANIFEST_FILE
    if not path.exists():
        raise InputError(
            f"mask source {path} does not exist", "pass an apply output folder or its manifest.json"
        )
    if path.suffix != ".json":
        raise InputError(
            f"{path} is not a manifest",
            "pass the apply output folder or its manifest.json: the mask shapes are recorded there",
        )
    return path


def _unpack(ckpt: Checkpoint, record: dict[str, Any], path: Path) -> np.ndarray:
    """One mask: unpack the bits (row-major, MSB first), trim to numel, reshape."""
    name, shape = record["name"], tuple(record["shape"])
    numel = math.prod(shape)
    info = ckpt.tensors.get(name)
    if info is None:
        raise ManifestError(f"{path} has no mask for {name!r}, which the manifest marks pruned", _REGENERATE)
    if info.dtype != "U8" or info.numel != math.ceil(numel / 8) or record["numel"] != numel:
        raise ManifestError(
            f"the mask of {name!r} in {path} is {info.numel} {info.dtype} values, but its manifest "
            f"shape {list(shape)} needs {math.ceil(numel / 8)} U8 bytes",
            _REGENERATE,
        )
    bits = np.unpackbits(ckpt.read(name).reshape(-1), count=numel)  # (numel,) of 0/1
    return bits.view(np.bool_).reshape(shape)


def load_masks(source: str | Path | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Masks as CPU bool tensors (True = keep), keyed by parameter name.

    Args:
        source: an `apply` output folder, its `manifest.json`, or a mapping of name → bool or
            0/1 tensor or array (as returned by `read_masks` or `load_masks`).

    Returns:
        name → bool tensor shaped like the parameter.

    Raises:
        InputError: a missing folder, manifest or masks file, or a mapping value other than 0/1.
        ManifestError: a mask whose size does not match the manifest's shape.

    Example:
        >>> masks = load_masks("out/manifest.json")
        >>> masks["fc1.weight"].shape
        torch.Size([300, 784])
    """
    import torch

    if isinstance(source, Mapping):
        return {str(name): _as_bool_tensor(str(name), value) for name, value in source.items()}
    if not isinstance(source, (str, Path)):
        raise TypeError(f"masks must be a path or a mapping, not {type(source).__name__}")
    return {name: torch.from_numpy(mask) for name, mask in read_masks(source).items()}


def _as_bool_tensor(name: str, value: Any) -> torch.Tensor:
    import torch

    mask = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(
            f"mask {name!r} holds values other than 0 and 1", "pass bool or 0/1 masks (1 = keep)"
        )
    return mask != 0


# ---------------------------------------------------------------------- masks on a live model


class _MaskState:
    """What `attach_masks` left on one owning module: the masked names and hook handles."""

    def __init__(self, names: tuple[str, ...], handles: list[RemovableHandle]) -> None:
        self.names = names  # parameter attribute names on this module
        self.handles = handles  # forward pre-hook, load_state_dict post-hook
        self.grad_hooks: dict[str, tuple[weakref.ref, RemovableHandle]] = {}  # per parameter object

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) has new parameter objects without tensor hooks: it makes its
        # own at its first forward. Its module hook handles are copied along with the hooks.
        return {"names": self.names, "handles": self.handles}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.names, self.handles, self.grad_hooks = state["names"], state["handles"], {}


def attach_masks(model: nn.Module, masks_or_manifest: str | Path | Mapping[str, Any]) -> nn.Module:
    """Zero the pruned weights of `model` now, and keep them exactly zero while it trains.

    The masked model's `state_dict()` has the same keys as the unmodified model (with zeros in
    the pruned entries). Masks follow `model.to(...)` and `copy.deepcopy`, and loading any state
    dict re-applies them. Attaching again replaces the previous masks. Build the optimizer after
    attaching (or call `reapply_masks` after each step if its state predates the masks):
    momentum gathered before the masks would otherwise move pruned weights until the next
    forward re-zeroes them.

    Args:
        model: the live module; mask names are its parameter names (`model.named_parameters()`).
        masks_or_manifest: anything `load_masks` takes.

    Returns:
        `model`, masked in place.

    Raises:
        InputError: a mask names no parameter of `model`, or its shape differs; nothing is
            changed then.

    Example:
        >>> model = attach_masks(LeNet300100(), "out/")
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    """
    targets = _resolve(model, load_masks(masks_or_manifest))
    detach_masks(model)
    groups: dict[int, tuple[nn.Module, list[str]]] = {}
    for owner, pname, mask in targets:
        param = getattr(owner, pname)
        owner.register_buffer(MASK_PREFIX + pname, mask.to(param.device, copy=True), persistent=False)
        groups.setdefault(id(owner), (owner, []))[1].append(pname)
    for owner, names in groups.values():
        handles = [
            owner.register_forward_pre_hook(_before_forward),
            owner.register_load_state_dict_post_hook(_after_load),
        ]
        state = _MaskState(tuple(names), handles)
        setattr(owner, _STATE, state)
        _zero_pruned(owner, state, track_version=True)
        _ensure_grad_hooks(owner, state)
    return model


def _resolve(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(owning module, attribute name, mask) per mask; the first bad name or shape raises."""
    params = dict(model.named_parameters(remove_duplicate=False))
    targets = []
    for name, mask in masks.items():
        param = params.get(name)
        if param is None:
            raise InputError(
                f"mask {name!r} matches no parameter of the model ({type(model).__name__})",
                _name_hint(name, list(params)),
            )
        if tuple(mask.shape) != tuple(param.shape):
            raise InputError(
                f"mask {name!r} has shape {list(mask.shape)}, "
                f"but the parameter has shape {list(param.shape)}",
                "the masks were made for another model or configuration; "
                "run prunecli apply on this model's checkpoint",
            )
        owner, _, pname = name.rpartition(".")
        targets.append((model.get_submodule(owner), pname, mask))
    return targets


def _name_hint(name: str, names: list[str]) -> str:
    for candidate in (name.removeprefix("module."), "module." + name):
        if candidate in names:
            return f"the model names it {candidate!r}: strip or add the 'module.' prefix"
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"masks are keyed by the model's parameter names ({shown or 'it has none'})"


def _zero_pruned(module: nn.Module, state: _MaskState, track_version: bool = False) -> None:
    """Set the pruned entries of each masked parameter to +0, in place."""
    import torch

    with torch.no_grad():
        for pname in state.names:
            param = getattr(module, pname)
            # `.data` skips the version counter, so a graph that saved this weight (two forwards,
            # one backward) stays valid: the values it saved are the zeros written here.
            target = param if track_version else param.data
            target.masked_fill_(~getattr(module, MASK_PREFIX + pname), 0)


def _ensure_grad_hooks(module: nn.Module, state: _MaskState) -> None:
    """Register the gradient hook on each masked parameter object that does not have it yet."""
    for pname in state.names:
        param = getattr(module, pname)
        known = state.grad_hooks.get(pname)
        if known is not None and known[0]() is param:
            continue
        if known is not None:
            known[1].remove()
            del state.grad_hooks[pname]
        if param.requires_grad:  # a frozen parameter gets its hook at the first forward after unfreezing
            handle = param.register_hook(partial(_mask_grad, weakref.ref(module), MASK_PREFIX + pname))
            state.grad_hooks[pname] = (weakref.ref(param), handle)


def _mask_grad(module_ref: weakref.ref, buffer: str, grad: torch.Tensor) -> torch.Tensor:
    module = module_ref()
    mask = None if module is None else getattr(module, buffer, None)
    return grad if mask is None else grad.masked_fill(~mask, 0)


def _before_forward(module: nn.Module, args: Any) -> None:
    state = getattr(module, _STATE, None)
    if state is not None:
        _ensure_grad_hooks(module, state)
        _zero_pruned(module, state)


def _after_load(module: nn.Module, incompatible_keys: Any) -> None:
    state = getattr(module, _STATE, None)
    if state is not None:
        _zero_pruned(module, state, track_version=True)
        _ensure_grad_hooks(module, state)  # load_state_dict(assign=True) makes new parameters


def detach_masks(model: nn.Module) -> nn.Module:
    """Remove the masks, buffers and hooks that `attach_masks` added; weights keep their values.

    Training afterwards may move the formerly pruned weights. A model without masks is returned
    unchanged.

    Example:
        >>> dense_again = detach_masks(model)
    """
    for module in model.modules():
        state = getattr(module, _STATE, None)
        if state is None:
            continue
        for handle in state.handles:
            handle.remove()
        for _, handle in state.grad_hooks.values():
            handle.remove()
        for pname in state.names:
            delattr(module, MASK_PREFIX + pname)
        delattr(module, _STATE)
    return model


def is_masked(model: nn.Module) -> bool:
    """Whether `attach_masks` has masks on `model` or any of its submodules."""
    return any(getattr(m, _STATE, None) is not None for m in model.modules())


def attached_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to `model`, keyed by parameter name (the live buffers, not copies)."""
    masks = {}
    for prefix, module in model.named_modules():
        state = getattr(module, _STATE, None)
        for pname in state.names if state is not None else ():
            masks[f"{prefix}.{pname}" if prefix else pname] = getattr(module, MASK_PREFIX + pname)
    return masks


def reapply_masks(model: nn.Module) -> nn.Module:
    """Zero the pruned entries now, e.g. after a step of an optimizer whose state predates the masks.

    Example:
        >>> optimizer.register_step_post_hook(lambda *_: reapply_masks(model))
    """
    for module in model.modules():
        state = getattr(module, _STATE, None)
        if state is not None:
            _zero_pruned(module, state, track_version=True)
    return model
