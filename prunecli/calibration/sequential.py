"""Block-by-block calibration: the model's repeated blocks run one at a time, each on the
outputs of the one before it after that one was pruned (as the Wanda and SparseGPT papers do).

The model is built with its storage allocated but untouched (`models.hf.build_model`), so it
costs no memory until weights are read into it. The runner then:
1. reads the tensors outside the blocks (embeddings, final norm, head) and runs the model up to
   the first block on every batch, keeping what the first block receives (its hidden states and
   the arguments the model passes every block: masks, positions, rotary tables);
2. for each block: reads its weights from the memory-mapped checkpoint onto the compute device,
   runs it on every batch with the pruner's hooks observing its layers (statistics of the dense
   block), lets the pruner edit the block's weights (masks, updated weights), runs it again to
   make the next block's inputs, and frees it.

Only one block's weights live on the device at a time. Activations wait on the CPU, or in
`offload_dir` on disk, and move to the device one batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prunecli.calibration.forward import model_call
from prunecli.distributed import rank
from prunecli.errors import ScoreError, UsageError
from prunecli.progress import NoProgress, Progress

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunecli.calibration.context import Batch
    from prunecli.io.checkpoints import Checkpoint


class BlockPruner(Protocol):
    """What a method does with each block (or, one-shot, with the whole model at once)."""

    def observe(self, layers: dict[str, nn.Module]) -> list[Any]:
        """Register hooks that gather statistics on `layers` (weight name -> module); return them."""
        ...

    def prune(self, layers: dict[str, nn.Module]) -> None:
        """Decide the masks of `layers` from the statistics and edit their weights in place."""
        ...


@dataclass(frozen=True)
class Blocks:
    """The model's repeated blocks: the ModuleList's path (`model.layers`) and its modules."""

    path: str
    modules: Sequence[nn.Module]

    def prefix(self, index: int) -> str:
        return f"{self.path}.{index}."


def decoder_blocks(model: nn.Module) -> Blocks:
    """The ModuleList holding the most parameters: a transformer's decoder (or encoder) blocks."""
    from torch import nn

    best: tuple[int, str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, path, module)
    if best is None:
        raise UsageError(
            "the model has no repeated blocks to calibrate one at a time", "use `sequential` false",
            option="sequential", value=True,
        )  # fmt: skip
    return Blocks(best[1], list(best[2]))


class _Stop(Exception):
    """Raised by the hook on the first block: what it received is all that is needed."""


class ActivationStore:
    """Per-batch tensors on the CPU, or in files under `folder` (read back one at a time)."""

    def __init__(self, folder: Path | None, tag: str) -> None:
        self.folder, self.tag = folder, tag
        self._items: list[Any] = []

    def append(self, value: torch.Tensor) -> None:
        import torch

        value = value.detach().to("cpu")
        if self.folder is None:
            self._items.append(value)
            return
        path = self.folder / f"{self.tag}-{len(self._items):06d}.pt"
        torch.save(value, path)
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, index: int) -> torch.Tensor:
        import torch

        item = self._items[index]
        return torch.load(item, weights_only=True) if isinstance(item, Path) else item

    def clear(self) -> None:
        for item in self._items:
            if isinstance(item, Path):
                item.unlink(missing_ok=True)
        self._items = []


def run_sequential(
    model: nn.Module,
    ckpt: Checkpoint,
    batches: list[Batch],
    names: list[str],
    pruner: BlockPruner,
    device: torch.device,
    load: Callable[[torch.Tensor, str], None],
    progress: Progress | None = None,
    offload_dir: Path | None = None,
) -> None:
    """Prune `names` block by block (see the module docstring).

    Args:
        model: built with untouched storage on the CPU (no weights read yet).
        names: the weights to prune; each must lie inside one of the blocks.
        load: reads checkpoint tensor `name` into the given tensor (on any device).
    """
    import torch

    progress = progress or NoProgress()
    blocks = decoder_blocks(model)
    kinds = set(getattr(getattr(model, "config", None), "layer_types", None) or [])
    if len(kinds) > 1:  # e.g. sliding-window and full attention alternating (Gemma 2)
        raise UsageError(
            f"the model's blocks take different attention masks ({', '.join(sorted(map(str, kinds)))}), "
            "and block-by-block calibration passes every block the first block's",
            "use `sequential` false", option="sequential", value=True,
        )  # fmt: skip
    outside = [n for n in names if not n.startswith(blocks.path + ".")]
    if outside:
        raise UsageError(
            f"{outside[0]} lies outside the model's repeated blocks ({blocks.path}), so it cannot be "
            "pruned block by block",
            "leave it out with `exclude`, or use `sequential` false",
            option="sequential", value=True,
        )  # fmt: skip
    block_params = {f"{blocks.path}.{n}" for n, _ in _named_tensors(torch.nn.ModuleList(blocks.modules))}
    state = model.state_dict(keep_vars=True)
    progress.stage("loading the embeddings", 0)
    with torch.no_grad():
        for name in ckpt.tensors:
            if name not in block_params and name in state:
                load(state[name], name)
    del state  # it holds every parameter: a finished block's storage must be free to go
    _outside_blocks_to(model, blocks, device)
    hidden, arguments = _first_block_inputs(model, blocks, batches, device, offload_dir)
    count = len(blocks.modules)
    progress.stage(f"pruning block by block ({count} blocks)", count)
    for index, block in enumerate(blocks.modules):
        prefix = blocks.prefix(index)
        _materialize(block, prefix, ckpt, device, load)
        layers = _layers(block, prefix, names)
        hooks = pruner.observe(layers)
        try:
            _run_block(block, hidden, arguments, device, None, prefix)
        finally:
            for hook in hooks:
                hook.remove()
        pruner.prune(layers)
        outputs = ActivationStore(offload_dir, f"rank{rank()}-block{index}")
        _run_block(block, hidden, arguments, device, outputs, prefix)
        hidden.clear()
        hidden = outputs
        block.to("meta")  # frees the block's memory
        progress.advance()
    hidden.clear()


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.state_dict(keep_vars=True).items())


