"""Architecture specs (`--arch`, `--arch-args`) to live models, and checkpoints into them.

A spec is one of:
- a zoo name: `vgg16`, `resnet50`, `mlp`, ... (see `prunecli.models.zoo`);
- `package.module:factory`, imported with importlib;
- `path/to/file.py:factory`, loaded from the file (a relative path is taken from the current folder);
- a `torch.export` archive ending in `.pt2`, which carries its own graph and weights.

`--arch-args` is a JSON object of keyword arguments for the factory.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunecli.errors import CheckpointError, InputError, PruneError, UsageError
from prunecli.models.exported import describe_exception, exported_input_shape, load_exported_module
from prunecli.models.zoo import ZOO, input_shape

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_SPEC_FORMS = "a zoo name, package.module:factory, path/to/file.py:factory or a .pt2 archive"
_ARGS_HINT = "give a JSON object of keyword arguments, e.g. `arch_args` '{\"num_classes\": 100}'"
_DEBUG_HINT = "PRUNECLI_DEBUG=1 shows the traceback"
MAX_MISMATCHES_SHOWN = 4


def parse_arch_args(text: str | None) -> dict[str, Any]:
    """Parse `--arch-args`: a JSON object of keyword arguments (None or blank → {}).

    Example:
        >>> parse_arch_args('{"num_classes": 100, "hidden": [512, 256]}')
        {'num_classes': 100, 'hidden': [512, 256]}
    """
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"`arch_args` is not valid JSON ({exc.msg} at column {exc.colno})", _ARGS_HINT,
            option="arch_args", value=text,
        ) from None  # fmt: skip
    if not isinstance(value, dict):
        raise UsageError(f"`arch_args` must be a JSON object, not {_json_kind(value)}", _ARGS_HINT,
                         option="arch_args", value=text)  # fmt: skip
    return value


def resolve_model(spec: str, arch_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the model a spec names, calling its factory with `arch_args` as keyword arguments.

    Args:
        spec: a zoo name, `package.module:factory`, `path/to/file.py:factory` or `model.pt2`.
        arch_args: keyword arguments for the factory (not allowed with a `.pt2` archive).

    Returns:
        A fresh model on the CPU, in whatever mode its factory left it (training, by default).

    Raises:
        UsageError: an unknown zoo name, a module or factory that cannot be found, arguments the
            factory does not take, or `arch_args` with a `.pt2` archive.
        InputError: a file that is missing or fails to load, a factory that raises or returns
            something other than an `nn.Module`.

    Example:
        >>> resolve_model("vgg16", {"num_classes": 100}).classifier.out_features
        100
        >>> model = resolve_model("models/net.py:make_net", {"width": 64})
    """
    args = dict(arch_args or {})
    if _is_archive(spec):
        if args:
            raise UsageError(
                f"`arch_args` do not apply to the torch.export archive {spec}",
                "drop `arch_args`: the archive carries its own graph and weights",
                option="arch_args",
                value=args,
            )
        return load_exported_module(Path(spec))
    if ":" not in spec:
        return _build(ZOO[_zoo_name(spec)].factory, args, spec)
    factory, folder = _import_factory(spec)
    with _on_sys_path(folder):
        return _build(factory, args, spec)


def default_input_shape(spec: str, arch_args: Mapping[str, Any] | None = None) -> tuple[int, ...] | None:
    """One example's input shape (no batch dimension) when the spec implies one, else None.

    Zoo models have a fixed shape (the MLP's follows `in_features`); a `.pt2` archive gives the
    shape of its sample input when it has a single tensor input. A spec that does not resolve
    gives None, and `resolve_model` reports the problem; an archive refused as unsafe raises
    CheckpointError at once, so that the refusal is what the user sees.

    Example:
        >>> default_input_shape("resnet50")
        (3, 224, 224)
    """
    if _is_archive(spec):
        try:
            return exported_input_shape(Path(spec))
        except CheckpointError:
            raise
        except PruneError:
            return None
    name = spec.strip().lower()
    return input_shape(name, arch_args) if name in ZOO else None


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy a checkpoint's tensors into `model`, strictly: same keys, same shapes.

    Floating tensors are cast to the dtype of the model's tensor (a bf16 checkpoint loads into an
    fp32 model); a key the checkpoint lacks is filled from a tied tensor (one sharing storage in
    the model) when the checkpoint has that one.

    Args:
        model: the live model (any device).
        tensors: the checkpoint's tensors by name, e.g. `checkpoints.load_state_dict(path)`.
        source: how to name the checkpoint in an error, usually its path.

    Raises:
        InputError: keys missing or unexpected, shapes that differ, or a floating tensor where
            the model holds an integer one (or the reverse); the message names the first few.

    Example:
        >>> load_weights(model, load_state_dict(Path("init.safetensors")), "init.safetensors")
    """
    given = check_weights(model, tensors, source)
    model.load_state_dict(given, strict=True)  # copy_ into each tensor casts the dtype, one at a time


def check_weights(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The checks of `load_weights` without loading: keys, shapes and kinds of dtype.

    `tensors` may be on the meta device (shapes only), so a large checkpoint can be checked
    before any of its bytes are read. Returns the tensors with tied keys filled in.
    """
    expected = model.state_dict()
    given = _fill_tied(expected, dict(tensors))
    problems = _mismatches(expected, given)
    if problems:
        shown = "; ".join(problems[:MAX_MISMATCHES_SHOWN])
        more = len(problems) - MAX_MISMATCHES_SHOWN
        shown += f" (and {more} more)" if more > 0 else ""
        raise InputError(
            f"checkpoint {source} does not match the architecture: {shown}",
            _prefix_hint(expected, given) or "check `arch` / `arch_args`",
        )
    return given


def _is_archive(spec: str) -> bool:
    return spec.lower().endswith(".pt2")


def _zoo_name(spec: str) -> str:
    name = spec.strip().lower()
    if name in ZOO:
        return name
    if name.endswith(".py"):
        hint = f"name the factory in the file too: {spec}:make_model"
    elif Path(name).suffix in (".safetensors", ".json", ".pt", ".pth", ".bin", ".onnx"):
        hint = f"`arch` takes an architecture, not a checkpoint: {_SPEC_FORMS}"
    else:
        close = difflib.get_close_matches(name, ZOO, n=1)
        hint = (f"did you mean {close[0]}? " if close else "") + f"choose one of: {', '.join(ZOO)}"
        hint += "; or give package.module:factory, path/to/file.py:factory or a .pt2 archive"
    raise UsageError(f"unknown architecture {spec!r}", hint, option="arch", value=spec)


def _import_factory(spec: str) -> tuple[Callable[..., Any], Path | None]:
    """The callable a `module:factory` or `file.py:factory` spec names, and the file's folder."""
    target, _, attr = spec.rpartition(":")
    if not target or not _DOTTED.fullmatch(attr):
        raise UsageError(
            f"`arch` {spec!r} does not end in :factory (a Python name)",
            "write package.module:factory or path/to/file.py:factory",
            option="arch",
            value=spec,
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        return _get_factory(_load_file(path, spec), attr, str(path), spec), path.parent
    if not _DOTTED.fullmatch(target):
        raise UsageError(
            f"{target!r} in `arch` {spec!r} is neither a module name nor a .py file",
            "write package.module:factory or path/to/file.py:factory",
            option="arch",
            value=spec,
        )
    return _get_factory(_import_module(target), attr, f"module {target}", spec), None


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(
                f"cannot import module {name!r}: no module named {exc.name!r}",
                "install it or add its folder to PYTHONPATH, or name the file: path/to/file.py:factory",
            ) from None
        raise InputError(
            f"importing {name!r} failed: {describe_exception(exc)}",
            f"install {exc.name!r}, which {name!r} imports",
        ) from exc
    except Exception as exc:
        raise InputError(f"importing {name!r} failed: {describe_exception(exc)}", _DEBUG_HINT) from exc


def _load_file(path: Path, spec: str) -> Any:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"{path} (from `arch` {spec}) {what}", "check the path", option="arch", value=spec)
    if path.suffix != ".py":
        raise UsageError(f"{path} (from `arch` {spec}) is not a .py file", "write path/to/file.py:factory",
                         option="arch", value=spec)  # fmt: skip
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_prunecli_arch_{digest}_{stem}"  # unique per file, so two model.py files do not clash
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"cannot load {path} as Python", "check that it is a Python source file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        with _on_sys_path(path.parent):  # as `python file.py` would: sibling imports work
            module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise InputError(f"{path} failed to load: {describe_exception(exc)}", _DEBUG_HINT) from exc
    return module


