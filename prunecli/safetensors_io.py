"""Streamed, torch-free reading and atomic writing of safetensors files.

The format is an 8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}` plus string `__metadata__`, then the raw bytes.
Reading copies each tensor into a caller-owned buffer (`readinto`), never a memory map,
so a tensor-by-tensor loop stays near the size of the largest tensor.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from prunecli.dtypes import itemsize, raw_dtype
from prunecli.errors import CheckpointError, InputError

MAX_HEADER_BYTES = 100 * 1024 * 1024
STAGE_BYTES = 1 << 20  # large arrays are written through a reused buffer of this size


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives: its dtype name, shape, and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int = 0
    end: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file: {what}",
        "re-download or re-save the file; a truncated copy cannot be repaired",
    )


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate a safetensors header.

    Returns:
        (tensors in data order, metadata, byte offset of the data section).
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"only {size} bytes, too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise _corrupt(path, f"header length {header_len} does not fit the file ({size} bytes)")
        raw_header = f.read(header_len)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"the header is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    data_start = 8 + header_len
    tensors = _parse_entries(path, header, size - data_start)
    return tensors, dict(metadata), data_start


def _parse_entries(path: Path, header: dict, data_size: int) -> dict[str, TensorInfo]:
    infos: list[tuple[str, TensorInfo]] = []
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"malformed entry for tensor {name!r}") from None
        info = TensorInfo(dtype, shape, start, end)
        raw_dtype(dtype)  # unknown dtypes are refused here
        if any(d < 0 for d in shape) or end - start != info.nbytes or start < 0:
            raise _corrupt(path, f"tensor {name!r} has offsets that do not match its shape")
        if end > data_size:
            raise _corrupt(path, f"tensor {name!r} ends at byte {end} but the data section has {data_size}")
        infos.append((name, info))
    infos.sort(key=lambda item: (item[1].start, item[1].end))
    return dict(infos)


class SafetensorsReader:
    """Read tensors of one safetensors file as raw numpy arrays, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors, self.metadata, self._data_start = read_header(path)
        self._file = path.open("rb", buffering=0)

    def view(self, name: str) -> np.ndarray:
        """The tensor's raw array as a read-only view of the file, memory-mapped (no copy).

        Cheaper than `read` for passes that only look at the data: nothing is copied into a
        buffer, and a strided sample touches the page cache in place. Each view maps only its
        own tensor and is unmapped when the view is dropped, so mapped pages (which count as
        resident memory) stay near one tensor. The header check guarantees that every tensor
        lies inside the file.
        """
        info = self.tensors[name]
        start = self._data_start + info.start
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        if info.nbytes == 0:
            return self.read(name)
        try:
            mapping = mmap.mmap(
                self._file.fileno(), start + info.nbytes - aligned, access=mmap.ACCESS_READ, offset=aligned
            )
        except (OSError, ValueError):  # a file system without mmap: read instead
            return self.read(name)
        data = np.frombuffer(mapping, dtype=np.uint8, count=info.nbytes, offset=start - aligned)
        return data.view(raw_dtype(info.dtype)).reshape(info.shape)

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        """The tensor's raw array; written into `scratch` (a uint8 buffer) when given.

        The returned array aliases `scratch`, so it is only valid until the next read.
        """
        info = self.tensors[name]
        if scratch is not None and scratch.nbytes >= info.nbytes:
            buf = scratch[: info.nbytes]
        else:
            buf = np.empty(info.nbytes, dtype=np.uint8)
        view = memoryview(buf)
        got = 0
        while got < info.nbytes:
            n = os.preadv(self._file.fileno(), [view[got:]], self._data_start + info.start + got)
            if n == 0:
                raise _corrupt(self.path, f"tensor {name!r} is cut short")
            got += n
        return buf.view(raw_dtype(info.dtype)).reshape(info.shape)

    def close(self) -> None:
        self._file.close()


def _header_bytes(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in entries:
        size = math.prod(shape) * itemsize(dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the data section 8-byte aligned
    return struct.pack("<Q", len(text)) + text


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, atomically.

    The header is fixed up front from `entries` (name, dtype, shape); tensors must then be
    written in that order. Data goes to a temporary file in the target folder, which
    replaces `path` only when every tensor has been written; on error it is removed.

    Example:
        >>> with SafetensorsWriter(path, [("w", "F32", (2, 2))], {"k": "v"}) as out:
        ...     out.write("w", np.zeros((2, 2), np.float32))
    """

    def __init__(
        self,
        path: Path,
        entries: list[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self._entries = list(entries)
        self._next = 0
        self._header = _header_bytes(self._entries, metadata or {})
        self._file = None
        self._tmp: str | None = None
        self._stage = np.empty(STAGE_BYTES, dtype=np.uint8)

    def __enter__(self) -> SafetensorsWriter:
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError as exc:
            raise InputError(
                f"cannot write to {self.path.parent}: {exc.strerror}",
                "choose a writable output location",
            ) from None
        self._file = os.fdopen(fd, "wb")
        self._file.write(self._header)
        return self

    def write(self, name: str, raw: np.ndarray) -> None:
        """Append the next tensor's bytes; its name, dtype width and size must match.

        The bytes go through a small reused staging buffer: the kernel then copies from
        cache-hot memory, which measured markedly faster than handing `write` a large
        array (docs/performance.md).
        """
        self.write_parts(name, [raw])

    def write_parts(self, name: str, parts: Iterable[np.ndarray]) -> None:
        """Append the next tensor as consecutive parts (flat order) that add up to it."""
        exp_name, dtype, shape = self._entries[self._next]
        written, width = 0, itemsize(dtype)
        for part in parts:
            if name != exp_name or part.dtype.itemsize != width:
                raise ValueError(f"expected tensor {exp_name} {dtype}{list(shape)}, got {name} {part.dtype}")
            data = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
            if data.size <= STAGE_BYTES:  # a small part: the caller's block, already in cache
                self._file.write(data.data)
            else:
                self._write_staged(data)
            written += part.size
        if written != math.prod(shape):
            raise ValueError(f"tensor {exp_name} {dtype}{list(shape)} got {written} elements")
        self._next += 1

    def _write_staged(self, data: np.ndarray) -> None:
        for start in range(0, data.size, STAGE_BYTES):
            piece = data[start : start + STAGE_BYTES]
            stage = self._stage[: piece.size]
            np.copyto(stage, piece)
            self._file.write(stage.data)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._next != len(self._entries):
                exc_type = ValueError
                raise ValueError(f"{len(self._entries) - self._next} tensors were never written")
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
            if exc_type is None:
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, self.path)
            else:
                os.unlink(self._tmp)


def write_arrays(path: Path, arrays: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """Write small in-memory raw arrays `{name: (dtype, raw)}` in one go."""
    entries = [(name, dtype, tuple(raw.shape)) for name, (dtype, raw) in arrays.items()]
    with SafetensorsWriter(path, entries, metadata) as out:
        for name, (_, raw) in arrays.items():
            out.write(name, raw)
