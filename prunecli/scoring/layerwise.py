"""Pruning layer by layer while calibrating: Wanda and SparseGPT as block pruners.

Wanda and SparseGPT decide each layer's mask from statistics of that layer's inputs. Run block by
block (`calibration.sequential`), the next block's inputs must come from the pruned block, so
the masks are decided here, per layer, by the same selection rule `apply` uses (`MaskRule`),
and written into the live weights before the block runs again. SparseGPT also updates the weights
it keeps. What was decided is collected in `LayerResults`: bit-packed masks (small), and the
updated weights streamed to a safetensors file (so they never all sit in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import UsageError
from prunecli.selection.threshold import keep_count, nm_mask, row_mask, scores_to_keys, topk_mask

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunecli.io.safetensors_file import SafetensorsWriter


@dataclass(frozen=True)
class MaskRule:
    """The per-layer selection rule of a layer-by-layer run: `density` kept per layer (`scope`
    "layer"), per output row ("row"), or N of every M consecutive inputs (`pattern`).

    `transposed` names weights stored (in, out) (GPT-2's Conv1D): rows and N:M groups then run
    along dim 0, as `apply` does.
    """

    density: float
    scope: str = "layer"
    pattern: tuple[int, int] | None = None
    transposed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, spec: Any, transposed: frozenset[str] = frozenset()) -> MaskRule:
        """The rule of a `SelectionSpec`; rules that need every layer at once are refused."""
        unsupported = {
            "scope global": spec.scope == "global" and spec.pattern is None,
            f"structure {spec.structure}": bool(spec.structure),
            "allocation erk": spec.allocation == "erk",
            "min_density": spec.min_density > 0,
            "shuffle": spec.shuffle,
            "invert": spec.invert,
        }
        for what, present in unsupported.items():
            if present:
                raise UsageError(
                    f"layer-by-layer pruning decides each layer's mask as it goes, so `{what.split()[0]}` "
                    f"({what}) cannot apply",
                    "use `scope` layer or row, or `pattern` N:M",
                    option=what.split()[0],
                )
        return cls(spec.density, spec.scope, spec.pattern, transposed)

    def mask(self, name: str, scores: np.ndarray) -> np.ndarray:
        """The keep mask of one layer's float32 scores (higher = keep), shaped as stored."""
        keys = scores_to_keys(scores, name)
        flip = name in self.transposed
        keys = np.ascontiguousarray(keys.T) if flip else keys
        if self.pattern is not None:
            mask = nm_mask(keys, *self.pattern, name)
        elif self.scope == "row":
            mask = row_mask(keys, self.density)
        else:
            mask = topk_mask(keys, keep_count(keys.size, self.density))
        return np.ascontiguousarray(mask.T) if flip else mask


@dataclass
class LayerResults:
    """Masks decided so far (bit-packed), and updated weights streamed to `weights`."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # each weight's dtype in the checkpoint: updated weights are written in it
    weights: SafetensorsWriter | None = None
    packed: dict[str, np.ndarray] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, mask: np.ndarray, weight: torch.Tensor | None = None) -> None:
        import torch

        self.packed[name] = np.packbits(mask.reshape(-1))
        self.kept[name] = int(np.count_nonzero(mask))
        if weight is not None and self.weights is not None:
            from prunecli.io.torch_files import torch_dtype, torch_to_raw

            stored = weight.detach().to("cpu", torch_dtype(self.dtypes[name])) * torch.from_numpy(mask)
            self.weights.write(name, torch_to_raw(stored.contiguous()))


class WandaPruner:
    """Wanda block by block: ‖X_j‖ from the block's (pruned-upstream) inputs, masks by `rule`."""

    def __init__(self, rule: MaskRule, results: LayerResults) -> None:
        self.rule, self.results = rule, results
        self.squares: dict[str, torch.Tensor] = {}

    def observe(self, layers: dict[str, nn.Module]) -> list[Any]:
        from prunecli.scoring.wanda import _accumulate

        return [m.register_forward_pre_hook(_accumulate(n, m, self.squares)) for n, m in layers.items()]

    def prune(self, layers: dict[str, nn.Module]) -> None:
        import torch

        from prunecli.distributed import add_across
        from prunecli.scoring.wanda import _scores

        add_across(self.squares[name] for name in layers if name in self.squares)  # over all ranks' data
        for name, module in layers.items():
            scores = _scores(module, self.squares.pop(name, None)).to("cpu", torch.float32).numpy()
            mask = self.rule.mask(name, scores)
            module.weight.mul_(torch.from_numpy(mask).to(module.weight.device))
            self.results.add(name, mask)


class SparseGPTPruner:
    """SparseGPT block by block: H = 2XXᵀ of each layer's inputs, then the OBS solve with updates."""

    def __init__(self, rule: MaskRule, results: LayerResults, block_size: int, damp: float) -> None:
        self.rule, self.results, self.block_size, self.damp = rule, results, block_size, damp
        self.hessians: dict[str, Any] = {}

    def observe(self, layers: dict[str, nn.Module]) -> list[Any]:
        from prunecli.scoring.sparsegpt import HessianAccumulator

        hooks = []
        for name, module in layers.items():
            columns = module.weight.shape[0 if name in self.rule.transposed else 1]
            accumulator = HessianAccumulator(columns, module.weight.device, name)
            self.hessians[name] = accumulator
            hooks.append(module.register_forward_pre_hook(_feed(accumulator)))
        return hooks

    def prune(self, layers: dict[str, nn.Module]) -> None:
        """Solve each layer; under torch.distributed the block's layers are spread over the ranks
        (layer i on rank i mod size), each after its Hessian was summed over every rank's data,
        and each solved weight and mask is then broadcast from the rank that solved it."""
        import torch

        from prunecli.distributed import broadcast_from, mine, world_size
        from prunecli.scoring.sparsegpt import sparsegpt_solve

        for name in layers:
            self.hessians[name].add_across_ranks()
        masks: dict[str, torch.Tensor] = {}
        facts: dict[str, torch.Tensor] = {}  # (retries, damping) of each layer, for its note
        for index, (name, module) in enumerate(layers.items()):
            hessian = self.hessians.pop(name)
            if not mine(index):
                continue
            solved = sparsegpt_solve(
                module.weight.detach(), hessian.hessian,
                density=None if self.rule.pattern else self.rule.density, pattern=self.rule.pattern,
                block_size=self.block_size, damp=self.damp, transposed=name in self.rule.transposed,
                name=name, consume=True,
            )  # fmt: skip
            del hessian
            module.weight.copy_(solved.weight)
            masks[name] = solved.mask
            facts[name] = torch.tensor([solved.retries, solved.damping], dtype=torch.float64)
        for index, (name, module) in enumerate(layers.items()):
            if world_size() > 1:
                device = module.weight.device
                mask, fact = masks.get(name), facts.get(name)
                wire = (  # gloo and NCCL both carry uint8
                    torch.empty(module.weight.shape, dtype=torch.uint8, device=device)
                    if mask is None else mask.to(device, torch.uint8)
                )  # fmt: skip
                fact = torch.zeros(2, dtype=torch.float64, device=device) if fact is None else fact.to(device)
                broadcast_from(index % world_size(), [module.weight, wire, fact])
                masks[name], facts[name] = wire.bool(), fact.cpu()
            retries, damping = int(facts[name][0]), float(facts[name][1])
            if retries:
                steps = f"{retries} more damping step(s)"
                self.results.notes.append(f"{name}: the Hessian needed {steps} (now {damping:g})")
            self.results.add(name, masks.pop(name).to("cpu").numpy(), module.weight)


def _feed(accumulator: Any) -> Callable[[Any, tuple[Any, ...]], None]:
    def hook(_: Any, args: tuple[Any, ...]) -> None:
        accumulator.add(args[0])

    return hook


def weights_writer(path: Path, results: LayerResults) -> SafetensorsWriter:
    """A writer for the updated weights, in the order the layers will be pruned (`shapes`' order)."""
    from prunecli.io.safetensors_file import SafetensorsWriter

    entries = [(name, results.dtypes[name], shape) for name, shape in results.shapes.items()]
    return SafetensorsWriter(path, entries, {"format": "prunecli.updated-weights"})
