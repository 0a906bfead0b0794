"""`torch.export` archives (`.pt2`) as architecture specs: checked loading and the live module.

`torch.export.load` unpickles some members of an archive with `weights_only=False` (pickled
weights and constants, and the sample inputs when a safe load fails). Before handing the file to
it, every such member is loaded here with `weights_only=True`; an archive holding anything but
plain tensors and containers is refused, as `.pt` checkpoints are.

The module an archive yields runs the graph as it was exported: train/eval behaviour (batch norm,
dropout) and any static batch size are fixed at export time.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunecli.checkpoints import require_file
from prunecli.errors import CheckpointError, InputError

_ARCHIVE_MARKERS = ("archive_format", "serialized_exported_program.json")  # current and pre-2.8 layouts
_REEXPORT_HINT = (
    "re-export it with torch.export.save(torch.export.export(model, example_inputs), path) "
    f"using this PyTorch ({torch.__version__.split('+')[0]})"
)


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
        module = program.module()
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
    _check_archive(path)
    try:
        with _quiet_torch_export_log():
            return torch.export.load(path)
    except Exception as exc:
        raise InputError(
            f"{path} is not a loadable torch.export archive ({describe_exception(exc)})", _REEXPORT_HINT
        ) from exc


def _check_archive(path: Path) -> Any:
    """Refuse a file that is not a `.pt2` archive or holds pickled objects; return the sample inputs."""
    require_file(path, "torch.export archive")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(posixpath.basename(n) in _ARCHIVE_MARKERS for n in names):
                raise InputError(f"{path} is not a torch.export archive (a torch.save file?)", _REEXPORT_HINT)
            sample = None
            for name in _pickled_members(archive, names):
                value = _safe_load(archive, name, path)
                if "sample_inputs" in name.split("/"):
                    sample = value
            return sample
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{path} is not a readable torch.export archive ({describe_exception(exc)})", _REEXPORT_HINT
        ) from None


def _pickled_members(archive: zipfile.ZipFile, names: list[str]) -> Iterator[str]:
    """Members that torch.export.load may unpickle: all under data/ except raw tensor payloads."""
    raw: set[str] = set()
    for config in (n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))):
        for entry in json.loads(archive.read(config))["config"].values():
            if not entry.get("use_pickle", True):
                raw.add(posixpath.join(posixpath.dirname(config), entry["path_name"]))
    for name in names:
        in_data = "data" in name.split("/")[:-1]
        if (in_data and not name.endswith(".json") and name not in raw) or name.endswith(".pt"):
            yield name


def _safe_load(archive: zipfile.ZipFile, name: str, path: Path) -> Any:
    try:
        return torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        why = (
            lines[0][:160] if lines else describe_exception(exc)[:160]
        )  # e.g. "unsupported GLOBAL posix.mkdir"
        raise CheckpointError(
            f"{path} holds pickled objects that are not plain tensors ({name}: {why}); refused to load them",
            "re-export without custom objects, or call torch.export.load yourself if you trust the file",
        ) from None


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
