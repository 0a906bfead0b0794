"""Mask sets as inputs, held bit-packed: an output folder, its manifest.json, or a masks.safetensors.

`open_mask_set` reads one without torch and checks it as `inspect` does: each pruned record has
its mask, packed to its size, with its pad bits clear and exactly `kept` bits set, and the file
holds no other mask. A bare masks file (no manifest beside it that names it) records no shapes:
they come from the checkpoint the masks are put on (`PackedMasks.shaped_by`), and each mask's
packed length must fit.

`MaskScores` shows masks to `apply` as scores, 1.0 where kept and 0.0 where pruned: with each
tensor's keep count given exactly (`apply_opened(given=...)`), the output's masks are these masks,
bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.errors import InputError, ManifestError
from prunecli.io.checkpoints import Checkpoint, sha256_of_files
from prunecli.io.manifest import MANIFEST_FILE, read_manifest
from prunecli.io.safetensors_file import SafetensorsReader
from prunecli.io.safetensors_header import TensorInfo

SOURCE_HINT = "pass an apply or intersect output folder, its manifest.json, or its masks.safetensors"
_REDO = "the masks and the manifest must come from the same run; rerun it"


@dataclass(frozen=True)
class PackedMasks:
    """One mask set, one bit per weight (row-major, most significant bit first: numpy's packbits).

    Attributes:
        source: the path as given.
        masks_path: the masks file.
        manifest: its manifest, or None for a bare masks file.
        packed: name -> the mask's bytes, flat uint8, in the file's order.
        shapes: name -> shape; None for a bare masks file (see `shaped_by`).
        sha256: of the masks file's bytes.
    """

    source: str
    masks_path: Path
    manifest: dict[str, Any] | None
    packed: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]] | None
    sha256: str

    @property
    def names(self) -> list[str]:
        return list(self.packed)

    @property
    def files(self) -> list[Path]:
        """The files read: the masks, and the manifest when there is one."""
        manifest = [self.masks_path.parent / MANIFEST_FILE] if self.manifest is not None else []
        return [self.masks_path, *manifest]

    def kept(self, name: str) -> int:
        """How many weights the mask of `name` keeps (its set bits; pad bits are clear)."""
        return int(np.bitwise_count(self.packed[name]).sum(dtype=np.int64))

    def mask(self, name: str) -> np.ndarray:
        """The keep mask of `name`, bool, shaped like the tensor (the shapes must be known)."""
        if self.shapes is None:
            raise ValueError(f"{self.source} records no shapes: call shaped_by first")
        shape = self.shapes[name]
        return np.unpackbits(self.packed[name], count=math.prod(shape)).view(np.bool_).reshape(shape)

    def shaped_by(self, shapes: Mapping[str, tuple[int, ...]]) -> PackedMasks:
        """This set cut down to the names in `shapes`, each with its shape: a bare set takes it (the
        packed length must fit, with the pad bits clear); a set with a manifest must agree with it."""
        own = self.shapes or {}
        for name, shape in shapes.items():
            if name in own and own[name] != tuple(shape):
                raise InputError(
                    f"{name} is {list(own[name])} in {self.source}, not {list(shape)}", SOURCE_HINT
                )
            _check_packed(name, self.packed[name], math.prod(shape), self.source)
        packed = {name: self.packed[name] for name in self.packed if name in shapes}
        return replace(self, packed=packed, shapes={name: tuple(shapes[name]) for name in packed})

    def record(self) -> dict[str, Any]:
        """This set as a manifest's `lineage.masks` entry: path, sha256 and its manifest's `method`."""
        method = self.manifest["method"] if self.manifest is not None else None
        return {"path": self.source, "sha256": self.sha256, "method": method}


def open_mask_set(source: str | Path) -> PackedMasks:
    """Read a mask set: a folder, a manifest, or a masks file (through its manifest when one beside
    it names it).

    Raises:
        InputError: a missing or unreadable source; ManifestError: masks that contradict their
            manifest (sizes, pad bits, set bits, extra or missing masks).

    Example:
        >>> masks = open_mask_set("out/")
        >>> masks.kept("fc1.weight"), masks.mask("fc1.weight").shape
        (17980, (300, 784))
    """
    path = Path(source)
    if path.is_dir() or path.suffix == ".json":
        manifest_path = path / MANIFEST_FILE if path.is_dir() else path
        if not manifest_path.is_file():
            raise InputError(f"mask source {manifest_path} does not exist", SOURCE_HINT)
        return _from_manifest(str(source), manifest_path)
    if not path.is_file():
        raise InputError(f"mask source {path} does not exist", SOURCE_HINT)
    if path.suffix != ".safetensors":
        raise InputError(f"{path} is not a mask source", SOURCE_HINT)
    beside = path.parent / MANIFEST_FILE
    if (
        beside.is_file()
        and (path.parent / read_manifest(beside)["files"]["masks"]).resolve() == path.resolve()
    ):
        return _from_manifest(str(source), beside)
    packed = _read_packed(path)
    return PackedMasks(str(source), path, None, packed, None, sha256_of_files([path]))


def _from_manifest(source: str, manifest_path: Path) -> PackedMasks:
    manifest = read_manifest(manifest_path)
    masks_path = manifest_path.parent / manifest["files"]["masks"]
    if not masks_path.is_file():
        raise InputError(
            f"masks file {masks_path} named by {manifest_path} is missing",
            "keep masks.safetensors next to manifest.json, or rerun the command that wrote them",
        )
    packed = _read_packed(masks_path)
    records = {r["name"]: r for r in manifest["tensors"] if r["pruned"]}
    extra = [name for name in packed if name not in records]
    if extra:
        raise ManifestError(
            f"{masks_path} holds a mask for {extra[0]}, which the manifest does not prune", _REDO
        )
    for name, record in records.items():
        if name not in packed:
            raise ManifestError(f"{masks_path} has no mask for {name}, which the manifest prunes", _REDO)
        _check_packed(name, packed[name], record["numel"], str(masks_path))
        kept = int(np.bitwise_count(packed[name]).sum(dtype=np.int64))
        if kept != record["kept"]:
            raise ManifestError(
                f"the mask of {name} in {masks_path} keeps {kept} weights, but the manifest records "
                f"{record['kept']}",
                _REDO,
            )
    shapes = {name: tuple(records[name]["shape"]) for name in records}
    packed = {name: packed[name] for name in records}  # the manifest's order
    return PackedMasks(source, masks_path, manifest, packed, shapes, sha256_of_files([masks_path]))


def _read_packed(path: Path) -> dict[str, np.ndarray]:
    """Every mask of a masks file, flat uint8 (they are 1/32 of the float32 weights they mask)."""
    reader = SafetensorsReader(path)
    try:
        for name, info in reader.tensors.items():
            if info.dtype != "U8":
                raise InputError(
                    f"{path} holds the {info.dtype} tensor {name!r}, so it is not a masks file "
                    "(masks are bit-packed U8)",
                    SOURCE_HINT,
                )
        return {name: reader.read(name).reshape(-1).copy() for name in reader.tensors}
    finally:
        reader.close()


def _check_packed(name: str, packed: np.ndarray, numel: int, where: str) -> None:
    """`packed` holds exactly `numel` bits: ceil(numel / 8) bytes, the pad bits of the last clear."""
    need = -(-numel // 8)
    if packed.size != need:
        raise InputError(
            f"the mask of {name} in {where} is {packed.size} packed bytes, but {numel} weights need {need}",
            "put masks on the architecture they were made for",
        )
    pad = -numel % 8
    if pad and packed.size and int(packed[-1]) & ((1 << pad) - 1):
        raise ManifestError(f"the mask of {name} in {where} has pad bits set past its {numel} weights", _REDO)


class MaskScores(Checkpoint):
    """Masks read by `apply` as float32 scores: 1 where kept, 0 where pruned.

    With `kept` as apply's exact keep counts (`given`), the output's masks are exactly these.
    `metadata` is what apply records as the scores' provenance (`method`, `params`, ...).
    """

    def __init__(
        self,
        masks: PackedMasks,
        names: list[str],
        metadata: dict[str, str],
        sha256: str | None = None,
        files: list[Path] | None = None,
    ) -> None:
        super().__init__(masks.masks_path)
        self.files = list(files or [])
        self.metadata = dict(metadata)
        self.masks = masks
        digest, offset = hashlib.sha256(), 0
        for name in names:
            shape = masks.shapes[name]
            size = math.prod(shape) * 4
            self.tensors[name] = TensorInfo("F32", shape, offset, offset + size)
            offset += size
            digest.update(name.encode() + b"\0" + masks.packed[name].tobytes())
        self._sha256 = sha256 or digest.hexdigest()

    @property
    def kept(self) -> dict[str, int]:
        return {name: self.masks.kept(name) for name in self.tensors}

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        mask = self.masks.mask(name)
        if scratch is None or scratch.nbytes < mask.size * 4:
            return mask.astype(np.float32)
        out = scratch[: mask.size * 4].view(np.float32).reshape(mask.shape)
        np.copyto(out, mask)
        return out

    def sha256(self) -> str:
        return self._sha256
