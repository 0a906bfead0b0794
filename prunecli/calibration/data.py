"""Calibration batches for data-dependent scoring (SNIP, GraSP, ...), and their fingerprint.

Sampling is seeded, so the same source and parameters give the same batches, and the fingerprint
(sha256 of the file's bytes and the sampling parameters) lets a manifest say which data scored a
model. Nothing is unpickled: `.npz`/`.npy` are read with `allow_pickle=False`, `.pt` with
`torch.load(weights_only=True)`. torch is imported only where tensors are built.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from prunecli.errors import CheckpointError, InputError, UsageError
from prunecli.io.checkpoints import require_file, sha256_of_files
from prunecli.io.dtypes import to_float32
from prunecli.io.safetensors_file import SafetensorsReader
from prunecli.io.torch_files import load_torch_file

if TYPE_CHECKING:
    import torch

DATA_SUFFIXES = (".npz", ".npy", ".safetensors", ".pt", ".pth")
SYNTHETIC = ("random", "ones")
KEY_PAIRS = (("inputs", "labels"), ("x", "y"), ("images", "labels"))  # default names, tried in order
FINGERPRINT_VERSION = 1  # bump when sampling changes, so old fingerprints stop matching
_SOURCE_HINT = "name a .npz, .npy, .safetensors or .pt file, or random:SHAPE / ones:SHAPE"
_SHAPE_HINT = "write one example's shape without the batch dimension, e.g. 3x32x32 or 784"
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)

Loaders = dict[str, Callable[[], np.ndarray]]


class _Sampling(NamedTuple):
    """Everything besides the data's bytes that decides the batches (hashed into the fingerprint)."""

    batch_size: int
    num_batches: int | None  # None with per_class, which ignores it
    per_class: int | None
    seed: int
    inputs_key: str | None = None
    labels_key: str | None = None


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse one example's shape without the batch dimension, written `3x32x32` or `784`.

    Example:
        >>> parse_shape("3x32x32")
        (3, 32, 32)
    """
    cleaned = text.strip().lower()
    if not re.fullmatch(r"[0-9]+(x[0-9]+)*", cleaned, re.ASCII):
        raise UsageError(f"{text!r} is not a shape", _SHAPE_HINT)
    shape = tuple(int(d) for d in cleaned.split("x"))
    if 0 in shape:
        raise UsageError(f"shape {text!r} has a zero dimension", _SHAPE_HINT)
    return shape


@dataclass(frozen=True)
class Calibration:
    """Seeded calibration batches on the CPU; scorers move them to the model's device.

    `batches` holds (inputs, labels) pairs: float32 inputs (B, *example_shape) and int64
    labels (B,) or None. `num_classes` is the largest label in the whole source + 1 (not just in
    the sample, so a label check does not depend on the seed), or None without labels.
    """

    batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    fingerprint: str  # sha256 hex of the source's bytes and the sampling parameters
    example_shape: tuple[int, ...]
    num_classes: int | None
    source: str  # as the user named it
    batch_size: int | None = None  # as asked; None means the first batch's size
    per_class: int | None = None
    seed: int = 0

    def record(self) -> dict[str, Any]:
        """A JSON-able description of the data, for a manifest or a scores file's metadata."""
        first = len(self.batches[0][0]) if self.batches else 0
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "batch_size": self.batch_size if self.batch_size is not None else first,
            "num_batches": len(self.batches),
            "per_class": self.per_class,
            "seed": self.seed,
            "examples": sum(len(x) for x, _ in self.batches),
            "has_labels": bool(self.batches) and self.batches[0][1] is not None,
        }


def load_calibration(
    source: str,
    *,
    batch_size: int = 128,
    num_batches: int = 1,
    per_class: int | None = None,
    seed: int = 0,
    inputs_key: str | None = None,
    labels_key: str | None = None,
) -> Calibration:
    """Load seeded calibration batches from a file or a synthetic source.

    Args:
        source: a `.npz/.npy/.safetensors/.pt` file, `random:SHAPE` (standard normal) or `ones:SHAPE`.
            uint8 inputs are taken as image pixels and scaled to [0, 1] (x / 255); other numeric
            inputs are cast to float32 unchanged. Arrays are found as `inputs`/`labels`, `x`/`y` or
            `images`/`labels` unless `inputs_key`/`labels_key` name them. A `.npy` holds inputs only;
            a `.pt` holds a dict of tensors or a tuple (inputs, labels).
        batch_size, num_batches: draw num_batches × batch_size examples without replacement.
        per_class: instead, draw this many examples of every class 0..max label (class-balanced, as
            in GraSP) in batches of batch_size, the last maybe smaller; num_batches is then ignored.
        seed: seeds the sampler (and the values of `random:`).

    Example:
        >>> calib = load_calibration("mnist.npz", batch_size=64, per_class=10)
        >>> inputs, labels = calib.batches[0]  # (64, 28, 28) float32 in [0, 1], (64,) int64
    """
    _check_params(batch_size, num_batches, per_class, seed)
    sampling = _Sampling(batch_size, None if per_class is not None else num_batches, per_class, seed)
    kind, _, rest = source.partition(":")
    if kind in SYNTHETIC:
        given = {"per_class": per_class, "inputs_key": inputs_key, "labels_key": labels_key}
        given = {key: value for key, value in given.items() if value is not None}
        if given:
            key, value = next(iter(given.items()))
            raise UsageError(f"{kind}: data has no arrays and no labels", "drop `per_class` and the keys",
                             option=key, value=value)  # fmt: skip
        return _synthetic(source, kind, parse_shape(rest), sampling)
    return _from_file(source, Path(source), sampling._replace(inputs_key=inputs_key, labels_key=labels_key))


