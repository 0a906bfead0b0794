"""Streamed, torch-free reading and atomic writing of safetensors files.

Reading maps or copies one tensor at a time (`view`, `read` into a caller-owned buffer), so a
tensor-by-tensor loop stays near the size of the largest tensor; the header is checked first
(`prunecli.io.safetensors_header`). Writing goes to a temporary file renamed into place.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

import numpy as np

from prunecli.io.dtypes import itemsize, raw_dtype
from prunecli.io.outputs import create_temp_file, write_error
from prunecli.io.safetensors_header import not_safetensors, read_header

STAGE_BYTES = 1 << 20  # large arrays are written through a reused buffer of this size


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
                raise not_safetensors(self.path, f"tensor {name!r} is cut short")
            got += n
        return buf.view(raw_dtype(info.dtype)).reshape(info.shape)

    def close(self) -> None:
        self._file.close()


def header_bytes(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
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
        self._header = header_bytes(self._entries, metadata or {})
        self._file = None
        self._tmp = Path()
        self._stage = np.empty(STAGE_BYTES, dtype=np.uint8)

    def __enter__(self) -> SafetensorsWriter:
        fd, self._tmp = create_temp_file(self.path)
        self._file = os.fdopen(fd, "wb")
        self._guarded(self._file.write, self._header)
        return self

    def _guarded(self, call: Callable[..., object], *args: object) -> None:
        """Run a write; a failed one (disk full, I/O error) becomes a clear PruneError."""
        try:
            call(*args)
        except OSError as exc:
            needed = len(self._header) + sum(math.prod(s) * itemsize(d) for _, d, s in self._entries)
            raise write_error(exc, self.path, needed=needed) from None

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
                self._guarded(self._file.write, data.data)
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
            self._guarded(self._file.write, stage.data)

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
                self._guarded(self._file.flush)
                self._guarded(os.fsync, self._file.fileno())
        except BaseException:
            exc_type = exc_type or ValueError
            raise
        finally:
            self._close_and_publish(exc_type is None)

    def _close_and_publish(self, complete: bool) -> None:
        """Rename the finished file into place, or remove the temporary one."""
        try:
            if complete:
                self._guarded(self._file.close)
                os.chmod(self._tmp, 0o644)
                self._guarded(os.replace, self._tmp, self.path)
        finally:
            if not self._file.closed:
                try:
                    self._file.close()
                except OSError:
                    pass  # a full disk fails the close too; the file goes below anyway
            self._tmp.unlink(missing_ok=True)


def write_arrays(path: Path, arrays: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """Write small in-memory raw arrays `{name: (dtype, raw)}` in one go."""
    entries = [(name, dtype, tuple(raw.shape)) for name, (dtype, raw) in arrays.items()]
    with SafetensorsWriter(path, entries, metadata) as out:
        for name, (_, raw) in arrays.items():
            out.write(name, raw)
