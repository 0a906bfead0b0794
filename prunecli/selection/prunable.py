"""Which tensors are prunable: weights with ndim >= 2 that are not embeddings or norms.

`--include GLOB` adds names to the set and `--exclude GLOB` removes them (exclude wins);
both may repeat. Non-float tensors are never prunable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from prunecli.errors import UsageError
from prunecli.io.dtypes import is_float
from prunecli.io.safetensors_header import TensorInfo

SCORABLE_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})  # fp8 tensors are left alone by default
_EXCLUDED_NAME = re.compile(r"(^|[._])(embed\w*|wte|wpe|\w*norm\w*|bn\d*|ln\w*)([._]|$)", re.I)


def looks_prunable(name: str, info: TensorInfo) -> bool:
    """The default rule: a float tensor with ndim >= 2 whose name is no embedding or norm."""
    return info.dtype in SCORABLE_DTYPES and len(info.shape) >= 2 and not _EXCLUDED_NAME.search(name)


def prunable_names(
    tensors: Mapping[str, TensorInfo],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """Names of the prunable tensors, in the checkpoint's order.

    Example:
        >>> prunable_names(ckpt.tensors, exclude=["fc3.*"])
        ['fc1.weight', 'fc2.weight']
    """
    names = []
    for name, info in tensors.items():
        chosen = looks_prunable(name, info) or any(fnmatchcase(name, g) for g in include)
        if chosen and not is_excluded(name, exclude) and is_float(info.dtype):
            names.append(name)
    for pattern in include:
        if not any(fnmatchcase(name, pattern) for name in tensors):
            raise UsageError(f"`include` {pattern!r} matches no tensor", "check the names with inspect",
                             option="include", value=pattern)  # fmt: skip
    return names


def is_excluded(name: str, exclude: Sequence[str]) -> bool:
    """Whether `name` matches one of the --exclude globs."""
    return any(fnmatchcase(name, g) for g in exclude)
