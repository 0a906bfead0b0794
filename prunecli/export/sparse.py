"""ONNX-level helpers of `export`: sparse initializers, the runtime's IR limit, imports.

Kept apart from `prunecli.export.to_onnx` (which drives torch's exporter and onnxruntime) because these
work on an `onnx.ModelProto` alone. onnx and onnxruntime are imported inside functions only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import PruneError, UsageError

if TYPE_CHECKING:
    import onnx

INDEX_BYTES = 8  # int64 COO indices: the default onnx.checker requires int64
EXTRA_HINT = "install the extra: pip install 'prunecli[onnx]'"


@dataclass(frozen=True)
class TensorRecord:
    """One initializer of the written file: how many nonzeros it has and how it is stored."""

    name: str
    shape: list[int]
    dtype: str  # ONNX element type, e.g. FLOAT
    numel: int
    nonzeros: int
    density: float
    stored: str  # "sparse" or "dense"
    bytes: int  # payload bytes as stored (values, plus int64 indices when sparse)
    aliases: list[str]  # other tensor names that share this initializer (through Identity nodes)


def require_onnx() -> tuple[Any, Any]:
    """Import onnx and onnxruntime, or raise UsageError naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        missing = exc.name or "onnx/onnxruntime"
        raise UsageError(f"prunecli export needs {missing}, which is not installed", EXTRA_HINT) from None
    return onnx, onnxruntime


@lru_cache(maxsize=1)
def runtime_max_ir_version() -> int:
    """The highest ONNX IR version the installed onnxruntime loads.

    onnxruntime has no API for it, so a one-node model stamped with onnx's IR version is loaded;
    when refused, the limit is read from the error ("max supported IR version: 13"), else lower
    versions are tried one by one.

    Example:
        >>> runtime_max_ir_version()  # onnxruntime 1.32
        14
    """
    onnx, _ = require_onnx()
    error = _probe_ir(onnx.IR_VERSION)
    if error is None:
        return onnx.IR_VERSION
    found = re.search(r"max supported IR version: (\d+)", error)
    if found:
        return min(int(found.group(1)), onnx.IR_VERSION)
    for version in range(onnx.IR_VERSION - 1, 6, -1):
        if _probe_ir(version) is None:
            return version
    raise PruneError("onnxruntime loads no ONNX IR version from 7 up", "reinstall onnxruntime")


def _probe_ir(version: int) -> str | None:
    """None if onnxruntime loads a one-node model of this IR version, else its error message."""
    onnx, ort = require_onnx()
    h = onnx.helper
    value = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = h.make_graph(
        [h.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], ir_version=version)
    try:
        ort.InferenceSession(model.SerializeToString(), session_options(ort), ["CPUExecutionProvider"])
    except Exception as exc:
        return str(exc)
    return None


def sparsify(proto: onnx.ModelProto, threshold: float) -> list[TensorRecord]:
    """Move every float initializer with density below `threshold` to `sparse_initializer`, in place.

    A sparse tensor holds the nonzero values (1-D) and their int64 row-major flat indices (1-D,
    ascending); -0.0 counts as zero. Returns one record per initializer, in graph order.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    aliases = _aliases(graph)
    dense, records = [], []
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        nonzeros = int(np.count_nonzero(values))
        density = nonzeros / values.size if values.size else 1.0
        sparse = values.dtype.kind == "f" and density < threshold
        if sparse:
            flat = np.flatnonzero(values)  # (nnz,) row-major flat indices, ascending
            graph.sparse_initializer.append(
                helper.make_sparse_tensor(
                    numpy_helper.from_array(values.reshape(-1)[flat], init.name),  # (nnz,)
                    numpy_helper.from_array(flat.astype(np.int64)),
                    list(values.shape),
                )
            )
        else:
            dense.append(init)
        records.append(
            TensorRecord(
                name=init.name,
                shape=list(values.shape),
                dtype=helper.tensor_dtype_to_string(init.data_type).removeprefix("TensorProto."),
                numel=int(values.size),
                nonzeros=nonzeros,
                density=density,
                stored="sparse" if sparse else "dense",
                bytes=nonzeros * (values.itemsize + INDEX_BYTES) if sparse else values.nbytes,
                aliases=aliases.get(init.name, []),
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(dense)
    return records


def _aliases(graph: onnx.GraphProto) -> dict[str, list[str]]:
    names = {init.name for init in graph.initializer}
    found: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in names:
            found.setdefault(node.input[0], []).append(node.output[0])
    return found


def check_model(onnx: Any, proto: onnx.ModelProto) -> None:
    """onnx.checker in its default mode (the strict modes reject sparse initializers)."""
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        raise PruneError(
            f"the exported model fails onnx.checker: {first}",
            "report it with the model; PRUNECLI_DEBUG=1 shows the traceback",
        ) from exc


def fit_ir_version(proto: onnx.ModelProto, highest: int) -> list[str]:
    """Lower the IR version to what onnx and onnxruntime read (the exporter's is usually lower)."""
    if proto.ir_version <= highest:
        return []
    note = f"IR version lowered from {proto.ir_version} to {highest} for the installed onnxruntime"
    proto.ir_version = highest
    return [note]


def session_options(ort: Any) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings would clutter stderr
    return options
