"""Signal propagation through a pruned network at initialisation (Lee et al. 2020, ICLR, "A Signal
Propagation Perspective for Pruning Neural Networks at Initialization"; methods.md §11, §12).

- `jacobian_singular_values`: the singular values of the input-output Jacobian ∂logits/∂input of
  each example, pooled and summarised (mean, std, min, max). Needs a few inputs. Values near 1
  mean the network passes signals and gradients faithfully (dynamical isometry); pruning
  spreads them and lowers them.
- `path_check`: SynFlow's R = Σ f(1) on the masked |θ| (data-free). R = 0 means that no path
  from the input to the output survives: the network has collapsed.
- the paper's data-free fix, `approximate_isometry`, lives with apply in `prunecli.apply.isometry`.
- `signal_report`: the first two together, the way `prunecli inspect --signal` reports them.

torch is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

_SAME_MODEL = "the masks were made for another model or configuration; prune this model's checkpoint"


def _masks_for(model: nn.Module, masks: str | Path | Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """Bool masks keyed by parameter name, checked against the model's parameters."""
    from prunecli.training.masks import load_masks

    if masks is None:
        return {}
    loaded = load_masks(masks)
    params = dict(model.named_parameters())
    for name, mask in loaded.items():
        if name not in params:
            raise InputError(
                f"mask {name!r} matches no parameter of the model ({type(model).__name__})", _SAME_MODEL
            )
        if tuple(mask.shape) != tuple(params[name].shape):
            raise InputError(
                f"mask {name!r} has shape {list(mask.shape)}, but the parameter has shape "
                f"{list(params[name].shape)}",
                _SAME_MODEL,
            )
    return loaded


def _stack_inputs(inputs: torch.Tensor | Iterable[Any]) -> torch.Tensor:
    """One tensor of examples from a tensor, or from (inputs, labels) batches such as
    `load_calibration(...).batches`."""
    import torch

    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, np.ndarray):
        return torch.from_numpy(inputs)
    parts = [b[0] if isinstance(b, (tuple, list)) else b for b in inputs]
    if not parts:
        raise UsageError("no inputs for the Jacobian", "give at least one example in `inputs`",
                         option="inputs", value=inputs)  # fmt: skip
    return torch.cat([torch.as_tensor(p) for p in parts])


def jacobian_singular_value_array(
    model: nn.Module,
    inputs: torch.Tensor | Iterable[Any],
    masks: str | Path | Mapping[str, Any] | None = None,
    chunk_size: int = 10,
) -> torch.Tensor:
    """The singular values of ∂f(x)/∂x for each example x, largest first.

    The network computes with θ⊙m (through `torch.func.functional_call`; the model itself is
    not changed) in eval mode, in the dtype of its first parameter, on its device.

    Args:
        model: the network; its output for a batch must be one tensor (B, K).
        inputs: examples (B, *example_shape), or (inputs, labels) batches.
        masks: anything `prunecli.training.masks.load_masks` takes (an `apply` output folder, its
            manifest, or name → bool/0-1 mask), or None for the network as it is.
        chunk_size: examples whose Jacobians are computed together (memory: chunk_size × K × D).

    Returns:
        (B, min(K, D)) singular values, D the size of one flattened example.

    Example:
        >>> sv = jacobian_singular_value_array(model, images[:10], "out/")
        >>> sv.shape
        torch.Size([10, 10])
    """
    import torch
    from torch.func import functional_call, jacrev, vmap

    state = _masked_state(model, _masks_for(model, masks))
    first = next(iter(state.values()), None)
    x = _stack_inputs(inputs)
    if first is not None:
        x = x.to(device=first.device, dtype=first.dtype if x.is_floating_point() else None)

    def logits(example: torch.Tensor) -> torch.Tensor:  # (*example_shape) -> (K,)
        return functional_call(model, state, (example.unsqueeze(0),), strict=False).squeeze(0)

    was_training = model.training
    model.eval()
    try:
        values = []
        for chunk in x.split(max(1, chunk_size)):
            jac = vmap(jacrev(logits))(chunk)  # (b, K, *example_shape)
            values.append(torch.linalg.svdvals(jac.flatten(2)))  # (b, min(K, D))
    finally:
        model.train(was_training)
    return torch.cat(values)


