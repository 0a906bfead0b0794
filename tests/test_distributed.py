"""Data-parallel `score` and `prune` on torch.distributed (gloo, 2 CPU processes) give one
process's result; only rank 0 writes; a failing rank ends every rank within the timeout.

Ranks are started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT in the environment); one test goes through torchrun itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from prunecli.distributed import Launch, launch_from_env
from prunecli.errors import UsageError
from tests.hf_folders import llama, token_ids

TIMEOUT = 240  # seconds for a whole 2-rank run; the ranks themselves give up after --dist-timeout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """One plain process (no launcher environment)."""
    command = [sys.executable, "-m", "prunecli", *args]
    return subprocess.run(command, cwd=cwd, env=plain_env(), capture_output=True, text=True, timeout=TIMEOUT)


def ranks(per_rank: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start one process per argument list as ranks 0..N-1 of one world; wait for all."""
    port, size = free_port(), len(per_rank)
    children = []
    for rank, args in enumerate(per_rank):
        env = plain_env()
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(size),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        command = [sys.executable, "-m", "prunecli", *args]
        children.append(
            subprocess.Popen(
                command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    done = []
    for child in children:
        out, err = child.communicate(timeout=TIMEOUT)
        done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return done


def two_ranks(args: list[str], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    return ranks([args, args], cwd)


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-300-100 initial weights and 48 labelled examples (6 batches of 8)."""
    folder = tmp_path_factory.mktemp("lenet")
    ok(cli(["init", "--arch", "lenet-300-100", "--seed", "0", "-o", "init.safetensors"], folder))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 1, 28, 28)).astype(np.float32)
    np.savez(folder / "data.npz", x=x, y=rng.integers(0, 10, 48))
    return folder


def assert_same_masks(one: Path, two: Path, scores: dict[str, np.ndarray] | None = None) -> None:
    """Identical masks, except where the one-process score lies within 1e-5 of the layer's cut
    (the two runs add the batches in another order, so a near-tie may fall either way)."""
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys()
    for name in a:
        bits_a, bits_b = np.unpackbits(a[name]), np.unpackbits(b[name])
        differ = np.flatnonzero(bits_a != bits_b)
        if differ.size and scores is not None:
            flat = scores[name].reshape(-1).astype(np.float64)
            kept = flat[bits_a[: flat.size].astype(bool)]
            cut = kept.min()
            assert np.all(np.abs(flat[differ] - cut) <= 1e-5 * abs(cut)), name
        else:
            assert differ.size == 0, f"{name}: {differ.size} mask entries differ"


# -- the launcher's environment -------------------------------------------------------------


def test_launch_from_torchrun_and_slurm_environments() -> None:
    torchrun = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert launch_from_env(torchrun) == Launch(1, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "h"}
    slurm["MASTER_PORT"] = "1"
    assert launch_from_env(slurm) == Launch(5, 8, 1, "slurm")
    assert launch_from_env({}) is None
    one = {**torchrun, "WORLD_SIZE": "1", "RANK": "0"}
    assert launch_from_env(one) is None  # a world of one is a plain run


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, "MASTER_ADDR"),
        ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "outside a world of 2"),
        ({"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "not a number"),
    ],
)
def test_a_broken_launch_environment_is_named(env: dict[str, str], says: str) -> None:
    with pytest.raises(UsageError, match=says):
        launch_from_env(env)


# -- two ranks give one process's result ----------------------------------------------------

LENET = "init.safetensors --arch lenet-300-100 --data data.npz --batch-size 8"


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "force"])
def test_two_ranks_score_as_one_process(lenet: Path, method: str) -> None:
    common = f"score {LENET} --num-batches 6 -m {method} --force".split()
    if method in ("synflow", "force"):  # iterative: every step reduced, then selected on every rank
        common += "--sparsity 0.9 --iterations 3".split()
    ok(cli([*common, "-o", f"{method}-1.safetensors"], lenet))
    results = two_ranks([*common, "-o", f"{method}-2.safetensors"], lenet)
    for result in results:
        ok(result)
    one = load_file(str(lenet / f"{method}-1.safetensors"))
    two = load_file(str(lenet / f"{method}-2.safetensors"))
    for name in one:
        scale = np.abs(one[name]).max()
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    assert "wrote" in results[0].stderr and results[1].stderr == ""  # rank 1 prints nothing
    assert results[1].stdout == ""


def test_two_ranks_prune_as_one_process_and_only_rank_0_writes(lenet: Path) -> None:
    common = f"prune {LENET} --num-batches 6 -m snip --sparsity 0.9 --json --force".split()
    ok(cli([*common, "-o", "snip-1"], lenet))
    ok(cli(f"score {LENET} --num-batches 6 -m snip --force -o snip-scores.safetensors".split(), lenet))
    before = set(lenet.iterdir())
    results = two_ranks([*common, "-o", "snip-2"], lenet)
    for result in results:
        ok(result)
    assert set(lenet.iterdir()) - before == {lenet / "snip-2"}
    files = {folder: sorted(p.name for p in (lenet / folder).iterdir()) for folder in ("snip-1", "snip-2")}
    assert files["snip-1"] == files["snip-2"]
    manifest = json.loads(results[0].stdout)  # rank 0's JSON, and nothing else on its stdout
    assert manifest["method"]["params"]["world_size"] == 2
    assert results[1].stdout == "" and results[1].stderr == ""
    scores = load_file(str(lenet / "snip-scores.safetensors"))
    assert_same_masks(lenet / "snip-1" / "masks.safetensors", lenet / "snip-2" / "masks.safetensors", scores)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    llama(folder / "model")
    token_ids(folder / "tokens.npz", rows=8, length=16)
    return folder


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_two_ranks_prune_a_language_model_block_by_block(tiny_llama: Path, method: str) -> None:
    common = f"prune model -m {method} --data tokens.npz --batch-size 2 --sparsity 0.5 --force".split()
    ok(cli([*common, "-o", f"{method}-1"], tiny_llama))
    for result in two_ranks([*common, "-o", f"{method}-2"], tiny_llama):
        ok(result)
    one, two = tiny_llama / f"{method}-1", tiny_llama / f"{method}-2"
    assert_same_masks(one / "masks.safetensors", two / "masks.safetensors")
    for shard in sorted(one.glob("model*.safetensors")):
        a, b = load_file(str(shard)), load_file(str(two / shard.name))
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["method"]["params"]["world_size"] == 2


def test_torchrun_itself(lenet: Path) -> None:
    launcher = f"-m torch.distributed.run --nproc-per-node 2 --master-port {free_port()} -m prunecli"
    args = f"prune {LENET} --num-batches 4 -m grasp --sparsity 0.8 --quiet --force -o grasp-torchrun"
    command = [sys.executable, *launcher.split(), *args.split()]
    ok(subprocess.run(command, cwd=lenet, env=plain_env(), capture_output=True, text=True, timeout=TIMEOUT))
    manifest = json.loads((lenet / "grasp-torchrun" / "manifest.json").read_text())
    assert manifest["method"]["params"]["world_size"] == 2
    assert manifest["totals"]["kept"] == round(0.2 * manifest["totals"]["prunable"])


# -- faults -----------------------------------------------------------------------------------


def test_a_failing_rank_ends_every_rank_within_the_timeout(lenet: Path) -> None:
    good = f"prune {LENET} --num-batches 4 -m snip --sparsity 0.9 --dist-timeout 10 -o never".split()
    bad = [("missing.npz" if arg == "data.npz" else arg) for arg in good]
    start = time.monotonic()
    results = ranks([good, bad], lenet)
    assert time.monotonic() - start < 90
    assert results[1].returncode == 2
    assert results[1].stderr.startswith("error: rank 1 of 2: ") and "missing.npz" in results[1].stderr
    assert results[0].returncode == 3, results[0].stderr
    line = results[0].stderr.strip()
    assert line.startswith("error: rank 0 of 2: lost contact with the other ranks") and "\n" not in line
    assert "Traceback" not in results[0].stderr + results[1].stderr
    assert not (lenet / "never").exists()


def test_fewer_batches_than_ranks_is_refused_in_one_line(lenet: Path) -> None:
    results = two_ranks(f"score {LENET} --num-batches 1 -m snip -o few.safetensors".split(), lenet)
    assert [r.returncode for r in results] == [2, 2]
    assert "1 calibration batches cannot be shared by 2 ranks" in results[0].stderr
    assert not (lenet / "few.safetensors").exists()


def test_other_commands_run_on_rank_0_alone(lenet: Path) -> None:
    ok(cli("prune init.safetensors -m magnitude --sparsity 0.5 --force -o mag".split(), lenet))
    results = two_ranks(["inspect", "mag", "--json"], lenet)
    assert [r.returncode for r in results] == [0, 0]
    assert json.loads(results[0].stdout)["totals"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert results[1].stdout == "" and results[1].stderr == ""


def test_a_plain_run_is_untouched_by_the_launcher_module() -> None:
    code = "import sys, prunecli.distributed as d; print(d.world_size(), d.rank(), 'torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], env=plain_env(), capture_output=True, text=True)
    assert run.stdout.split() == ["1", "0", "False"], run.stderr
