"""Sparse ONNX export of a pruned checkpoint, checked by onnxruntime against torch.

`export_onnx` builds the model (`--arch`), loads the weights, exports one self-contained `.onnx`
file and stores every initializer whose density is below a threshold as an ONNX
`sparse_initializer` (COO: the nonzero values and their int64 flat indices), the rest dense.
A Hugging Face causal language model (a weights folder with `config.json`, or `arch` `hf:DIR`)
takes token ids instead of one float input: `prunecli.export.language_model`.
onnxruntime expands sparse initializers to dense tensors when it loads the file, so inference
speed is unchanged: the gain is the file size (about 12 bytes per kept fp32 weight instead of 4
per weight, so it pays below density 1/3; 10 vs 2 bytes for fp16, below 1/5).

Exporter: the TorchScript exporter, `torch.onnx.export(..., dynamo=False)`. torch 2.13 marks it
deprecated, but it is the one that works reliably here: the default `dynamo=True` needs the
`onnxscript` package (not a dependency), takes ≈3 s for VGG-16 against ≈0.6 s, and writes the
weights to a separate `.onnx.data` file. The TorchScript exporter returns one in-memory model
(under protobuf's 2 GiB limit, checked up front). It runs with `TrainingMode.PRESERVE` on a model
in eval mode and without constant folding, so batch norm is not folded into the convolutions:
every initializer is the checkpoint's own tensor, bit for bit, under its parameter name (the
exporter merges tensors with equal values into one initializer and names the others through
`Identity` nodes, reported as `aliases`). onnxruntime folds batch norm itself when it loads the
file. When torch removes this exporter, `export_onnx` fails with a clear error naming it.
For language models the dynamo exporter was tried again and lost on time and on weight names:
see `prunecli.export.language_model`. The exporter call is shared: `prunecli.export.trace`.

The file's IR version is the lowest of the exporter's, onnx's and the installed onnxruntime's
highest (asked by loading a one-node probe model), so the runtime that verified the file loads it.
`onnx.checker.check_model` (default mode) passes; its `full_check=True` and strict shape inference
reject sparse initializers by design.

onnx and onnxruntime are imported inside functions only: `pip install 'prunecli[onnx]'`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli import __version__
from prunecli.errors import InputError, UsageError
from prunecli.export.sparse import (
    TensorRecord,
    check_model,
    fit_ir_version,
    require_onnx,
    runtime_max_ir_version,
    sparsify,
)
from prunecli.export.trace import Traced, check_size, refuse_non_finite, run_exporter, torch_outputs
from prunecli.export.verify import Verification, verify
from prunecli.io.outputs import write_bytes

if TYPE_CHECKING:
    import onnx
    import torch

DTYPES = ("float32", "float16")
TOLERANCES = {"float32": (1e-4, 1e-3), "float16": (1e-2, 1e-2)}  # default (atol, rtol) per dtype
OPSETS = (7, 20)  # what the TorchScript exporter writes
_SHAPE_HINT = "give one example's shape without the batch dimension, e.g. `input_shape` 3x32x32"


@dataclass(frozen=True)
class ExportRequest:
    """Everything `export_onnx` needs; numbers are validated once, in `validate`.

    `source` is an `apply` output folder (its weights and `manifest.json`), a `manifest.json`, a
    Hugging Face model folder, or any checkpoint. Without `arch`, the folder of the weights must
    hold `config.json`: the model is a Hugging Face causal language model (so is `arch` `hf:DIR`),
    exported with token-id inputs. The input shape is one example's shape without the batch
    dimension: `input_shape`, else the shape of `data` (`prunecli.calibration.data.load_calibration` source),
    else the architecture's default. `atol`/`rtol` default to 1e-4/1e-3 (float32), 1e-2/1e-2 (float16).
    """

    source: Path
    output: Path
    arch: str | None = None  # None: the Hugging Face config beside the weights
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    data: str | None = None
    static_batch: int | None = None  # None: the batch dimension is dynamic
    opset: int | None = None  # None: the exporter's default
    dtype: str = "float32"
    sparse_threshold: float = 0.3  # density below which a tensor is stored sparse; 0: all dense
    verify: bool = False
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    force: bool = False
    trust_remote_code: bool = False  # let a Hugging Face folder run the code it ships

    def validate(self) -> None:
        if not 0.0 <= self.sparse_threshold <= 1.0:
            raise UsageError(
                f"`sparse_threshold` {self.sparse_threshold} is outside [0, 1]",
                "give a density, e.g. 0.3; 0 stores every tensor dense",
                option="sparse_threshold",
                value=self.sparse_threshold,
                bounds=(0.0, 1.0),
            )
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown `dtype` {self.dtype!r}", f"choose one of: {', '.join(DTYPES)}",
                             option="dtype", value=self.dtype, allowed=DTYPES)  # fmt: skip
        if self.static_batch is not None and self.static_batch < 1:
            raise UsageError(
                f"`static_batch` {self.static_batch} is not a positive integer", "e.g. 1",
                option="static_batch", value=self.static_batch, bounds=(1, math.inf),
            )  # fmt: skip
        if self.opset is not None and not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise UsageError(f"`opset` {self.opset} is not supported", f"choose {OPSETS[0]} to {OPSETS[1]}",
                             option="opset", value=self.opset, bounds=OPSETS)  # fmt: skip
        for name, value in (("atol", self.atol), ("rtol", self.rtol)):
            if value is not None and not value >= 0:
                raise UsageError(f"`{name}` {value} is negative", "give a tolerance >= 0, e.g. 1e-4",
                                 option=name, value=value, bounds=(0.0, math.inf))  # fmt: skip
        if self.input_shape is not None and self.data is not None:
            raise UsageError("`input_shape` and `data` were both given", "give only one of them",
                             option="input_shape", value=self.input_shape)  # fmt: skip

    def tolerances(self) -> tuple[float, float]:
        atol, rtol = TOLERANCES[self.dtype]
        return (atol if self.atol is None else self.atol, rtol if self.rtol is None else self.rtol)


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote: sizes, per-tensor storage, metadata, and the verification."""

    output: str
    source: str
    weights: str
    arch: str
    input_shape: list[int | str]  # one example's shape; ["sequence"] for a language model
    inputs: dict[str, list[int | str]]  # the file's inputs and outputs: name -> dims (a name if dynamic)
    outputs: dict[str, list[int | str]]
    batch: int | str  # the static batch size, or "dynamic"
    dtype: str
    opset: int
    ir_version: int
    sparse_threshold: float
    dense_bytes: int  # the same model with every initializer dense
    sparse_bytes: int  # the file written
    ratio: float  # dense_bytes / sparse_bytes
    seconds: float
    tensors: list[TensorRecord]
    metadata: dict[str, str]
    verification: Verification | None
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(request: ExportRequest) -> ExportReport:
    """Export a checkpoint to one sparse ONNX file, optionally verified by onnxruntime.

    Args:
        request: the source, output and options (see `ExportRequest`).

    Returns:
        The report. A failed verification does not raise: the file is written and
        `report.verification.passed` is False (`prunecli export` then exits 1).

    Raises:
        UsageError: bad options, or onnx/onnxruntime not installed.
        InputError: a missing or unreadable source, an architecture that does not match the
            weights, an input shape the model rejects, an existing output without `force`,
            or an output that cannot be written. Nothing is written then.

    Example:
        >>> report = export_onnx(ExportRequest(Path("out"), Path("m.onnx"), "vgg16", verify=True))
        >>> round(report.ratio, 2), report.verification.passed  # VGG-16 pruned to 90% by magnitude
        (3.41, True)
    """
    from prunecli.io.checkpoints import checkpoint_files
    from prunecli.io.outputs import existing_inputs, output_lock

    start = time.perf_counter()
    request.validate()
    onnx, ort = require_onnx()
    weights, manifest = resolve_source(request.source)  # a folder or manifest names its weights
    folder = _language_model_folder(request.arch, weights)
    inputs = existing_inputs(request.source, request.arch, request.data) + checkpoint_files(weights)
    if weights != request.source:
        inputs.append(weights.parent / "manifest.json")
    _check_output(request.output, request.force, inputs)
    with output_lock(request.output):
        _check_output(request.output, request.force, inputs)  # again, now that no one else writes it
        return _export(request, weights, manifest, folder, onnx, ort, start)