def _masked_state(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached parameters (θ⊙m where masked) and buffers, for `functional_call`."""
    state = {n: b.detach() for n, b in model.named_buffers()}
    for name, param in model.named_parameters():
        mask = masks.get(name)
        state[name] = param.detach() if mask is None else param.detach() * mask.to(param.device, param.dtype)
    return state


def jacobian_singular_values(
    model: nn.Module,
    inputs: torch.Tensor | Iterable[Any],
    masks: str | Path | Mapping[str, Any] | None = None,
    chunk_size: int = 10,
) -> dict[str, float | int]:
    """Summary of the input-output Jacobian's singular values, as [SPP] `check.py` reports them.

    The singular values of every example are pooled; `std` is the population standard
    deviation (numpy's default, as in the reference).

    Args:
        model, inputs, masks, chunk_size: as in `jacobian_singular_value_array`.

    Returns:
        `examples`, `count` (singular values pooled), `mean`, `std`, `min`, `max`.

    Example:
        >>> jacobian_singular_values(lenet, digits[:32])  # LeNet-300-100 at init, 32 MNIST digits
        {'examples': 32, 'count': 320, 'mean': 1.3432, 'std': 0.3617, 'min': 0.6592, 'max': 2.2717}
        >>> jacobian_singular_values(lenet, digits[:32], "snip-99/")["mean"]  # pruned: signals shrink
        0.1138
    """
    values = jacobian_singular_value_array(model, inputs, masks, chunk_size).double()
    return {
        "examples": int(values.shape[0]),
        "count": int(values.numel()),
        "mean": float(values.mean()),
        "std": float(values.std(correction=0)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def path_check(
    model: nn.Module,
    names: Sequence[str] | None,
    masks: str | Path | Mapping[str, Any] | None,
    input_shape: Sequence[int],
) -> float:
    """SynFlow's R = Σ f(1) for the masked network with |θ|: 0 means full collapse.

    On a float64 copy of the model in eval mode, every parameter and buffer is replaced by its
    absolute value; the network computes with |θ|⊙m and one all-ones example. R is the total
    weight of all input-to-output paths, so R > 0 exactly when some path survives (methods.md
    §11). The model itself is not changed.

    Args:
        model: the network.
        names: the masked parameters; None for every name in `masks`.
        masks: anything `prunecli.training.masks.load_masks` takes, or None for the unmasked network
            (`names` is then ignored).
        input_shape: one example's shape, without the batch dimension, e.g. (1, 28, 28).

    Returns:
        R as a float (0.0: no path survives).

    Example:
        >>> path_check(lenet, None, "snip-99/", (1, 28, 28))  # LeNet-300-100, SNIP at 99%
        99.19
    """
    import copy

    import torch
    from torch.func import functional_call

    loaded = _masks_for(model, masks)
    chosen = list(loaded) if names is None or masks is None else list(names)
    missing = [n for n in chosen if n not in loaded]
    if missing:
        raise InputError(f"no mask for {missing[0]!r}", "pass masks for every name in names, or names=None")
    positive = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for tensor in positive.state_dict().values():  # parameters and buffers, as [SF]
            if tensor.is_floating_point():
                tensor.abs_()
        params = dict(positive.named_parameters())
        device = next(iter(params.values())).device if params else None
        weights = {n: params[n] * loaded[n].to(params[n].device, torch.float64) for n in chosen}
        ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
        return float(functional_call(positive, weights, (ones,), strict=False).sum())


def signal_report(
    model: nn.Module,
    masks: str | Path | Mapping[str, Any] | None,
    input_shape: Sequence[int],
    inputs: torch.Tensor | Iterable[Any] | None = None,
) -> dict[str, Any]:
    """`path_check` and, given inputs, `jacobian_singular_values`, for `prunecli inspect --signal`.

    Returns:
        `synflow_r` (R of `path_check`), `connected` (R > 0), and `jacobian` (the summary of
        `jacobian_singular_values`, or None without inputs).

    Example:
        >>> signal_report(model, "snip/", (1, 28, 28), images[:32])["connected"]
        True
    """
    r = path_check(model, None, masks, input_shape)
    jacobian = None if inputs is None else jacobian_singular_values(model, inputs, masks)
    return {"synflow_r": r, "connected": r > 0, "jacobian": jacobian}
