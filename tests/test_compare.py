"""`prunecli compare`: overlap of two mask sets, the random baseline, bare masks files, exit codes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from prunecli.analysis.compare import compare, compare_masks, expected_random_overlap, load_mask_set
from prunecli.cli.compare_cmd import compare as compare_command
from prunecli.cli.compare_cmd import render
from prunecli.errors import InputError
from prunecli.io.safetensors_file import write_arrays
from tests.conftest import save_f32


@pytest.fixture
def cli_compare(cli, monkeypatch: pytest.MonkeyPatch):
    """The `cli` fixture with `compare` registered, if the app does not register it yet."""
    from prunecli.cli import app as app_module

    if "compare" not in [c.name for c in app_module.app.registered_commands]:
        monkeypatch.setattr(app_module.app, "registered_commands", list(app_module.app.registered_commands))
        app_module.app.command("compare")(compare_command)
    return cli


def bits(*values: int) -> np.ndarray:
    return np.array(values, dtype=bool)


def test_known_overlap_by_hand() -> None:
    a = {"w": bits(1, 1, 0, 0, 1, 0), "v": bits(1, 0, 0, 1)}
    b = {"w": bits(1, 0, 1, 0, 1, 1), "v": bits(1, 0, 0, 1)}
    report = compare_masks(a, b)
    w, v = report["tensors"]
    assert (w["name"], w["kept_a"], w["kept_b"], w["intersection"], w["union"]) == ("w", 3, 4, 2, 5)
    assert w["iou"] == pytest.approx(0.4) and w["a_kept_by_b"] == pytest.approx(2 / 3)
    assert (w["density_a"], w["density_b"]) == (0.5, pytest.approx(4 / 6))
    assert v["iou"] == 1.0 and v["a_kept_by_b"] == 1.0
    totals = report["totals"]
    assert (totals["tensors"], totals["numel"], totals["intersection"], totals["union"]) == (2, 10, 4, 7)
    assert totals["iou"] == pytest.approx(4 / 7) and totals["a_kept_by_b"] == pytest.approx(4 / 5)
    assert (
        report["only_a"] == report["only_b"] == [] and w["random"] is None and not report["random_baseline"]
    )


def test_identical_disjoint_empty_and_one_sided() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((7, 5)) < 0.3
    same = compare_masks({"w": mask}, {"w": mask.copy()})["totals"]
    assert same["iou"] == 1.0 and same["a_kept_by_b"] == 1.0
    apart = compare_masks({"w": mask}, {"w": ~mask})["totals"]
    assert apart["iou"] == 0.0 and apart["intersection"] == 0 and apart["union"] == 35
    empty = compare_masks({"w": np.zeros(4, bool)}, {"w": np.zeros(4, bool)})["tensors"][0]
    assert empty["iou"] is None and empty["a_kept_by_b"] is None  # undefined, not 0 or 1
    report = compare_masks({"w": mask, "x": bits(1, 0)}, {"w": mask, "y": np.ones((2, 2))})
    assert [r["name"] for r in report["tensors"]] == ["w"]
    assert report["only_a"] == [{"name": "x", "shape": [2], "numel": 2, "kept": 1, "density": 0.5}]
    assert report["only_b"] == [{"name": "y", "shape": [2, 2], "numel": 4, "kept": 4, "density": 1.0}]


def test_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"'w' has shape \[2, 3\] in A but \[3, 2\] in B") as info:
        compare_masks({"w": np.ones((2, 3), bool)}, {"w": np.ones((3, 2), bool)})
    assert info.value.exit_code == 2


def test_random_baseline_formula_and_totals() -> None:
    assert expected_random_overlap(100, 10, 20) == (2.0, 28.0)
    assert expected_random_overlap(0, 0, 0) == (0.0, 0.0)
    a = {"w": np.arange(100) < 10, "v": np.arange(50) < 25}
    b = {"w": np.arange(100) >= 80, "v": np.arange(50) < 5}
    report = compare_masks(a, b, random_baseline=True)
    w, v = (r["random"] for r in report["tensors"])
    assert (w["intersection"], w["union"], w["iou"]) == (2.0, 28.0, pytest.approx(2 / 28))
    assert (v["intersection"], v["union"], v["iou"]) == (2.5, 27.5, pytest.approx(2.5 / 27.5))
    assert w["a_kept_by_b"] == pytest.approx(0.2)  # = B's density
    total = report["totals"]["random"]  # expectations add over tensors; then their ratio
    assert (total["intersection"], total["union"]) == (4.5, 55.5)
    assert total["iou"] == pytest.approx(4.5 / 55.5)


def test_random_baseline_matches_monte_carlo() -> None:
    rng = np.random.default_rng(1)
    n, k_a, k_b, trials = 200, 30, 120, 20000
    both = np.empty(trials)
    for t in range(trials):
        a = np.zeros(n, bool)
        b = np.zeros(n, bool)
        a[rng.choice(n, k_a, replace=False)] = True
        b[rng.choice(n, k_b, replace=False)] = True
        both[t] = np.count_nonzero(a & b)
    union = k_a + k_b - both
    expected = compare_masks({"w": a}, {"w": b}, random_baseline=True)["tensors"][0]["random"]
    stderr = both.std() / np.sqrt(trials)
    assert abs(both.mean() - expected["intersection"]) < 4 * stderr  # exact expectation
    assert abs(union.mean() - expected["union"]) < 4 * stderr
    assert expected["iou"] == pytest.approx(both.mean() / union.mean(), abs=4 * stderr / union.mean())
    # E[IoU] itself differs from the ratio of expectations only slightly at these sizes
    assert expected["iou"] == pytest.approx((both / union).mean(), rel=0.01)


@pytest.fixture
def folders(cli, mlp_ckpt: Path, tmp_path: Path) -> dict[str, Path]:
    """apply outputs of the conftest MLP: magnitude at 50% and 75%, inverted magnitude at 50%."""
    runs = {
        "m50": ["-m", "magnitude", "-s", "0.5"],
        "m75": ["-m", "magnitude", "-s", "0.75"],
        "inv50": ["-m", "magnitude", "-s", "0.5", "--invert"],
        "fc1only": ["-m", "magnitude", "-s", "0.5", "--exclude", "fc2.*"],
    }
    for name, args in runs.items():
        assert cli("apply", mlp_ckpt, *args, "-o", tmp_path / name).code == 0
    return {name: tmp_path / name for name in runs}


def test_apply_folders_nested_complementary_and_one_sided(folders: dict[str, Path]) -> None:
    report = compare(folders["m50"], folders["m75"] / "manifest.json")
    assert report["a"] == {"path": str(folders["m50"]), "kind": "manifest", "method": "magnitude"}
    totals = report["totals"]  # magnitude's top 25% lies inside its top 50%
    assert (totals["kept_a"], totals["kept_b"], totals["intersection"]) == (128, 64, 64)
    assert totals["iou"] == 0.5 and totals["a_kept_by_b"] == 0.5
    assert compare(folders["m75"], folders["m50"])["totals"]["a_kept_by_b"] == 1.0
    assert compare(folders["m50"], folders["m50"])["totals"]["iou"] == 1.0
    assert compare(folders["m50"], folders["inv50"])["totals"]["iou"] == 0.0  # tie-free: complements
    report = compare(folders["m50"], folders["fc1only"])
    assert [r["name"] for r in report["tensors"]] == ["fc1.weight"]
    assert [r["name"] for r in report["only_a"]] == ["fc2.weight"] and report["only_b"] == []


def test_bare_masks_files(folders: dict[str, Path], tmp_path: Path) -> None:
    reference = compare(folders["m50"], folders["m75"], random_baseline=True)
    beside = compare(folders["m50"] / "masks.safetensors", folders["m75"], random_baseline=True)
    assert beside["a"]["kind"] == "manifest" and beside["tensors"] == reference["tensors"]
    bare_a = shutil.copy(folders["m50"] / "masks.safetensors", tmp_path / "a.safetensors")
    bare_b = shutil.copy(folders["m75"] / "masks.safetensors", tmp_path / "b.safetensors")
    borrowed = compare(bare_a, folders["m75"], random_baseline=True)
    assert borrowed["a"] == {"path": str(bare_a), "kind": "masks", "method": None}
    assert borrowed["tensors"] == reference["tensors"] and "taken from the other side" in borrowed["notes"][0]
    flat = compare(bare_a, bare_b)  # no shapes anywhere: flat bits, padding included, counts exact
    assert [r["shape"] for r in flat["tensors"]] == [[192], [64]]  # 16×12 and 4×16: multiples of 8
    for mine, ref in zip(flat["tensors"], reference["tensors"], strict=True):
        assert (mine["intersection"], mine["union"], mine["iou"]) == (
            ref["intersection"],
            ref["union"],
            ref["iou"],
        )
    assert len(flat["notes"]) == 2 and "flat bit vectors" in flat["notes"][0]


def test_bare_masks_padding_and_byte_mismatch(tmp_path: Path) -> None:
    packed = np.packbits(bits(1, 0, 1, 1, 0))  # 5 bits → 1 byte, 3 padding bits
    write_arrays(tmp_path / "a.safetensors", {"w": ("U8", packed)}, {})
    write_arrays(tmp_path / "b.safetensors", {"w": ("U8", np.packbits(bits(1, 1, 1, 0, 0)))}, {})
    record = compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors")["tensors"][0]
    assert (record["numel"], record["kept_a"], record["intersection"], record["union"]) == (8, 3, 2, 4)
    write_arrays(tmp_path / "c.safetensors", {"w": ("U8", np.zeros(2, np.uint8))}, {})
    with pytest.raises(InputError, match="'w' has shape"):
        compare(tmp_path / "a.safetensors", tmp_path / "c.safetensors")


def test_cli_table_json_and_exit_codes(cli_compare, folders: dict[str, Path], tmp_path: Path) -> None:
    r = cli_compare("compare", folders["m50"], folders["m75"], "--random-baseline")
    assert r.code == 0 and r.out == ""
    assert "fc1.weight" in r.err and "random" in r.err and "IoU 0.5000 over 256 weights in 2 tensors" in r.err
    r = cli_compare("compare", folders["m50"], folders["fc1only"], "--json", "--random-baseline")
    report = json.loads(r.out)  # stdout is pure JSON
    assert (
        r.code == 0 and report["totals"]["random"]["iou"] > 0 and report["only_a"][0]["name"] == "fc2.weight"
    )
    assert "notes" not in report
    bare = shutil.copy(folders["m50"] / "masks.safetensors", tmp_path / "bare.safetensors")
    r = cli_compare("compare", bare, folders["m75"], "--json")
    assert r.code == 0 and json.loads(r.out)["a"]["kind"] == "masks" and r.err.startswith("note: ")
    assert cli_compare("compare", bare, folders["m75"], "--json", "-q").err == ""


def test_cli_bad_inputs_exit_2(cli_compare, folders: dict[str, Path], tmp_path: Path) -> None:
    other = save_f32(
        tmp_path / "o.safetensors", {"fc1.weight": np.ones((12, 16)), "fc2.weight": np.ones((4, 16))}
    )
    assert cli_compare("apply", other, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "other").code == 0
    sources = "pass an apply output folder, its manifest.json, or its masks.safetensors"
    for args, line in (
        (
            [folders["m50"], tmp_path / "other", "--json"],
            "error: 'fc1.weight' has shape [16, 12] in A (<tmp>/m50) but [12, 16] in B (<tmp>/other). "
            "compare masks made for the same model: both sides must prune checkpoints of one architecture.",
        ),
        (
            [folders["m50"], folders["m50"] / "model.safetensors"],
            "error: <tmp>/m50/model.safetensors holds the F32 tensor 'fc1.weight', so it is not a masks file "
            f"(masks are bit-packed U8). {sources}.",
        ),
        (
            [folders["m50"], tmp_path / "missing"],
            f"error: mask source <tmp>/missing does not exist. {sources}.",
        ),
        (
            [folders["m50"], tmp_path / "scores.txt"],
            f"error: mask source <tmp>/scores.txt does not exist. {sources}.",
        ),
    ):
        r = cli_compare("compare", *args)
        assert (r.code, r.out) == (2, "")
        assert r.err.replace(str(tmp_path), "<tmp>") == line + "\n"
    r = cli_compare("compare", folders["m50"])  # B missing: a usage error, worded by typer/click
    assert (r.code, r.out) == (2, "") and r.err.startswith("error: Missing argument 'B'")
    assert r.err.count("\n") == 1


def test_golden_table() -> None:
    a = {
        "fc1.weight": np.arange(12).reshape(3, 4) < 6,
        "fc2.weight": np.arange(4) < 2,
        "fc3.weight": bits(1, 0),
    }
    b = {"fc1.weight": np.arange(12).reshape(3, 4) >= 3, "fc2.weight": np.arange(4) >= 2, "x.weight": bits(1)}
    report = {
        "a": {"path": "snip", "kind": "manifest", "method": "snip"},
        "b": {"path": "b/masks.safetensors", "kind": "masks", "method": None},
        **compare_masks(a, b, random_baseline=True),
    }
    buffer = io.StringIO()
    render(report, Console(file=buffer, width=80, color_system=None))
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
    assert text == GOLDEN


GOLDEN = """\
A: snip (snip)  vs  B: b/masks.safetensors
┏━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┓
┃            ┃ density ┃ density ┃ kept by ┃        ┃ A kept ┃ random ┃
┃ tensor     ┃       A ┃       B ┃    both ┃    IoU ┃   by B ┃    IoU ┃
┡━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━┩
│ fc1.weight │  0.5000 │  0.7500 │       3 │ 0.2500 │ 0.5000 │ 0.4286 │
│ fc2.weight │  0.5000 │  0.5000 │       0 │ 0.0000 │ 0.0000 │ 0.3333 │
├────────────┼─────────┼─────────┼─────────┼────────┼────────┼────────┤
│ total      │  0.5000 │  0.6875 │       3 │ 0.1875 │ 0.3750 │ 0.4074 │
└────────────┴─────────┴─────────┴─────────┴────────┴────────┴────────┘
only in A: fc3.weight (2, density 0.5000)
only in B: x.weight (1, density 1.0000)
IoU 0.1875 over 16 weights in 2 tensors
independent random masks with the same per-tensor densities: IoU 0.4074
"""

PROBE = """
import sys
from prunecli.cli import app as app_module
from prunecli.cli.compare_cmd import compare
if "compare" not in [c.name for c in app_module.app.registered_commands]:
    app_module.app.command("compare")(compare)
code = app_module.run(sys.argv[1:])
print("TORCH=" + str("torch" in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def test_compare_imports_no_torch(folders: dict[str, Path]) -> None:
    args = ["compare", str(folders["m50"]), str(folders["m75"] / "masks.safetensors"), "--json"]
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "TORCH=False"
    assert load_mask_set(folders["m50"]).kind == "manifest"
