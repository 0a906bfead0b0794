"""`apply --masks`: an existing mask set put on a checkpoint, alone (exact) or cumulatively."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from prunecli.errors import InputError, UsageError
from prunecli.pipelines.apply_masks import apply_masks
from prunecli.selection.spec import SelectionSpec
from tests.conftest import save_f32

PRUNED = ("fc1.weight", "fc2.weight")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unpacked(folder: Path) -> dict[str, np.ndarray]:
    masks, model = load_file(folder / "masks.safetensors"), load_file(folder / "model.safetensors")
    return {
        n: np.unpackbits(masks[n], count=model[n].size).reshape(model[n].shape).astype(bool) for n in masks
    }


@pytest.fixture
def trained(mlp_ckpt: Path, tmp_path: Path) -> Path:
    """The MLP's weights after 'training': every tensor moved, none of them tied."""
    rng = np.random.default_rng(1)
    moved = {n: w + rng.standard_normal(w.shape) for n, w in load_file(mlp_ckpt).items()}
    return save_f32(tmp_path / "trained.safetensors", moved)


@pytest.fixture
def half(cli, mlp_ckpt: Path, tmp_path: Path) -> Path:
    """Global magnitude masks at 50% of the MLP."""
    assert cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "half", "-q").code == 0
    return tmp_path / "half"


