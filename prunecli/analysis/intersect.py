"""`intersect`: the weights every mask set keeps (or, with `union`, any of them), as a new mask set.

The output folder holds `masks.safetensors` and a `manifest.json` with no model file
(`files.model` is null): per-tensor kept counts and densities, and a `lineage` naming each input
and the sha256 of its masks. `apply --masks OUT` puts it on a checkpoint; `inspect` and
`compare` read it as they read an apply output.

The report sets each tensor's result against chance: the kept count expected if the inputs were
independent uniformly random masks with the same per-tensor kept counts
(`compare.expected_random_overlap`, folded over the inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunecli import __version__
from prunecli.analysis.compare import expected_random_overlap
from prunecli.errors import InputError, UsageError
from prunecli.io.manifest import (
    FORMAT,
    MANIFEST_FILE,
    MASKS_FILE,
    SCHEMA_VERSION,
    tensor_record,
    write_manifest,
)
from prunecli.io.mask_sets import PackedMasks, open_mask_set
from prunecli.io.outputs import output_folder
from prunecli.io.safetensors_file import write_arrays
from prunecli.selection.spec import SelectionSpec

_SAME_MODEL = "intersect masks made for one architecture: the same tensor names and shapes"


def intersect(
    sources: Sequence[str | Path], output: str | Path, *, union: bool = False, force: bool = False
) -> dict[str, Any]:
    """Write the intersection (or union) of two or more mask sets to `output/`.

    Args:
        sources: apply, intersect or lottery-round output folders, their manifest.json, or
            masks.safetensors files; at least one must record shapes (a folder or manifest).
        union: keep what any input keeps, instead of what all keep.
        force: replace an earlier output (one prunecli wrote).

    Returns:
        The report: `operation`, `output`, `inputs` (path, sha256, method of each), `tensors`
        (per tensor: `name`, `shape`, `numel`, `kept` per input, `densities`, `result_kept`,
        `result_density`, `chance_kept`, `chance_density`, `vs_chance`) and `totals` (the same
        summed), and `manifest` (as written).

    Raises:
        UsageError: fewer than two sources; InputError: a missing source, or sets whose names or
            shapes differ.

    Example:
        >>> report = intersect(["seed0/round-5", "seed1/round-5"], "common")
        >>> report["totals"]["result_density"], report["totals"]["vs_chance"]
    """
    if len(sources) < 2:
        raise UsageError(f"intersect needs at least two mask sets, got {len(sources)}", "name two or more")
    sets = _shaped([open_mask_set(source) for source in sources])
    first = sets[0]
    records, packed, rows = [], {}, []
    for name in first.names:
        masks = [s.mask(name) for s in sets]
        result = np.logical_or.reduce(masks) if union else np.logical_and.reduce(masks)
        packed[name] = np.packbits(result.reshape(-1))
        rows.append(_row(name, masks, int(np.count_nonzero(result)), union))
        records.append(
            tensor_record(name, first.shapes[name], _dtype(sets, name), rows[-1]["result_kept"], True)
        )
    operation = "union" if union else "intersect"
    out = Path(output)
    inputs = [path for s in sets for path in s.files]
    with output_folder(out, force, inputs) as folder:
        write_arrays(
            folder / MASKS_FILE, {n: ("U8", p) for n, p in packed.items()}, {"format": "prunecli.masks"}
        )
        manifest = _manifest(sets, records, operation)
        write_manifest(manifest, folder / MANIFEST_FILE)
    return {
        "operation": operation,
        "output": str(out),
        "inputs": [s.record() for s in sets],
        "tensors": rows,
        "totals": _totals(rows, len(sets), union),
        "manifest": manifest,
    }


def _shaped(sets: list[PackedMasks]) -> list[PackedMasks]:
    """Every set with shapes (a bare masks file takes those of a set that records them), after
    checking that all name the same tensors with the same shapes."""
    shaped = next((s for s in sets if s.shapes is not None), None)
    if shaped is None:
        raise InputError(
            "none of the mask sets records shapes (all are bare masks files)",
            "give at least one as an output folder or its manifest.json",
        )
    for s in sets:
        missing = [n for n in shaped.names if n not in s.packed]
        extra = [n for n in s.names if n not in shaped.packed]
        if missing or extra:
            name, has, lacks = (missing[0], shaped, s) if missing else (extra[0], s, shaped)
            raise InputError(f"{name} has a mask in {has.source} but not in {lacks.source}", _SAME_MODEL)
        if s.shapes is not None:
            for name in shaped.names:
                if s.shapes[name] != shaped.shapes[name]:
                    raise InputError(
                        f"{name} is {list(s.shapes[name])} in {s.source} but "
                        f"{list(shaped.shapes[name])} in {shaped.source}",
                        _SAME_MODEL,
                    )
    try:
        return [s.shaped_by(shaped.shapes) for s in sets]
    except InputError as exc:
        raise InputError(exc.message, _SAME_MODEL) from None


def _dtype(sets: list[PackedMasks], name: str) -> str:
    """The weights' dtype, as the first manifest records it."""
    for s in sets:
        for record in (s.manifest or {}).get("tensors", []):
            if record["name"] == name:
                return record["dtype"]
    return "F32"  # unreachable: some set has a manifest


