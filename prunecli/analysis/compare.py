"""`compare`: how much two mask sets agree, per tensor and in total, without torch.

For every tensor pruned on both sides: the density of each, the intersection |A∩B| and union
|A∪B| of the kept weights, their IoU (Jaccard index |A∩B| / |A∪B|), and the fraction of A's
kept weights that B also keeps (|A∩B| / |A|). Optionally, the same quantities expected from two
independent uniformly random masks with the same per-tensor kept counts, so agreement can be
judged against chance.

A side is an `apply` output folder, its `manifest.json`, or a `masks.safetensors` file. A masks
file with its manifest next to it is read through that manifest. A bare masks file (no manifest
that names it) carries no shapes: each tensor's shape is then taken from the other side when that
side has one (its byte count must fit), and otherwise both masks are compared as flat bit vectors
of 8 × bytes bits, padding bits included (they are zero, so the counts, intersection, union and
IoU stay exact; `numel`, the densities and the random baseline count up to 7 padding bits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.errors import InputError
from prunecli.io.checkpoints import open_checkpoint
from prunecli.io.manifest import read_manifest
from prunecli.training.masks import MANIFEST_FILE, read_masks

_SOURCE_HINT = "pass an apply output folder, its manifest.json, or its masks.safetensors"
_SAME_MODEL = "compare masks made for the same model: both sides must prune checkpoints of one architecture"


@dataclass(frozen=True)
class MaskSet:
    """One side of a comparison.

    Attributes:
        path: the source as given.
        kind: `manifest` (shapes known) or `masks` (a bare masks file, shapes unknown).
        method: the method recorded in the manifest, or None for a bare masks file.
        masks: name → bool array shaped like the parameter (kind `manifest`), or name → the
            packed uint8 bytes, flat (kind `masks`).
    """

    path: str
    kind: str
    method: str | None
    masks: dict[str, np.ndarray]

    @property
    def shaped(self) -> bool:
        return self.kind == "manifest"

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "method": self.method}


def load_mask_set(source: str | Path) -> MaskSet:
    """Read one side: a folder, a manifest, or a masks file (with or without its manifest).

    Example:
        >>> load_mask_set("snip/").masks["fc1.weight"].shape
        (300, 784)
    """
    path = Path(source)
    if path.is_dir() or path.suffix == ".json":
        return _from_manifest(str(source), path)
    if not path.exists():
        raise InputError(f"mask source {path} does not exist", _SOURCE_HINT)
    if path.suffix != ".safetensors":
        raise InputError(f"{path} is not a mask source", _SOURCE_HINT)
    manifest = path.parent / MANIFEST_FILE
    if manifest.is_file() and _names_file(manifest, path):
        return _from_manifest(str(source), manifest)
    return MaskSet(str(source), "masks", None, _packed(path))


def _names_file(manifest: Path, masks: Path) -> bool:
    """Whether the manifest's `files.masks` is this masks file."""
    return (manifest.parent / read_manifest(manifest)["files"]["masks"]).resolve() == masks.resolve()


def _from_manifest(source: str, path: Path) -> MaskSet:
    """A folder or a manifest, read by `read_masks` (which checks the folder, manifest and masks)."""
    masks = read_masks(path)
    manifest = read_manifest(path / MANIFEST_FILE if path.is_dir() else path)
    return MaskSet(source, "manifest", manifest["method"]["name"], masks)


def _packed(path: Path) -> dict[str, np.ndarray]:
    """The raw bytes of every mask in a bare masks file (flat uint8)."""
    with open_checkpoint(path) as ckpt:
        for name, info in ckpt.tensors.items():
            if info.dtype != "U8":
                raise InputError(
                    f"{path} holds the {info.dtype} tensor {name!r}, so it is not a masks file "
                    "(masks are bit-packed U8)",
                    _SOURCE_HINT,
                )
        return {name: ckpt.read(name).reshape(-1).copy() for name in ckpt.tensors}


