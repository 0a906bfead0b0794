"""`apply --isometry-steps`: the approximate-isometry fix applied to each pruned tensor.

After masking, each pruned weight (viewed as (out, −1)) is moved by plain SGD towards
‖(C⊙W)(C⊙W)ᵀ − I‖_F = 0 with pruned entries held at zero (Lee et al. 2020; see
`prunecli.analysis.signal.approximate_isometry`). Layers do not interact, so it runs tensor by
tensor inside apply's streaming pass. Imports torch only when used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Refiner = Callable[[str, np.ndarray, np.ndarray, str], np.ndarray]


def isometry_refiner(steps: int, lr: float) -> tuple[Refiner, dict[str, Any]]:
    """A per-tensor refiner for apply, and the report it fills (for the manifest)."""
    report: dict[str, Any] = {
        "steps": steps,
        "lr": lr,
        "penalty_before": 0.0,
        "penalty_after": 0.0,
        "layers": [],
    }

    def refine(name: str, raw: np.ndarray, mask: np.ndarray, dtype: str) -> np.ndarray:
        import torch

        from prunecli.analysis.signal import approximate_isometry
        from prunecli.io.torch_files import raw_to_torch, torch_to_raw

        weight = raw_to_torch(raw, dtype)
        new, layer = approximate_isometry({name: weight}, {name: torch.from_numpy(mask.copy())}, steps, lr)
        report["penalty_before"] += layer["penalty_before"]
        report["penalty_after"] += layer["penalty_after"]
        report["layers"] += layer["layers"]
        return torch_to_raw(new[name])

    return refine, report