def test_alone_reproduces_the_masks_and_rewinds(cli, half: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "rewound"
    r = cli("apply", trained, "--masks", half, "-o", out, "--json")
    assert (r.code, r.err) == (0, f"note: wrote {out}: kept 128 of 256 (sparsity 0.5000)\n")
    assert (out / "masks.safetensors").read_bytes() == (half / "masks.safetensors").read_bytes()
    source, model, masks = load_file(trained), load_file(out / "model.safetensors"), unpacked(out)
    for name, tensor in source.items():
        expected = np.where(masks[name], tensor, 0) if name in PRUNED else tensor
        assert model[name].tobytes() == expected.tobytes(), name  # kept weights: the checkpoint's own
    manifest = json.loads(r.out)
    parent = json.loads((half / "manifest.json").read_text())
    assert manifest["method"] == {
        "name": "masks",
        "params": {},
        "seed": 0,
        "scores": None,
        "data_fingerprint": None,
    }
    assert manifest["lineage"] == {
        "kind": "apply",
        "masks": [
            {"path": str(half), "sha256": sha256(half / "masks.safetensors"), "method": parent["method"]}
        ],
    }
    assert manifest["tensors"] == parent["tensors"] and manifest["totals"] == parent["totals"]
    assert manifest["selection"]["sparsity"] == 0.5
    assert cli("inspect", out, "--expect-sparsity", "0.5", "--tolerance", "0", "-q").code == 0


@pytest.mark.parametrize("given", ["manifest", "bare"])
def test_a_manifest_or_a_bare_masks_file_gives_the_same_masks(
    cli, half: Path, trained: Path, tmp_path: Path, given: str
) -> None:
    if given == "manifest":
        source = half / "manifest.json"
    else:  # without its manifest: the shapes come from the checkpoint
        (tmp_path / "masks-only").mkdir()
        source = Path(shutil.copy(half / "masks.safetensors", tmp_path / "masks-only" / "masks.safetensors"))
    out = tmp_path / given
    assert cli("apply", trained, "--masks", source, "-o", out, "-q").code == 0
    assert (out / "masks.safetensors").read_bytes() == (half / "masks.safetensors").read_bytes()
    lineage = json.loads((out / "manifest.json").read_text())["lineage"]["masks"][0]
    assert (lineage["path"], lineage["method"] is None) == (str(source), given == "bare")


def reference_within(scores: dict[str, np.ndarray], prior: dict[str, np.ndarray], keep: int) -> dict:
    """The `keep` highest scores among the weights `prior` kept, over all tensors (no ties here)."""
    survivors = np.concatenate([scores[n][prior[n]] for n in PRUNED])
    cut = np.sort(survivors)[-keep]
    return {n: prior[n] & (scores[n] >= cut) for n in PRUNED}


def test_cumulative_global_prunes_within_the_masks_and_counts_the_total(
    cli, half: Path, trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sixty"
    r = cli("apply", trained, "--masks", half, "-m", "magnitude", "-s", "0.6", "-o", out, "--json")
    assert (r.code, r.err) == (0, f"note: wrote {out}: kept 102 of 256 (sparsity 0.6016)\n")
    prior, masks = unpacked(half), unpacked(out)
    weights = {n: np.abs(w) for n, w in load_file(trained).items()}
    expected = reference_within(weights, prior, 102)  # round(256 * 0.4): 20% of the 128 survivors go
    for name in PRUNED:
        np.testing.assert_array_equal(masks[name], expected[name])
    manifest = json.loads(r.out)
    assert manifest["method"]["name"] == "magnitude" and manifest["selection"]["sparsity"] == 0.6
    assert manifest["lineage"]["masks"][0]["sha256"] == sha256(half / "masks.safetensors")
    # the same target with a scores file gives the same masks, and records the file
    scores = tmp_path / "scores.safetensors"
    assert cli("score", trained, "-m", "magnitude", "-o", scores, "-q").code == 0
    out2 = tmp_path / "sixty-scores"
    r = cli("apply", trained, "--masks", half, "--scores", scores, "-s", "0.6", "-o", out2, "--json")
    assert r.code == 0
    assert (out2 / "masks.safetensors").read_bytes() == (out / "masks.safetensors").read_bytes()
    assert json.loads(r.out)["method"]["scores"] == {"path": str(scores), "sha256": sha256(scores)}


def test_cumulative_at_the_masks_own_sparsity_keeps_them(
    cli, half: Path, trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "same"
    assert cli("apply", trained, "--masks", half, "-m", "random", "-s", "0.5", "-o", out, "-q").code == 0
    assert (out / "masks.safetensors").read_bytes() == (half / "masks.safetensors").read_bytes()


def test_cumulative_layer_scope_is_exact_per_tensor(cli, half: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer"
    # the masks keep 75 of fc1's 192 (0.391) and 53 of fc2's 64 (0.828): 0.3 fits both
    args = ("--masks", half, "-m", "magnitude", "-d", "0.3", "--scope", "layer", "-o", out, "-q")
    assert cli("apply", trained, *args).code == 0
    prior, masks = unpacked(half), unpacked(out)
    weights = load_file(trained)
    for name in PRUNED:
        keep = round(weights[name].size * 0.3)
        survivors = np.sort(np.abs(weights[name][prior[name]]))
        expected = prior[name] & (np.abs(weights[name]) >= survivors[-keep])
        np.testing.assert_array_equal(masks[name], expected)
        assert masks[name].sum() == keep


def test_a_target_below_the_masks_own_is_refused(cli, half: Path, trained: Path, tmp_path: Path) -> None:
    r = cli("apply", trained, "--masks", half, "-m", "magnitude", "-s", "0.4", "-o", tmp_path / "less")
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        "error: --sparsity 0.4 is below the masks' own sparsity 0.5: cumulative pruning only removes "
        "weights. give --sparsity 0.5 or more, or put the masks on alone (no scores or method).\n"
    )
    assert not (tmp_path / "less").exists()


def test_a_layer_rule_that_would_revive_weights_is_refused(
    cli, half: Path, trained: Path, tmp_path: Path
) -> None:
    # fc1 keeps 75 of 192 (0.391): a layer density of 0.4 asks it for 77
    args = ("--masks", half, "-m", "magnitude", "-d", "0.4", "--scope", "layer", "-o", tmp_path / "x")
    r = cli("apply", trained, *args)
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        "error: the selection would keep 2 weights of fc1.weight that the masks pruned (they keep 75 of its "
        "192): cumulative pruning only removes weights. ask for a higher --sparsity: with a per-layer or "
        "per-row rule or a --pattern, every tensor, row or group must keep no more than the masks do.\n"
    )
    assert not (tmp_path / "x").exists()


def other_mlp(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    return save_f32(
        tmp_path / "other.safetensors",
        {
            "fc1.weight": rng.standard_normal((16, 10)),
            "fc2.weight": rng.standard_normal((5, 16)),
            "fc3.weight": rng.standard_normal((3, 5)),
        },
    )


def test_masks_of_another_architecture_exit_2_naming_the_tensors(cli, half: Path, tmp_path: Path) -> None:
    other = other_mlp(tmp_path)
    r = cli("apply", other, "--masks", half, "-o", tmp_path / "x")
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        f"error: the masks {half} do not fit the checkpoint {other}: fc1.weight ([16, 12] in the masks, "
        "[16, 10] here), fc2.weight ([4, 16] in the masks, [5, 16] here), fc3.weight (prunable here, no "
        "mask). put masks on the architecture they were made for; --exclude GLOB leaves a tensor out.\n"
    )
    (tmp_path / "bare").mkdir()
    bare = shutil.copy(half / "masks.safetensors", tmp_path / "bare" / "masks.safetensors")
    r = cli("apply", other, "--masks", bare, "-o", tmp_path / "x")
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        f"error: the masks {bare} do not fit the checkpoint {other}: fc1.weight (24 packed bytes, [16, 10] "
        "needs 20), fc2.weight (8 packed bytes, [5, 16] needs 10), fc3.weight (prunable here, no mask). "
        "put masks on the architecture they were made for; --exclude GLOB leaves a tensor out.\n"
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "err"),
    [
        (
            ("-s", "0.6"),
            "error: --sparsity selects masks, but --masks alone puts the masks on as they are. "
            "to prune further within them, add --scores FILE or --method METHOD with --sparsity.\n",
        ),
        (
            ("--scope", "layer"),
            "error: --scope selects masks, but --masks alone puts the masks on as they are. "
            "to prune further within them, add --scores FILE or --method METHOD with --sparsity.\n",
        ),
        (
            ("-m", "magnitude", "-s", "0.6", "--shuffle"),
            "error: --shuffle cannot prune within masks: it would "
            "bring back weights they pruned. drop --shuffle.\n",
        ),
    ],
)
def test_selection_options_that_do_not_fit_are_refused(
    cli, half: Path, trained: Path, tmp_path: Path, args: tuple[str, ...], err: str
) -> None:
    r = cli("apply", trained, "--masks", half, *args, "-o", tmp_path / "x")
    assert (r.code, r.out, r.err) == (2, "", err)


