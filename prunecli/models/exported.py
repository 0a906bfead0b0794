"""`torch.export` archives (`.pt2`) as architecture specs: checked loading and the live module.

`torch.export.load` is not safe on a file from someone else: it unpickles members with
`weights_only=False` (weights and constants marked `use_pickle`, "opaque" constants, the sample
inputs when a safe load fails), loads AOTInductor shared libraries, evaluates SymPy expressions
with `eval`, and compiles Python source from names in the graph JSON. So an archive is checked
here first, and torch only ever reads a copy that holds exactly the checked bytes:

- the zip itself: no data before it, no comment, the central directory where the end record says,
  every name exactly once (torch's reader matches names without regard to case and may read
  either of two copies, `zipfile` reads the last), names inside the one top folder torch strips,
  stored or deflated members only;
- the members: only those `torch.export.save` writes (a fixed list, raw `weight_N`/`tensor_N`
  payloads, `extra/` files); weights and constants only as raw bytes (`use_pickle: false`);
  the sample inputs load with `weights_only=True`, as torch tries first;
- the graph JSON: names limited to identifier characters, SymPy expressions and guards limited
  to calls of known functions on literals and symbols; after loading, no graph node may take a
  callable other than an operator, and no string input may hold quotes (torch writes the guard
  function that `.module()` compiles from guards, input names and string inputs).

The module an archive yields runs the graph as it was exported: train/eval behaviour (batch norm,
dropout) and any static batch size are fixed at export time.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
import struct
import tempfile
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from prunecli.errors import CheckpointError, InputError
from prunecli.io.checkpoints import require_file
from prunecli.models.pt2_graph import (
    PLAIN_NAME,
    bad_string,
    check_graph_json,
    check_program,
    shown,
    unsafe,
)

_ARCHIVE_MARKERS = ("archive_format", "serialized_exported_program.json")  # current and pre-2.8 layouts
_REEXPORT_HINT = (
    "re-export it with torch.export.save(torch.export.export(model, example_inputs), path) "
    f"using this PyTorch ({torch.__version__.split('+')[0]})"
)

# What torch.export.save (PyTorch 2.8+) writes for one program named "model", below the top folder.
_GRAPH = "models/model.json"
_SAMPLE = "data/sample_inputs/model.pt"
_CONFIGS = {  # payload config -> (folder, file prefix) of the raw tensors it lists
    "data/weights/model_weights_config.json": ("data/weights/", "weight_"),
    "data/constants/model_constants_config.json": ("data/constants/", "tensor_"),
}
_REQUIRED = frozenset({"archive_format", "archive_version", _GRAPH, _SAMPLE, *_CONFIGS})
_OPTIONAL = frozenset({"byteorder", "version", ".data/version", ".data/serialization_id"})
_PAYLOAD = re.compile(r"data/(weights/weight|constants/tensor)_[0-9]+\Z")
_EXTRA = re.compile(r"extra/[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_REPACK_ROOT = "archive"

_ZIP_FLAGS = 0x0808 | 0x0006  # data descriptor, UTF-8 names, deflate options; never encryption


def load_exported_module(path: Path) -> nn.Module:
    """The live module of a `.pt2` archive, its weights included.

    `train()` and `eval()` only set the `training` flags (the exported graph cannot switch
    modes), instead of raising NotImplementedError as `ExportedProgram.module()` does.

    Example:
        >>> model = load_exported_module(Path("model.pt2"))
        >>> model(torch.zeros(1, 3, 32, 32))
    """
    program = _load_program(path)
    try:
        module = program.module()  # compiles a guard function from strings _check_program has vetted
    except Exception as exc:
        raise InputError(
            f"{path} could not be turned into a module ({describe_exception(exc)})", _REEXPORT_HINT
        ) from exc
    module.train = types.MethodType(_set_training_flags, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(lambda self: self.train(False), module)  # type: ignore[method-assign]
    return module


def exported_input_shape(path: Path) -> tuple[int, ...] | None:
    """One example's shape from the archive's sample input, when it has a single tensor input."""
    sample = _check_archive(path)
    if not (isinstance(sample, tuple) and len(sample) == 2):
        return None
    args, kwargs = sample
    if kwargs or not isinstance(args, (tuple, list)) or len(args) != 1:
        return None
    tensor = args[0]
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1:
        return None
    return tuple(tensor.shape[1:])


def _set_training_flags(self: nn.Module, mode: bool = True) -> nn.Module:
    for module in self.modules():
        module.training = mode  # flags only: the exported graph keeps the mode it was exported in
    return self


def _load_program(path: Path) -> torch.export.ExportedProgram:
    """Check the archive, then let torch load a fresh copy of the checked members, and nothing else."""
    with tempfile.TemporaryFile(suffix=".pt2") as copy:
        with zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
            _check_archive(path, target)
        copy.seek(0)
        try:
            with _quiet_torch_export_log():
                program = torch.export.load(copy)
        except Exception as exc:
            raise InputError(
                f"{path} is not a loadable torch.export archive ({describe_exception(exc)})", _REEXPORT_HINT
            ) from exc
    check_program(program, path)
    return program


def _check_archive(path: Path, copy_to: zipfile.ZipFile | None = None) -> Any:
    """Refuse a file that is not a `.pt2` archive or that torch could act on unsafely.

    Returns the sample inputs; with `copy_to`, also writes every checked member there (stored, under
    one fixed top folder), so that torch reads exactly the bytes checked here.
    """
    require_file(path, "torch.export archive")
    try:
        with path.open("rb") as raw, zipfile.ZipFile(raw) as archive:
            records = _records(archive, raw, path)
            sample, listed = None, set()
            for record, info in records.items():
                data = archive.read(info)  # zipfile checks the local header's name and the CRC
                if record == _SAMPLE:
                    sample = _safe_load(data, record, path)
                elif record in _CONFIGS:
                    listed |= _check_payload_config(data, record, records, path)
                elif record == _GRAPH:
                    check_graph_json(data, path, _GRAPH)
                if copy_to is not None:
                    copy_to.writestr(f"{_REPACK_ROOT}/{record}", data)
            if unlisted := sorted(r for r in records if _PAYLOAD.match(r) and r not in listed):
                raise unsafe(path, f"holds {unlisted[0]}, which no payload config lists")
            return sample
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise CheckpointError(
            f"{path} is not a readable torch.export archive ({describe_exception(exc)})", _REEXPORT_HINT
        ) from None


def _records(archive: zipfile.ZipFile, raw: IO[bytes], path: Path) -> dict[str, zipfile.ZipInfo]:
    """The members by the name torch's reader gives them (top folder stripped), after every check
    that makes that name unambiguous; anything torch.export.save would not write is refused."""
    infos = archive.infolist()
    markers = {posixpath.basename(i.filename) for i in infos} & set(_ARCHIVE_MARKERS)
    if not markers:
        raise InputError(f"{path} is not a torch.export archive (a torch.save file?)", _REEXPORT_HINT)
    if "archive_format" not in markers:  # torch loads that layout's state dict with weights_only=False
        raise InputError(f"{path} uses the torch.export layout of PyTorch < 2.8, not loaded", _REEXPORT_HINT)
    _check_container(archive, raw, path)
    root = infos[0].filename.split("/", 1)[0]  # torch takes the first entry's folder as the root
    records: dict[str, zipfile.ZipInfo] = {}
    folded: set[str] = set()
    for info in infos:
        _check_entry(info, path)
        if not info.filename.startswith(f"{root}/"):
            raise unsafe(path, f"holds {info.filename!r} outside its top folder {root!r}")
        record = info.filename[len(root) + 1 :]
        if record.lower() in folded:  # torch's reader matches names without regard to case
            raise unsafe(path, f"holds the member {shown(record)} twice (or twice but for case)")
        folded.add(record.lower())
        if not (record in _REQUIRED or record in _OPTIONAL or _PAYLOAD.match(record) or _EXTRA.match(record)):
            raise unsafe(path, f"holds {shown(record)}, which torch.export.save does not write")
        records[record] = info
    if missing := sorted(_REQUIRED - records.keys()):
        raise InputError(f"{path} is not a complete torch.export archive (no {missing[0]})", _REEXPORT_HINT)
    return records


def _check_entry(info: zipfile.ZipInfo, path: Path) -> None:
    """A member name and encoding that torch's C++ reader and `zipfile` read the same way."""
    name = info.filename
    if (
        name != info.orig_filename  # a NUL byte: zipfile cuts the name there, torch does not
        or not name.isascii()  # zipfile decodes cp437, torch keeps the raw bytes
        or not name.isprintable()
        or "\\" in name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in name.split("/"))
        or len(name) > 400
    ):
        raise unsafe(path, f"holds a member named {shown(name)}, which readers may resolve differently")
    if info.flag_bits & ~_ZIP_FLAGS or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise unsafe(path, f"holds {shown(name)} encrypted or compressed as torch.export.save never does")


