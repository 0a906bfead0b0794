"""`inspect`: per-tensor densities of an output folder, a manifest or any checkpoint.

Manifests are read as JSON; safetensors checkpoints are counted from their raw bytes
(for floats, an entry is zero when all bits but the sign are zero). Neither imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.checkpoints import open_checkpoint, require_file
from prunecli.dtypes import zero_count
from prunecli.errors import InputError, UsageError
from prunecli.manifest import read_manifest
from prunecli.prunable import prunable_names
from prunecli.pruning import MANIFEST_FILE


def _totals(tensors: list[dict[str, Any]]) -> dict[str, Any]:
    prunable = sum(t["numel"] for t in tensors if t["pruned"])
    kept = sum(t["kept"] for t in tensors if t["pruned"])
    return {
        "params": sum(t["numel"] for t in tensors),
        "prunable": prunable,
        "kept": kept,
        "sparsity": 1.0 - kept / prunable if prunable else 0.0,
    }


def summarize_checkpoint(
    path: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Count the nonzeros of every tensor; the prunable ones form the totals."""
    with open_checkpoint(path) as ckpt:
        chosen = set(prunable_names(ckpt.tensors, include, exclude))
        scratch = np.empty(max((i.nbytes for i in ckpt.tensors.values()), default=0), np.uint8)
        tensors = []
        for name, info in ckpt.tensors.items():
            kept = info.numel - zero_count(ckpt.read(name, scratch), info.dtype)
            tensors.append(
                {
                    "name": name,
                    "shape": list(info.shape),
                    "dtype": info.dtype,
                    "numel": info.numel,
                    "kept": kept,
                    "density": kept / info.numel if info.numel else 1.0,
                    "pruned": name in chosen,
                }
            )
        notes = list(ckpt.notes)
    return {"path": str(path), "kind": "checkpoint", "tensors": tensors, "totals": _totals(tensors),
            "warnings": [], "notes": notes}  # fmt: skip


def summarize_manifest(path: Path) -> dict[str, Any]:
    """The manifest's own per-tensor records and totals."""
    manifest = read_manifest(path)
    return {
        "path": str(path),
        "kind": "manifest",
        "method": manifest["method"]["name"],
        "selection": manifest["selection"],
        "tensors": manifest["tensors"],
        "totals": manifest["totals"],
        "warnings": manifest["warnings"],
        "notes": [],
    }


def summarize(path: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Summarize whatever `path` is: an apply output folder, a manifest, or a checkpoint."""
    if path.is_dir():
        manifest = path / MANIFEST_FILE
        if not manifest.is_file():
            raise InputError(f"{path} is a folder without {MANIFEST_FILE}", "pass an apply output folder")
        path = manifest
    require_file(path, "input")
    summary = (
        summarize_manifest(path) if path.suffix == ".json" else summarize_checkpoint(path, include, exclude)
    )
    summary["collapsed"] = [
        t["name"] for t in summary["tensors"] if t["pruned"] and t["kept"] == 0 and t["numel"]
    ]
    return summary


@dataclass(frozen=True)
class Expectations:
    """Checks that turn `inspect` into a CI gate (exit 1 when one fails)."""

    sparsity: float | None = None
    tolerance: float = 0.0
    fail_on_collapse: bool = False

    def validate(self) -> None:
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:
            raise UsageError(f"--expect-sparsity {self.sparsity} is outside [0, 1]", "use a fraction")
        if self.tolerance < 0:
            raise UsageError(f"--tolerance {self.tolerance} is negative", "use a fraction >= 0")


def check(summary: dict[str, Any], expect: Expectations) -> list[str]:
    """Failed expectations, one sentence each (an empty list means all hold)."""
    failures = []
    achieved = summary["totals"]["sparsity"]
    if expect.sparsity is not None and abs(achieved - expect.sparsity) > expect.tolerance + 1e-12:
        failures.append(f"sparsity is {achieved:.6f}, expected {expect.sparsity:.6f} ± {expect.tolerance:g}")
    if expect.fail_on_collapse and summary["collapsed"]:
        failures.append(f"{len(summary['collapsed'])} collapsed layer(s): {', '.join(summary['collapsed'])}")
    return failures
