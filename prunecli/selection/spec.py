"""The selection rule: how scores become masks (density, scope, allocation, pattern, structure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from prunecli.errors import UsageError

# The choices of each rule (no heavy imports here: the CLI reads them for its help).
SCOPES = ("global", "layer", "row")
ALLOCATIONS = ("uniform", "erk")
STRUCTURES = ("filter", "channel")  # whole output channels, or whole input channels
AGGREGATES = ("l1", "l2", "mean", "max")  # a group's score from its weights' scores


def _choice(option: str, value: str, allowed: tuple[str, ...], hint: str) -> None:
    if value not in allowed:
        raise UsageError(f"unknown `{option}` {value!r}", hint, option=option, value=value, allowed=allowed)


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
        """Refuse a rule that makes no sense, naming the parameter (`UsageError.option`).

        Example:
            >>> SelectionSpec(density=0.5, min_density=1.5).validate()
            Traceback (most recent call last):
            prunecli.errors.UsageError: `min_density` 1.5 is outside [0, 1]
        """
        if not 0.0 <= self.density <= 1.0 or math.isnan(self.density):
            raise UsageError(
                f"density {self.density} is outside [0, 1]", "sparsity and density are fractions",
                option="density", value=self.density, bounds=(0.0, 1.0),
            )  # fmt: skip
        if not 0.0 <= self.min_density <= 1.0:
            raise UsageError(f"`min_density` {self.min_density} is outside [0, 1]", "use a fraction",
                             option="min_density", value=self.min_density, bounds=(0.0, 1.0))  # fmt: skip
        _choice("scope", self.scope, SCOPES, "use global, layer or row")
        if self.structure is not None:
            _choice("structure", self.structure, STRUCTURES, "use filter or channel")
        _choice("aggregate", self.aggregate, AGGREGATES, f"use one of {', '.join(AGGREGATES)}")
        if self.structure and (self.pattern or self.scope == "row"):
            raise UsageError("`structure` keeps whole filters or channels", "drop `pattern` / `scope` row",
                             option="structure", value=self.structure)  # fmt: skip
        if self.scope == "row" and self.allocation == "erk":
            raise UsageError("`scope` row keeps the same fraction of every row", "drop `allocation` erk",
                             option="allocation", value=self.allocation)  # fmt: skip
        _choice("allocation", self.allocation, ALLOCATIONS, "use uniform or erk")
        if self.allocation == "erk" and self.scope == "global":
            raise UsageError("`allocation` erk sets per-layer densities", "use it with `scope` layer",
                             option="scope", value=self.scope)  # fmt: skip
        if self.shuffle and self.pattern:
            raise UsageError("`shuffle` would break the `pattern` N:M structure", "use one of them",
                             option="shuffle", value=self.shuffle)  # fmt: skip

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
