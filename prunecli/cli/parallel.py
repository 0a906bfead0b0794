"""`score` and `prune` under torchrun or srun: join the process group, and let rank 0 alone speak."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from prunecli.distributed import is_main, launch_from_env, process_group

Options = TypeVar("Options")


@contextmanager
def data_parallel(model: Options, timeout_s: float) -> Iterator[tuple[Options, bool]]:
    """The model options with this rank's device, and whether this rank speaks (writes, prints).

    Without a launcher's environment this changes nothing: the options as given, and True.
    """
    launch = launch_from_env()
    with process_group(launch, model.device, timeout_s) as device:  # type: ignore[attr-defined]
        yield dataclasses.replace(model, device=device), is_main()  # type: ignore[type-var]