def check_labels(calibration: Calibration, num_outputs: int) -> None:
    """Refuse labels that the model's outputs cannot represent (the loss would fail mid-scoring)."""
    if calibration.num_classes is not None and calibration.num_classes > num_outputs:
        raise InputError(
            f"labels in {calibration.source} go up to {calibration.num_classes - 1} "
            f"but the model has {num_outputs} outputs",
            f"use data labelled 0..{num_outputs - 1}, or a model with {calibration.num_classes} outputs",
        )


@dataclass(frozen=True)
class Examples:
    """Every example of a data file, in file order (for evaluation): the inputs as stored, made
    float32 one batch at a time by `batches`, and int64 labels (N,) or None."""

    inputs: np.ndarray  # (N, *example_shape), checked numbers
    labels: np.ndarray | None
    source: str
    fingerprint: str  # sha256 hex of the file's bytes and the array names

    def batches(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(float32 inputs, labels) in order, `size` examples at a time; uint8 pixels scaled to [0, 1]."""
        import torch

        for start in range(0, len(self.inputs), size):
            stop = min(start + size, len(self.inputs))
            x = _as_float32(self.inputs[start:stop], np.arange(start, stop), Path(self.source))
            y = None if self.labels is None else torch.from_numpy(self.labels[start:stop])
            yield torch.from_numpy(x), y


def load_examples(source: str, *, inputs_key: str | None = None, labels_key: str | None = None) -> Examples:
    """All the examples of a `.npz/.npy/.safetensors/.pt` file, read as `load_calibration` reads
    them (nothing unpickled, the same array names), unsampled and in order.

    Example:
        >>> examples = load_examples("test.npz")
        >>> inputs, labels = next(examples.batches(256))  # float32 (256, 28, 28), int64 (256,)
    """
    path = Path(source)
    _require_data_file(path)
    with ExitStack() as stack:
        loaders = _open_arrays(path, stack, _Sampling(1, 1, None, 0, inputs_key, labels_key))
        ikey, lkey = _pick_keys(path, sorted(loaders), inputs_key, labels_key)
        x = _fetch(loaders, ikey, path)
        _check_inputs(x, path, ikey)
        y = _labels(_fetch(loaders, lkey, path), len(x), path) if lkey else None
    identity = {"kind": "examples", "inputs_key": ikey, "labels_key": lkey}
    return Examples(x, y, source, fingerprint(sha256_of_files([path]), identity))


def _check_params(batch_size: int, num_batches: int, per_class: int | None, seed: int) -> None:
    numbers = {"batch_size": batch_size, "num_batches": num_batches, "per_class": per_class}
    for name, value in numbers.items():
        if value is not None and value < 1:
            raise UsageError(f"`{name}` must be at least 1, got {value}", "pass a positive integer",
                             option=name, value=value, bounds=(1, math.inf))  # fmt: skip
    if seed < 0:
        raise UsageError(f"the seed must be zero or positive, got {seed}", "pass a non-negative seed")


def _synthetic(source: str, kind: str, shape: tuple[int, ...], sampling: _Sampling) -> Calibration:
    size = (sampling.batch_size * (sampling.num_batches or 1), *shape)
    if kind == "ones":
        x = np.ones(size, dtype=np.float32)
    else:
        x = np.random.default_rng(sampling.seed).standard_normal(size, dtype=np.float32)
    canonical = f"{kind}:{'x'.join(map(str, shape))}"  # `random:3X32x32 ` is the same source
    return _calibration(source, canonical, x, None, None, sampling)


def _from_file(source: str, path: Path, sampling: _Sampling) -> Calibration:
    _require_data_file(path)
    with ExitStack() as stack:
        loaders = _open_arrays(path, stack, sampling)
        ikey, lkey = _pick_keys(path, sorted(loaders), sampling.inputs_key, sampling.labels_key)
        x = _fetch(loaders, ikey, path)
        _check_inputs(x, path, ikey)
        y = _labels(_fetch(loaders, lkey, path), len(x), path) if lkey else None
        rng = np.random.default_rng(sampling.seed)
        if sampling.per_class is None:
            index = _random_index(len(x), sampling.batch_size * (sampling.num_batches or 1), rng, path)
        elif y is None:
            raise InputError(f"`per_class` needs labels, and {path} has none", "add labels or drop it",
                             option="per_class", value=sampling.per_class)  # fmt: skip
        else:
            index = _per_class_index(y, sampling.per_class, rng, path)
        inputs = _as_float32(x[index], index, path)
    classes = int(y.max()) + 1 if y is not None else None
    labels = y[index] if y is not None else None
    resolved = sampling._replace(inputs_key=ikey, labels_key=lkey)
    return _calibration(source, sha256_of_files([path]), inputs, labels, classes, resolved)


def _calibration(
    source: str, content: str, x: np.ndarray, y: np.ndarray | None, classes: int | None, s: _Sampling
) -> Calibration:
    batches = _split(x, y, s.batch_size)
    return Calibration(
        batches,
        fingerprint(content, s._asdict()),
        x.shape[1:],
        classes,
        source,
        s.batch_size,
        s.per_class,
        s.seed,
    )


def _require_data_file(path: Path) -> None:
    try:
        require_file(path, "calibration data")
    except InputError as exc:
        raise InputError(exc.message, _SOURCE_HINT) from None
    if path.suffix not in DATA_SUFFIXES:
        raise InputError(f"calibration data {path} has an unknown suffix {path.suffix!r}", _SOURCE_HINT)
    if path.stat().st_size == 0:
        raise InputError(f"calibration data {path} is empty (0 bytes)", "write the data into it again")


def _open_arrays(path: Path, stack: ExitStack, sampling: _Sampling) -> Loaders:
    """Name -> loader of each array in the file; only the arrays picked are read."""
    try:
        if path.suffix in (".npz", ".npy"):
            loaded = np.load(path, mmap_mode="r", allow_pickle=False)  # a .npy is mapped, not read
            if isinstance(loaded, np.lib.npyio.NpzFile):
                stack.callback(loaded.close)
                return {k: (lambda k=k: loaded[k]) for k in loaded.files}
            if sampling.inputs_key or sampling.labels_key:
                raise UsageError("a .npy file holds inputs only", "drop the keys, or use .npz for labels")
            return {"inputs": lambda: loaded}
        if path.suffix == ".safetensors":
            reader = SafetensorsReader(path)  # raises CheckpointError (an InputError) when corrupt
            stack.callback(reader.close)
            return {k: (lambda k=k: _safetensors_array(reader, k)) for k in reader.tensors}
        return _torch_arrays(path)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> InputError:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return InputError(
        f"calibration data {path} cannot be read ({detail})",
        "re-save it with numpy.savez(path, inputs=x, labels=y); a truncated copy cannot be repaired",
    )


def _safetensors_array(reader: SafetensorsReader, name: str) -> np.ndarray:
    dtype = reader.tensors[name].dtype
    if dtype.startswith("F8"):
        raise InputError(f"array {name!r} is {dtype}, which data cannot use", "save it as float32")
    raw = reader.read(name)
    return to_float32(raw, dtype) if dtype == "BF16" else raw


def _torch_arrays(path: Path) -> Loaders:
    import torch

    try:
        obj = load_torch_file(path)
    except CheckpointError as exc:
        raise InputError(exc.message, "save it with torch.save({'inputs': x, 'labels': y}, path)") from None
    if isinstance(obj, torch.Tensor):
        obj = (obj,)
    if isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2:
        obj = dict(zip(("inputs", "labels"), obj, strict=False))
    if not isinstance(obj, dict):
        raise InputError(
            f"{path} holds a {type(obj).__name__}, not calibration data",
            "save a dict of tensors {'inputs': x, 'labels': y} or a tuple (inputs, labels)",
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return {k: (lambda k=k, t=t: _torch_to_numpy(t, f"{k!r} in {path}")) for k, t in tensors.items()}


def _torch_to_numpy(tensor: torch.Tensor, where: str) -> np.ndarray:
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16 or (t.is_floating_point() and t.element_size() == 1):
        t = t.float()  # bf16 and fp8 have no numpy dtype
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as exc:
        raise InputError(f"tensor {where} cannot be read as data ({exc})", "save dense tensors") from None


def _pick_keys(
    path: Path, present: list[str], inputs_key: str | None, labels_key: str | None
) -> tuple[str, str | None]:
    """The inputs and labels names: explicit ones must exist, defaults are tried in order."""
    if not present:
        raise InputError(f"{path} holds no arrays (0 examples)", "save the inputs (and labels) into it")
    for key, what in ((inputs_key, "inputs"), (labels_key, "labels")):
        if key is not None and key not in present:
            raise InputError(f"{path} has no {what} array {key!r}; it has {present}", "pick one of those")
    if inputs_key is None:
        inputs_key = next((i for i, _ in KEY_PAIRS if i in present), None)
        if inputs_key is None:
            raise InputError(
                f"{path} has no array named inputs, x or images; it has {present}",
                "name the inputs array with `inputs_key`",
                option="inputs_key",
            )
    if labels_key is None:
        preferred = [lab for i, lab in KEY_PAIRS if i == inputs_key] + [lab for _, lab in KEY_PAIRS]
        labels_key = next((k for k in preferred if k in present and k != inputs_key), None)
    return inputs_key, labels_key


def _fetch(loaders: Loaders, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(loaders[key]())  # asarray: a plain ndarray, even from a memory map
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


def _check_inputs(x: np.ndarray, path: Path, key: str) -> None:
    if x.dtype.kind not in "biuf":
        raise InputError(f"inputs {key!r} in {path} are {x.dtype}, not numbers", "save numeric inputs")
    if x.ndim >= 1 and len(x) == 0:
        raise InputError(f"{path} holds 0 examples", "save at least one example")
    if x.ndim < 2:
        raise InputError(
            f"inputs {key!r} in {path} have shape {x.shape}, not (examples, *example_shape)",
            "add the example dimension, e.g. reshape (N,) to (N, 1)",
        )


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    """Validated labels as int64: one non-negative whole number per example."""
    if y.ndim != 1 or len(y) != n:
        raise InputError(
            f"{path} has {n} examples but labels of shape {y.shape}",
            "save one class index per example (shape (N,), not one-hot)",
        )
    floats_whole = y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y))))
    if y.dtype.kind not in "biu" and not floats_whole:
        raise InputError(f"labels in {path} are not whole numbers ({y.dtype})", "save class indices")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        i = int(np.argmax(labels < 0))
        raise InputError(f"label {labels[i]} of example {i} in {path} is negative", "classes start at 0")
    return labels


def _random_index(n: int, total: int, rng: np.random.Generator, path: Path) -> np.ndarray:
    if n < total:
        raise InputError(
            f"{path} has {n} examples, but {total} were asked for (batch size × number of batches)",
            f"lower `batch_size` or `num_batches` so that their product is at most {n}",
            option="batch_size",
        )
    return rng.permutation(n)[:total]


def _per_class_index(labels: np.ndarray, per_class: int, rng: np.random.Generator, path: Path) -> np.ndarray:
    """`per_class` seeded examples of every class 0..max label, shuffled together."""
    counts = np.bincount(labels)
    short = np.flatnonzero(counts < per_class)
    if len(short):
        c = int(short[0])
        raise InputError(
            f"class {c} has {counts[c]} examples in {path}, fewer than `per_class` {per_class}",
            f"lower `per_class` to at most {counts.min()} (classes run from 0 to the largest label)",
            option="per_class", value=per_class,
        )  # fmt: skip
    order = rng.permutation(len(labels))
    ordered = labels[order]
    chosen = np.concatenate([order[ordered == c][:per_class] for c in range(len(counts))])
    return chosen[rng.permutation(len(chosen))]


def _as_float32(x: np.ndarray, index: np.ndarray, path: Path) -> np.ndarray:
    """Float32 inputs; uint8 is taken as image pixels and scaled to [0, 1]."""
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
        out = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if not finite.all():
        bad = int(index[np.argmin(finite)])
        raise InputError(f"example {bad} in {path} has NaN or infinite values", "clean or drop that example")
    return out


def _split(x: np.ndarray, y: np.ndarray | None, size: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    import torch

    xs = torch.from_numpy(np.ascontiguousarray(x)).split(size)  # (B, *example_shape) views
    ys = torch.from_numpy(y).split(size) if y is not None else [None] * len(xs)
    return list(zip(xs, ys, strict=True))


def fingerprint(content: str, params: dict[str, Any]) -> str:
    """sha256 over the data's identity (file sha256 or canonical synthetic source) and the parameters."""
    digest = hashlib.sha256(f"prunecli.data/{FINGERPRINT_VERSION}\n{content}\n".encode())
    digest.update(json.dumps(params, sort_keys=True).encode())
    return digest.hexdigest()
