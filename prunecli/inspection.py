"""`inspect`: per-tensor densities of an output folder, a manifest or any checkpoint.

Manifests are read as JSON; safetensors checkpoints are counted from their raw bytes
(for floats, an entry is zero when all bits but the sign are zero). Neither imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        tensors = []
        for name, info in ckpt.tensors.items():
            kept = info.numel - zero_count(ckpt.view(name), info.dtype)  # mapped, not copied
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
    signal = summary.get("signal")
    if expect.fail_on_collapse and signal and not signal["after"]["connected"]:
        failures.append("no path from input to output survives (SynFlow R = 0)")
    return failures


@dataclass(frozen=True)
class SignalRequest:
    """`inspect --signal`: the architecture to rebuild the network, and the examples to probe."""

    arch: str
    arch_args: str | None = None
    data: str | None = None
    input_shape: str | None = None
    examples: int = 32
    seed: int = 0


def signal_summary(path: Path, request: SignalRequest) -> dict[str, Any]:
    """Jacobian singular values and the path check R, after pruning and (when the source is
    found) before: Lee et al. 2020's view of whether a pruned network can still learn.

    Without --data the probes are seeded standard-normal inputs of one example's shape.
    """
    import torch

    from prunecli.checkpoints import load_state_dict
    from prunecli.data import load_calibration, parse_shape
    from prunecli.models import default_input_shape, load_weights, parse_arch_args, resolve_model
    from prunecli.signal import signal_report

    folder = path if path.is_dir() else path.parent if path.suffix == ".json" else None
    weights = folder / "model.safetensors" if folder else path
    args = parse_arch_args(request.arch_args)
    calibration = None
    if request.data:
        calibration = load_calibration(request.data, batch_size=request.examples, seed=request.seed)
    shape = parse_shape(request.input_shape) if request.input_shape else None
    shape = shape or (calibration.example_shape if calibration else default_input_shape(request.arch, args))
    if shape is None:
        raise UsageError("--signal needs an input shape", "add --input-shape, e.g. 3x32x32, or --data")
    if calibration:
        inputs = calibration.batches[0][0]
    else:
        inputs = torch.randn(
            (request.examples, *shape), generator=torch.Generator().manual_seed(request.seed)
        )

    def report(checkpoint: Path, masks: Path | None) -> dict[str, Any]:
        model = resolve_model(request.arch, args)
        load_weights(model, load_state_dict(checkpoint), str(checkpoint))
        return signal_report(model, masks, shape, inputs)

    result: dict[str, Any] = {"after": report(weights, folder), "before": None, "input_shape": list(shape)}
    if folder is not None:
        source = Path(read_manifest(folder / MANIFEST_FILE)["source"]["path"])
        result["before"] = report(source, None) if source.is_file() else None
    return result
