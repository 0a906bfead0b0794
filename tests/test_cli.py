"""The CLI end to end: the pipeline, determinism, JSON purity, exit codes, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from prunecli import __version__
from tests.conftest import save_f32


def stderr(r, tmp_path: Path) -> str:
    """A run's whole stderr, with the test's folder written as <tmp>."""
    return r.err.replace(str(tmp_path), "<tmp>")


def normalised(document: object, tmp_path: Path) -> object:
    """A JSON document with the test's folder as <tmp>, every sha256 as <sha256> and the tool
    version as <version>: what may differ between machines and releases."""

    def walk(node: object) -> object:
        if isinstance(node, dict):
            out = {k: "<sha256>" if k.endswith("sha256") and v else walk(v) for k, v in node.items()}
            if out.get("name") == "prunecli" and "version" in out:
                out["version"] = "<version>"
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node.replace(str(tmp_path), "<tmp>") if isinstance(node, str) else node

    return walk(document)


def record(name: str, shape: list[int], kept: int, pruned: bool) -> dict:
    numel = int(np.prod(shape))
    return {"name": name, "shape": shape, "dtype": "F32", "numel": numel, "kept": kept,
            "density": kept / numel, "pruned": pruned}  # fmt: skip


SELECTION = {
    "sparsity": 0.5, "density": 0.5, "scope": "global", "allocation": "uniform", "min_density": 0.0,
    "pattern": None, "structure": None, "aggregate": None, "shuffle": False, "invert": False,
    "include": [], "exclude": [],
}  # fmt: skip


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
    assert stderr(r, tmp_path) == "note: wrote <tmp>/out: kept 64 of 256 (sparsity 0.7500)\n"
    manifest = json.loads(r.out)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert normalised(manifest, tmp_path) == {
        "format": "prunecli.manifest",
        "schema_version": 2,
        "tool": {"name": "prunecli", "version": "<version>"},
        "source": {"path": "<tmp>/mlp.safetensors", "sha256": "<sha256>", "arch": None},
        "method": {"name": "magnitude", "params": {}, "seed": 0, "scores": None, "data_fingerprint": None},
        "selection": {**SELECTION, "sparsity": 0.75, "density": 0.25},
        "totals": {"params": 292, "prunable": 256, "kept": 64, "sparsity": 0.75},
        "tensors": [
            record("fc1.weight", [16, 12], 19, True),
            record("fc1.bias", [16], 16, False),
            record("norm.weight", [16], 16, False),
            record("fc2.weight", [4, 16], 45, True),  # fc2 was scaled by 3: it keeps far more
            record("fc2.bias", [4], 4, False),
        ],
        "warnings": [],
        "weights_updated": False,
        "files": {"model": "model.safetensors", "masks": "masks.safetensors"},
    }
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
    assert r.code == 2 and not (tmp_path / "o").exists()
    assert stderr(r, tmp_path) == (
        "error: --pattern 2:4 needs the input dimension of b.weight (6) to be a multiple of 4. "
        "exclude it with --exclude 'b.weight'.\n"
    )
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
    assert json.loads(r.out)["selection"] == {**SELECTION, "pattern": "2:4", "exclude": ["b.*"]}


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
    assert stderr(r, tmp_path) == (
        "warning: fc1.weight keeps no weights: the layer is collapsed\n"
        "warning: fc2.weight keeps no weights: the layer is collapsed\n"
        "note: wrote <tmp>/one: kept 0 of 256 (sparsity 1.0000)\n"
    )
    r = cli("inspect", tmp_path / "one", "--fail-on-collapse")
    assert r.code == 1
    assert r.err.splitlines()[-4:] == [
        "collapsed layers (2): fc1.weight, fc2.weight",
        "warning: fc1.weight keeps no weights: the layer is collapsed",
        "warning: fc2.weight keeps no weights: the layer is collapsed",
        "error: 2 collapsed layer(s): fc1.weight, fc2.weight. the check asked for with inspect did not hold.",
    ]


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_bad_sparsity(cli, mlp_ckpt: Path, tmp_path: Path, value: str) -> None:
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "--sparsity", value, "-o", tmp_path / "o")
    assert r.code == 2 and r.out == ""
    assert r.err == f"error: --sparsity {value} is outside [0, 1]. give --sparsity as a fraction, e.g. 0.9.\n"
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
    assert r.code == 1
    assert r.err == (
        "error: sparsity is 0.500000, expected 0.900000 ± 0.01. "
        "the check asked for with inspect did not hold.\n"
    )
    assert normalised(json.loads(r.out), tmp_path) == {  # written even though the check failed
        "path": "<tmp>/o/manifest.json",
        "kind": "manifest",
        "method": "magnitude",
        "selection": SELECTION,
        "tensors": [
            record("fc1.weight", [16, 12], 75, True),
            record("fc1.bias", [16], 16, False),
            record("norm.weight", [16], 16, False),
            record("fc2.weight", [4, 16], 53, True),
            record("fc2.bias", [4], 4, False),
        ],
        "totals": {"params": 292, "prunable": 256, "kept": 128, "sparsity": 0.5},
        "warnings": [],
        "verified": {"masks": True, "model": True},
        "collapsed": [],
        "checks": {"passed": False, "failures": ["sparsity is 0.500000, expected 0.900000 ± 0.01"]},
    }


def test_inspect_checkpoint_counts_zeros(cli, tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    w[0, 1] = -0.0  # -0.0 counts as zero
    ckpt = save_f32(tmp_path / "z.safetensors", {"fc.weight": w})
    r = cli("inspect", ckpt, "--json")
    assert r.code == 0 and r.err == ""
    assert normalised(json.loads(r.out), tmp_path) == {
        "path": "<tmp>/z.safetensors",
        "kind": "checkpoint",
        "tensors": [record("fc.weight", [3, 4], 10, True)],  # 0.0 and -0.0 are not kept
        "totals": {"params": 12, "prunable": 12, "kept": 10, "sparsity": 1 - 10 / 12},
        "warnings": [],
        "collapsed": [],
        "checks": {"passed": True, "failures": []},
    }


def test_existing_output_needs_force(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-o", out).code == 0
    before = (out / "model.safetensors").read_bytes()
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.9", "-o", out)
    assert r.code == 2
    assert stderr(r, tmp_path) == "error: output folder <tmp>/o is not empty. pass --force to replace it.\n"
    assert (out / "model.safetensors").read_bytes() == before
    assert cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.9", "-o", out, "--force").code == 0
    assert json.loads((out / "manifest.json").read_text())["selection"]["sparsity"] == 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.safetensors", "o"]  # no temp left
    assert cli("score", mlp_ckpt, "-m", "lamp", "-o", tmp_path / "s.safetensors").code == 0
    scores = (tmp_path / "s.safetensors").read_bytes()
    r = cli("score", mlp_ckpt, "-m", "lamp", "-o", tmp_path / "s.safetensors")
    assert r.code == 2
    assert stderr(r, tmp_path) == "error: <tmp>/s.safetensors already exists. pass --force to overwrite it.\n"
    assert (tmp_path / "s.safetensors").read_bytes() == scores
    checkpoint = mlp_ckpt.read_bytes()
    r = cli("init", "--arch", "lenet-5", "-o", mlp_ckpt)
    assert r.code == 2
    assert (
        stderr(r, tmp_path) == "error: <tmp>/mlp.safetensors already exists. pass --force to overwrite it.\n"
    )
    assert mlp_ckpt.read_bytes() == checkpoint


def test_unknown_method_lists_known(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli("score", mlp_ckpt, "--method", "snap", "-o", tmp_path / "s.safetensors")
    assert r.code == 2 and r.out == ""
    known = "magnitude, random, lamp, snip, grasp, synflow, force, iter-snip, snip-it, obd, exact, taylor"
    known += ", wanda, sparsegpt"
    assert r.err == f"error: unknown method 'snap'. did you mean snip? choose one of: {known}.\n"
    r = cli("score", mlp_ckpt, "--method", "zzz", "-o", tmp_path / "s.safetensors")
    assert r.err == f"error: unknown method 'zzz'. choose one of: {known}.\n"  # no close name, no guess
    assert not (tmp_path / "s.safetensors").exists()


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
    invalid = "is not a valid safetensors file: "
    fix = ". re-download or re-save the file; a truncated copy cannot be repaired.\n"
    expected = {
        "missing": (
            "error: checkpoint <tmp>/nope.safetensors does not exist. check the path.\n",
            "error: input <tmp>/nope.safetensors does not exist. check the path.\n",
        ),
        "directory": (  # a folder is read as a model folder (a Hugging Face layout)
            "error: folder <tmp> holds no model.safetensors.index.json or model.safetensors. name a model "
            "folder, or the checkpoint file itself.\n",
        )
        * 2,
        "truncated": (
            f"error: <tmp>/bad.safetensors {invalid}tensor 'fc2.weight' ends at byte 1152, past the data's "
            f"1128 bytes{fix}",
        )
        * 2,
        "corrupt": (
            f"error: <tmp>/bad.safetensors {invalid}the header is not JSON (it is not UTF-8 text){fix}",
        )
        * 2,
    }[kind]
    for args, line in zip(
        (["apply", path, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o"], ["inspect", path]),
        expected,
        strict=True,
    ):
        r = cli(*args)
        assert r.code == 2 and r.out == ""
        assert stderr(r, tmp_path) == line
    assert not (tmp_path / "o").exists()


def test_pickled_pt_is_refused_by_cli(cli, tmp_path: Path) -> None:
    import torch

    from tests.test_checkpoints import MARKER, Payload

    torch.save({"w": torch.ones(2, 2), "x": Payload()}, tmp_path / "evil.pt")
    MARKER.unlink(missing_ok=True)
    r = cli("inspect", tmp_path / "evil.pt")
    assert r.code == 2 and r.out == "" and not MARKER.exists()
    assert re.fullmatch(  # the parenthesis quotes torch's reason, which differs between versions
        r"error: <tmp>/evil\.pt holds pickled objects that are not plain tensors; refused to load them "
        r"\([^\n]*nothing was run\)\. "
        r"save a plain state dict \(torch\.save\(model\.state_dict\(\), \.\.\.\)\) or safetensors\.\n",
        stderr(r, tmp_path),
    ), r.err


def test_scores_that_do_not_match(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    wrong_name = save_f32(tmp_path / "n.safetensors", {"fc9.weight": np.ones((16, 12))})
    wrong_shape = save_f32(tmp_path / "s.safetensors", {"fc1.weight": np.ones((12, 16))})
    same = "score the same checkpoint you apply"
    for scores, line in (
        (
            wrong_name,
            f"error: scores name 'fc9.weight' is not in the checkpoint <tmp>/mlp.safetensors. {same}.\n",
        ),
        (
            wrong_shape,
            f"error: scores for fc1.weight have shape [12, 16] but the checkpoint has [16, 12]. {same}.\n",
        ),
    ):
        r = cli("apply", mlp_ckpt, "--scores", scores, "-s", "0.5", "-o", tmp_path / "o")
        assert r.code == 2 and stderr(r, tmp_path) == line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_exit_3(cli, mlp_ckpt: Path, tmp_path: Path, bad: float) -> None:
    scores = np.ones((4, 16))
    scores[2, 3] = bad
    path = save_f32(tmp_path / "s.safetensors", {"fc1.weight": np.ones((16, 12)), "fc2.weight": scores})
    r = cli("apply", mlp_ckpt, "--scores", path, "-s", "0.5", "-o", tmp_path / "o")
    assert r.code == 3 and r.out == ""
    assert r.err == (
        "error: scores of fc2.weight contain NaN or infinite values. "
        "check the checkpoint for NaN/Inf weights (inspect) or recompute the scores.\n"
    )
    assert not (tmp_path / "o").exists() and not any(p.name.startswith(".o") for p in tmp_path.iterdir())


NAN_WEIGHTS = (
    "error: weights of fc.weight contain NaN or infinite values. check the checkpoint (inspect) or "
    "exclude the tensor with --exclude.\n"
)


def test_nan_weights_exit_3(cli, tmp_path: Path) -> None:
    w = np.ones((4, 4))
    w[1, 1] = np.nan
    ckpt = save_f32(tmp_path / "m.safetensors", {"fc.weight": w})
    r = cli("score", ckpt, "-m", "magnitude", "-o", tmp_path / "s.safetensors")
    assert r.code == 3 and not (tmp_path / "s.safetensors").exists()
    assert r.err == NAN_WEIGHTS


def test_usage_errors_are_one_line(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    known_archs = "lenet-300-100, lenet-5, mlp, vgg11, vgg16, vgg19, resnet20, resnet32, resnet18, resnet50"
    for args, line in (
        (  # neither --scores nor --method
            ["apply", mlp_ckpt, "-s", "0.5", "-o", tmp_path / "o"],
            "error: give exactly one of --scores and --method. e.g. --method magnitude.",
        ),
        (  # no target
            ["apply", mlp_ckpt, "-m", "magnitude", "-o", tmp_path / "o"],
            "error: no target given. add --sparsity S (e.g. 0.9) or --density D.",
        ),
        (
            ["apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-d", "0.5", "-o", tmp_path / "o"],
            "error: --sparsity and --density were both given. give only one of them.",
        ),
        (
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
            "error: --allocation erk sets per-layer densities. use it with --scope layer.",
        ),
        (
            ["apply", mlp_ckpt, "-m", "magnitude", "--pattern", "2-4", "-o", tmp_path / "o"],
            "error: --pattern '2-4' is not N:M. write it like 2:4.",
        ),
        (
            ["init", "--arch", "alexnet", "-o", tmp_path / "x.safetensors"],
            f"error: unknown architecture 'alexnet'. did you mean lenet-5? choose one of: {known_archs}; or "
            "give package.module:factory, path/to/file.py:factory or a .pt2 archive.",
        ),
        (
            ["inspect", mlp_ckpt, "--expect-sparsity", "2"],
            "error: --expect-sparsity 2.0 is outside [0, 1]. use a fraction.",
        ),
        # typer/click word these two; the start of the line is ours
        (["apply", mlp_ckpt, "-o", tmp_path / "o", "--frobnicate"], "error: No such option: --frobnicate"),
        (["frobnicate"], "error: No such command 'frobnicate'"),
    ):
        r = cli(*args)
        assert r.code == 2, args
        assert r.out == ""
        assert r.err.count("\n") == 1 and r.err.endswith("\n"), r.err
        if "No such" in line:
            assert r.err.startswith(line), r.err
        else:
            assert r.err == line + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.safetensors"]  # nothing written


def test_version_and_methods(cli) -> None:
    r = cli("--version")
    assert (r.code, r.out, r.err) == (0, f"prunecli {__version__}\n", "")
    methods = json.loads(cli("methods", "--json").out)
    assert {"magnitude", "random", "lamp"} <= {m["name"] for m in methods}
    assert all(m["paper"] and m["needs"] for m in methods)


def test_pt_input_to_safetensors_output(cli, tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    weight, bias = torch.randn(8, 8), torch.randn(8)
    torch.save({"module.fc.weight": weight, "module.fc.bias": bias}, tmp_path / "m.pt")
    r = cli("apply", tmp_path / "m.pt", "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o")
    assert r.code == 0
    assert stderr(r, tmp_path) == (
        "note: stripped the 'module.' prefix (DataParallel/DDP) from every key\n"
        "note: wrote <tmp>/o: kept 32 of 64 (sparsity 0.5000)\n"
    )
    model = load_file(tmp_path / "o" / "model.safetensors")
    assert list(model) == ["fc.weight", "fc.bias"]
    assert model["fc.bias"].tobytes() == bias.numpy().tobytes()  # not pruned: bit for bit
    w = weight.numpy()
    keep = np.abs(w) >= np.sort(np.abs(w).ravel())[-32]  # magnitude: the 32 largest
    assert model["fc.weight"].tobytes() == np.where(keep, w, np.float32(0)).tobytes()


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
        assert r.code == 3 and r.err == NAN_WEIGHTS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


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
    assert r.code == 0
    assert stderr(r, tmp_path) == (
        "warning: --min-density 0.2 raised the density to 0.203125\n"
        "note: wrote <tmp>/o: kept 52 of 256 (sparsity 0.7969)\n"
    )
    manifest = json.loads(r.out)
    assert manifest["warnings"] == [
        {
            "kind": "floors_raised_density",
            "tensor": None,
            "message": "--min-density 0.2 raised the density to 0.203125",
        }
    ]
    assert manifest["totals"] == {"params": 292, "prunable": 256, "kept": 52, "sparsity": 1 - 52 / 256}
    assert [(t["name"], t["kept"]) for t in manifest["tensors"] if t["pruned"]] == [
        ("fc1.weight", 39),
        ("fc2.weight", 13),
    ]  # 0.203125 of each: round(192 · 0.203125) = 39, round(64 · 0.203125) = 13


def test_shuffle_with_pattern_is_refused(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli("apply", mlp_ckpt, "-m", "magnitude", "--pattern", "2:4", "--shuffle", "-o", tmp_path / "o")
    assert r.code == 2 and r.out == "" and not (tmp_path / "o").exists()
    assert r.err == "error: --shuffle would break the --pattern N:M structure. use one of them.\n"
