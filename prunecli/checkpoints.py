"""Open checkpoints of any supported kind as one interface, and write them safely.

Supported: a safetensors file, a sharded `*.safetensors.index.json`, and `.pt/.pth/.bin`
state dicts, which are loaded with `torch.load(weights_only=True)` only: a file holding
pickled classes or code is refused, never executed. safetensors reading imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from prunecli.errors import CheckpointError, InputError, OutputExistsError
from prunecli.safetensors_io import SafetensorsReader, TensorInfo, write_arrays

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
WRAPPER_KEYS = ("state_dict", "model")


class Checkpoint:
    """Named raw tensors from one checkpoint, read one at a time.

    Attributes:
        path: the file the user named.
        tensors: name -> TensorInfo (dtype name, shape), in flat order.
        metadata: string metadata (safetensors only).
        notes: things worth telling the user (unwrapped keys, stripped prefixes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self.notes: list[str] = []
        self.files: list[Path] = [path]

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
    """One safetensors file, or the shards named by a `.safetensors.index.json`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        shards = _shard_paths(path) if path.name.endswith(".index.json") else [path]
        self._readers: dict[str, SafetensorsReader] = {}
        self.files = ([path] if len(shards) > 1 or shards[0] != path else []) + shards
        try:
            for shard in shards:
                reader = SafetensorsReader(shard)
                for name, info in reader.tensors.items():
                    if name in self._readers:
                        raise CheckpointError(f"tensor {name!r} appears in two shards", "fix the index")
                    self._readers[name] = reader
                    self.tensors[name] = info
                if shard == shards[0]:
                    self.metadata = reader.metadata
        except BaseException:
            self.close()
            raise

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        return self._readers[name].read(name, scratch)

    def view(self, name: str) -> np.ndarray:
        return self._readers[name].view(name)

    def close(self) -> None:
        for reader in set(self._readers.values()):
            reader.close()


def _shard_paths(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{index_path} is not a safetensors index",
            "an index is JSON with a 'weight_map' from tensor names to shard files",
        ) from None
    shards = [index_path.parent / name for name in names]
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"shard {shard} named by {index_path} is missing", "copy every shard")
    return shards


class TorchCheckpoint(Checkpoint):
    """A `.pt/.pth/.bin` state dict, loaded without unpickling arbitrary objects."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._tensors = _unwrap(load_torch_file(path), self.notes)
        for name, tensor in self._tensors.items():
            self.tensors[name] = TensorInfo(torch_dtype_name(tensor), tuple(tensor.shape))

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        return torch_to_raw(self._tensors[name])


def load_torch_file(path: Path) -> object:
    """`torch.load(weights_only=True)`, with its failures turned into CheckpointError."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported object"
        raise CheckpointError(
            f"{path} holds pickled objects that are not plain tensors; refused to load them ({first[:160]})",
            "save a plain state dict (torch.save(model.state_dict(), ...)) or safetensors",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({first[:160]})",
            "re-save it with torch.save(model.state_dict(), path) or as safetensors",
        ) from None


def _unwrap(obj: object, notes: list[str]) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                notes.append(f"using the state dict found under the {key!r} key")
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("the file does not hold a state dict", "save model.state_dict()")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = len(obj) - len(tensors)
    if not tensors:
        raise CheckpointError("the file holds no tensors", "save model.state_dict()")
    if skipped:
        notes.append(f"ignored {skipped} entries that are not tensors")
    if all(k.startswith("module.") for k in tensors):
        notes.append("stripped the 'module.' prefix (DataParallel/DDP) from every key")
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


_TORCH_TO_ST = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name."""
    import torch

    inverse = {st: key for key, st in _TORCH_TO_ST.items()}
    return getattr(torch, inverse[name])


def torch_dtype_name(tensor: torch.Tensor) -> str:
    """The safetensors dtype name of a torch tensor."""
    key = str(tensor.dtype).removeprefix("torch.")
    if key not in _TORCH_TO_ST:
        raise CheckpointError(f"unsupported tensor dtype {tensor.dtype}", "convert the tensor first")
    return _TORCH_TO_ST[key]


def torch_to_raw(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a raw numpy array (bf16/fp8 viewed as unsigned integers)."""
    import torch

    t = tensor.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return t.view(torch.uint8).numpy()
    return t.numpy()


def raw_to_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of `torch_to_raw`: a torch tensor with the same bytes."""
    import torch

    t = torch.from_numpy(np.array(raw, copy=True, order="C"))  # keeps 0-d shapes, unlike ascontiguousarray
    if dtype == "BF16":
        return t.view(torch.bfloat16)
    if dtype == "F8_E4M3":
        return t.view(torch.float8_e4m3fn)
    if dtype == "F8_E5M2":
        return t.view(torch.float8_e5m2)
    return t


def open_checkpoint(path: Path) -> Checkpoint:
    """Open a checkpoint by its suffix, with clear errors for every way it can be wrong.

    Example:
        >>> with open_checkpoint(Path("init.safetensors")) as ckpt:
        ...     weight = ckpt.read("fc1.weight")
    """
    require_file(path, "checkpoint")
    if path.name.endswith(".safetensors") or path.name.endswith(".safetensors.index.json"):
        return SafetensorsCheckpoint(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchCheckpoint(path)
    raise CheckpointError(
        f"{path} has an unknown checkpoint suffix {path.suffix!r}",
        "use .safetensors, .safetensors.index.json, .pt, .pth or .bin",
    )


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
    guard_output_file(path, force)
    arrays = {name: (torch_dtype_name(t), torch_to_raw(t)) for name, t in state_dict.items()}
    write_arrays(path, arrays, metadata)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as torch tensors (for building live models)."""
    with open_checkpoint(path) as ckpt:
        return {name: raw_to_torch(ckpt.read(name), info.dtype) for name, info in ckpt.tensors.items()}


def guard_output_file(path: Path, force: bool) -> None:
    """Refuse an existing output file unless --force; refuse a missing parent folder."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it")
    if path.is_dir():
        raise InputError(f"output {path} is a directory", "name a file")
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist", "create it first")


def check_output_folder(path: Path, force: bool) -> None:
    """Refuse a non-empty output folder without --force, a file in its place, or no parent."""
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path} exists and is not a folder", "name a folder for -o")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(f"output folder {path} is not empty", "pass --force to replace it")
    if not path.absolute().parent.is_dir():
        raise InputError(f"output folder's parent {path.absolute().parent} does not exist", "create it first")


@contextmanager
def output_folder(path: Path, force: bool) -> Iterator[Path]:
    """A temporary sibling folder that replaces `path` only if the block succeeds.

    An existing non-empty `path` is refused unless `force`; nothing is left behind on error.
    """
    check_output_folder(path, force)
    parent = path.absolute().parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write to {parent}: {exc.strerror}", "choose a writable output") from None
    try:
        yield tmp
        tmp.chmod(0o755)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=parent))
            path.replace(old / "previous")
        tmp.replace(path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
