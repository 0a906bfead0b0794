"""Which tensors are prunable: weights with ndim >= 2 that are not embeddings or norms.

In a transformer checkpoint (a folder with a `config.json`) the default is narrower: only the
weights inside the repeated, numbered blocks (`model.layers.3.mlp.up_proj.weight`,
`transformer.h.0.attn.c_attn.weight`), so embeddings, `lm_head`, norms and biases are kept, as
in the Wanda and SparseGPT papers: the first and last layers hold few weights and much of the
quality.

`--include GLOB` adds names to the set and `--exclude GLOB` removes them (exclude wins);
both may repeat, and a glob that matches no tensor is an error that names the closest ones.
Non-float tensors are never prunable.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

from prunecli.errors import UsageError
from prunecli.io.dtypes import is_float
from prunecli.io.safetensors_header import TensorInfo

SCORABLE_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})  # fp8 tensors are left alone by default
_EXCLUDED_NAME = re.compile(r"(^|[._])(embed\w*|wte|wpe|\w*norm\w*|bn\d*|ln\w*)([._]|$)", re.I)
_IN_BLOCK = re.compile(r"\.\d+\.(\w+\.)*weight$")  # a weight inside a numbered block
MAX_CLOSE_SHOWN = 3


def looks_prunable(name: str, info: TensorInfo, blocks_only: bool = False) -> bool:
    """The default rule: a float tensor with ndim >= 2 whose name is no embedding or norm
    (and, with `blocks_only`, a weight inside a numbered block)."""
    if blocks_only and not _IN_BLOCK.search(name):
        return False
    return info.dtype in SCORABLE_DTYPES and len(info.shape) >= 2 and not _EXCLUDED_NAME.search(name)


def prunable_names(
    tensors: Mapping[str, TensorInfo],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    blocks_only: bool = False,
) -> list[str]:
    """Names of the prunable tensors, in the checkpoint's order.

    Example:
        >>> prunable_names(ckpt.tensors, exclude=["fc3.*"])
        ['fc1.weight', 'fc2.weight']
    """
    names = []
    for name, info in tensors.items():
        chosen = looks_prunable(name, info, blocks_only) or any(fnmatchcase(name, g) for g in include)
        if chosen and not is_excluded(name, exclude) and is_float(info.dtype):
            names.append(name)
    check_globs(tensors, include, "include")
    check_globs(tensors, exclude, "exclude")
    return names


def check_globs(names: Iterable[str], globs: Sequence[str], option: str) -> None:
    """Refuse a glob that matches none of `names`, naming the closest names."""
    names = list(names)
    for pattern in globs:
        if any(fnmatchcase(name, pattern) for name in names):
            continue
        close = closest_names(pattern, names)
        hint = (
            f"did you mean {' or '.join(close)}? (globs match whole names)"
            if close
            else "check the names with inspect"
        )
        raise UsageError(f"`{option}` {pattern!r} matches no tensor", hint, option=option, value=pattern)


def closest_names(pattern: str, names: list[str]) -> list[str]:
    """Up to three names a mistyped glob most likely meant: those it starts, then the most alike."""
    stem = pattern.rstrip("*")
    starting = [n for n in names if stem and n.startswith(stem)]
    if starting:
        return starting[:MAX_CLOSE_SHOWN]
    return difflib.get_close_matches(pattern, names, n=MAX_CLOSE_SHOWN, cutoff=0.5)


def is_excluded(name: str, exclude: Sequence[str]) -> bool:
    """Whether `name` matches one of the --exclude globs."""
    return any(fnmatchcase(name, g) for g in exclude)