def _export(
    request: ExportRequest,
    weights: Path,
    manifest: dict[str, Any] | None,
    folder: Path | None,
    onnx: Any,
    ort: Any,
    start: float,
) -> ExportReport:
    """The export itself, run while the output is locked (`folder`: a language model's config)."""
    if folder is not None:
        from prunecli.export.language_model import trace_language_model

        traced = trace_language_model(request, folder, weights)  # the model is freed on return
    else:
        traced = _trace(request, weights)
    proto, notes = traced.proto, traced.notes
    notes += fit_ir_version(proto, min(onnx.IR_VERSION, runtime_max_ir_version()))
    metadata = _metadata(request, traced, manifest)
    onnx.helper.set_model_props(proto, metadata)
    dense_bytes = proto.ByteSize()
    tensors = sparsify(proto, request.sparse_threshold)
    check_model(onnx, proto)
    data = proto.SerializeToString()
    check = verify(ort, data, traced.runs, *request.tolerances()) if request.verify else None
    write_bytes(request.output, data)
    return ExportReport(
        output=str(request.output),
        source=str(request.source),
        weights=str(weights),
        arch=request.arch or f"hf:{folder}",
        input_shape=traced.input_shape,
        inputs=_dims(proto.graph.input),
        outputs=_dims(proto.graph.output),
        batch=request.static_batch or "dynamic",
        dtype=request.dtype,
        opset=_opset(proto),
        ir_version=proto.ir_version,
        sparse_threshold=request.sparse_threshold,
        dense_bytes=dense_bytes,
        sparse_bytes=len(data),
        ratio=dense_bytes / len(data),
        seconds=time.perf_counter() - start,
        tensors=tensors,
        metadata=metadata,
        verification=check,
        notes=notes,
    )