def _check_container(archive: zipfile.ZipFile, raw: IO[bytes], path: Path) -> None:
    """No data before the zip, no comment after it, one central directory that both readers find.

    `zipfile` shifts every offset when bytes precede the archive, torch's reader does not: the two
    would read different central directories.
    """
    count, cd_size, cd_offset, cd_end = _end_record(raw, path)
    if (
        count != len(archive.infolist())
        or cd_offset + cd_size != cd_end
        or getattr(archive, "start_dir", None) != cd_offset
    ):
        raise unsafe(path, "has data before the zip or a central directory that readers may see differently")


def _end_record(raw: IO[bytes], path: Path) -> tuple[int, int, int, int]:
    """Entries, directory size, directory offset and where the directory must end, from the end
    record and its zip64 twin (torch.export.save writes both); refuses records that disagree."""
    size = raw.seek(0, io.SEEK_END)
    raw.seek(max(size - 98, 0))
    tail = raw.read()
    end = tail[-22:]
    if len(end) != 22 or end[:4] != b"PK\x05\x06" or end[-2:] != b"\0\0":
        raise unsafe(path, "does not end with a plain zip end record (a comment or trailing data)")
    disk, cd_disk, *small = struct.unpack("<4x4H2L2x", end)
    if tail[-42:-38] != b"PK\x06\x07":
        if disk or cd_disk or small[0] != small[1]:
            raise unsafe(path, "spans several disks")
        return small[1], small[2], small[3], size - 22
    record_at = struct.unpack("<8xQ4x", tail[-42:-22])[0]
    zip64 = tail[-98:-42]
    if zip64[:4] != b"PK\x06\x06" or record_at != size - 98:  # zipfile reads it there, torch where pointed
        raise unsafe(path, "has a zip64 end record that its locator does not point to")
    disk, cd_disk, *big = struct.unpack("<16x2L4Q", zip64)
    sentinels = (0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)  # "see the zip64 record"
    agree = all(v in (b, m) for v, b, m in zip(small, big, sentinels, strict=True))
    if disk or cd_disk or big[0] != big[1] or not agree:
        raise unsafe(path, "has zip and zip64 end records that disagree")
    return big[1], big[2], big[3], size - 98


