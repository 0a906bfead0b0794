"""onnxruntime against torch on one seeded batch: the check behind `export --verify`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunecli.errors import PruneError
from prunecli.export.sparse import session_options


@dataclass(frozen=True)
class Verification:
    """onnxruntime against torch on one seeded batch: passed when |ort − torch| <= atol + rtol·|torch|."""

    passed: bool
    batch: int
    max_abs_error: float | None  # None when an output is NaN on one side only
    max_rel_error: float | None  # max |ort − torch| / |torch| over the nonzero torch outputs
    mismatched: int  # values outside the tolerance
    values: int
    atol: float
    rtol: float
    runtime: str  # "onnxruntime X.Y.Z"
    seconds: float


def verify(
    ort: Any, data: bytes, x: np.ndarray, reference: list[np.ndarray], atol: float, rtol: float
) -> Verification:
    """Run the serialized model in onnxruntime on `x` and compare with torch's outputs."""
    start = time.perf_counter()
    session = ort.InferenceSession(data, session_options(ort), ["CPUExecutionProvider"])
    got = session.run(None, {"input": x})
    abs_err, rel_err, mismatched = 0.0, 0.0, 0
    for ours, want in zip(got, reference, strict=True):
        a, b = np.asarray(ours, np.float64), np.asarray(want, np.float64)
        if a.shape != b.shape:
            raise PruneError(
                f"onnxruntime returned shape {list(a.shape)}, torch {list(b.shape)}",
                "report this with the model",
            )
        same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities and NaN on both sides agree
        diff = np.where(same, 0.0, np.abs(a - b))
        mismatched += int(np.count_nonzero(~(diff <= atol + rtol * np.abs(b))))
        abs_err = max(abs_err, float(diff.max(initial=0.0)))
        nonzero = b != 0
        rel_err = max(rel_err, float((diff[nonzero] / np.abs(b[nonzero])).max(initial=0.0)))
    finite = np.isfinite([abs_err, rel_err])
    return Verification(
        passed=mismatched == 0,
        batch=len(x),
        max_abs_error=abs_err if finite[0] else None,
        max_rel_error=rel_err if finite[1] else None,
        mismatched=mismatched,
        values=sum(int(r.size) for r in reference),
        atol=atol,
        rtol=rtol,
        runtime=f"onnxruntime {ort.__version__}",
        seconds=time.perf_counter() - start,
    )
