"""Open checkpoints of any supported kind as one interface, and write them safely.

Supported: a safetensors file, a sharded `*.safetensors.index.json` (its shards held to plain
names inside its folder), `.pt/.pth/.bin` state dicts (`prunecli.io.torch_files`), and a model
folder (a Hugging Face folder, or a prunecli output) standing for the weights file inside it.
safetensors reading imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterable
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from prunecli.errors import CheckpointError, InputError
from prunecli.io.outputs import output_file
from prunecli.io.safetensors_file import SafetensorsReader, write_arrays
from prunecli.io.safetensors_header import MAX_HEADER_BYTES, TensorInfo
from prunecli.io.strict_json import loads_strict_json

if TYPE_CHECKING:
    import torch


class Checkpoint:
    """Named raw tensors from one checkpoint, read one at a time.

    Attributes:
        path: the file the user named.
        tensors: name -> TensorInfo (dtype name, shape), in flat order.
        metadata: string metadata (safetensors only).
        notes: things worth telling the user (unwrapped keys, stripped prefixes).
        config_folder: the folder holding the model's `config.json` (a Hugging Face model), or None.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self.notes: list[str] = []
        self.files: list[Path] = [path]
        self.config_folder: Path | None = None

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        """The raw array of one tensor (valid until the next read when `scratch` is given)."""
        raise NotImplementedError

    def view(self, name: str) -> np.ndarray:
        """The raw array of one tensor, read-only and without a copy where the format allows."""
        return self.read(name)

    def close(self) -> None:
        """Release open files."""

    def sha256(self) -> str:
        """sha256 of the file's bytes (for a sharded checkpoint: index, then shards)."""
        return sha256_of_files(self.files)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafetensorsCheckpoint(Checkpoint):
    """One safetensors file, or the shards named by a `.safetensors.index.json`.

    An index must agree with its shards exactly: every tensor of its weight_map is in the shard
    it names, and every tensor of every shard is in the weight_map (under that shard).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        weight_map = _read_index(path) if path.name.endswith(".index.json") else None
        shards = sorted(set(weight_map.values())) if weight_map is not None else [path]
        self._readers: dict[str, SafetensorsReader] = {}
        self._open: list[SafetensorsReader] = []
        self.files = ([path] if weight_map is not None else []) + shards
        try:
            for shard in shards:
                reader = SafetensorsReader(shard)
                self._open.append(reader)
                for name, info in reader.tensors.items():
                    if weight_map is not None:
                        _check_listed(path, weight_map, name, shard)
                    if name in self._readers:
                        raise CheckpointError(f"tensor {name!r} appears in two shards", "fix the index")
                    self._readers[name] = reader
                    self.tensors[name] = info
                if shard == shards[0]:
                    self.metadata = reader.metadata
            for name, shard in (weight_map or {}).items():
                if name not in self.tensors:
                    raise CheckpointError(
                        f"{path} maps tensor {name!r} to {shard.name}, which does not hold it",
                        _INDEX_HINT,
                    )
        except BaseException:
            self.close()
            raise

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        return self._readers[name].read(name, scratch)

    def shard_of(self, name: str) -> Path:
        """The file that holds tensor `name`."""
        return self._readers[name].path

    def view(self, name: str) -> np.ndarray:
        return self._readers[name].view(name)

    def close(self) -> None:
        for reader in self._open:
            reader.close()


_INDEX_HINT = "fix the index: its weight_map must list each tensor of each shard, under the shard holding it"
_SHARD_NAME_HINT = "name each shard by a plain file name ending in .safetensors, in the index's folder"


def _check_listed(index_path: Path, weight_map: dict[str, Path], name: str, shard: Path) -> None:
    """Refuse a tensor of `shard` that the index does not map to `shard`."""
    named = weight_map.get(name)
    if named is None:
        raise CheckpointError(
            f"shard {shard.name} holds tensor {name!r}, which {index_path}'s weight_map does not list",
            _INDEX_HINT,
        )
    if named != shard:
        raise CheckpointError(
            f"{index_path} maps tensor {name!r} to {named.name}, but shard {shard.name} holds it",
            _INDEX_HINT,
        )


def _is_plain_shard_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name.endswith(".safetensors")
        and not any(c in name for c in "/\\\x00")
        and ".." not in name
        and not PureWindowsPath(name).anchor  # "C:x.safetensors" names another drive on Windows
    )


def _read_index(index_path: Path) -> dict[str, Path]:
    """An index's weight_map as tensor name -> shard path; every shard a plain file beside the index.

    A shard name with a folder in it ('../x', '/etc/passwd', 'sub/x'), a shard that is a link
    resolving outside the index's folder, a repeated JSON key and an empty weight_map are refused.
    No shard is opened here, and no message quotes a file's bytes.
    """

    def not_index(what: str) -> CheckpointError:
        return CheckpointError(
            f"{index_path} is not a safetensors index: {what}",
            "an index is JSON with a 'weight_map' from tensor names to shard files",
        )

    if index_path.stat().st_size > MAX_HEADER_BYTES:
        raise not_index(f"it is over {MAX_HEADER_BYTES >> 20} MiB")
    try:
        index = loads_strict_json(index_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise not_index("it is not UTF-8 text") from None
    except ValueError as exc:
        raise not_index(str(exc)) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise not_index("it has no weight_map entries")
    folder = index_path.parent
    root = folder.resolve()
    checked: dict[str, Path] = {}
    for name, shard in weight_map.items():
        if not _is_plain_shard_name(shard):
            shown = json.dumps(shard, ensure_ascii=True)
            shown = shown if len(shown) <= 80 else shown[:79] + "…"
            raise CheckpointError(
                f"{index_path} maps tensor {name!r} to {shown}, not to a file name in the index's folder",
                _SHARD_NAME_HINT,
            )
        if shard in checked:
            continue
        path = folder / shard
        if not path.is_file():
            raise CheckpointError(f"shard {path} named by {index_path} is missing", "copy every shard")
        if not resolves_inside(path, root):
            raise CheckpointError(
                f"shard {path} named by {index_path} is a link to a file outside the index's folder",
                "copy the shard into the index's folder instead of linking to it",
            )
        checked[shard] = path
    return {name: checked[shard] for name, shard in weight_map.items()}


def resolves_inside(path: Path, root: Path) -> bool:
    """Whether `path` resolves inside `root`, or into the blob store of the Hugging Face cache
    snapshot that `root` is (`.../snapshots/REV/` links its files to `.../blobs/`)."""
    target = path.resolve()
    if target.is_relative_to(root):
        return True
    return root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"


def _shard_paths(index_path: Path) -> list[Path]:
    """The shard files an index names, each once, sorted (checked as `_read_index` does)."""
    return sorted(set(_read_index(index_path).values()))


def open_checkpoint(path: Path) -> Checkpoint:
    """Open a checkpoint by its suffix, with clear errors for every way it can be wrong.

    Example:
        >>> with open_checkpoint(Path("init.safetensors")) as ckpt:
        ...     weight = ckpt.read("fc1.weight")
    """
    path = weights_path(path)
    require_file(path, "checkpoint")
    ckpt: Checkpoint
    if path.name.endswith(".safetensors") or path.name.endswith(".safetensors.index.json"):
        ckpt = SafetensorsCheckpoint(path)
    else:
        from prunecli.io.torch_files import TORCH_SUFFIXES, TorchCheckpoint

        if path.suffix not in TORCH_SUFFIXES:
            raise CheckpointError(
                f"{path} has an unknown checkpoint suffix {path.suffix!r}",
                "use .safetensors, .safetensors.index.json, .pt, .pth or .bin",
            )
        ckpt = TorchCheckpoint(path)
    if (path.parent / CONFIG_FILE).is_file():
        ckpt.config_folder = path.parent
    return ckpt


CONFIG_FILE = "config.json"  # a Hugging Face model folder's architecture
WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"


def weights_path(path: Path) -> Path:
    """The weights file a checkpoint path names: a folder stands for its sharded index or its
    `model.safetensors` (the Hugging Face names, also what `apply` writes); a file for itself."""
    if not path.is_dir():
        return path
    for name in (WEIGHTS_INDEX, WEIGHTS_FILE):
        if (path / name).is_file():
            return path / name
    raise InputError(
        f"folder {path} holds no {WEIGHTS_INDEX} or {WEIGHTS_FILE}",
        "name a model folder, or the checkpoint file itself",
    )


def checkpoint_files(path: Path) -> list[Path]:
    """The files a checkpoint path stands for: an index and its shards, or the file itself."""
    path = weights_path(path) if path.is_dir() else path
    if path.name.endswith(".index.json") and path.is_file():
        return [path, *_shard_paths(path)]
    return [path]


def require_file(path: Path, what: str) -> None:
    """Raise InputError unless `path` is an existing regular file."""
    if not path.exists():
        raise InputError(f"{what} {path} does not exist", "check the path")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory, not a file", "name the file inside it")


HASH_PIECE = 1 << 20
HASH_WINDOW = 16 << 20  # mapped at a time: mapped pages count as the process's resident memory


def sha256_of_files(paths: Iterable[Path]) -> str:
    """sha256 of the files' bytes in order."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            _hash_file(digest, f)
    return digest.hexdigest()


