"""Data-parallel calibration on torch.distributed (`torchrun -m prunecli ...`, or Slurm's `srun`).

Every rank builds the same model and the same calibration batches. Each loop that accumulates a
statistic over the batches runs on its own share of them (`share`: batches rank, rank + size,
...), and the sums are added across ranks (`add_across`) before anything is decided, so every
rank holds the statistics one process would compute from all batches and then selects the same
masks. Rank 0 alone writes files and prints.

Without a process group (a plain `prunecli`), every function here is the identity and torch is
not imported. A library user who initialised the default process group gets the same behaviour
from the scoring functions.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from prunecli.errors import ScoreError, UsageError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Launch:
    """This process's place in a multi-process launch, as the launcher's environment gives it."""

    rank: int
    size: int
    local_rank: int
    launcher: str  # "torchrun" or "slurm"


def launch_from_env(env: dict[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, or None for a plain run (or a world of one).

    torchrun (and torch.distributed.launch) set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT. Under `srun` the ranks come from SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID,
    and the job script exports MASTER_ADDR and MASTER_PORT.
    """
    env = dict(os.environ) if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        keys, launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK"), "torchrun"
    elif "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        keys, launcher = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"), "slurm"
    else:
        return None
    try:
        rank, size = int(env[keys[0]]), int(env[keys[1]])
        local = int(env.get(keys[2], rank))
    except ValueError as exc:
        raise UsageError(
            f"the {launcher} environment has a rank or world size that is not a number ({exc})",
            f"check {', '.join(keys)}",
        ) from exc
    if size <= 1:
        return None
    if not 0 <= rank < size:
        raise UsageError(f"rank {rank} is outside a world of {size}", f"check {keys[0]} and {keys[1]}")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise UsageError(
            f"{launcher} started {size} ranks but {' and '.join(missing)} is not set",
            "export MASTER_ADDR (the first node's address) and MASTER_PORT (e.g. 29500) in the job script",
        )
    return Launch(rank, size, local, launcher)


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    if "torch.distributed" not in sys.modules:  # nobody started a group without importing it
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    if not active():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    if not active():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def is_main() -> bool:
    """Whether this process writes the outputs and prints (rank 0, or a plain run)."""
    return rank() == 0


def compute_device(device: str, launch: Launch | None) -> str:
    """Each rank's device: `cuda` (or `auto` on a CUDA host) becomes `cuda:LOCAL_RANK`."""
    if launch is None or device.startswith("cuda:"):
        return device
    if device == "cuda" or device == "auto":
        import torch

        if device == "cuda" or torch.cuda.is_available():
            return f"cuda:{launch.local_rank}"
    return device


@contextmanager
def process_group(launch: Launch | None, device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[str]:
    """Join the launch's process group for the duration (NCCL on CUDA, gloo on the CPU).

    Yields the device this rank computes on. A rank that does not join within `timeout_s`
    (it failed before, or was killed) makes every other rank fail with a one-line error, and so
    does a collective that waits longer than that.
    """
    if launch is None:
        yield device
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    device = compute_device(device, launch)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    os.environ.setdefault("RANK", str(launch.rank))  # env:// reads these; srun sets only SLURM_*
    os.environ.setdefault("WORLD_SIZE", str(launch.size))
    os.environ.setdefault("LOCAL_RANK", str(launch.local_rank))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        dist.barrier()  # everyone is here: from now on a missing rank means a failed one
    except (RuntimeError, ValueError) as exc:
        raise _lost(exc, timeout_s, "joining them") from exc
    try:
        yield device
    finally:
        dist.destroy_process_group()


def share(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: those at positions rank, rank + size, ... (all of them
    without a process group). The shares are disjoint and their union is `items`."""
    size = world_size()
    if size == 1:
        return list(items)
    if len(items) < size:
        raise UsageError(
            f"{len(items)} calibration batches cannot be shared by {size} ranks",
            f"give at least {size} batches (`num_batches`, `num_samples`) or start fewer ranks",
        )
    return list(items[rank() :: size])


def mine(index: int) -> bool:
    """Whether item `index` of a shared sequence is this rank's (see `share`)."""
    return index % world_size() == rank()


def add_across(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its sum over the ranks, in place (every rank passes the same
    tensors, in the same order, with the same shapes and dtypes)."""
    if not active():
        return
    import torch.distributed as dist

    for tensor in tensors:
        _collective(lambda t=tensor: dist.all_reduce(t, op=dist.ReduceOp.SUM))


def broadcast_from(source: int, tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite each tensor with rank `source`'s, in place."""
    if not active():
        return
    import torch.distributed as dist

    for tensor in tensors:
        _collective(lambda t=tensor: dist.broadcast(t, src=source))


def all_done() -> None:
    """Wait until every rank has finished its part: called before rank 0 writes, so that a rank
    that failed stops the output from being written at all."""
    if not active():
        return
    import torch.distributed as dist

    _collective(dist.barrier)


def _collective(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except (RuntimeError, ValueError) as exc:
        raise _lost(exc, None, "") from exc


def _lost(exc: BaseException, timeout_s: float | None, doing: str) -> ScoreError:
    """One line for a rank that lost the others: the backend's first sentence, without its
    source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo prefixes "[.../pair.cc:553] "
    cause = text.split(". ")[0].rstrip(".")[:160]
    within = f" within {timeout_s:g} s" if timeout_s is not None else ""
    return ScoreError(
        f"lost contact with the other ranks{doing and ' while ' + doing}{within} ({cause})",
        "another rank failed or was killed: its own error says why",
    )
