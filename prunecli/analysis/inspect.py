"""`inspect`: per-tensor densities of an output folder, a manifest or any checkpoint.

Manifests are read as JSON; safetensors checkpoints are counted from their raw bytes
(for floats, an entry is zero when all bits but the sign are zero). Neither imports torch.

A manifest is a claim, so before its numbers are reported (or gated on) they are checked:
against each other (numel, density, totals), against the masks file beside it (every mask's
size and set bits), and against the model file's header when one is there. Any contradiction
is an error (exit 2): an edited folder, or one mixed from two runs, must not pass a CI gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.errors import InputError, ManifestError, UsageError
from prunecli.io.checkpoints import open_checkpoint, require_file, weights_path
from prunecli.io.dtypes import zero_count
from prunecli.io.manifest import MANIFEST_FILE, read_manifest, tensor_record
from prunecli.io.safetensors_file import SafetensorsReader
from prunecli.selection.prunable import prunable_names

REDO = "re-run apply; the folder was edited or mixed from two runs"
MASK_BLOCK = 1 << 20  # bytes of a mask counted at a time: big masks never sit whole in memory
_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


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
        chosen = set(prunable_names(ckpt.tensors, include, exclude, ckpt.config_folder is not None))
        tensors = []
        for name, info in ckpt.tensors.items():
            kept = info.numel - zero_count(ckpt.view(name), info.dtype)  # mapped, not copied
            tensors.append(tensor_record(name, info.shape, info.dtype, kept, name in chosen))
        notes = list(ckpt.notes)
    return {"path": str(path), "kind": "checkpoint", "tensors": tensors, "totals": _totals(tensors),
            "warnings": [], "notes": notes}  # fmt: skip


def summarize_manifest(path: Path, require_masks: bool = False) -> dict[str, Any]:
    """The manifest's own per-tensor records and totals, once they are shown to be true.

    The masks file beside the manifest is required when `require_masks` (an output folder
    was named): otherwise deleting it would be a way around the cross-check.
    """
    manifest = read_manifest(path)
    check_manifest_numbers(manifest, path)
    model_path, masks_path = output_files(manifest, path)
    verified = {"masks": masks_path.is_file(), "model": model_path is not None and model_path.is_file()}
    notes = []
    if verified["masks"]:
        check_masks(manifest, masks_path)
    elif require_masks:
        raise InputError(f"{path.parent} has {path.name} but no {masks_path.name}", REDO)
    else:
        notes.append(f"no {masks_path.name} beside {path}: only the manifest's own numbers were checked")
    if verified["model"]:
        check_model(manifest, model_path)
    return {
        "path": str(path),
        "kind": "manifest",
        "method": manifest["method"]["name"],
        "selection": manifest["selection"],
        "tensors": manifest["tensors"],
        "totals": manifest["totals"],
        "warnings": manifest["warnings"],
        "verified": verified,
        "notes": notes,
    }


def _contradiction(where: Path, what: str) -> ManifestError:
    """The one error for a folder whose files disagree: say where, what, and how to recover."""
    return ManifestError(f"{where}: {what}", REDO)


def _agrees(recorded: float, computed: float) -> bool:
    """Equal up to float rounding (apply writes the exact quotient; JSON keeps it)."""
    return math.isclose(recorded, computed, rel_tol=1e-9, abs_tol=1e-12)


def _first_non_finite(value: Any, where: str = "$") -> str | None:
    """Where a NaN or infinity hides (Python's JSON reader accepts them; no writer of ours does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _first_non_finite(item, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]")
        if found:
            return found
    return None


def _check_record(record: dict[str, Any], path: Path) -> None:
    """One record agrees with itself: numel is the product of shape, density is kept/numel."""
    name, numel, kept, shape = record["name"], record["numel"], record["kept"], record["shape"]
    if numel != math.prod(shape):
        raise _contradiction(
            path, f"{name} records numel {numel}, but its shape {shape} holds {math.prod(shape)}"
        )
    if kept > numel or (not record["pruned"] and kept != numel):
        unpruned = "" if record["pruned"] else ", and it is not pruned"
        raise _contradiction(path, f"{name} records kept {kept} of numel {numel}{unpruned}")
    density = kept / numel if numel else 1.0
    if not _agrees(record["density"], density):
        raise _contradiction(
            path,
            f"{name} records density {record['density']!r}, but kept/numel is {kept}/{numel} = {density!r}",
        )


def check_manifest_numbers(manifest: dict[str, Any], path: Path) -> None:
    """The manifest agrees with itself: finite numbers, one record per name, each record
    consistent, and totals that are the sums of the records (so `--expect-sparsity` gates on
    what the records say, not on a hand-edited total).
    """
    where = _first_non_finite(manifest)
    if where:
        raise _contradiction(path, f"{where} is not a finite number")
    seen: set[str] = set()
    for record in manifest["tensors"]:
        if record["name"] in seen:
            raise _contradiction(path, f"{record['name']} has more than one record")
        seen.add(record["name"])
        _check_record(record, path)
    sums = _totals(manifest["tensors"])
    totals = manifest["totals"]
    for key in ("params", "prunable", "kept"):
        if key in totals and totals[key] != sums[key]:
            raise _contradiction(path, f"totals.{key} is {totals[key]}, but the records sum to {sums[key]}")
    if not _agrees(totals["sparsity"], sums["sparsity"]):
        raise _contradiction(
            path, f"totals.sparsity is {totals['sparsity']!r}, but the records give {sums['sparsity']!r}"
        )


def output_files(manifest: dict[str, Any], path: Path) -> tuple[Path | None, Path]:
    """The model and masks files the manifest names, which must lie in its own folder (no model
    for a mask set, e.g. an `intersect` output: `files.model` null)."""
    files: list[Path | None] = []
    for key in ("model", "masks"):
        name = manifest["files"][key]
        if name is None and key == "model":
            files.append(None)
            continue
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise _contradiction(path, f"files.{key} {name!r} is not a file name in the manifest's folder")
        files.append(path.parent / name)
    return files[0], files[1]


def mask_bits(reader: SafetensorsReader, name: str, numel: int) -> tuple[int, bool]:
    """(set bits among the first `numel`, whether the trailing pad bits are all 0), counted
    block by block from the mapped file so a mask of any size stays torch-free and small.
    """
    packed = reader.view(name).reshape(-1)
    count = 0
    for start in range(0, packed.size, MASK_BLOCK):
        count += int(_POPCOUNT[packed[start : start + MASK_BLOCK]].sum(dtype=np.int64))
    pad = -numel % 8
    pad_clear = pad == 0 or packed.size == 0 or int(packed[-1]) & ((1 << pad) - 1) == 0
    return count, pad_clear


def check_masks(manifest: dict[str, Any], masks_path: Path) -> None:
    """Every pruned record has its mask, packed to its size, with exactly `kept` bits set;
    and the masks file holds no other mask.
    """
    pruned = [r for r in manifest["tensors"] if r["pruned"]]
    reader = SafetensorsReader(masks_path)
    try:
        extra = sorted(set(reader.tensors) - {r["name"] for r in pruned})
        if extra:
            raise _contradiction(
                masks_path, f"holds a mask for {extra[0]}, which the manifest does not prune"
            )
        for record in pruned:
            name, numel, packed = record["name"], record["numel"], -(-record["numel"] // 8)
            info = reader.tensors.get(name)
            if info is None:
                raise _contradiction(masks_path, f"has no mask for {name}, which the manifest prunes")
            if info.dtype != "U8" or info.numel != packed:
                raise _contradiction(
                    masks_path,
                    f"the mask of {name} is {info.numel} {info.dtype} values, but numel {numel} packs "
                    f"into {packed} U8 bytes",
                )
            count, pad_clear = mask_bits(reader, name, numel)
            if not pad_clear:
                raise _contradiction(
                    masks_path, f"the mask of {name} has pad bits set past its {numel} elements"
                )
            if count != record["kept"]:
                raise _contradiction(
                    masks_path,
                    f"the mask of {name} keeps {count} weights, but the manifest records "
                    f"kept {record['kept']}",
                )
    finally:
        reader.close()


def check_model(manifest: dict[str, Any], model_path: Path) -> None:
    """The model file's header lists exactly the recorded tensors, with their shapes and dtypes."""
    with open_checkpoint(model_path) as model:  # headers only (and an index's shards' headers)
        tensors = dict(model.tensors)
    records = {r["name"]: r for r in manifest["tensors"]}
    missing = [n for n in records if n not in tensors]
    extra = [n for n in tensors if n not in records]
    if missing or extra:
        name = (missing or extra)[0]
        where = "the manifest records it but the model lacks it" if missing else "the manifest has no record"
        raise _contradiction(model_path, f"{name}: {where} ({len(tensors)} tensors, {len(records)} records)")
    for name, record in records.items():
        info = tensors[name]
        if list(info.shape) != record["shape"] or info.dtype != record["dtype"]:
            raise _contradiction(
                model_path,
                f"{name} is {info.dtype}{list(info.shape)}, but the manifest records "
                f"{record['dtype']}{record['shape']}",
            )


def summarize(path: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Summarize whatever `path` is: an apply output folder, a manifest, or a checkpoint."""
    folder = path.is_dir()
    if folder and (path / MANIFEST_FILE).is_file():
        path = path / MANIFEST_FILE  # an apply output: its manifest, checked against its files
    elif folder:
        folder = False  # a model folder: its weights, counted
    else:
        require_file(path, "input")
    is_manifest = path.suffix == ".json" and not path.name.endswith(".index.json")
    summary = (
        summarize_manifest(path, require_masks=folder)
        if is_manifest
        else summarize_checkpoint(path, include, exclude)
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
        """Refuse values that would make the gate pass anything (NaN compares false, inf
        swallows every difference) or fail everything."""
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:  # NaN fails this too
            raise UsageError(f"`sparsity` {self.sparsity} is outside [0, 1]", "use a fraction",
                             option="sparsity", value=self.sparsity, bounds=(0.0, 1.0))  # fmt: skip
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise UsageError(
                f"`tolerance` {self.tolerance} is not a finite number >= 0", "use a fraction, e.g. 0.001",
                option="tolerance", value=self.tolerance,
            )  # fmt: skip


def check(summary: dict[str, Any], expect: Expectations) -> list[str]:
    """Failed expectations, one sentence each (an empty list means all hold)."""
    failures = []
    achieved = summary["totals"]["sparsity"]
    within = expect.sparsity is None or abs(achieved - expect.sparsity) <= expect.tolerance + 1e-12
    if not within:  # written so that a NaN anywhere fails
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

    from prunecli.analysis.signal import signal_report
    from prunecli.calibration.data import load_calibration, parse_shape
    from prunecli.io.checkpoints import load_state_dict
    from prunecli.models import default_input_shape, load_weights, parse_arch_args, resolve_model

    folder = path if path.is_dir() else path.parent if path.suffix == ".json" else None
    weights = weights_path(folder) if folder else path
    args = parse_arch_args(request.arch_args)
    calibration = None
    if request.data:
        calibration = load_calibration(request.data, batch_size=request.examples, seed=request.seed)
    shape = parse_shape(request.input_shape) if request.input_shape else None
    shape = shape or (calibration.example_shape if calibration else default_input_shape(request.arch, args))
    if shape is None:
        raise UsageError("`signal` needs an input shape", "add `input_shape`, e.g. 3x32x32, or `data`",
                         option="input_shape")  # fmt: skip
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