def resolve_source(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """The weights file and the manifest (None for a plain checkpoint) that `path` names.

    A folder is an `apply` output (its manifest names the weights) or, without a manifest, a
    Hugging Face model folder (`config.json` beside `model.safetensors` or its sharded index).
    """
    from prunecli.io.checkpoints import CONFIG_FILE, require_file, weights_path
    from prunecli.io.manifest import MANIFEST_FILE, read_manifest

    if path.is_dir() and not (path / MANIFEST_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return weights_path(path), None
    if path.is_dir() or path.name == MANIFEST_FILE:
        manifest_path = path / MANIFEST_FILE if path.is_dir() else path
        if not manifest_path.is_file():
            raise InputError(
                f"{path} is a folder without {MANIFEST_FILE}",
                "pass an apply output folder or a checkpoint file",
            )
        manifest = read_manifest(manifest_path)
        if manifest["files"]["model"] is None:
            raise InputError(f"{manifest_path} is a mask set without weights", "export an apply output")
        weights = manifest_path.parent / manifest["files"]["model"]
        require_file(weights, "weights file")
        return weights, manifest
    require_file(path, "checkpoint")
    return path, None


def _language_model_folder(arch: str | None, weights: Path) -> Path | None:
    """The Hugging Face folder of a language model (None for others); `arch` is needed without one."""
    from prunecli.export.language_model import config_folder_of

    folder = config_folder_of(arch, weights)
    if folder is None and arch is None:
        raise UsageError(
            f"`arch` is needed: {weights} has no config.json beside it",
            "give `arch` (a zoo name, package.module:factory, file.py:factory, a .pt2 archive or hf:DIR)",
            option="arch",
        )
    return folder


def _check_output(output: Path, force: bool, inputs: list[Path]) -> None:
    from prunecli.io.outputs import guard_output_file

    if output.is_dir():  # before guard_output_file, which would call it an existing output
        raise InputError(f"output {output} is a directory", f"name a file, e.g. {output / 'model.onnx'}")
    guard_output_file(output, force, inputs)
    if not os.access(output.absolute().parent, os.W_OK):
        raise InputError(f"cannot write to {output.absolute().parent}", "choose a writable output folder")


def _trace(request: ExportRequest, weights: Path) -> Traced:
    """Build `arch`, load the weights, run torch on a seeded batch and export into memory."""
    import torch

    assert request.arch is not None  # checked by `_language_model_folder`
    model, sha256, notes = _load_model(request, weights)
    shape = _input_shape(request)
    x = _seeded_batch(request.seed, request.static_batch or 2, shape, request.dtype)
    reference = _forward(model, x, request.arch, shape)
    outputs = ["output"] if len(reference) == 1 else [f"output_{i}" for i in range(len(reference))]
    axes = {name: {0: "batch"} for name in ["input", *outputs]} if request.static_batch is None else None
    proto, export_notes = run_exporter(model, (torch.from_numpy(x),), ["input"], outputs, axes, request.opset)
    return Traced(proto, [({"input": x}, reference)], sha256, request.arch, list(shape), notes + export_notes)


def _load_model(request: ExportRequest, weights: Path) -> tuple[torch.nn.Module, str, list[str]]:
    """The model in eval mode with the weights loaded, in the asked dtype; the weights' sha256; notes."""
    import torch

    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.io.torch_files import raw_to_torch
    from prunecli.models import load_weights, resolve_model

    assert request.arch is not None
    model = resolve_model(request.arch, request.arch_args)
    with open_checkpoint(weights) as ckpt:
        tensors = {name: raw_to_torch(ckpt.read(name), info.dtype) for name, info in ckpt.tensors.items()}
        sha256, notes = ckpt.sha256(), list(ckpt.notes)
    refuse_non_finite(tensors)
    load_weights(model, tensors, str(weights))
    model = model.to(getattr(torch, request.dtype)).eval()
    check_size(model, request.arch, request.dtype)
    return model, sha256, notes


def _input_shape(request: ExportRequest) -> tuple[int, ...]:
    from prunecli.calibration.data import load_calibration
    from prunecli.models import default_input_shape

    if request.input_shape is not None:
        return tuple(request.input_shape)
    if request.data is not None:
        return load_calibration(request.data, batch_size=1, num_batches=1, seed=request.seed).example_shape
    shape = default_input_shape(request.arch, request.arch_args)
    if shape is None:
        raise UsageError(f"`arch` {request.arch} implies no input shape", _SHAPE_HINT + ", or `data` SRC",
                         option="input_shape")  # fmt: skip
    return tuple(shape)


def _seeded_batch(seed: int, batch: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Standard-normal inputs (batch, *shape) from a seeded generator."""
    return np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32).astype(dtype)


def _forward(model: torch.nn.Module, x: np.ndarray, arch: str, shape: tuple[int, ...]) -> list[np.ndarray]:
    """torch's outputs for `x` (the reference); a model that rejects the shape is an InputError."""
    import torch

    from prunecli.models.exported import describe_exception

    shown = "x".join(map(str, shape))
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
    except Exception as exc:
        raise InputError(
            f"{arch} rejects input shape {shown}: {describe_exception(exc)}", _SHAPE_HINT
        ) from exc
    outputs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
        raise InputError(
            f"{arch} returns {type(out).__name__}", "export needs a tensor or a tuple of tensors"
        )
    return torch_outputs(outputs)


def _metadata(request: ExportRequest, traced: Traced, manifest: dict | None) -> dict:
    """The file's metadata_props: tool version, architecture, and the manifest's pruning record."""
    meta = {
        "prunecli_version": __version__,
        "prunecli_arch": traced.arch_name,
        "prunecli_input_shape": "x".join(map(str, traced.input_shape)),
        "prunecli_weights_sha256": traced.weights_sha256,
        "prunecli_sparse_threshold": repr(request.sparse_threshold),
    }
    if manifest is not None:
        meta["prunecli_method"] = manifest["method"]["name"]
        meta["prunecli_sparsity"] = repr(manifest["totals"]["sparsity"])
        meta["prunecli_source_sha256"] = manifest["source"]["sha256"]
    return meta


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _dims(values: Any) -> dict[str, list[int | str]]:
    """name -> dims of graph inputs or outputs: a number, or the name of a dynamic axis."""
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