def compare(
    a: str | Path | MaskSet, b: str | Path | MaskSet, random_baseline: bool = False
) -> dict[str, Any]:
    """Compare two mask sets read from disk (see `compare_masks` for the report's fields).

    Args:
        a, b: an `apply` output folder, a `manifest.json`, a `masks.safetensors`, or a `MaskSet`.
        random_baseline: also report the overlap expected from independent random masks.

    Returns:
        `compare_masks`'s report, plus `a` and `b` (`path`, `kind`, `method`) and `notes`
        (sentences for stderr: how shapes were found for a bare masks file).

    Raises:
        InputError: a missing or unreadable side, or one tensor with two different shapes.

    Example:
        >>> report = compare("snip/", "synflow/", random_baseline=True)
        >>> report["totals"]["iou"], report["totals"]["random"]["iou"]
    """
    sides = [s if isinstance(s, MaskSet) else load_mask_set(s) for s in (a, b)]
    labels = [f"{tag} ({side.path})" for tag, side in zip("AB", sides, strict=True)]
    masks_a, masks_b, notes = _reconcile(sides[0], sides[1], labels)
    report = compare_masks(masks_a, masks_b, random_baseline, labels=labels)
    return {"a": sides[0].describe(), "b": sides[1].describe(), **report, "notes": notes}


