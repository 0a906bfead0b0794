"""What long-running library code reports, and the silent default (the CLI draws bars)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """A stage with a total, then one `advance` per unit of work."""

    def stage(self, description: str, total: int) -> None: ...
    def advance(self) -> None: ...


class NoProgress:
    """Reports nothing: the default when no progress display is given."""

    def stage(self, description: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass
