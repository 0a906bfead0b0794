"""safetensors dtype names, their raw numpy storage, and conversion to float32.

Tensors travel through prunecli as numpy arrays in their *raw* storage type: the numpy
dtype of the same width (bf16 and fp8 as unsigned integers, since numpy has no such
types). Raw arrays round-trip bit for bit; `to_float32` is only used for scoring.
"""

from __future__ import annotations

import numpy as np

from prunecli.errors import CheckpointError, ScoreError, UsageError

# safetensors name -> numpy dtype holding the exact bytes
RAW_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F8_E4M3": np.dtype("u1"),
    "F8_E5M2": np.dtype("u1"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_UINT_OF_WIDTH = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def raw_dtype(name: str) -> np.dtype:
    """The numpy dtype that stores a safetensors dtype's bytes unchanged."""
    try:
        return RAW_DTYPES[name]
    except KeyError:
        raise CheckpointError(
            f"unsupported tensor dtype {name!r}",
            f"supported dtypes: {', '.join(sorted(RAW_DTYPES))}",
        ) from None


def itemsize(name: str) -> int:
    return raw_dtype(name).itemsize


def is_float(name: str) -> bool:
    return name in FLOAT_DTYPES


def as_unsigned(raw: np.ndarray) -> np.ndarray:
    """A same-width unsigned view of a raw array, for bit-level tests and zeroing."""
    return raw.view(_UINT_OF_WIDTH[raw.dtype.itemsize])


CACHE_BLOCK = 1 << 18  # elements per step of a blocked pass: a block and its temporaries stay in cache
ZERO_BLOCK = CACHE_BLOCK  # entries masked per step in zero_count


def zero_count(raw: np.ndarray, dtype: str) -> int:
    """Entries equal to zero; for floats, -0.0 counts (all bits but the sign are zero).

    Floats are counted a block at a time, so `raw` can be a memory map of any size.
    """
    bits = as_unsigned(raw.reshape(-1))
    if not is_float(dtype):
        return int(bits.size - np.count_nonzero(bits))
    magnitude = ~np.array(1 << (8 * raw.dtype.itemsize - 1), dtype=bits.dtype)
    scratch = np.empty(min(bits.size, ZERO_BLOCK), dtype=bits.dtype)
    nonzero = 0
    for start in range(0, bits.size, ZERO_BLOCK):
        part = bits[start : start + ZERO_BLOCK]
        nonzero += int(np.count_nonzero(np.bitwise_and(part, magnitude, out=scratch[: part.size])))
    return bits.size - nonzero


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Float32 values of a raw float array (exact for bf16/fp16, rounded for fp64)."""
    if dtype == "F32":
        return raw
    if dtype in ("F16", "F64"):
        return raw.astype(np.float32)
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    raise UsageError(
        f"cannot score tensors of dtype {dtype}",
        "exclude them with `exclude`, or convert the checkpoint to bf16/fp16/fp32/fp64",
    )


def finite_weights(raw: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """Float32 weights to score; NaN or infinite weights are refused, naming the tensor."""
    weights = to_float32(raw, dtype)
    if weights.size and not (np.isfinite(weights.min()) and np.isfinite(weights.max())):
        raise ScoreError(
            f"weights of {name} contain NaN or infinite values",
            "check the checkpoint (inspect) or exclude the tensor with `exclude`",
        )
    return weights