def test_python_api_rules(half: Path, trained: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exactly one of `scores` and `method`"):
        apply_masks(trained, tmp_path / "x", half, SelectionSpec(density=0.4))
    with pytest.raises(UsageError, match="towards a target"):
        apply_masks(trained, tmp_path / "x", half, method="magnitude")
    with pytest.raises(InputError, match="does not exist"):
        apply_masks(trained, tmp_path / "x", tmp_path / "nowhere")
    applied = apply_masks(trained, tmp_path / "y", half, SelectionSpec(density=0.25), method="lamp")
    assert applied.manifest["totals"]["kept"] == 64 and applied.manifest["method"]["name"] == "lamp"
    prior, masks = unpacked(half), unpacked(tmp_path / "y")
    assert all(not (masks[n] & ~prior[n]).any() for n in PRUNED)


def test_an_edited_mask_set_is_refused(cli, half: Path, trained: Path, tmp_path: Path) -> None:
    manifest = json.loads((half / "manifest.json").read_text())
    manifest["tensors"][0]["kept"] -= 1
    manifest["tensors"][0]["density"] = manifest["tensors"][0]["kept"] / manifest["tensors"][0]["numel"]
    (half / "manifest.json").write_text(json.dumps(manifest))
    r = cli("apply", trained, "--masks", half, "-o", tmp_path / "x")
    assert (r.code, r.out) == (2, "")
    assert r.err.startswith(
        f"error: the mask of fc1.weight in {half / 'masks.safetensors'} keeps 75 weights, "
        "but the manifest records 74."
    )


def test_an_excluded_tensor_stays_dense(cli, half: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "fc1-only"
    r = cli("apply", trained, "--masks", half, "--exclude", "fc2.*", "-o", out, "--json")
    assert r.code == 0, r.err
    assert list(load_file(out / "masks.safetensors")) == ["fc1.weight"]
    assert (
        load_file(out / "masks.safetensors")["fc1.weight"].tobytes()
        == load_file(half / "masks.safetensors")["fc1.weight"].tobytes()
    )
    records = {t["name"]: t for t in json.loads(r.out)["tensors"]}
    assert (records["fc2.weight"]["pruned"], records["fc2.weight"]["kept"]) == (False, 64)
    assert (
        load_file(out / "model.safetensors")["fc2.weight"].tobytes()
        == load_file(trained)["fc2.weight"].tobytes()
    )
    more = tmp_path / "more"
    args = ("--masks", half, "-m", "magnitude", "-d", "0.2", "--exclude", "fc2.*", "-o", more, "--json")
    r = cli("apply", trained, *args)
    assert r.code == 0, r.err
    assert json.loads(r.out)["totals"] == {
        "params": 292,
        "prunable": 192,
        "kept": 38,
        "sparsity": 1 - 38 / 192,
    }
