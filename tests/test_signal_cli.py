"""`inspect --signal` and `apply --isometry-steps` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file


@pytest.fixture
def pruned(cli, tmp_path: Path) -> Path:
    init = tmp_path / "init.safetensors"
    assert cli("init", "--arch", "mlp", "--arch-args", '{"hidden": [32, 16]}', "-o", init).code == 0
    out = tmp_path / "out"
    assert cli("apply", init, "-m", "random", "-s", "0.9", "-o", out).code == 0
    return out


ARCH = ["--arch", "mlp", "--arch-args", '{"hidden": [32, 16]}']


def test_inspect_signal_reports_before_and_after(cli, pruned: Path) -> None:
    r = cli("inspect", pruned, "--signal", *ARCH, "--examples", "8", "--json")
    assert r.code == 0, r.err
    signal = json.loads(r.out)["signal"]
    assert signal["before"]["connected"] and signal["after"]["jacobian"]["examples"] == 8
    assert signal["after"]["jacobian"]["mean"] < signal["before"]["jacobian"]["mean"]  # pruning shrinks it
    assert signal["after"]["synflow_r"] < signal["before"]["synflow_r"]
    r = cli("inspect", pruned, "--signal", *ARCH)
    assert r.code == 0 and "Jacobian singular values" in r.err


def test_full_collapse_is_reported_and_fails_the_gate(cli, tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    cli("init", "--arch", "mlp", "--arch-args", '{"hidden": [32, 16]}', "-o", init)
    cli("apply", init, "-m", "magnitude", "-s", "1.0", "-o", tmp_path / "dead")
    r = cli("inspect", tmp_path / "dead", "--signal", *ARCH, "--fail-on-collapse", "--json")
    assert r.code == 1 and "SynFlow R = 0" in r.err
    assert json.loads(r.out)["signal"]["after"]["connected"] is False


def test_signal_needs_arch(cli, pruned: Path) -> None:
    r = cli("inspect", pruned, "--signal")
    assert r.code == 2 and r.out == ""
    assert r.err == "error: --signal rebuilds the network and needs its architecture. add --arch.\n"


def test_apply_isometry_keeps_masks_and_lowers_the_penalty(cli, tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    cli("init", "--arch", "mlp", "--arch-args", '{"hidden": [32, 16]}', "-o", init)
    r = cli(
        "apply", init, "-m", "random", "-s", "0.5", "--isometry-steps", "50", "-o", tmp_path / "o", "--json"
    )
    assert r.code == 0, r.err
    report = json.loads(r.out)["isometry"]
    assert report["steps"] == 50 and report["lr"] == 0.1
    assert report["penalty_after"] < report["penalty_before"]
    masks = load_file(tmp_path / "o" / "masks.safetensors")
    model = load_file(tmp_path / "o" / "model.safetensors")
    for name, packed in masks.items():
        mask = np.unpackbits(packed)[: model[name].size].reshape(model[name].shape).astype(bool)
        assert not model[name][~mask].any()  # pruned entries stay exactly zero
    r = cli("apply", init, "-m", "random", "-s", "0.5", "--isometry-lr", "0.1", "-o", tmp_path / "x")
    assert r.code == 2 and not (tmp_path / "x").exists()
    assert (
        r.err == "error: --isometry-lr needs --isometry-steps and a positive value. e.g. --isometry-lr 0.1.\n"
    )
