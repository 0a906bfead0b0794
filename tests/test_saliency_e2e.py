"""End to end on real MNIST digits: the published layer pattern of SNIP on LeNet-300-100.

The digits are the 2,000 that ship with prunecli (the `mnist_train` fixture in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunecli.models.initialize import init_checkpoint

    path = tmp_path_factory.mktemp("init") / "lenet.safetensors"
    init_checkpoint("lenet-300-100", path, seed=0)
    return path


def densities(out: str) -> list[float]:
    return [t["density"] for t in json.loads(out)["tensors"] if t["pruned"]]


def test_snip_at_95_follows_the_published_layer_pattern(
    cli, init_ckpt: Path, tmp_path: Path, mnist_train: Path
) -> None:
    r = cli(
        "prune",
        init_ckpt,
        "-m",
        "snip",
        "--arch",
        "lenet-300-100",
        "--data",
        mnist_train,
        "--batch-size",
        "100",
        "--sparsity",
        "0.95",
        "-o",
        tmp_path / "out",
        "--json",
    )
    assert r.code == 0, r.err
    manifest = json.loads(r.out)
    first, second, last = densities(r.out)
    assert 0 < first < second < last  # every layer keeps weights; first sparsest, last densest
    # Lee et al. 2019 report 3.3% / 16.8% / 56.2% kept; one batch of 100 digits lands close
    # (measured on the shipped 2,000 digits, seed 0: 3.40% / 15.87% / 54.30%)
    assert first == pytest.approx(0.033, abs=0.01) and last == pytest.approx(0.56, abs=0.1)
    assert second == pytest.approx(0.168, abs=0.03)
    assert manifest["method"]["params"]["loss"] == "ce" and manifest["method"]["data_fingerprint"]
    assert manifest["source"]["arch"] == "lenet-300-100"


def test_score_then_apply_equals_prune(cli, init_ckpt: Path, tmp_path: Path, mnist_train: Path) -> None:
    common = ["--arch", "lenet-300-100", "--data", mnist_train, "--batch-size", "50", "--num-batches", "2"]
    assert cli("score", init_ckpt, "-m", "snip", *common, "-o", tmp_path / "s.safetensors").code == 0
    assert (
        cli(
            "apply", init_ckpt, "--scores", tmp_path / "s.safetensors", "-s", "0.9", "-o", tmp_path / "a"
        ).code
        == 0
    )
    assert cli("prune", init_ckpt, "-m", "snip", *common, "-s", "0.9", "-o", tmp_path / "p").code == 0
    for name in ("model.safetensors", "masks.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()


@pytest.mark.parametrize("method", ["synflow", "force", "iter-snip"])
def test_iterative_scores_reproduce_their_mask_in_apply(
    cli, init_ckpt: Path, tmp_path: Path, method: str, mnist_train: Path
) -> None:
    data = [] if method == "synflow" else ["--data", mnist_train, "--batch-size", "64"]
    r = cli(
        "score",
        init_ckpt,
        "-m",
        method,
        "--arch",
        "lenet-300-100",
        *data,
        "--iterations",
        "5",
        "--sparsity",
        "0.98",
        "-o",
        tmp_path / "s.safetensors",
    )
    assert r.code == 0, r.err
    r = cli(
        "apply",
        init_ckpt,
        "--scores",
        tmp_path / "s.safetensors",
        "-s",
        "0.98",
        "-o",
        tmp_path / "o",
        "--json",
    )
    manifest = json.loads(r.out)
    assert manifest["method"]["params"]["iterations"] == 5 and not manifest["warnings"]
    assert all(d > 0 for d in densities(r.out))  # no layer collapses at 98%
    r = cli("apply", init_ckpt, "--scores", tmp_path / "s.safetensors", "-s", "0.9", "-o", tmp_path / "x")
    assert r.code == 0 and "computed for sparsity 0.98" in r.err


def test_grasp_and_unsupervised_snip_run(cli, init_ckpt: Path, tmp_path: Path, mnist_train: Path) -> None:
    r = cli(
        "prune",
        init_ckpt,
        "-m",
        "grasp",
        "--arch",
        "lenet-300-100",
        "--data",
        mnist_train,
        "--per-class",
        "10",
        "-s",
        "0.95",
        "-o",
        tmp_path / "g",
        "--json",
    )
    assert r.code == 0 and json.loads(r.out)["method"]["params"]["bn_mode"] == "train"
    r = cli(
        "prune",
        init_ckpt,
        "-m",
        "snip",
        "--arch",
        "lenet-300-100",
        "--data",
        mnist_train,
        "--labels-key",
        "none",
        "-s",
        "0.95",
        "-o",
        tmp_path / "u",
        "--json",
    )
    assert r.code == 2  # a labels key that is not in the file is an input error


def test_synflow_on_a_batch_norm_resnet(cli, tmp_path: Path) -> None:
    init = tmp_path / "r20.safetensors"
    assert cli("init", "--arch", "resnet20", "-o", init).code == 0
    r = cli(
        "prune",
        init,
        "-m",
        "synflow",
        "--arch",
        "resnet20",
        "--iterations",
        "3",
        "-s",
        "0.98",
        "-o",
        tmp_path / "out",
        "--json",
    )
    assert r.code == 0, r.err
    manifest = json.loads(r.out)
    assert (
        manifest["method"]["params"]["dtype"] == "float64"
        and manifest["method"]["params"]["bn_mode"] == "eval"
    )
    kept = {t["name"]: t["kept"] for t in manifest["tensors"] if t["pruned"]}
    # the main path survives; SynFlow may empty a 1×1 shortcut (a parallel path), and says so
    assert all(v > 0 for n, v in kept.items() if "shortcut" not in n)
    assert {w["tensor"] for w in manifest["warnings"]} == {n for n, v in kept.items() if v == 0}


def test_model_methods_need_prune_or_score(cli, init_ckpt: Path, tmp_path: Path, mnist_train: Path) -> None:
    r = cli("apply", init_ckpt, "-m", "snip", "-s", "0.9", "-o", tmp_path / "o")
    assert r.code == 2 and "prunecli prune -m snip" in r.err
    r = cli(
        "score",
        init_ckpt,
        "-m",
        "snip",
        "--arch",
        "lenet-300-100",
        "--data",
        mnist_train,
        "-s",
        "0.9",
        "-o",
        tmp_path / "s.safetensors",
    )
    assert r.code == 2 and "no --sparsity at score time" in r.err
    r = cli("score", init_ckpt, "-m", "magnitude", "-s", "0.9", "-o", tmp_path / "m.safetensors")
    assert r.code == 2


def test_nan_weight_is_named(cli, tmp_path: Path, mnist_train: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from prunecli.models.initialize import init_checkpoint

    init_checkpoint("lenet-300-100", tmp_path / "i.safetensors", seed=0)
    tensors = load_file(tmp_path / "i.safetensors")
    tensors["fc2.weight"][3, 4] = np.nan
    save_file(tensors, tmp_path / "nan.safetensors")
    r = cli(
        "score",
        tmp_path / "nan.safetensors",
        "-m",
        "snip",
        "--arch",
        "lenet-300-100",
        "--data",
        mnist_train,
        "-o",
        tmp_path / "s.safetensors",
    )
    assert r.code == 3 and "fc2.weight" in r.err


def test_default_input_shape_follows_arch_args(cli, tmp_path: Path) -> None:
    args = ["--arch", "mlp", "--arch-args", '{"in_features": 12, "hidden": [6]}']
    assert cli("init", *args, "-o", tmp_path / "i.safetensors").code == 0
    r = cli(
        "prune",
        tmp_path / "i.safetensors",
        "-m",
        "synflow",
        *args,
        "--iterations",
        "2",
        "-s",
        "0.5",
        "-o",
        tmp_path / "o",
    )
    assert r.code == 0, r.err