def _get_factory(module: Any, attr: str, where: str, spec: str) -> Callable[..., Any]:
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = _callables_defined_in(module)
            hint = f"it defines: {', '.join(defined)}" if defined else f"define {attr}(**arch_args) there"
            raise UsageError(f"{where} has no {attr!r} (from `arch` {spec})", hint, option="arch", value=spec)
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(
            f"{attr!r} in `arch` {spec} is not callable (its type is {type(obj).__name__})",
            "name a function or class that builds the model",
            option="arch",
            value=spec,
        )
    return obj


def _callables_defined_in(module: Any, limit: int = 12) -> list[str]:
    names = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", "") == module.__name__
    ]
    return names[:limit]


def _build(factory: Callable[..., Any], args: dict[str, Any], label: str) -> nn.Module:
    """Call `factory(**args)`: arguments checked against its signature, its failures explained."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**args)
        except TypeError as exc:
            raise UsageError(f"`arch_args` do not fit {label}: {exc}", _accepted(label, signature),
                             option="arch_args", value=args) from None  # fmt: skip
    try:
        model = factory(**args)
    except Exception as exc:
        raise InputError(
            f"{label} raised {describe_exception(exc)}", f"check `arch_args`; {_DEBUG_HINT}"
        ) from exc
    if not isinstance(model, nn.Module):
        what = f"the class {model.__name__}" if isinstance(model, type) else f"a {type(model).__name__}"
        raise InputError(
            f"{label} returned {what}, not a torch.nn.Module instance",
            "make the factory return the built model",
        )
    return model


def _accepted(label: str, signature: inspect.Signature) -> str:
    params = [
        p.name + (f"={p.default!r}" if p.default is not p.empty else "")
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return (
        f"{label} takes: {', '.join(params)}" if params else f"{label} takes no arguments; drop `arch_args`"
    )


@contextmanager
def _on_sys_path(folder: Path | None) -> Iterator[None]:
    """Put `folder` first on sys.path for the duration (nothing when None)."""
    if folder is None:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))


def _fill_tied(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill keys the checkpoint lacks from keys that share storage with them in the model."""
    by_storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, tensor in expected.items():
        if tensor.numel():
            by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)
    for names in by_storage.values():
        present = [n for n in names if n in given]
        for name in names:
            if present and name not in given:
                given[name] = given[present[0]]
    return given


def _mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys, shape and dtype-kind differences, interleaved by kind."""
    missing = [f"missing {k}" for k in expected if k not in given]
    unexpected = [f"unexpected {k}" for k in given if k not in expected]
    shapes, kinds = [], []
    for name, tensor in given.items():
        if name not in expected:
            continue
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape):
            shapes.append(
                f"{name} is {list(tensor.shape)} in the checkpoint but {list(want.shape)} in the model"
            )
        elif tensor.is_floating_point() != want.is_floating_point():
            kinds.append(f"{name} is {_dtype(tensor)} in the checkpoint but {_dtype(want)} in the model")
    groups = [missing, unexpected, shapes, kinds]
    return [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]


def _prefix_hint(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """A hint when every checkpoint key is a model key behind one extra prefix (e.g. 'model.')."""
    for prefix in {k.split(".", 1)[0] + "." for k in given if "." in k}:
        stripped = {k[len(prefix) :] for k in given if k.startswith(prefix)}
        if set(expected) <= stripped:
            return (
                f"the checkpoint's keys start with {prefix!r}: strip it, or save the inner model's state dict"
            )
    return None


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "an array", str: "a string"}.get(type(value), "null")
