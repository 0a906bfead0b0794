"""What both export paths share: torch's TorchScript exporter run into memory, the weight checks
before it, and `Traced`, what an export hands to the sparse pass and the verification.

`prunecli.export.to_onnx` exports models built from `arch` (one float input);
`prunecli.export.language_model` exports Hugging Face causal language models (token ids).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import InputError, ScoreError
from prunecli.export.verify import Feeds

if TYPE_CHECKING:
    import onnx
    import torch

PROTO_LIMIT = 2**31 - 1  # protobuf's limit on one serialized message


@dataclass
class Traced:
    """A model exported into memory, with what the report and `--verify` need.

    `runs` pairs the inputs of each verification run with torch's outputs on them (the reference).
    """

    proto: onnx.ModelProto
    runs: list[tuple[Feeds, list[np.ndarray]]]
    weights_sha256: str
    arch_name: str  # what the metadata calls the architecture
    input_shape: list[int | str]  # one example's shape without the batch dimension
    notes: list[str]


def run_exporter(
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    opset: int | None,
    quiet_from: Sequence[str] = (),
) -> tuple[onnx.ModelProto, list[str]]:
    """Run the TorchScript exporter into memory; returns the model and its notable warnings.

    The model is exported in eval mode (`TrainingMode.PRESERVE`) without constant folding, so every
    initializer is a tensor of the model under its parameter name. Tracer warnings become notes,
    except those raised by code under a folder of `quiet_from`.
    """
    import onnx
    import torch

    from prunecli.models.exported import describe_exception

    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, _quiet_stdout_fd():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                model,
                args,
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None,
                training=torch.onnx.TrainingMode.PRESERVE,  # the model is in eval mode: no BN folding
                do_constant_folding=False,
            )
        except Exception as exc:
            raise InputError(
                f"torch.onnx.export (TorchScript exporter) failed: {describe_exception(exc)}",
                "PRUNECLI_DEBUG=1 shows the traceback; another `opset` may help",
            ) from exc
    tracer = torch.jit.TracerWarning
    notes = [
        str(w.message).splitlines()[0]
        for w in caught
        if issubclass(w.category, tracer) and not str(w.filename).startswith(tuple(quiet_from))
    ]
    return onnx.load_from_string(buffer.getvalue()), notes


@contextlib.contextmanager
def _quiet_stdout_fd() -> Iterator[None]:
    """Point file descriptor 1 (process-wide) at /dev/null while the exporter runs: on failure its C++
    code dumps the graph there, which would break JSON on stdout and the one-line error."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real descriptor 1 (embedded interpreter): nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def refuse_non_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """NaN or infinite weights would ship a broken model: refused, as every other command does."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise ScoreError(
                f"weights of {name} contain NaN or infinite values",
                "check the checkpoint (prunecli inspect); a model with them cannot be exported",
            )


def check_size(model: torch.nn.Module, arch: str, dtype: str) -> None:
    """One ONNX file holds less than 2 GiB: refuse a larger model before exporting it."""
    unique = {t.data_ptr(): t for t in model.state_dict().values()}  # tied weights count once
    size = sum(t.numel() * t.element_size() for t in unique.values())
    if size >= PROTO_LIMIT:
        raise InputError(
            f"{arch} holds {size:,} bytes of {dtype} tensors; one ONNX file holds less than 2 GiB",
            "export a smaller model",
        )


def torch_outputs(outputs: Any) -> list[np.ndarray]:
    """Tensors as numpy arrays (bfloat16, which numpy lacks, as float32)."""
    import torch

    return [t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy() for t in outputs]
