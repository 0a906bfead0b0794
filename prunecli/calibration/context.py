"""What a model-based scorer receives and returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prunecli.progress import NoProgress, Progress

if TYPE_CHECKING:
    import torch

Batch = tuple["torch.Tensor", "torch.Tensor | None"]


@dataclass
class ScoringContext:
    """A live model on its device, the prunable names, data and the method's options.

    `density` is the target for iterative methods (None for one-shot methods).
    """

    model: torch.nn.Module
    names: list[str]
    batches: list[Batch] = field(default_factory=list)
    loss: str = "ce"
    input_shape: tuple[int, ...] | None = None
    density: float | None = None
    seed: int = 0  # the run's seed, for methods that sample (OBD's Hutchinson probes)
    progress: Progress = field(default_factory=NoProgress)


@dataclass
class ScoreResult:
    """Scores keyed by name (higher = keep); iterative methods also give their final masks."""

    scores: Mapping[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None = None


def schedule_densities(density: float, iterations: int, schedule: str) -> list[float]:
    """d_t for t = 1..T: exponential d^(t/T) or linear 1 − (1−d)·t/T; the last is d."""
    steps = range(1, iterations + 1)
    if schedule == "exp":
        return [density ** (t / iterations) for t in steps]
    if schedule == "linear":
        return [1.0 - (1.0 - density) * t / iterations for t in steps]
    from prunecli.errors import UsageError

    raise UsageError(f"unknown `schedule` {schedule!r}", "use exp or linear",
                     option="schedule", value=schedule, allowed=("exp", "linear"))  # fmt: skip


class LazyScores(Mapping):
    """Scores computed on first read, one tensor at a time, and not kept afterwards.

    For methods whose per-tensor scores follow from small statistics (Wanda), so the scores
    of a large model never all sit in memory: `prunecli score` writes each as it comes.
    """

    def __init__(self, names: list[str], compute: Callable[[str], torch.Tensor]) -> None:
        self._names, self._compute = list(names), compute

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._compute(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
