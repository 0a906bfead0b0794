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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from prunecli.errors import CheckpointError
from prunecli.io.dtypes import RAW_DTYPES, itemsize, raw_dtype
from prunecli.io.outputs import create_temp_file, write_error

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


_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
MAX_DIMS = 64  # numpy's limit on dimensions
MAX_ADDRESSABLE = 2**63 - 1  # numpy's limit on an array's elements and bytes
_NOT_CONFORMING = "re-save it with the safetensors library (safetensors.torch.save_file) or re-download it"


class _BadJSON(ValueError):
    """JSON that `json.loads` accepts but a strict reader refuses: a repeated key, a lone
    surrogate, NaN or Infinity."""


def _nonconforming(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid safetensors file: {what}", _NOT_CONFORMING)


def _show(value: object, limit: int = 60) -> str:
    """A short one-line rendering of a header value or name (escapes shown), for error messages."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Checked(dict):
    """A parsed JSON object; `problem` says what is wrong in it or anywhere inside it."""

    problem: str | None = None


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\\ud800" escape
        return False
    return True


def _problem_in(value: object) -> str | None:
    if isinstance(value, _Checked):
        return value.problem
    if isinstance(value, str) and not _is_text(value):
        return f"the string {_show(value)} is not Unicode text (a lone surrogate)"
    if isinstance(value, list):
        return next((p for p in map(_problem_in, value) if p), None)
    return None


def _strict_object(pairs: list[tuple[str, object]]) -> _Checked:
    """`object_pairs_hook`: note a key that appears twice, and text that is not valid Unicode.

    The note travels up to the enclosing objects, so the message can say where it is.
    """
    obj = _Checked()
    for key, value in pairs:
        if obj.problem is None:
            if key in obj:
                obj.problem = f"the key {_show(key)} appears twice"
            elif not _is_text(key):
                obj.problem = f"the key {_show(key)} is not Unicode text (a lone surrogate)"
            elif inner := _problem_in(value):
                obj.problem = f"{inner} inside {_show(key)}"
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> object:
    raise _BadJSON(f"{name} is not a JSON value")


def loads_strict_json(text: str) -> object:
    """`json.loads` that refuses what a strict JSON reader refuses, instead of silently accepting it.

    A key repeated in one object (json.loads keeps the last), NaN/Infinity, a string holding a
    lone surrogate (not Unicode text, so it cannot be printed or written as UTF-8), numbers of
    more than 4300 digits and nesting deeper than the recursion limit all raise ValueError; its
    message quotes at most a short key or string of the text, never the text around it.
    """
    try:
        value = json.loads(text, object_pairs_hook=_strict_object, parse_constant=_refuse_constant)
        problem = _problem_in(value)
    except _BadJSON:
        raise
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError:  # int(...) of a number with more digits than Python converts
        raise ValueError("it holds a number with too many digits") from None
    except RecursionError:
        raise ValueError("it nests arrays or objects too deeply") from None
    if problem:
        raise _BadJSON(problem)
    return value


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate a safetensors header, by the rules the safetensors library enforces.

    The header is a UTF-8 JSON object without repeated keys; each tensor entry has exactly
    `dtype` (a known name), `shape` (non-negative integers) and `data_offsets` (two
    non-negative integers, end - start = the shape's byte size); sorted by offset, the tensors
    are contiguous from 0 and cover the data section exactly (no overlaps, holes or trailing
    bytes; zero-size tensors are allowed). Every number is checked against the file's size
    before anything is allocated.

    Returns:
        (tensors in data order, metadata, byte offset of the data section).
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size  # of the file read, even if the path is replaced meanwhile
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"only {size} bytes, too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:  # the number is not shown: it is 8 bytes of whatever the file is
            raise _corrupt(path, f"its header length is over the {MAX_HEADER_BYTES >> 20} MiB limit")
        if 8 + header_len > size:
            raise _corrupt(path, f"header length {header_len} does not fit the file ({size} bytes)")
        raw_header = f.read(header_len)
    try:
        header = loads_strict_json(raw_header.decode("utf-8"))
    except UnicodeDecodeError:
        raise _corrupt(path, "the header is not JSON (it is not UTF-8 text)") from None
    except _BadJSON as exc:
        raise _nonconforming(path, f"in its header, {exc}") from None
    except ValueError as exc:
        raise _corrupt(path, f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _nonconforming(path, "__metadata__ must map strings to strings")
    data_start = 8 + header_len
    tensors = _parse_entries(path, header, size - data_start)
    return tensors, dict(metadata), data_start


def _parse_entries(path: Path, header: dict, data_size: int) -> dict[str, TensorInfo]:
    infos = [(name, _parse_entry(path, name, entry, data_size)) for name, entry in header.items()]
    infos.sort(key=lambda item: (item[1].start, item[1].end))
    _check_layout(path, infos, data_size)
    return dict(infos)


def _is_count(value: object) -> bool:
    """A plain non-negative JSON integer (not a bool, float or string) that numpy can address."""
    return type(value) is int and 0 <= value <= MAX_ADDRESSABLE


def _parse_entry(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    def bad(what: str) -> CheckpointError:
        return _nonconforming(path, f"tensor {_show(name)} {what}")

    if not isinstance(entry, dict):
        raise bad("is not a JSON object with dtype, shape and data_offsets")
    missing = [f"has no {key!r}" for key in _ENTRY_KEYS if key not in entry]
    unknown = [f"has the unknown key {_show(key)}" for key in entry if key not in _ENTRY_KEYS]
    if missing or unknown:
        raise bad(", ".join(missing + unknown))
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in RAW_DTYPES:
        raise bad(f"has the unsupported dtype {_show(dtype)} (supported: {', '.join(sorted(RAW_DTYPES))})")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {_show(shape)}; a shape is a list of at most {MAX_DIMS} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad(f"has data_offsets {_show(offsets)}; they must be two non-negative integers [start, end]")
    start, end = offsets
    if end < start:
        raise bad(f"has data_offsets [{start}, {end}], which end before they start")
    if end > data_size:
        raise _corrupt(path, f"tensor {_show(name)} ends at byte {end}, past the data's {data_size} bytes")
    span = RAW_DTYPES[dtype].itemsize
    for d in shape:  # the size the shape claims, ignoring zeros: numpy refuses any above its limit
        span *= max(d, 1)
        if span > MAX_ADDRESSABLE:
            raise bad(f"has shape {_show(shape)}, too large for any array")
    info = TensorInfo(dtype, tuple(shape), start, end)
    if info.nbytes != end - start:
        raise bad(
            f"is {dtype}{list(shape)} ({info.nbytes} bytes) but its data_offsets [{start}, {end}] "
            f"hold {end - start} bytes"
        )
    return info


def _check_layout(path: Path, infos: list[tuple[str, TensorInfo]], data_size: int) -> None:
    """Sorted by offset, the tensors must follow each other from byte 0 to the data section's end."""
    expected, previous = 0, None
    for name, info in infos:
        if info.start > expected:
            raise _nonconforming(
                path,
                f"bytes {expected} to {info.start} of the data section belong to no tensor "
                f"(a hole before tensor {_show(name)})",
            )
        if info.start < expected:
            raise _nonconforming(
                path,
                f"tensor {_show(name)} (bytes {info.start} to {info.end}) overlaps tensor "
                f"{_show(previous)} (which ends at byte {expected})",
            )
        expected, previous = info.end, name
    if expected != data_size:
        after = f"the last tensor {_show(previous)}" if infos else "the header (it names no tensor)"
        raise _nonconforming(path, f"{data_size - expected} bytes follow {after}; no tensor uses them")


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
