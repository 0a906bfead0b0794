"""`prunecli intersect`: intersection and union of mask sets, against numpy and against chance."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from prunecli.analysis.intersect import chance_kept, intersect
from prunecli.errors import InputError, UsageError
from tests.conftest import save_f32

PRUNED = ("fc1.weight", "fc2.weight")
SHAPES = {"fc1.weight": (16, 12), "fc2.weight": (4, 16)}


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    packed = load_file(folder / "masks.safetensors")
    return {
        n: np.unpackbits(packed[n], count=int(np.prod(SHAPES[n]))).reshape(SHAPES[n]).astype(bool)
        for n in PRUNED
    }


@pytest.fixture
def sets(cli, mlp_ckpt: Path, tmp_path: Path) -> list[Path]:
    """Three mask sets of the MLP: magnitude 50%, random 50% and LAMP 70%."""
    runs = [("magnitude", "0.5", "mag"), ("random", "0.5", "rnd"), ("lamp", "0.7", "lamp")]
    for method, sparsity, name in runs:
        assert (
            cli(
                "apply", mlp_ckpt, "-m", method, "-s", sparsity, "--seed", "3", "-o", tmp_path / name, "-q"
            ).code
            == 0
        )
    return [tmp_path / name for _, _, name in runs]


@pytest.mark.parametrize("union", [False, True])
def test_intersect_and_union_match_numpy(cli, sets: list[Path], tmp_path: Path, union: bool) -> None:
    out = tmp_path / "out"
    r = cli("intersect", *sets, "-o", out, *(["--union"] if union else []), "--json")
    assert r.code == 0
    inputs = [masks_of(s) for s in sets]
    combine = np.logical_or.reduce if union else np.logical_and.reduce
    expected = {n: combine([m[n] for m in inputs]) for n in PRUNED}
    written = masks_of(out)
    for name in PRUNED:
        np.testing.assert_array_equal(written[name], expected[name])
    report = json.loads(r.out)
    for row in report["tensors"]:
        numel, kept = row["numel"], [int(m[row["name"]].sum()) for m in inputs]
        densities = np.array(kept) / numel
        chance = numel * (1 - np.prod(1 - densities)) if union else numel * np.prod(densities)
        assert (row["kept"], row["result_kept"]) == (kept, int(expected[row["name"]].sum()))
        assert row["densities"] == pytest.approx(densities.tolist())
        assert row["chance_kept"] == pytest.approx(chance) and row["vs_chance"] == pytest.approx(
            row["result_kept"] / chance
        )
    totals = report["totals"]
    assert totals["result_kept"] == sum(int(e.sum()) for e in expected.values())
    assert totals["numel"] == 256 and totals["chance_kept"] == pytest.approx(
        sum(r["chance_kept"] for r in report["tensors"])
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {"model": None, "masks": "masks.safetensors"}
    assert manifest["method"]["name"] == ("union" if union else "intersect")
    assert [t["kept"] for t in manifest["tensors"]] == [int(expected[n].sum()) for n in PRUNED]
    assert manifest["totals"]["kept"] == totals["result_kept"]
    assert manifest["lineage"] == {
        "kind": "union" if union else "intersect",
        "masks": [
            {
                "path": str(s),
                "sha256": hashlib.sha256((s / "masks.safetensors").read_bytes()).hexdigest(),
                "method": json.loads((s / "manifest.json").read_text())["method"],
            }
            for s in sets
        ],
    }
    assert (
        manifest["source"] == json.loads((sets[0] / "manifest.json").read_text())["source"]
    )  # one checkpoint


def test_the_output_is_a_mask_set_that_inspect_compare_and_apply_take(
    cli, sets: list[Path], mlp_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "common"
    assert cli("intersect", sets[0], sets[2], "-o", out, "-q").code == 0
    r = cli("inspect", out, "--json")
    assert r.code == 0
    report = json.loads(r.out)
    assert report["verified"] == {"masks": True, "model": False} and report["checks"]["passed"]
    assert cli("compare", out, sets[0], "-q").code == 0
    applied = tmp_path / "applied"
    assert cli("apply", mlp_ckpt, "--masks", out, "-o", applied, "-q").code == 0
    assert (applied / "masks.safetensors").read_bytes() == (out / "masks.safetensors").read_bytes()
    model, source, masks = load_file(applied / "model.safetensors"), load_file(mlp_ckpt), masks_of(out)
    for name in PRUNED:
        np.testing.assert_array_equal(model[name], np.where(masks[name], source[name], 0))


def test_a_bare_masks_file_borrows_the_shapes(cli, sets: list[Path], tmp_path: Path) -> None:
    (tmp_path / "loose").mkdir()
    bare = shutil.copy(sets[1] / "masks.safetensors", tmp_path / "loose" / "masks.safetensors")
    out = tmp_path / "out"
    assert cli("intersect", bare, sets[0], "-o", out, "-q").code == 0
    a, b = masks_of(sets[1]), masks_of(sets[0])
    written = masks_of(out)
    for name in PRUNED:
        np.testing.assert_array_equal(written[name], a[name] & b[name])
    lineage = json.loads((out / "manifest.json").read_text())["lineage"]["masks"]
    assert lineage[0]["method"] is None and lineage[1]["method"]["name"] == "magnitude"


def test_the_cli_prints_densities_against_chance(cli, sets: list[Path], tmp_path: Path) -> None:
    r = cli("intersect", sets[0], sets[1], "-o", tmp_path / "out")
    assert (r.code, r.out) == (0, "")
    report = intersect_report(sets[0], sets[1])
    t = report["totals"]
    assert f"note: wrote {tmp_path / 'out'}: kept {t['result_kept']:,} of 256\n" in r.err
    assert r.err.endswith(
        f"intersect keeps {t['result_kept']} of 256 ({t['result_density']:.4f}): {t['vs_chance']:.2f}× what "
        f"independent random masks of these densities would ({t['chance_density']:.4f})\n"
    )
    row = next(line for line in r.err.splitlines() if "fc2.weight" in line)
    fc2 = report["tensors"][1]
    cells = [f"{d:.4f}" for d in fc2["densities"]] + [
        f"{fc2['result_density']:.4f}",
        f"{fc2['chance_density']:.4f}",
    ]
    assert row.split("│")[2:-2] and [c.strip() for c in row.split("│")[2:6]] == cells


def intersect_report(a: Path, b: Path) -> dict:
    masks = [masks_of(a), masks_of(b)]
    rows = []
    for name in PRUNED:
        kept = [int(m[name].sum()) for m in masks]
        both = int((masks[0][name] & masks[1][name]).sum())
        numel = masks[0][name].size
        rows.append(
            {
                "densities": [k / numel for k in kept],
                "result_density": both / numel,
                "chance_density": kept[0] * kept[1] / numel / numel,
                "result_kept": both,
                "chance_kept": kept[0] * kept[1] / numel,
            }
        )
    result, chance = sum(r["result_kept"] for r in rows), sum(r["chance_kept"] for r in rows)
    totals = {
        "result_kept": result,
        "result_density": result / 256,
        "chance_density": chance / 256,
        "vs_chance": result / chance,
    }
    return {"tensors": rows, "totals": totals}


def test_chance_folds_the_pairwise_expectation() -> None:
    assert chance_kept(100, [50, 50], union=False) == 25.0
    assert chance_kept(100, [50, 50], union=True) == 75.0
    assert chance_kept(100, [50, 40, 10], union=False) == pytest.approx(100 * 0.5 * 0.4 * 0.1)
    assert chance_kept(100, [50, 40, 10], union=True) == pytest.approx(100 * (1 - 0.5 * 0.6 * 0.9))


def test_mismatched_sets_exit_2(cli, sets: list[Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    other = save_f32(
        tmp_path / "other.safetensors",
        {"fc1.weight": rng.standard_normal((16, 10)), "fc2.weight": rng.standard_normal((4, 16))},
    )
    assert cli("apply", other, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "other", "-q").code == 0
    r = cli("intersect", sets[0], tmp_path / "other", "-o", tmp_path / "x")
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        f"error: fc1.weight is [16, 10] in {tmp_path / 'other'} but [16, 12] in {sets[0]}. intersect masks "
        "made for one architecture: the same tensor names and shapes.\n"
    )
    single = save_f32(tmp_path / "single.safetensors", {"fc1.weight": rng.standard_normal((16, 12))})
    assert cli("apply", single, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "single", "-q").code == 0
    r = cli("intersect", sets[0], tmp_path / "single", "-o", tmp_path / "x")
    assert (r.code, r.out) == (2, "")
    assert r.err.startswith(f"error: fc2.weight has a mask in {sets[0]} but not in {tmp_path / 'single'}.")
    assert not (tmp_path / "x").exists()


def test_usage_errors(cli, sets: list[Path], tmp_path: Path) -> None:
    r = cli("intersect", sets[0], "-o", tmp_path / "x")
    assert (r.code, r.err) == (2, "error: intersect needs at least two mask sets, got 1. name two or more.\n")
    loose = []
    for i, s in enumerate(sets[:2]):
        (tmp_path / f"loose{i}").mkdir()
        loose.append(shutil.copy(s / "masks.safetensors", tmp_path / f"loose{i}" / "masks.safetensors"))
    r = cli("intersect", *loose, "-o", tmp_path / "x")
    assert (r.code, r.err) == (
        2,
        "error: none of the mask sets records shapes (all are bare masks files). give at "
        "least one as an output folder or its manifest.json.\n",
    )
    with pytest.raises(UsageError):
        intersect([sets[0]], tmp_path / "x")
    with pytest.raises(InputError, match="does not exist"):
        intersect([sets[0], tmp_path / "nowhere"], tmp_path / "x")
    assert cli("intersect", *sets[:2], "-o", tmp_path / "done", "-q").code == 0
    r = cli("intersect", *sets[:2], "-o", tmp_path / "done", "-q")
    assert (r.code, r.err) == (
        2,
        f"error: output folder {tmp_path / 'done'} is not empty. pass --force to replace it.\n",
    )
    assert cli("intersect", *sets[:2], "-o", tmp_path / "done", "--force", "-q").code == 0


def test_mask_set_commands_import_no_torch(sets: list[Path], mlp_ckpt: Path, tmp_path: Path) -> None:
    from tests.test_imports import heavy_modules

    assert heavy_modules("intersect", str(sets[0]), str(sets[1]), "-o", str(tmp_path / "i"), "-q") == (0, "")
    args = ("--masks", str(tmp_path / "i"), "-m", "magnitude", "-s", "0.9", "-o", str(tmp_path / "a"))
    assert heavy_modules("apply", str(mlp_ckpt), *args) == (0, "")
