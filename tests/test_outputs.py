"""Outputs never destroy inputs, one writer holds an output, and no run leaves anything behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import Result

from prunecli.io import outputs
from prunecli.io.outputs import output_lock, sweep_stale, temp_name
from prunecli.io.safetensors_file import write_arrays

LEFTOVER_MARKS = (outputs.TEMP_MARK, outputs.LOCK_SUFFIX)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if any(mark in p.name for mark in LEFTOVER_MARKS))


def one_error_line(r: Result) -> str:
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    return lines[0]


@pytest.fixture
def init(cli: Callable[..., Result], tmp_path: Path) -> Path:
    """`d/init.safetensors`: LeNet-300-100's initial weights, in a folder of their own."""
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "init.safetensors"
    assert cli("init", "--arch", "lenet-300-100", "-o", path, "-q").code == 0
    return path


# --force never replaces an input -------------------------------------------------------------


def test_apply_force_into_the_inputs_folder_is_refused(cli, init: Path) -> None:
    before = digest(init)
    r = cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", init.parent, "--force")
    assert r.code == 2
    assert one_error_line(r) == (
        f"error: output {init.parent} contains the input {init}: writing it would destroy the input. "
        "write to another path (--force never replaces an input)."
    )
    assert digest(init) == before and sorted(p.name for p in init.parent.iterdir()) == ["init.safetensors"]


def test_prune_force_into_the_inputs_folder_is_refused(cli, init: Path) -> None:
    r = cli("prune", init, "-m", "synflow", "--arch", "lenet-300-100", "-s", "0.9", "--iterations", "2",
            "-o", init.parent, "--force")  # fmt: skip
    assert r.code == 2 and "contains the input" in one_error_line(r)
    assert init.is_file() and leftovers(init.parent.parent) == []


def test_scores_inside_the_output_folder_are_refused(cli, init: Path, tmp_path: Path) -> None:
    scores = tmp_path / "s" / "scores.safetensors"
    scores.parent.mkdir()
    assert cli("score", init, "-m", "magnitude", "-o", scores).code == 0
    r = cli("apply", init, "--scores", scores, "-s", "0.9", "-o", scores.parent, "--force")
    assert r.code == 2 and f"contains the input {scores}" in one_error_line(r)
    assert scores.is_file()


def test_a_sharded_index_folder_is_refused_as_output(cli, tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = {}
    for i in range(2):
        write_arrays(
            folder / f"part-{i}.safetensors", {f"fc{i}.weight": ("F32", np.ones((4, 4), np.float32))}, {}
        )
        weight_map[f"fc{i}.weight"] = f"part-{i}.safetensors"
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    r = cli("apply", index, "-m", "magnitude", "-s", "0.5", "-o", folder, "--force")
    assert r.code == 2 and "contains the input" in one_error_line(r)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors.index.json", "part-0.safetensors",
                                                        "part-1.safetensors"]  # fmt: skip


def test_score_over_its_own_checkpoint_is_refused(cli, init: Path) -> None:
    before = digest(init)
    r = cli("score", init, "-m", "magnitude", "-o", init, "--force")
    assert r.code == 2 and f"output {init} is the input {init}" in one_error_line(r)
    link = init.parent / "link.safetensors"
    link.symlink_to(init.name)
    r = cli("score", init, "-m", "magnitude", "-o", link, "--force")
    assert r.code == 2 and "is the input" in one_error_line(r)
    assert digest(init) == before


