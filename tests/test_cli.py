"""The CLI end to end: the pipeline, determinism, JSON purity, exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import save_f32


def test_pipeline_and_byte_identical_reruns(cli, tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        d = tmp_path / run
        d.mkdir()
        assert cli("init", "--arch", "lenet-300-100", "--seed", "3", "-o", d / "init.safetensors").code == 0
        assert (
            cli("score", d / "init.safetensors", "--method", "magnitude", "-o", d / "s.safetensors").code == 0
        )
        r = cli(
            "apply",
            d / "init.safetensors",
            "--scores",
            d / "s.safetensors",
            "--sparsity",
            "0.9",
            "-o",
            d / "out",
        )
        assert r.code == 0, r.err
        r = cli("inspect", d / "out", "--json", "--expect-sparsity", "0.9", "--tolerance", "0.001")
        assert r.code == 0
        report = json.loads(r.out)  # stdout is pure JSON
        assert report["checks"]["passed"] and report["totals"]["kept"] == 26620
        outputs.append(d)
    for name in ["init.safetensors", "s.safetensors", "out/model.safetensors", "out/masks.safetensors"]:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    manifests = [json.loads((d / "out/manifest.json").read_text()) for d in outputs]
    manifests[0]["source"]["path"] = manifests[1]["source"]["path"]
    manifests[0]["method"]["scores"]["path"] = manifests[1]["method"]["scores"]["path"]
    assert manifests[0] == manifests[1]


def test_apply_outputs_are_consistent(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli("apply", mlp_ckpt, "--method", "magnitude", "--sparsity", "0.75", "-o", out, "--json")
    assert r.code == 0
    manifest = json.loads(r.out)
    assert manifest == json.loads((out / "manifest.json").read_text())
    source, model, masks = (
        load_file(mlp_ckpt),
        load_file(out / "model.safetensors"),
        load_file(out / "masks.safetensors"),
    )
    assert set(model) == set(source) and set(masks) == {"fc1.weight", "fc2.weight"}
    for name, tensor in source.items():
        assert model[name].dtype == tensor.dtype and model[name].shape == tensor.shape
        if name not in masks:
            assert model[name].tobytes() == tensor.tobytes()  # untouched: bit for bit
            continue
        mask = np.unpackbits(masks[name])[: tensor.size].reshape(tensor.shape).astype(bool)
        np.testing.assert_array_equal(model[name], np.where(mask, tensor, 0))
    everything = np.concatenate([np.abs(source[n]).ravel() for n in ("fc1.weight", "fc2.weight")])
    assert manifest["totals"]["kept"] == round(everything.size * 0.25)
    kept_values = np.concatenate([np.abs(model[n][model[n] != 0]) for n in ("fc1.weight", "fc2.weight")])
    assert kept_values.min() >= np.sort(everything)[-manifest["totals"]["kept"]]


def test_layer_scope_erk_and_floor(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli(
        "apply",
        mlp_ckpt,
        "--method",
        "random",
        "--sparsity",
        "0.5",
        "--allocation",
        "erk",
        "-o",
        tmp_path / "e",
        "--json",
    )
    assert r.code == 0 and json.loads(r.out)["selection"]["scope"] == "layer"
    r = cli(
        "apply",
        mlp_ckpt,
        "--method",
        "magnitude",
        "--sparsity",
        "0.99",
        "--min-density",
        "0.2",
        "-o",
        tmp_path / "f",
        "--json",
    )
    densities = {t["name"]: t["density"] for t in json.loads(r.out)["tensors"] if t["pruned"]}
    assert min(densities.values()) >= 0.2  # floors win over the target
    # floors that fit the budget: the total stays exact and the rest is ranked globally
    r = cli(
        "apply",
        mlp_ckpt,
        "-m",
        "magnitude",
        "-s",
        "0.8",
        "--min-density",
        "0.15",
        "-o",
        tmp_path / "g",
        "--json",
    )
    manifest = json.loads(r.out)
    assert manifest["totals"]["kept"] == round(256 * 0.2)
    assert min(t["density"] for t in manifest["tensors"] if t["pruned"]) >= 0.15
    unfloored = json.loads(
        cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.8", "-o", tmp_path / "u", "--json").out
    )
    assert min(t["density"] for t in unfloored["tensors"] if t["pruned"]) < 0.15  # the floor mattered


def test_pattern_two_four(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ckpt = save_f32(
        tmp_path / "m.safetensors",
        {"a.weight": rng.standard_normal((8, 16)), "b.weight": rng.standard_normal((4, 6))},
    )
    r = cli("apply", ckpt, "--method", "magnitude", "--pattern", "2:4", "-o", tmp_path / "o")
    assert r.code == 2 and "b.weight" in r.err and "--exclude" in r.err and not (tmp_path / "o").exists()
    r = cli(
        "apply",
        ckpt,
        "--method",
        "magnitude",
        "--pattern",
        "2:4",
        "--exclude",
        "b.*",
        "-o",
        tmp_path / "o",
        "--json",
    )
    assert r.code == 0
    model = load_file(tmp_path / "o" / "model.safetensors")["a.weight"]
    assert ((model.reshape(8, 4, 4) != 0).sum(-1) == 2).all()
    assert json.loads(r.out)["selection"]["pattern"] == "2:4"


def test_shuffle_and_invert(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    base = json.loads(
        cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "b", "--json").out
    )
    shuffled = json.loads(
        cli(
            "apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "--shuffle", "-o", tmp_path / "s", "--json"
        ).out
    )
    assert [t["kept"] for t in base["tensors"]] == [t["kept"] for t in shuffled["tensors"]]
    masks = [load_file(tmp_path / d / "masks.safetensors")["fc1.weight"] for d in ("b", "s")]
    assert not np.array_equal(*masks)
    assert cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "--invert", "-o", tmp_path / "i").code == 0
    kept = load_file(tmp_path / "b" / "masks.safetensors")["fc1.weight"]
    inverted = load_file(tmp_path / "i" / "masks.safetensors")["fc1.weight"]
    assert not (kept & inverted).any()


def test_sparsity_edges(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0", "-o", tmp_path / "zero", "--json")
    assert r.code == 0 and json.loads(r.out)["totals"]["sparsity"] == 0.0
    assert (
        load_file(tmp_path / "zero" / "model.safetensors")["fc1.weight"].tobytes()
        == load_file(mlp_ckpt)["fc1.weight"].tobytes()
    )
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "1", "-o", tmp_path / "one", "--json")
    assert r.code == 0
    manifest = json.loads(r.out)
    assert manifest["totals"]["kept"] == 0
    assert {w["tensor"] for w in manifest["warnings"]} == {"fc1.weight", "fc2.weight"}
    assert r.err.count("collapsed") == 2
    r = cli("inspect", tmp_path / "one", "--fail-on-collapse")
    assert r.code == 1 and "collapsed" in r.err


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_bad_sparsity(cli, mlp_ckpt: Path, tmp_path: Path, value: str) -> None:
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "--sparsity", value, "-o", tmp_path / "o")
    assert r.code == 2 and "--sparsity" in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_inspect_expectation_failure_exits_1(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o")
    r = cli(
        "inspect",
        tmp_path / "o" / "manifest.json",
        "--expect-sparsity",
        "0.9",
        "--tolerance",
        "0.01",
        "--json",
    )
    assert r.code == 1 and json.loads(r.out)["checks"]["passed"] is False
    assert r.err.startswith("error: sparsity is 0.5")


def test_inspect_checkpoint_counts_zeros(cli, tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    w[0, 1] = -0.0  # -0.0 counts as zero
    ckpt = save_f32(tmp_path / "z.safetensors", {"fc.weight": w})
    report = json.loads(cli("inspect", ckpt, "--json").out)
    assert report["totals"]["kept"] == 10 and report["kind"] == "checkpoint"


def test_existing_output_needs_force(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-o", out).code == 0
    before = (out / "model.safetensors").read_bytes()
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.9", "-o", out)
    assert r.code == 2 and "--force" in r.err
    assert (out / "model.safetensors").read_bytes() == before
    assert cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.9", "-o", out, "--force").code == 0
    assert json.loads((out / "manifest.json").read_text())["selection"]["sparsity"] == 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.safetensors", "o"]  # no temp left
    assert cli("score", mlp_ckpt, "-m", "lamp", "-o", tmp_path / "s.safetensors").code == 0
    assert cli("score", mlp_ckpt, "-m", "lamp", "-o", tmp_path / "s.safetensors").code == 2
    assert cli("init", "--arch", "lenet-5", "-o", mlp_ckpt).code == 2


def test_unknown_method_lists_known(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli("score", mlp_ckpt, "--method", "snap", "-o", tmp_path / "s.safetensors")
    assert r.code == 2 and "snap" in r.err and "magnitude" in r.err and "lamp" in r.err


@pytest.mark.parametrize("kind", ["missing", "directory", "truncated", "corrupt"])
def test_bad_checkpoints(cli, mlp_ckpt: Path, tmp_path: Path, kind: str) -> None:
    path = {"missing": tmp_path / "nope.safetensors", "directory": tmp_path}.get(
        kind, tmp_path / "bad.safetensors"
    )
    if kind == "truncated":
        path.write_bytes(mlp_ckpt.read_bytes()[:-40])
    if kind == "corrupt":
        data = bytearray(mlp_ckpt.read_bytes())
        data[8:20] = b"\xff" * 12
        path.write_bytes(bytes(data))
    for args in (["apply", path, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o"], ["inspect", path]):
        r = cli(*args)
        assert r.code == 2, r.err
        assert r.err.startswith("error: ") and r.err.count("\n") == 1 and "Traceback" not in r.err
    assert not (tmp_path / "o").exists()


def test_pickled_pt_is_refused_by_cli(cli, tmp_path: Path) -> None:
    import torch

    from tests.test_checkpoints import MARKER, Payload

    torch.save({"w": torch.ones(2, 2), "x": Payload()}, tmp_path / "evil.pt")
    MARKER.unlink(missing_ok=True)
    r = cli("inspect", tmp_path / "evil.pt")
    assert r.code == 2 and "refused" in r.err and not MARKER.exists()


def test_scores_that_do_not_match(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    wrong_name = save_f32(tmp_path / "n.safetensors", {"fc9.weight": np.ones((16, 12))})
    wrong_shape = save_f32(tmp_path / "s.safetensors", {"fc1.weight": np.ones((12, 16))})
    for scores, needle in ((wrong_name, "fc9.weight"), (wrong_shape, "shape")):
        r = cli("apply", mlp_ckpt, "--scores", scores, "-s", "0.5", "-o", tmp_path / "o")
        assert r.code == 2 and needle in r.err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_exit_3(cli, mlp_ckpt: Path, tmp_path: Path, bad: float) -> None:
    scores = np.ones((4, 16))
    scores[2, 3] = bad
    path = save_f32(tmp_path / "s.safetensors", {"fc1.weight": np.ones((16, 12)), "fc2.weight": scores})
    r = cli("apply", mlp_ckpt, "--scores", path, "-s", "0.5", "-o", tmp_path / "o")
    assert r.code == 3 and "fc2.weight" in r.err and "NaN or infinite" in r.err
    assert not (tmp_path / "o").exists() and not any(p.name.startswith(".o") for p in tmp_path.iterdir())


def test_nan_weights_exit_3(cli, tmp_path: Path) -> None:
    w = np.ones((4, 4))
    w[1, 1] = np.nan
    ckpt = save_f32(tmp_path / "m.safetensors", {"fc.weight": w})
    r = cli("score", ckpt, "-m", "magnitude", "-o", tmp_path / "s.safetensors")
    assert r.code == 3 and "fc.weight" in r.err and not (tmp_path / "s.safetensors").exists()


def test_usage_errors_are_one_line(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    for args in (
        ["apply", mlp_ckpt, "-s", "0.5", "-o", tmp_path / "o"],  # neither --scores nor --method
        ["apply", mlp_ckpt, "-m", "magnitude", "-o", tmp_path / "o"],  # no target
        ["apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-d", "0.5", "-o", tmp_path / "o"],
        [
            "apply",
            mlp_ckpt,
            "-m",
            "magnitude",
            "-s",
            "0.5",
            "--scope",
            "global",
            "--allocation",
            "erk",
            "-o",
            tmp_path / "o",
        ],
        ["apply", mlp_ckpt, "-m", "magnitude", "--pattern", "2-4", "-o", tmp_path / "o"],
        ["apply", mlp_ckpt, "-o", tmp_path / "o", "--frobnicate"],
        ["init", "--arch", "alexnet", "-o", tmp_path / "x.safetensors"],
        ["inspect", mlp_ckpt, "--expect-sparsity", "2"],
        ["frobnicate"],
    ):
        r = cli(*args)
        assert r.code == 2, args
        assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
        assert r.out == ""


def test_version_and_methods(cli) -> None:
    r = cli("--version")
    assert r.code == 0 and r.out.startswith("prunecli ")
    methods = json.loads(cli("methods", "--json").out)
    assert {"magnitude", "random", "lamp"} <= {m["name"] for m in methods}
    assert all(m["paper"] and m["needs"] for m in methods)


def test_pt_input_to_safetensors_output(cli, tmp_path: Path) -> None:
    import torch

    torch.save({"module.fc.weight": torch.randn(8, 8), "module.fc.bias": torch.randn(8)}, tmp_path / "m.pt")
    r = cli("apply", tmp_path / "m.pt", "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o")
    assert r.code == 0 and "module." in r.err
    assert set(load_file(tmp_path / "o" / "model.safetensors")) == {"fc.weight", "fc.bias"}


def test_demo_compares_three_methods_on_builtin_digits(cli, tmp_path: Path) -> None:
    r = cli("demo", "--workdir", tmp_path, "--epochs", "1", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert set(report["methods"]) == {"snip", "magnitude", "random"} and report["arch"] == "lenet-5"
    for result in report["methods"].values():
        assert 0.1 < result["accuracy"] <= 1.0  # trained: better than chance on 10 classes
        assert len(result["densities"]) == 4
    assert (tmp_path / "snip-95" / "manifest.json").is_file()
    snip = report["methods"]["snip"]["densities"]
    assert snip["conv1.weight"] > snip["fc1.weight"]  # SNIP keeps the small first layer dense


def test_lamp_refuses_nan_weights(cli, tmp_path: Path) -> None:
    w = np.ones((4, 4))
    w[0, 0] = np.nan
    ckpt = save_f32(tmp_path / "m.safetensors", {"fc.weight": w})
    for args in (
        ["score", ckpt, "-m", "lamp", "-o", tmp_path / "s.safetensors"],
        ["apply", ckpt, "-m", "lamp", "-s", "0.5", "-o", tmp_path / "o"],
    ):
        r = cli(*args)
        assert r.code == 3 and "fc.weight" in r.err


def test_floors_above_target_are_reported(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli(
        "apply",
        mlp_ckpt,
        "-m",
        "magnitude",
        "-s",
        "0.99",
        "--min-density",
        "0.2",
        "-o",
        tmp_path / "o",
        "--json",
    )
    assert r.code == 0 and "raised the density" in r.err
    assert any(w["kind"] == "floors_raised_density" for w in json.loads(r.out)["warnings"])


def test_shuffle_with_pattern_is_refused(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "--pattern", "2:4", "--shuffle", "-o", tmp_path / "o")
    assert r.code == 2 and "--shuffle" in r.err
