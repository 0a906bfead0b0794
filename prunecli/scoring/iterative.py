"""The state the iterative methods (SynFlow, FORCE, Iter-SNIP, SNIP-it) carry from step to step.

Each step of these methods computes w = θ⊙m, a gradient g with respect to w, the scores
|g⊙w| (or |g⊙θ| for FORCE), and the new mask: the global top k, ties broken as `apply` breaks
them. `MaskedLeaves` keeps θ and w per tensor, and the scores and the mask in flat buffers, on
the model's device for the whole loop, so a step allocates nothing of the model's size but
autograd's gradients, and selects on the scores' own bits (`topk.bit_keys`, a view). Masks,
scores and every tie are those of the plain loop (score every weight as a fresh tensor,
`keep_top`), bit for bit; tests/test_iterative_speed_paths.py holds that loop and checks it.

Pruned weights are ranked too, rather than compacted away: on the CPU, gathering the
survivors (`take`, boolean indexing) costs 5-10 times a plain pass over every weight per
element, which ate nearly all that ranking fewer weights saved (docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import torch

from prunecli.scoring.topk import bit_keys, keep_largest, on_numpy


class MaskedLeaves:
    """θ⊙m as autograd leaves, with the scores and the mask of the current step.

    Args:
        theta: the weights θ by name (|θ| for SynFlow), all on one device.
        dead: the score the plain loop gives a pruned weight: None where that is |g⊙0| = 0
            (SynFlow), −1 where pruned weights rank below all others (Iter-SNIP, SNIP-it).
        revive: whether pruned weights still get a gradient and may come back (FORCE);
            otherwise a tensor whose weights are all pruned gets no gradient (`active`).

    Example:
        >>> leaves = MaskedLeaves({"w": torch.tensor([3.0, -1.0, 2.0])}, dead=-1.0)
        >>> leaves.score({"w": torch.ones(3)})
        >>> leaves.select(2)
        >>> leaves.masks()["w"].tolist(), leaves.leaves["w"].tolist()
        ([True, False, True], [3.0, -0.0, 2.0])
    """

    def __init__(
        self, theta: dict[str, torch.Tensor], dead: float | None = None, revive: bool = False
    ) -> None:
        first = next(iter(theta.values()))
        self.dead, self.revive = dead, revive
        self._spans: dict[str, tuple[int, int, torch.Size]] = {}
        start = 0
        for name, w in theta.items():
            self._spans[name] = (start, start + w.numel(), w.shape)
            start += w.numel()
        self._theta = {n: w.detach().clone(memory_format=torch.contiguous_format) for n, w in theta.items()}
        self.leaves = {n: w.clone().requires_grad_(True) for n, w in self._theta.items()}  # θ⊙m
        # one dtype for the ranking: the tensors' own, or the widest (bfloat16 with float32 ranks
        # in float32, as `topk_masks` does)
        dtype = first.dtype
        for w in theta.values():
            dtype = torch.promote_types(dtype, w.dtype)
        self._scores = torch.empty(start, dtype=dtype, device=first.device)
        self._mask = torch.ones(start, dtype=torch.bool, device=first.device)
        self._keep = torch.empty_like(self._mask)

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: flat[a:b].view(shape) for name, (a, b, shape) in self._spans.items()}

    def active(self) -> list[str]:
        """The tensors to differentiate: all with `revive`, else those with a weight alive (a
        tensor pruned away entirely stops requiring a gradient)."""
        if self.revive:
            return list(self._spans)
        names = []
        for name, mask in self._views(self._mask).items():
            alive = bool(mask.numpy().any() if on_numpy(mask) else mask.any())  # numpy's stops early
            self.leaves[name].requires_grad_(alive)
            if alive:
                names.append(name)
        return names

    def score(self, grads: dict[str, torch.Tensor], scale: float | None = None) -> None:
        """This step's scores: |g⊙θ| with `revive`, else |g⊙w| (× `scale`); a tensor without a
        gradient scores |g⊙0| = 0. Pruned weights get `dead` in `select`."""
        for name, part in self._views(self._scores).items():
            x = self._theta[name] if self.revive else self.leaves[name].detach()
            if name in grads:  # computed in the tensor's dtype, then widened to the buffer's
                torch.mul(grads[name], x, out=part)
            else:
                part.zero_()
        self._scores.abs_()
        if scale is not None:
            self._scores.mul_(scale)

    def select(self, k: int, shrink: bool = False, final: bool = False) -> None:
        """Keep the k highest scores (with `shrink`, and only weights kept so far: SNIP-it), and
        set w = θ⊙m. With `final`, pruned weights get their `dead` score first even where the
        ranking does not need it, so `scores()` returns the plain loop's."""
        if self.dead is not None and final:
            self._scores.masked_fill_(~self._mask, self.dead)
        lowest = keep_largest(bit_keys(self._scores), k, self._keep)
        if self.dead is not None and not final and lowest is not None and lowest <= 0:
            # a kept or tied score of 0 may be a pruned weight's |g⊙0|: rank with `dead` instead
            self._scores.masked_fill_(~self._mask, self.dead)
            keep_largest(bit_keys(self._scores), k, self._keep)
        if shrink:
            self._mask &= self._keep
        else:
            self._mask, self._keep = self._keep, self._mask
        for name, mask in self._views(self._mask).items():
            _masked_copy(self._theta[name], mask, self.leaves[name].detach())

    def scores(self) -> dict[str, torch.Tensor]:
        """The last step's scores by name (views: the next step overwrites them)."""
        return self._views(self._scores)

    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks by name (views: the next step overwrites them)."""
        return self._views(self._mask)


def _masked_copy(theta: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> None:
    """out = θ⊙m (θ·1 or θ·0, as the plain loop's `w * mask`), into a leaf's memory, bypassing
    autograd. numpy on the CPU, where torch's float-by-bool product is 4-6x slower."""
    if on_numpy(out) and out.dtype in (torch.float32, torch.float64):
        np.multiply(theta.numpy(), mask.numpy(), out=out.numpy())
    else:
        with torch.no_grad():
            torch.mul(theta, mask, out=out)
