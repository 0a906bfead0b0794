"""Run independent calls on a few threads and take their results in the order given.

`apply` counts and masks segments of tensors on worker threads, and the main thread joins
the results in order (writing the masked ones): numpy releases the GIL inside its loops.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

from prunecli.errors import UsageError

T = TypeVar("T")

MAX_WORKERS = 4  # by default: enough to keep ahead of one writer; more only costs memory
THREADS_PER_CORE = 4  # PRUNECLI_THREADS may ask for at most this many threads per usable core
THREADS_VARIABLE = "PRUNECLI_THREADS"
_MAX_DIGITS = 6  # longer settings are refused before int(): they cannot be within the cap


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_cap() -> int:
    """The most PRUNECLI_THREADS may ask for: each thread holds scratch buffers, so an
    unbounded count exhausts memory (100000 took 2.5 GB) or never finishes starting.
    """
    return THREADS_PER_CORE * usable_cores()


def worker_count() -> int:
    """Worker threads for this process: PRUNECLI_THREADS if set (0 to thread_cap()), else
    one per usable core, at most MAX_WORKERS. 0 (or a single core) means no threads: calls
    run inline.
    """
    setting = os.environ.get(THREADS_VARIABLE, "").strip()
    if setting:
        if not (setting.isascii() and setting.isdigit()):
            raise UsageError(
                f"{THREADS_VARIABLE}={setting[:20]!r} is not a whole number",
                f"set it to 0 (no worker threads) or more, e.g. {THREADS_VARIABLE}=4, or unset it",
            )
        cap = thread_cap()
        if len(setting) > _MAX_DIGITS or int(setting) > cap:
            shown = setting if len(setting) <= 20 else setting[:20] + "..."
            raise UsageError(
                f"{THREADS_VARIABLE}={shown} is above {cap} ({THREADS_PER_CORE} per usable core, "
                f"{usable_cores()} here)",
                f"set it to a whole number from 0 to {cap}, or unset it",
            )
        return int(setting)
    cores = usable_cores()
    return min(MAX_WORKERS, cores) if cores > 1 else 0


def in_order(calls: Iterable[Callable[[], T]], pool: Executor | None, ahead: int) -> Iterator[T]:
    """Results of `calls`, in order, with up to `ahead` further calls running meanwhile.

    When result j is yielded, calls up to j + ahead have started, and call j + ahead + 1
    starts only once the consumer asks for the next result. So with ahead + 1 scratch
    slots, call j may use slot j % (ahead + 1). Without a pool, each call runs when its
    result is wanted. If the consumer stops early, calls not yet started are cancelled.
    """
    if pool is None:
        for call in calls:
            yield call()
        return
    pending: deque[Future[T]] = deque()
    try:
        for call in calls:
            pending.append(pool.submit(call))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class Workers:
    """A thread pool of `count` threads (none: calls run inline) and its look-ahead.

    Callers that reuse scratch give each call one of `slots` buffers, slot j % slots.
    """

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.ahead = 2 * count
        self.slots = self.ahead + 1
        self._pool = ThreadPoolExecutor(count) if count else None

    def in_order(self, calls: Iterable[Callable[[], T]]) -> Iterator[T]:
        """`in_order` on this pool."""
        return in_order(calls, self._pool, self.ahead)

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


INLINE = Workers(0)
