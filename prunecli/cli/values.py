"""The one place that validates the numbers and small texts given on the command line.

Each function takes a value as the parser gave it and returns what the library takes, or
raises a UsageError naming the flag: every value is checked once, at the edge.

Example:
    >>> byte_size("500MB", "--max-shard-size")
    500000000
"""

from __future__ import annotations

import re
from decimal import Decimal

from prunecli.errors import UsageError

# Decimal units are powers of 1000 and binary ones powers of 1024, as on disk labels and in
# Hugging Face's `max_shard_size`; the letters' case does not matter ("500mb" is 500 MB).
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")
DEFAULT_ISOMETRY_LR = 0.1


def fraction(value: float, flag: str) -> float:
    """Validate a fraction in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{flag} {value} is outside [0, 1]", f"give {flag} as a fraction, e.g. 0.9")
    return value


def target_density(sparsity: float | None, density: float | None, required: bool = True) -> float | None:
    """The density from exactly one of --sparsity / --density."""
    if sparsity is not None and density is not None:
        raise UsageError("--sparsity and --density were both given", "give only one of them")
    if sparsity is not None:
        return 1.0 - fraction(sparsity, "--sparsity")
    if density is not None:
        return fraction(density, "--density")
    if required:
        raise UsageError("no target given", "add --sparsity S (e.g. 0.9) or --density D")
    return None


def parse_pattern(text: str) -> tuple[int, int]:
    """`N:M` -> (N, M) with 0 < N <= M."""
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"--pattern {text!r} is not N:M", "write it like 2:4") from None
    if not 0 < n <= m:
        raise UsageError(f"--pattern {text!r} needs 0 < N <= M", "write it like 2:4") from None
    return n, m


def byte_size(text: str, flag: str) -> int:
    """A size in bytes: `500MB`, `2GB` (10^6, 10^9), `1GiB` (2^30), `1.5GB`, or plain bytes.

    A fractional byte count is rounded down; less than one byte is refused.
    """
    match = _SIZE.fullmatch(text)
    unit = SIZE_UNITS.get(match[2].lower()) if match else None
    if match is None or unit is None:
        raise UsageError(
            f"{flag} {text!r} is not a size", "write it like 500MB, 2GB, 1GiB or a number of bytes"
        )
    size = int(Decimal(match[1]) * unit)
    if size < 1:
        raise UsageError(f"{flag} {text!r} is less than one byte", "give e.g. 2GB")
    return size


def isometry(steps: int, lr: float | None) -> tuple[int, float] | None:
    """(steps, learning rate) of --isometry-steps / --isometry-lr, or None when off."""
    if steps < 0:
        raise UsageError(f"--isometry-steps {steps} is negative", "use e.g. --isometry-steps 10000")
    if lr is not None and (steps == 0 or not lr > 0):
        raise UsageError(
            "--isometry-lr needs --isometry-steps and a positive value", "e.g. --isometry-lr 0.1"
        )
    return (steps, DEFAULT_ISOMETRY_LR if lr is None else lr) if steps else None
