"""Structured selection (methods.md §13) and the per-row scope (§9), through library and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from prunecli.selection.structured import expand, group_scores, select_groups
from prunecli.selection.threshold import row_mask, scores_to_keys
from tests.conftest import save_f32
from tests.test_vectors import W1, W2, WANDA_W, WANDA_X

SNIP = np.array(
    [0.643184, 0.888373, 0.101782, 0.378579, 1.276660, 0.411682, 0.571910, 0.248711, 0.857865, 0.994846]
)  # fmt: skip  |g⊙θ| of N0 (methods.md §2)


def close(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=5e-7)


def test_magnitude_group_importance_of_hidden_neurons() -> None:
    rows = group_scores(np.abs(W1), "filter", "l2")  # W1 row i: neuron i's incoming weights
    cols = group_scores(np.abs(W2), "channel", "l2")  # W2 column i: its outgoing weights
    close(rows, [1.3125, 1.5])
    close(cols, [3.25, 4.25])
    group = (rows + cols) / 2
    close(group, [2.28125, 2.875])
    close(group / group.mean(), [0.884848, 1.115152])


def test_taylor_group_importance_of_hidden_neurons() -> None:
    rows = group_scores(SNIP[:6].reshape(2, 3), "filter", "l1")
    cols = group_scores(SNIP[6:].reshape(2, 2), "channel", "l1")
    close(rows, [1.633338, 2.066920])
    close(cols, [1.429775, 1.243557])
    group = (rows + cols) / 2
    close(group, [1.531557, 1.655239])
    close(group / group.mean(), [0.961189, 1.038811])


def test_mean_and_max_aggregates_and_expand() -> None:
    scores = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(group_scores(scores, "filter", "max"), [11, 23])
    np.testing.assert_array_equal(group_scores(scores, "channel", "mean"), [7.5, 11.5, 15.5])
    mask = expand(np.array([True, False, True]), scores.shape, "channel")
    assert mask.shape == scores.shape and mask[:, 1].sum() == 0 and mask[:, [0, 2]].all()


def test_select_groups_global_and_per_layer() -> None:
    aggregates = {"a": np.array([1.0, 5.0, 3.0]), "b": np.array([4.0, 2.0])}
    masks = select_groups(aggregates, None, 0.4)  # keep round(5·0.4) = 2 groups overall
    assert masks["a"].tolist() == [False, True, False] and masks["b"].tolist() == [True, False]
    masks = select_groups(aggregates, {"a": 0.34, "b": 0.5}, 0.0)
    assert masks["a"].tolist() == [False, True, False] and masks["b"].tolist() == [True, False]


def test_wanda_half_of_each_row() -> None:
    scores = (np.abs(WANDA_W) * np.linalg.norm(WANDA_X, axis=0)).astype(np.float32)
    mask = row_mask(scores_to_keys(scores, "w"), 0.5)
    np.testing.assert_array_equal(mask.astype(int), [[1, 1, 0, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0, 0, 1]])


@pytest.fixture
def conv_ckpt(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return save_f32(
        tmp_path / "c.safetensors",
        {"conv.weight": rng.standard_normal((8, 4, 3, 3)), "fc.weight": rng.standard_normal((5, 8))},
    )


def test_apply_structure_filter_keeps_whole_filters(cli, conv_ckpt: Path, tmp_path: Path) -> None:
    r = cli(
        "apply",
        conv_ckpt,
        "-m",
        "magnitude",
        "-s",
        "0.5",
        "--structure",
        "filter",
        "--scope",
        "layer",
        "-o",
        tmp_path / "o",
        "--json",
    )
    assert r.code == 0, r.err
    manifest = json.loads(r.out)
    assert manifest["selection"]["structure"] == "filter" and manifest["selection"]["aggregate"] == "l1"
    groups = {t["name"]: t["groups"] for t in manifest["tensors"]}
    assert groups == {
        "conv.weight": {"kept": 4, "total": 8},
        "fc.weight": {"kept": 3, "total": 5},
    }  # round(2.5) = 3
    model = load_file(tmp_path / "o" / "model.safetensors")
    source = load_file(conv_ckpt)
    conv = model["conv.weight"].reshape(8, -1)
    kept_rows = np.flatnonzero(np.abs(conv).sum(1))
    assert len(kept_rows) == 4 and model["conv.weight"].shape == (8, 4, 3, 3)
    by_l1 = np.argsort(np.abs(source["conv.weight"].reshape(8, -1)).sum(1))[-4:]
    assert sorted(kept_rows) == sorted(by_l1)
    report = json.loads(cli("inspect", tmp_path / "o", "--json").out)
    assert report["tensors"][0]["groups"]["kept"] == 4


def test_apply_structure_channel_and_row_scope(cli, conv_ckpt: Path, tmp_path: Path) -> None:
    r = cli(
        "apply",
        conv_ckpt,
        "-m",
        "magnitude",
        "-s",
        "0.5",
        "--structure",
        "channel",
        "--aggregate",
        "max",
        "-o",
        tmp_path / "c",
        "--json",
    )
    assert r.code == 0, r.err
    # 12 channel groups in all (4 of conv, 8 of fc), round(12 · 0.5) = 6 kept, ranked by their
    # largest |w|: conv's 72-weight channels beat fc's 5-weight ones, so conv keeps all four
    manifest = json.loads(r.out)
    assert [(t["name"], t["kept"], t["groups"]) for t in manifest["tensors"]] == [
        ("conv.weight", 288, {"kept": 4, "total": 4}),
        ("fc.weight", 10, {"kept": 2, "total": 8}),
    ]
    assert manifest["totals"] == {"params": 328, "prunable": 328, "kept": 298, "sparsity": 1 - 298 / 328}
    source = load_file(conv_ckpt)
    model = load_file(tmp_path / "c" / "model.safetensors")
    assert model["conv.weight"].tobytes() == source["conv.weight"].tobytes()  # every channel kept
    fc_channels = np.abs(source["fc.weight"]).max(axis=0)  # channel i: column i of fc (5, 8)
    keep = np.zeros(8, bool)
    keep[np.argsort(fc_channels)[-2:]] = True
    np.testing.assert_array_equal(model["fc.weight"], np.where(keep, source["fc.weight"], 0))
    r = cli("apply", conv_ckpt, "-m", "magnitude", "-s", "0.75", "--scope", "row", "-o", tmp_path / "r")
    assert r.code == 0, r.err
    fc, w = load_file(tmp_path / "r" / "model.safetensors")["fc.weight"], source["fc.weight"]
    top2 = np.abs(w) >= np.sort(np.abs(w), axis=1)[:, -2:-1]  # round(8·0.25) = 2 largest per row
    np.testing.assert_array_equal(fc, np.where(top2, w, 0))


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--pattern", "2:4"], "--structure keeps whole filters or channels. drop --pattern / --scope row."),
        (["--scope", "row"], "--structure keeps whole filters or channels. drop --pattern / --scope row."),
        (
            ["--aggregate", "l3"],
            "Invalid value for '--aggregate': Value error, 'l3' is not one of 'l1', "
            "'l2', 'mean', 'max' (see 'prunecli apply --help')",
        ),
        (
            ["--structure", "block"],
            "Invalid value for '--structure': Value error, 'block' is not one of "
            "'filter', 'channel' (see 'prunecli apply --help')",
        ),
    ],
)
def test_structured_usage_errors(cli, conv_ckpt: Path, tmp_path: Path, extra: list[str], line: str) -> None:
    args = ["apply", conv_ckpt, "-m", "magnitude", "-o", tmp_path / "o"]
    args += [] if "--pattern" in extra else ["-s", "0.5"]
    args += extra if "--structure" in extra else ["--structure", "filter", *extra]
    r = cli(*args)
    assert r.code == 2 and r.out == "" and not (tmp_path / "o").exists()
    assert r.err == f"error: {line}\n"


def test_invert_flips_whole_groups(cli, conv_ckpt: Path, tmp_path: Path) -> None:
    common = ["-m", "magnitude", "-s", "0.5", "--structure", "filter", "--scope", "layer"]
    cli("apply", conv_ckpt, *common, "-o", tmp_path / "k")
    cli("apply", conv_ckpt, *common, "--invert", "-o", tmp_path / "i")
    kept = np.abs(load_file(tmp_path / "k" / "model.safetensors")["conv.weight"]).reshape(8, -1).sum(1) > 0
    inverted = (
        np.abs(load_file(tmp_path / "i" / "model.safetensors")["conv.weight"]).reshape(8, -1).sum(1) > 0
    )
    assert not (kept & inverted).any() and (kept | inverted).all()
