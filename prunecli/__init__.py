"""prunecli: prune neural-network checkpoints from the command line or from Python.

The package imports nothing heavy at import time: `prunecli.attach_masks` and friends load
torch only when first used.

Example:
    >>> import prunecli
    >>> prunecli.attach_masks(model, "out/")  # hold pruned weights at zero while training
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "attach_masks", "detach_masks", "is_masked", "load_masks", "read_masks"]

_MASKING = frozenset({"attach_masks", "detach_masks", "is_masked", "load_masks", "read_masks"})


def __getattr__(name: str) -> Any:
    if name in _MASKING:
        from prunecli.training import masks as masking

        return getattr(masking, name)
    raise AttributeError(f"module 'prunecli' has no attribute {name!r}")