def _reconcile(
    a: MaskSet, b: MaskSet, labels: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Bool masks for both sides; a bare side borrows the other side's shapes where it can."""
    out, notes = [], []
    for side, other, label in ((a, b, labels[0]), (b, a, labels[1])):
        if side.shaped:
            out.append(side.masks)
            continue
        unpacked, borrowed = {}, 0
        for name, packed in side.masks.items():
            shape = other.masks[name].shape if other.shaped and name in other.masks else None
            if shape is not None and packed.size != math.ceil(math.prod(shape) / 8):
                raise InputError(
                    f"{name!r} is {packed.size} packed bytes in {label}, but the other side's shape "
                    f"{list(shape)} needs {math.ceil(math.prod(shape) / 8)}",
                    _SAME_MODEL,
                )
            borrowed += shape is not None
            unpacked[name] = _unpack(packed, shape)
        notes.append(_bare_note(label, borrowed, len(unpacked)))
        out.append(unpacked)
    return out[0], out[1], notes


def _unpack(packed: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    """Bits MSB first, row-major; without a shape, all 8 × bytes bits as a flat vector."""
    if shape is None:
        return np.unpackbits(packed).view(np.bool_)  # (8·bytes,)
    return np.unpackbits(packed, count=math.prod(shape)).view(np.bool_).reshape(shape)


def _bare_note(label: str, borrowed: int, total: int) -> str:
    text = f"{label} is a masks file without its manifest, so it records no shapes: "
    if borrowed == total:
        return text + "the shapes were taken from the other side"
    return text + (
        f"{total - borrowed} of its {total} masks were compared as flat bit vectors of 8 × bytes bits "
        "(numel, densities and the random baseline count up to 7 padding bits each); "
        "keep manifest.json next to the masks for exact shapes"
    )


def compare_masks(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    random_baseline: bool = False,
    labels: tuple[str, str] | list[str] = ("A", "B"),
) -> dict[str, Any]:
    """Overlap of two mask sets already in memory (bool or 0/1 arrays, 1 = keep).

    Args:
        a, b: name → mask; names on both sides must have the same shape.
        random_baseline: add `random` (expected overlap of independent random masks) to each
            record and to the totals; otherwise `random` is None.
        labels: how the two sides are named in error messages.

    Returns:
        `tensors`: one record per name on both sides (A's order) with `name`, `shape`, `numel`,
        `kept_a`, `kept_b`, `density_a`, `density_b`, `intersection`, `union`, `iou` (None when
        both keep nothing), `a_kept_by_b` (|A∩B| / |A|, None when A keeps nothing) and `random`;
        `totals`: the same over all of them (`tensors` is their count), IoU = Σ|A∩B| / Σ|A∪B|;
        `only_a`, `only_b`: `name`, `shape`, `numel`, `kept`, `density` of names on one side only.

    Raises:
        InputError: a name with different shapes on the two sides.

    Example:
        >>> a = {"w": np.array([1, 1, 0, 0], bool)}
        >>> compare_masks(a, {"w": np.array([1, 0, 1, 0], bool)})["totals"]["iou"]
        0.3333333333333333
    """
    records = [
        _pair_record(name, np.asarray(mask_a), np.asarray(b[name]), labels)
        for name, mask_a in a.items()
        if name in b
    ]
    totals = _totals(records)
    if random_baseline:
        totals["random"] = _random([(r["numel"], r["kept_a"], r["kept_b"]) for r in records])
        for r in records:
            r["random"] = _random([(r["numel"], r["kept_a"], r["kept_b"])])
    return {
        "random_baseline": random_baseline,
        "tensors": records,
        "totals": totals,
        "only_a": [_single_record(n, np.asarray(m)) for n, m in a.items() if n not in b],
        "only_b": [_single_record(n, np.asarray(m)) for n, m in b.items() if n not in a],
    }


def _pair_record(name: str, a: np.ndarray, b: np.ndarray, labels: tuple[str, str] | list[str]) -> dict:
    if a.shape != b.shape:
        raise InputError(
            f"{name!r} has shape {list(a.shape)} in {labels[0]} but {list(b.shape)} in {labels[1]}",
            _SAME_MODEL,
        )
    a, b = a.astype(bool, copy=False), b.astype(bool, copy=False)
    both = int(np.count_nonzero(a & b))
    kept_a, kept_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    return {"name": name, "shape": list(a.shape), **_overlap(a.size, kept_a, kept_b, both), "random": None}


def _overlap(numel: int, kept_a: int, kept_b: int, both: int) -> dict[str, Any]:
    union = kept_a + kept_b - both
    return {
        "numel": numel,
        "kept_a": kept_a,
        "kept_b": kept_b,
        "density_a": kept_a / numel if numel else 1.0,
        "density_b": kept_b / numel if numel else 1.0,
        "intersection": both,
        "union": union,
        "iou": both / union if union else None,
        "a_kept_by_b": both / kept_a if kept_a else None,
    }


def _totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    sums = {k: sum(r[k] for r in records) for k in ("numel", "kept_a", "kept_b", "intersection")}
    overlap = _overlap(sums["numel"], sums["kept_a"], sums["kept_b"], sums["intersection"])
    return {"tensors": len(records), **overlap, "random": None}


def _single_record(name: str, mask: np.ndarray) -> dict[str, Any]:
    kept = int(np.count_nonzero(mask))
    return {"name": name, "shape": list(mask.shape), "numel": int(mask.size), "kept": kept,
            "density": kept / mask.size if mask.size else 1.0}  # fmt: skip


def expected_random_overlap(numel: int, kept_a: int, kept_b: int) -> tuple[float, float]:
    """(E|A∩B|, E|A∪B|) for two independent masks keeping kept_a and kept_b of numel entries
    uniformly at random: E|A∩B| = kept_a·kept_b / numel, E|A∪B| = kept_a + kept_b − E|A∩B|.

    Example:
        >>> expected_random_overlap(100, 10, 20)
        (2.0, 28.0)
    """
    both = kept_a * kept_b / numel if numel else 0.0
    return both, kept_a + kept_b - both


def _random(per_tensor: list[tuple[int, int, int]]) -> dict[str, Any]:
    """The random baseline over one or more tensors: sums of expectations, then their ratios."""
    both = union = 0.0
    for numel, kept_a, kept_b in per_tensor:
        e_both, e_union = expected_random_overlap(numel, kept_a, kept_b)
        both, union = both + e_both, union + e_union
    kept_a = sum(k for _, k, _ in per_tensor)
    return {"intersection": both, "union": union, "iou": both / union if union else None,
            "a_kept_by_b": both / kept_a if kept_a else None}  # fmt: skip
