"""The safetensors header, held to the format's rules before any tensor is read.

The format is an 8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}` plus string `__metadata__`, then the raw bytes. The
rules are those the safetensors library enforces, plus unique keys: plain integer shapes and
offsets, tensors that tile the data section exactly, valid Unicode names.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from prunecli.errors import CheckpointError
from prunecli.io.dtypes import RAW_DTYPES, itemsize
from prunecli.io.strict_json import StrictJSONError, loads_strict_json, show

MAX_HEADER_BYTES = 100 * 1024 * 1024


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


def not_safetensors(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file: {what}",
        "re-download or re-save the file; a truncated copy cannot be repaired",
    )


_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
MAX_DIMS = 64  # numpy's limit on dimensions
MAX_ADDRESSABLE = 2**63 - 1  # numpy's limit on an array's elements and bytes
_NOT_CONFORMING = "re-save it with the safetensors library (safetensors.torch.save_file) or re-download it"


def _nonconforming(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid safetensors file: {what}", _NOT_CONFORMING)


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
            raise not_safetensors(path, f"only {size} bytes, too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:  # the number is not shown: it is 8 bytes of whatever the file is
            raise not_safetensors(path, f"its header length is over the {MAX_HEADER_BYTES >> 20} MiB limit")
        if 8 + header_len > size:
            raise not_safetensors(path, f"header length {header_len} does not fit the file ({size} bytes)")
        raw_header = f.read(header_len)
    try:
        header = loads_strict_json(raw_header.decode("utf-8"))
    except UnicodeDecodeError:
        raise not_safetensors(path, "the header is not JSON (it is not UTF-8 text)") from None
    except StrictJSONError as exc:
        raise _nonconforming(path, f"in its header, {exc}") from None
    except ValueError as exc:
        raise not_safetensors(path, f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise not_safetensors(path, "the header is not a JSON object")
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
        return _nonconforming(path, f"tensor {show(name)} {what}")

    if not isinstance(entry, dict):
        raise bad("is not a JSON object with dtype, shape and data_offsets")
    missing = [f"has no {key!r}" for key in _ENTRY_KEYS if key not in entry]
    unknown = [f"has the unknown key {show(key)}" for key in entry if key not in _ENTRY_KEYS]
    if missing or unknown:
        raise bad(", ".join(missing + unknown))
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in RAW_DTYPES:
        raise bad(f"has the unsupported dtype {show(dtype)} (supported: {', '.join(sorted(RAW_DTYPES))})")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {show(shape)}; a shape is a list of at most {MAX_DIMS} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad(f"has data_offsets {show(offsets)}; they must be two non-negative integers [start, end]")
    start, end = offsets
    if end < start:
        raise bad(f"has data_offsets [{start}, {end}], which end before they start")
    if end > data_size:
        raise not_safetensors(
            path, f"tensor {show(name)} ends at byte {end}, past the data's {data_size} bytes"
        )
    span = RAW_DTYPES[dtype].itemsize
    for d in shape:  # the size the shape claims, ignoring zeros: numpy refuses any above its limit
        span *= max(d, 1)
        if span > MAX_ADDRESSABLE:
            raise bad(f"has shape {show(shape)}, too large for any array")
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
                f"(a hole before tensor {show(name)})",
            )
        if info.start < expected:
            raise _nonconforming(
                path,
                f"tensor {show(name)} (bytes {info.start} to {info.end}) overlaps tensor "
                f"{show(previous)} (which ends at byte {expected})",
            )
        expected, previous = info.end, name
    if expected != data_size:
        after = f"the last tensor {show(previous)}" if infos else "the header (it names no tensor)"
        raise _nonconforming(path, f"{data_size - expected} bytes follow {after}; no tensor uses them")