def chance_kept(numel: int, kept: list[int], union: bool) -> float:
    """The result's expected kept count for independent uniformly random masks with these counts.

    Example:
        >>> chance_kept(100, [50, 50], union=False), chance_kept(100, [50, 50], union=True)
        (25.0, 75.0)
    """
    expected = float(kept[0])
    for count in kept[1:]:
        both, either = expected_random_overlap(numel, expected, count)
        expected = either if union else both
    return expected


def _ratio(kept: float, chance: float) -> float | None:
    return kept / chance if chance else None


def _row(name: str, masks: list[np.ndarray], result_kept: int, union: bool) -> dict[str, Any]:
    numel = masks[0].size
    kept = [int(np.count_nonzero(m)) for m in masks]
    chance = chance_kept(numel, kept, union)
    return {
        "name": name,
        "shape": list(masks[0].shape),
        "numel": numel,
        "kept": kept,
        "densities": [k / numel if numel else 1.0 for k in kept],
        "result_kept": result_kept,
        "result_density": result_kept / numel if numel else 1.0,
        "chance_kept": chance,
        "chance_density": chance / numel if numel else 1.0,
        "vs_chance": _ratio(result_kept, chance),
    }


def _totals(rows: list[dict[str, Any]], inputs: int, union: bool) -> dict[str, Any]:
    numel = sum(r["numel"] for r in rows)
    kept = [sum(r["kept"][i] for r in rows) for i in range(inputs)]
    result = sum(r["result_kept"] for r in rows)
    chance = sum(r["chance_kept"] for r in rows)  # the sum of each tensor's expectation
    return {
        "tensors": len(rows),
        "numel": numel,
        "kept": kept,
        "densities": [k / numel if numel else 1.0 for k in kept],
        "result_kept": result,
        "result_density": result / numel if numel else 1.0,
        "chance_kept": chance,
        "chance_density": chance / numel if numel else 1.0,
        "vs_chance": _ratio(result, chance),
    }


def _manifest(sets: list[PackedMasks], records: list[dict[str, Any]], operation: str) -> dict[str, Any]:
    """A mask-set manifest: no model file, no selection rule of its own, the inputs as lineage."""
    prunable = sum(r["numel"] for r in records)
    kept = sum(r["kept"] for r in records)
    sources = [s.manifest["source"] for s in sets if s.manifest is not None]
    same = len({src["sha256"] for src in sources}) == 1 and len(sources) == len(sets)
    source = dict(sources[0]) if same else {"path": f"({len(sets)} mask sets)", "sha256": "", "arch": None}
    density = kept / prunable if prunable else 1.0
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "prunecli", "version": __version__},
        "source": source,
        "method": {"name": operation, "params": {}, "seed": 0, "scores": None, "data_fingerprint": None},
        "selection": SelectionSpec(density=density).record(),
        "totals": {
            "params": prunable,
            "prunable": prunable,
            "kept": kept,
            "sparsity": 1.0 - kept / prunable if prunable else 0.0,
        },
        "tensors": records,
        "warnings": [
            {
                "kind": "collapsed_layer",
                "tensor": r["name"],
                "message": f"{r['name']} keeps no weights: the layer is collapsed",
            }
            for r in records
            if r["kept"] == 0 and r["numel"] > 0
        ],
        "weights_updated": False,
        "lineage": {"kind": operation, "masks": [s.record() for s in sets]},
        "files": {"model": None, "masks": MASKS_FILE},
    }