def _outside_blocks_to(model: nn.Module, blocks: Blocks, device: torch.device) -> None:
    """Move every module outside the blocks to the device (the blocks stay where they are)."""
    kept = set(map(id, blocks.modules))
    for module in model.modules():
        if id(module) in kept:
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.to(device)
        for name, buffer in list(module.named_buffers(recurse=False)):
            module._buffers[name] = buffer.to(device)


def _first_block_inputs(
    model: nn.Module, blocks: Blocks, batches: list[Batch], device: torch.device, offload_dir: Path | None
) -> tuple[ActivationStore, list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    """What the first block receives for each batch: its hidden states, and its other arguments."""
    import torch

    hidden = ActivationStore(offload_dir, f"rank{rank()}-inputs")
    arguments: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def catch(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        states = args[0] if args else kwargs["hidden_states"]
        hidden.append(states)
        rest = {k: _to_cpu(v) for k, v in kwargs.items() if k != "hidden_states"}
        arguments.append((tuple(_to_cpu(a) for a in args[1:]), rest))
        raise _Stop

    hook = blocks.modules[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                args, kwargs = model_call(inputs.to(device))
                try:
                    model(*args, **kwargs)
                except _Stop:
                    continue
                raise ScoreError("the model never called its first block", "use `sequential` false")
    finally:
        hook.remove()
    return hidden, arguments


def _materialize(
    block: nn.Module, prefix: str, ckpt: Checkpoint, device: torch.device, load: Callable
) -> None:
    """Read the block's tensors from the checkpoint onto `device`."""
    import torch

    if device.type != "cpu":
        block.to(device)
    with torch.no_grad():
        for name, tensor in _named_tensors(block):
            if prefix + name in ckpt.tensors:
                load(tensor, prefix + name)


def _layers(block: nn.Module, prefix: str, names: list[str]) -> dict[str, nn.Module]:
    """The modules owning the block's prunable weights, by the weight's full name."""
    modules = dict(block.named_modules())
    found = {}
    for name in names:
        if name.startswith(prefix):
            owner, _, attr = name[len(prefix) :].rpartition(".")
            if attr != "weight" or owner not in modules:
                raise UsageError(f"{name} is not a layer's weight", "prune layers' weights only",
                                 option="include", value=name)  # fmt: skip
            found[name] = modules[owner]
    return found


def _run_block(
    block: nn.Module,
    hidden: ActivationStore,
    arguments: list[tuple[tuple[Any, ...], dict[str, Any]]],
    device: torch.device,
    outputs: ActivationStore | None,
    prefix: str,
) -> None:
    """Run the block on every batch; keep its outputs when `outputs` is given."""
    import torch

    with torch.no_grad():
        for index, (args, kwargs) in enumerate(arguments):
            states = hidden.get(index).to(device)
            out = block(states, *_to(args, device), **_to(kwargs, device))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if not torch.isfinite(out).all():
                raise ScoreError(f"block {prefix.rstrip('.')} gives NaN or infinite activations",
                                 "check the checkpoint, or use `dtype` float32")  # fmt: skip
            if outputs is not None:
                outputs.append(out)


def _to_cpu(value: Any) -> Any:
    return _to(value, "cpu")


def _to(value: Any, device: Any) -> Any:
    """Tensors inside tuples, lists and dicts, moved to `device`; anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