def test_export_never_writes_over_the_weights_it_reads(cli, init: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    out = tmp_path / "out"
    assert cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", out).code == 0
    before = {p.name: digest(p) for p in out.iterdir()}
    for target in (out / "model.safetensors", out / "manifest.json"):
        r = cli("export", out, "--arch", "lenet-300-100", "-o", target, "--force")
        assert r.code == 2 and f"output {target} is the input" in one_error_line(r)
    assert {p.name: digest(p) for p in out.iterdir()} == before


def test_a_missing_output_folder_is_named_before_any_lock(cli, init: Path, tmp_path: Path) -> None:
    r = cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", tmp_path / "no" / "out")
    assert r.code == 2
    assert one_error_line(r) == f"error: output folder {tmp_path / 'no'} does not exist. create it first."
    assert not (tmp_path / "no").exists()


def test_the_current_folder_is_never_an_output(cli, init: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "a" / "work"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    for target in (".", ".."):
        r = cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", target, "--force")
        assert r.code == 2 and "is the current folder or holds it" in one_error_line(r)
    assert elsewhere.is_dir() and init.is_file()


def test_force_replaces_only_a_previous_prunecli_output(cli, init: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", out).code == 0
    assert cli("apply", init, "-m", "magnitude", "-s", "0.5", "-o", out, "--force").code == 0
    assert json.loads((out / "manifest.json").read_text())["selection"]["sparsity"] == 0.5
    (out / "notes.txt").write_text("mine")
    r = cli("apply", init, "-m", "magnitude", "-s", "0.8", "-o", out, "--force")
    assert r.code == 2 and "holds files prunecli did not write (notes.txt)" in one_error_line(r)
    assert (out / "notes.txt").read_text() == "mine" and leftovers(tmp_path) == []


# one writer per output ------------------------------------------------------------------------


def test_a_locked_output_is_refused_with_the_holders_pid(cli, init: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        r = cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", out)
        assert r.code == 2
        assert one_error_line(r) == (
            f"error: {out} is being written by PID {os.getpid()}. wait for that run to finish, or choose "
            "another output."
        )
        r = cli("score", init, "-m", "magnitude", "-o", out)
    assert not out.exists()
    assert cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", out).code == 0
    assert leftovers(tmp_path) == []


def test_a_lock_briefly_held_by_no_named_writer_is_waited_for(tmp_path: Path) -> None:
    """A sweep tests an unheld lock by taking it for a moment: a writer then waits, not fails."""
    import fcntl
    import threading

    target = tmp_path / "out"
    lock = tmp_path / f".out{outputs.LOCK_SUFFIX}"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, no PID written: what a sweep looks like from outside

    def release() -> None:
        time.sleep(0.2)
        lock.unlink()
        os.close(fd)

    releaser = threading.Thread(target=release)
    releaser.start()
    with output_lock(target):
        assert lock.read_text() == f"{os.getpid()}\n"
    releaser.join()
    assert not lock.exists()


# leftovers of dead runs are swept ---------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_processes_are_swept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    mine = tmp_path / temp_name(target)
    mine.mkdir()
    dead = tmp_path / mine.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    other_host = tmp_path / f".out{outputs.TEMP_MARK}elsewhere-{_dead_pid()}-0123abcd"
    other_host.write_text("")
    user_file = tmp_path / ".out.prunecli-tmp-notes"
    user_file.write_text("")
    users_lock_name = tmp_path / "notes.prunecli-lock"  # not one of prunecli's hidden lock names
    users_lock_name.write_text("mine")
    stale_lock = tmp_path / f".out{outputs.LOCK_SUFFIX}"
    stale_lock.write_text("12345\n")
    assert sorted(sweep_stale(tmp_path)) == sorted([dead, stale_lock])
    assert mine.is_dir() and other_host.exists() and user_file.exists() and users_lock_name.exists()


CHILD = """
import sys, time
from prunecli.io import safetensors_file as safetensors_io
original = safetensors_io.SafetensorsWriter.write_parts
def slow(self, name, parts):
    time.sleep(0.4)
    return original(self, name, parts)
safetensors_io.SafetensorsWriter.write_parts = slow
from prunecli.cli.app import main
sys.argv[0] = "prunecli"
main()
"""


def _slow_apply(init: Path, out: Path) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", CHILD, "apply", str(init), "-m", "magnitude", "-s", "0.9", "-o", str(out)]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(outputs.TEMP_MARK in p.name for p in out.parent.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # inside the write pass
    return child


def test_two_processes_writing_one_output_cannot_both_succeed(init: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _slow_apply(init, out)
    argv = [sys.executable, "-m", "prunecli", "apply", str(init), "-m", "magnitude", "-s", "0.5", "-o", out]
    second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"is being written by PID {first.pid}" in second.stderr
    assert first.wait(timeout=120) == 0
    assert json.loads((out / "manifest.json").read_text())["selection"]["sparsity"] == 0.9
    assert leftovers(tmp_path) == []


def test_kill_9_leftovers_are_removed_by_the_next_run(cli, init: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    child = _slow_apply(init, out)
    child.kill()
    child.communicate()
    assert leftovers(tmp_path) != []  # the killed run could not clean up: a temp folder and its lock
    assert not out.exists()
    assert cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", tmp_path / "other").code == 0
    assert leftovers(tmp_path) == []
    assert cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", out).code == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_removes_everything_in_progress(init: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out"
    child = _slow_apply(init, out)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    expected = 130 if signum == signal.SIGINT else 128 + signum
    assert child.returncode == expected, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not out.exists() and leftovers(tmp_path) == []


# a full disk ------------------------------------------------------------------------------------


def _with_file_size_limit(limit: int) -> Callable[[], None]:
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--arch", "lenet-300-100", "-o", "{d}/new.safetensors"],
        ["score", "{init}", "-m", "magnitude", "-o", "{d}/s.safetensors"],
        ["apply", "{init}", "-m", "magnitude", "-s", "0.9", "-o", "{d}/out"],
        ["prune", "{init}", "-m", "synflow", "--arch", "lenet-300-100", "-s", "0.9", "--iterations", "2",
         "-o", "{d}/out"],
    ],
    ids=["init", "score", "apply", "prune"],
)  # fmt: skip
def test_a_full_disk_is_one_line_and_leaves_nothing(init: Path, tmp_path: Path, args: list[str]) -> None:
    work = tmp_path / "w"
    work.mkdir()
    argv = [a.format(d=work, init=init) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "prunecli", *argv],
        capture_output=True,
        text=True,
        preexec_fn=_with_file_size_limit(64 * 1024),  # the child has no threads yet
        timeout=300,
    )
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: disk full while writing ")
    assert "(or a file-size limit)" in done.stderr
    assert list(work.iterdir()) == [] and init.is_file()


def test_no_space_names_the_file_and_the_sizes(cli, init: Path, tmp_path: Path, monkeypatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    r = cli("score", init, "-m", "magnitude", "-o", tmp_path / "s.safetensors")
    monkeypatch.undo()
    line = one_error_line(r)
    assert r.code == 3
    assert line.startswith(f"error: disk full while writing s.safetensors in {tmp_path} (needs ")
    assert " free)" in line and not (tmp_path / "s.safetensors").exists() and leftovers(tmp_path) == []


# numbers and names at the edge ----------------------------------------------------------------


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", "18446744073709551616"])
def test_seeds_outside_the_generators_range_are_refused(cli, init: Path, tmp_path: Path, seed: str) -> None:
    r = cli("init", "--arch", "lenet-300-100", "--seed", seed, "-o", tmp_path / "i.safetensors")
    assert r.code == 2 and "--seed" in one_error_line(r)
    r = cli("apply", init, "-m", "random", "-s", "0.5", "--seed", seed, "-o", tmp_path / "o")
    assert r.code == 2 and "--seed" in one_error_line(r)
    assert not (tmp_path / "o").exists() and not (tmp_path / "i.safetensors").exists()


def test_the_largest_seed_works(cli, tmp_path: Path) -> None:
    r = cli("init", "--arch", "lenet-300-100", "--seed", str(2**64 - 1), "-o", tmp_path / "i.safetensors")
    assert r.code == 0


def test_outputs_must_have_the_suffix_readers_expect(cli, init: Path, tmp_path: Path) -> None:
    r = cli("init", "--arch", "lenet-300-100", "-o", tmp_path / "i.txt")
    assert r.code == 2 and one_error_line(r) == (
        f"error: output {tmp_path / 'i.txt'} does not end in .safetensors. name the initial weights like "
        "i.safetensors."
    )
    r = cli("score", init, "-m", "magnitude", "-o", tmp_path / "s.txt")
    assert r.code == 2 and "does not end in .safetensors" in one_error_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
