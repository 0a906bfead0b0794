"""Losses for scoring: supervised CE, the unsupervised losses of Lee et al. 2020, and nll.

- `ce`: cross-entropy with the labels (the default when labels are given).
- `pseudo`: cross-entropy against the model's own predictions, argmax f(x) (Lee et al.
  2020, §12 (a)); the default when no labels are given.
- `uniform`: cross-entropy against the uniform distribution, −(1/K)·Σ_k log softmax_k
  (Lee et al. 2020, §12 (b)).
- `nll`: `F.nll_loss` on raw logits, i.e. −mean z_y: what the FORCE and SNIP-it reference
  code computes, for bit-for-bit comparisons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunecli.errors import UsageError

LOSSES = ("ce", "pseudo", "uniform", "nll")
SUPERVISED = frozenset({"ce", "nll"})


def default_loss(has_labels: bool) -> str:
    return "ce" if has_labels else "pseudo"


def check_loss(name: str, has_labels: bool) -> None:
    """Refuse unknown losses, and supervised losses without labels."""
    if name not in LOSSES:
        raise UsageError(f"unknown `loss` {name!r}", f"choose one of: {', '.join(LOSSES)}",
                         option="loss", value=name, allowed=LOSSES)  # fmt: skip
    if name in SUPERVISED and not has_labels:
        raise UsageError(
            f"`loss` {name} needs labels but the calibration data has none",
            "add labels to the data file, or use `loss` pseudo or `loss` uniform",
            option="loss",
            value=name,
        )


def compute_loss(name: str, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The scalar loss of a batch; `logits` is (B, K)."""
    if name == "ce":
        return F.cross_entropy(logits, labels)
    if name == "nll":
        return F.nll_loss(logits, labels)
    if name == "pseudo":
        return F.cross_entropy(logits, logits.detach().argmax(dim=1))
    if name == "uniform":
        return -F.log_softmax(logits, dim=1).mean(dim=1).mean()
    raise UsageError(f"unknown `loss` {name!r}", f"choose one of: {', '.join(LOSSES)}",
                     option="loss", value=name, allowed=LOSSES)  # fmt: skip