def _hash_file(digest: Any, f: BinaryIO) -> None:
    """Hash from memory-mapped windows (no copies); plain reads where mapping fails."""
    size = os.fstat(f.fileno()).st_size
    for offset in range(0, size, HASH_WINDOW):
        try:
            length = min(HASH_WINDOW, size - offset)
            window = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=offset)
        except (OSError, ValueError):  # a file system without mmap
            f.seek(offset)
            while chunk := f.read(HASH_PIECE):
                digest.update(chunk)
            return
        with window, memoryview(window) as data:
            for start in range(0, len(data), HASH_PIECE):
                digest.update(data[start : start + HASH_PIECE])


def save_state_dict(
    state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], force: bool = False
) -> None:
    """Write a torch state dict as safetensors, atomically; refuse to overwrite without force."""
    from prunecli.io.torch_files import torch_dtype_name, torch_to_raw

    arrays = {name: (torch_dtype_name(t), torch_to_raw(t)) for name, t in state_dict.items()}
    with output_file(path, force):
        write_arrays(path, arrays, metadata)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as torch tensors (for building live models)."""
    from prunecli.io.torch_files import raw_to_torch

    with open_checkpoint(path) as ckpt:
        return {name: raw_to_torch(ckpt.read(name), info.dtype) for name, info in ckpt.tensors.items()}
