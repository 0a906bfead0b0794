"""`.pt/.pth/.bin` state dicts, loaded with `torch.load(weights_only=True)` only, and the one
mapping between torch dtypes and safetensors dtype names.

A file holding pickled classes or code is refused, never run: the error names the refused
object. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunecli.errors import CheckpointError
from prunecli.io.safetensors_header import TensorInfo
from prunecli.io.strict_json import is_text

if TYPE_CHECKING:
    import torch

from prunecli.io.checkpoints import Checkpoint

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
WRAPPER_KEYS = ("state_dict", "model")


class TorchCheckpoint(Checkpoint):
    """A `.pt/.pth/.bin` state dict, loaded without unpickling arbitrary objects."""

    def __init__(self, path: Path) -> None:
        import torch

        super().__init__(path)
        self._tensors = _unwrap(load_torch_file(path), self.notes, path)
        for name, tensor in self._tensors.items():
            if tensor.layout != torch.strided:
                raise CheckpointError(
                    f"{path}: tensor {name!r} is a {tensor.layout} tensor, not a dense one",
                    "save dense tensors (tensor.to_dense())",
                )
            try:
                dtype = torch_dtype_name(tensor)
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: tensor {name!r}: {exc.message}", exc.hint) from None
            self.tensors[name] = TensorInfo(dtype, tuple(tensor.shape))

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        return torch_to_raw(self._tensors[name])


def load_torch_file(path: Path) -> object:
    """`torch.load(weights_only=True)`, with its failures turned into one short CheckpointError.

    torch's own warnings (e.g. about the pickle protocol of a raw `pickle.dump` file) are not
    shown: the error says what is wrong. Nothing in the file is run: weights-only loading
    refuses any global it does not allow, and the message names it.
    """
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds pickled objects that are not plain tensors; refused to load them "
            f"({_refusal(exc)})",
            "save a plain state dict (torch.save(model.state_dict(), ...)) or safetensors",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # a damaged file makes torch.load raise many kinds of errors
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({_load_failure(exc)})",
            "re-save it with torch.save(model.state_dict(), path) or as safetensors",
        ) from None


def _refusal(exc: Exception) -> str:
    """Why weights-only loading refused a file, in one short clause (torch's text is long)."""
    text = str(exc)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        name = found[1]
        if name == "torch.storage._load_from_bytes":  # tensors pickled without torch.save's format
            return f"it refers to {name}: it was written with pickle.dump, not torch.save"
        if name.startswith("torch.nn."):
            return f"it refers to {name}: a whole model, not its state dict; nothing was run"
        return f"it refers to {name}, which weights-only loading does not allow; nothing was run"
    if found := re.search(r"Unsupported operand (\d+)", text):
        return f"it uses pickle opcode {found[1]}, which torch.save never writes; nothing was run"
    return "weights-only loading does not accept its contents; nothing was run"


def _load_failure(exc: Exception) -> str:
    """What went wrong reading a damaged torch file, as a complete short clause."""
    if isinstance(exc, EOFError):
        return "the file ends too early"
    if isinstance(exc, OSError) and exc.strerror:
        return f"reading it failed: {exc.strerror}"
    first = str(exc).strip().splitlines()[0].split(". ")[0].rstrip(".") if str(exc).strip() else ""
    if isinstance(exc, RuntimeError) and 0 < len(first) <= 120:
        return first
    return f"torch.load failed with {exc.__class__.__name__}"


def _unwrap(obj: object, notes: list[str], path: Path | None = None) -> dict[str, torch.Tensor]:
    import torch

    where = f"{path}" if path is not None else "the file"
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                notes.append(f"using the state dict found under the {key!r} key")
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where} does not hold a state dict", "save model.state_dict()")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        if not isinstance(key, str):
            raise CheckpointError(
                f"{where} holds a tensor under the key {_short(key)}, which is not a name (a string)",
                "save model.state_dict(), whose keys are parameter names",
            )
        if not is_text(key):
            raise CheckpointError(
                f"{where} holds a tensor under the key {_short(key)}, which is not Unicode text",
                "rename the key and save the state dict again",
            )
        tensors[key] = value
    skipped = len(obj) - len(tensors)
    if not tensors:
        raise CheckpointError(f"{where} holds no tensors", "save model.state_dict()")
    if skipped:
        notes.append(f"ignored {skipped} entries that are not tensors")
    if all(k.startswith("module.") for k in tensors):
        notes.append("stripped the 'module.' prefix (DataParallel/DDP) from every key")
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _short(key: object) -> str:
    text = repr(key) if isinstance(key, str) else f"of type {type(key).__name__}"
    return text if len(text) <= 80 else text[:79] + "…"


_TORCH_TO_ST = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name."""
    import torch

    inverse = {st: key for key, st in _TORCH_TO_ST.items()}
    return getattr(torch, inverse[name])


def torch_dtype_name(tensor: torch.Tensor) -> str:
    """The safetensors dtype name of a torch tensor."""
    key = str(tensor.dtype).removeprefix("torch.")
    if key not in _TORCH_TO_ST:
        raise CheckpointError(f"unsupported tensor dtype {tensor.dtype}", "convert the tensor first")
    return _TORCH_TO_ST[key]


def torch_to_raw(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a raw numpy array (bf16/fp8 viewed as unsigned integers)."""
    import torch

    t = tensor.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return t.view(torch.uint8).numpy()
    return t.numpy()


def raw_to_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of `torch_to_raw`: a torch tensor with the same bytes."""
    import torch

    t = torch.from_numpy(np.array(raw, copy=True, order="C"))  # keeps 0-d shapes, unlike ascontiguousarray
    if dtype == "BF16":
        return t.view(torch.bfloat16)
    if dtype == "F8_E4M3":
        return t.view(torch.float8_e4m3fn)
    if dtype == "F8_E5M2":
        return t.view(torch.float8_e5m2)
    return t
