"""onnxruntime against torch on seeded inputs: the check behind `export --verify`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunecli.errors import PruneError
from prunecli.export.sparse import session_options

Feeds = dict[str, np.ndarray]  # onnxruntime's inputs of one run, by input name


@dataclass(frozen=True)
class Verification:
    """onnxruntime against torch on seeded inputs: passed when |ort − torch| <= atol + rtol·|torch|.

    A model with one float input is run once; a language model twice, at two shapes of its token
    ids (`shapes`: the shape of the first input in each run), which checks its dynamic axes too.
    """

    passed: bool
    batch: int  # of the first run
    max_abs_error: float | None  # None when an output is NaN on one side only
    max_rel_error: float | None  # max |ort − torch| / |torch| over the nonzero torch outputs
    mismatched: int  # values outside the tolerance, over all runs
    values: int
    atol: float
    rtol: float
    runtime: str  # "onnxruntime X.Y.Z"
    seconds: float
    shapes: list[list[int]]


def verify(
    ort: Any, data: bytes, runs: Sequence[tuple[Feeds, list[np.ndarray]]], atol: float, rtol: float
) -> Verification:
    """Run the serialized model in onnxruntime on each run's inputs and compare with torch's outputs.

    Args:
        ort: the onnxruntime module.
        data: the serialized ONNX model.
        runs: pairs of (inputs by name, torch's outputs on them, in the model's output order).
        atol, rtol: the tolerance, as in `numpy.allclose`.
    """
    start = time.perf_counter()
    session = ort.InferenceSession(data, session_options(ort), ["CPUExecutionProvider"])
    abs_err, rel_err, mismatched = 0.0, 0.0, 0
    for feeds, reference in runs:
        for ours, want in zip(session.run(None, feeds), reference, strict=True):
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
    shapes = [list(next(iter(feeds.values())).shape) for feeds, _ in runs]
    return Verification(
        passed=mismatched == 0,
        batch=shapes[0][0],
        max_abs_error=abs_err if finite[0] else None,
        max_rel_error=rel_err if finite[1] else None,
        mismatched=mismatched,
        values=sum(int(r.size) for _, reference in runs for r in reference),
        atol=atol,
        rtol=rtol,
        runtime=f"onnxruntime {ort.__version__}",
        seconds=time.perf_counter() - start,
        shapes=shapes,
    )
