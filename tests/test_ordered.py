"""in_order: results come in order, at most `ahead` calls run past the consumer, none after it stops."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from prunecli.io.safetensors_file import write_arrays
from prunecli.selection import workers as ordered
from prunecli.selection.workers import Workers, in_order, worker_count


def test_results_come_in_order_with_a_bounded_look_ahead() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def call(j: int) -> int:
        with lock:
            started.append(j)
        time.sleep(0.002 * (j % 3))  # finish out of order
        return j

    with Workers(3) as workers:
        for j, result in enumerate(workers.in_order(lambda j=j: call(j) for j in range(40))):
            assert result == j
            with lock:
                assert max(started) <= j + workers.ahead  # so slot j % slots is free again
    assert sorted(started) == list(range(40))


def test_inline_calls_run_only_when_their_result_is_wanted() -> None:
    started: list[int] = []
    results = in_order((lambda j=j: started.append(j) or j for j in range(5)), None, ahead=8)
    assert next(results) == 0 and started == [0]
    assert next(results) == 1 and started == [0, 1]


def test_calls_past_the_look_ahead_never_start_when_the_consumer_stops() -> None:
    started: list[int] = []
    with Workers(2) as workers:
        results = workers.in_order(lambda j=j: started.append(j) or j for j in range(100))
        assert next(results) == 0
        results.close()
    assert len(started) <= 1 + workers.ahead


def test_worker_count_is_bounded_and_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRUNECLI_THREADS", raising=False)
    assert 0 <= worker_count() <= 4 and worker_count() != 1
    monkeypatch.setattr(ordered, "usable_cores", lambda: 2)  # caps PRUNECLI_THREADS at 8
    monkeypatch.setenv("PRUNECLI_THREADS", "6")
    assert worker_count() == 6
    monkeypatch.setenv("PRUNECLI_THREADS", "0")
    assert worker_count() == 0


def test_a_bad_thread_count_is_a_usage_error(cli, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    write_arrays(path, {"w": ("F32", np.ones((4, 4), np.float32))}, {})
    monkeypatch.setenv("PRUNECLI_THREADS", "many")
    r = cli("apply", path, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "out")
    assert r.code == 2 and "PRUNECLI_THREADS='many' is not a whole number" in r.err
    assert len(r.err.strip().splitlines()) <= 2 and not (tmp_path / "out").exists()
