"""Losses for scoring: supervised CE, the unsupervised losses of Lee et al. 2020, and nll.

- `ce`: cross-entropy with the labels (the default when labels are given).
- `pseudo`: cross-entropy against the model's own predictions, argmax f(x) (Lee et al.
  2020, §12 (a)); the default when no labels are given.
- `uniform`: cross-entropy against the uniform distribution, −(1/K)·Σ_k log softmax_k
  (Lee et al. 2020, §12 (b)).
- `nll`: `F.nll_loss` on raw logits, i.e. −mean z_y: what the FORCE and SNIP-it reference
  code computes, for bit-for-bit comparisons.
- `lm`: next-token cross-entropy of a language model over the unpadded positions (the default
  for token data, whose labels are the next tokens, `IGNORE` where there is none).

Logits are (B, K), or (B, T, V) for a language model: every position is then one prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunecli.errors import UsageError

LOSSES = ("ce", "pseudo", "uniform", "nll", "lm")
SUPERVISED = frozenset({"ce", "nll", "lm"})
IGNORE = -100  # a label with no target (a padded position, or the last token of a window)


def default_loss(has_labels: bool, tokens: bool = False) -> str:
    if tokens:
        return "lm"
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
    """The scalar loss of a batch; `logits` is (B, K) or (B, T, V), `labels` (B,) or (B, T)."""
    if logits.dim() > 2:  # one prediction per position
        logits = logits.reshape(-1, logits.shape[-1])
        labels = None if labels is None else labels.reshape(-1)
    if logits.dtype in (torch.bfloat16, torch.float16):  # softmax and its sum in float32
        logits = logits.float()
    if name in ("ce", "lm"):
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    if name == "nll":
        return F.nll_loss(logits, labels, ignore_index=IGNORE)
    if name == "pseudo":
        return F.cross_entropy(logits, logits.detach().argmax(dim=1))
    if name == "uniform":
        return -F.log_softmax(logits, dim=1).mean(dim=1).mean()
    raise UsageError(f"unknown `loss` {name!r}", f"choose one of: {', '.join(LOSSES)}",
                     option="loss", value=name, allowed=LOSSES)  # fmt: skip