def _check_payload_config(data: bytes, record: str, records: dict[str, Any], path: Path) -> set[str]:
    """Every entry a raw tensor (torch unpickles `use_pickle` entries with weights_only=False);
    returns the member names listed."""
    folder, prefix = _CONFIGS[record]
    config = json.loads(data.decode("utf-8"))
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{record} has no config mapping")
    listed = set()
    for fqn, entry in entries.items():
        name = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or entry.get("use_pickle") is not False:
            raise unsafe(path, f"stores {shown(fqn)} pickled ({record}); only raw tensors are loaded")
        member = folder + name
        if not (name.startswith(prefix) and _PAYLOAD.match(member) and member in records):
            raise unsafe(path, f"lists {shown(fqn)} at {shown(name)} in {record}, not a raw tensor of it")
        if bad := bad_string(entry, "") or bad_string(fqn, ""):
            raise unsafe(path, f"has the name {shown(bad)} in {record}")
        listed.add(member)
    return listed


def _safe_load(data: bytes, name: str, path: Path) -> Any:
    """The sample inputs, loaded as torch first tries: weights_only=True, no map_location. When that
    fails, torch retries with weights_only=False, so a failure here refuses the file."""
    if not data:
        return None
    try:
        sample = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        why = (
            lines[0][:160] if lines else describe_exception(exc)[:160]
        )  # e.g. "unsupported GLOBAL posix.mkdir"
        raise CheckpointError(
            f"{path} holds pickled objects that are not plain tensors ({name}: {why}); refused to load them",
            "re-export without custom objects, or call torch.export.load yourself if you trust the file",
        ) from None
    if (bad := _bad_key(sample)) is not None:  # keys end up in the guard function's source
        raise unsafe(path, f"has the input key {shown(bad)} in {name}, not a plain name")
    return sample


def _bad_key(value: Any) -> str | None:
    """The first dict key under `value` that is neither an int nor a plain name (as repr), or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not (isinstance(key, int) or (isinstance(key, str) and PLAIN_NAME.match(key))):
                return repr(key)
            if (bad := _bad_key(item)) is not None:
                return bad
    elif isinstance(value, (tuple, list)):
        return next((bad for item in value if (bad := _bad_key(item)) is not None), None)
    return None


@contextmanager
def _quiet_torch_export_log() -> Iterator[None]:
    """torch.export.load logs a traceback on stderr before its fallback; our error says it better."""
    logger = logging.getLogger("torch.export")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def describe_exception(exc: BaseException) -> str:
    """`TypeName: first line of the message`, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
