"""The selection rule: how scores become masks (density, scope, allocation, pattern, structure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from prunecli.errors import UsageError
from prunecli.selection.structured import AGGREGATES, STRUCTURES


@dataclass(frozen=True)
class SelectionSpec:
    """How scores become masks (validated by `validate`)."""

    density: float
    scope: str = "global"
    allocation: str = "uniform"
    min_density: float = 0.0
    pattern: tuple[int, int] | None = None
    structure: str | None = None
    aggregate: str = "l1"
    shuffle: bool = False
    invert: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if not 0.0 <= self.density <= 1.0 or math.isnan(self.density):
            raise UsageError(
                f"density {self.density} is outside [0, 1]", "sparsity and density are fractions"
            )
        if not 0.0 <= self.min_density <= 1.0:
            raise UsageError(f"--min-density {self.min_density} is outside [0, 1]", "use a fraction")
        if self.scope not in ("global", "layer", "row"):
            raise UsageError(f"unknown --scope {self.scope!r}", "use global, layer or row")
        if self.structure is not None and self.structure not in STRUCTURES:
            raise UsageError(f"unknown --structure {self.structure!r}", "use filter or channel")
        if self.aggregate not in AGGREGATES:
            raise UsageError(f"unknown --aggregate {self.aggregate!r}", f"use one of {', '.join(AGGREGATES)}")
        if self.structure and (self.pattern or self.scope == "row"):
            raise UsageError("--structure keeps whole filters or channels", "drop --pattern / --scope row")
        if self.scope == "row" and self.allocation == "erk":
            raise UsageError("--scope row keeps the same fraction of every row", "drop --allocation erk")
        if self.allocation not in ("uniform", "erk"):
            raise UsageError(f"unknown --allocation {self.allocation!r}", "use uniform or erk")
        if self.allocation == "erk" and self.scope == "global":
            raise UsageError("--allocation erk sets per-layer densities", "use it with --scope layer")
        if self.shuffle and self.pattern:
            raise UsageError("--shuffle would break the --pattern N:M structure", "use one of them")

    def record(self) -> dict[str, Any]:
        return {
            "sparsity": round(1.0 - self.density, 12),
            "density": round(self.density, 12),
            "scope": self.scope,
            "allocation": self.allocation,
            "min_density": self.min_density,
            "pattern": f"{self.pattern[0]}:{self.pattern[1]}" if self.pattern else None,
            "structure": self.structure,
            "aggregate": self.aggregate if self.structure else None,
            "shuffle": self.shuffle,
            "invert": self.invert,
            "include": list(self.include),
            "exclude": list(self.exclude),
        }
