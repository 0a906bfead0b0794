"""`inspect` as a CI gate cannot be fooled: bad tolerances, edited or mixed output folders,
non-finite JSON; and PRUNECLI_THREADS is capped.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prunecli.cli.app import run
from prunecli.cli.inspect_cmd import finite_or_null
from prunecli.errors import UsageError
from prunecli.io.safetensors_header import read_header
from prunecli.selection import workers as ordered
from prunecli.selection.workers import worker_count
from tests.conftest import save_f32

REDO = "re-run apply"


def strict_json(text: str) -> Any:
    """Parse as a strict JSON reader would: NaN, Infinity and -Infinity are refused."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lenet-300-100 init pruned twice: out/ at 0.9 sparsity, half/ at 0.5."""
    root = tmp_path_factory.mktemp("gate")
    init = root / "init.safetensors"
    assert run(["init", "--arch", "lenet-300-100", "-o", str(init), "-q"]) == 0
    for folder, sparsity in (("out", "0.9"), ("half", "0.5")):
        args = ["apply", str(init), "-m", "magnitude", "-s", sparsity, "-o", str(root / folder), "-q"]
        assert run(args) == 0
    return root


@pytest.fixture
def out(runs: Path, tmp_path: Path) -> Path:
    """A private copy of the 0.9-sparsity output folder, free to tamper with."""
    return Path(shutil.copytree(runs / "out", tmp_path / "out"))


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def record(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in manifest["tensors"] if r["name"] == name)


def edit_mask_byte(folder: Path, name: str, index: int, change: Callable[[int], int]) -> None:
    """Rewrite one byte of one packed mask in place (index counts from the mask's start; -1 = last)."""
    path = folder / "masks.safetensors"
    tensors, _, data_start = read_header(path)
    info = tensors[name]
    offset = data_start + (info.start + index if index >= 0 else info.end + index)
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([change(byte)]))


def refused(cli, target: Path, *words: str) -> None:
    """The gate exits 2 with one stderr line holding `words` and the fix."""
    r = cli("inspect", target, "--expect-sparsity", "0.9", "--json")
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert REDO in r.err and r.out == ""
    for word in words:
        assert word in r.err, (word, r.err)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf"])
def test_non_finite_or_negative_tolerance_is_refused(cli, runs: Path, value: str) -> None:
    r = cli("inspect", runs / "out", "--expect-sparsity", "0.5", f"--tolerance={value}")
    assert r.code == 2 and r.err.startswith("error: --tolerance") and r.err.count("\n") == 1, r.err


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "1.5"])
def test_expected_sparsity_outside_0_1_is_refused(cli, runs: Path, value: str) -> None:
    r = cli("inspect", runs / "out", f"--expect-sparsity={value}")
    assert r.code == 2 and r.err.startswith("error: --expect-sparsity") and r.err.count("\n") == 1, r.err


def test_a_real_apply_output_passes_and_its_json_is_strict(cli, runs: Path) -> None:
    for target in (runs / "out", runs / "out" / "manifest.json"):
        r = cli("inspect", target, "--json", "--expect-sparsity", "0.9", "--tolerance", "0.001")
        assert r.code == 0, r.err
        report = strict_json(r.out)
        assert report["checks"]["passed"] and report["verified"] == {"masks": True, "model": True}
    r = cli("inspect", runs / "out", "--expect-sparsity", "0.5", "--tolerance", "0.001")
    assert r.code == 1  # the real 0.9 result still fails a 0.5 expectation


def test_edited_totals_are_refused(cli, out: Path) -> None:
    def claim_half(manifest: dict[str, Any]) -> None:
        totals = manifest["totals"]
        totals["kept"] = totals["prunable"] // 2
        totals["sparsity"] = 1 - totals["kept"] / totals["prunable"]

    edit_manifest(out, claim_half)
    refused(cli, out, "totals.kept is 133100", "26620")


def test_edited_total_sparsity_alone_is_refused(cli, out: Path) -> None:
    edit_manifest(out, lambda m: m["totals"].update(sparsity=0.5))
    refused(cli, out / "manifest.json", "totals.sparsity is 0.5", "0.9")


def test_edited_record_kept_is_refused_by_its_mask(cli, out: Path) -> None:
    def keep_more(manifest: dict[str, Any]) -> None:  # every number in the manifest agrees
        fc1 = record(manifest, "fc1.weight")
        fc1["kept"] += 1000
        fc1["density"] = fc1["kept"] / fc1["numel"]
        manifest["totals"]["kept"] += 1000
        manifest["totals"]["sparsity"] = 1 - manifest["totals"]["kept"] / manifest["totals"]["prunable"]

    edit_manifest(out, keep_more)
    refused(cli, out, "fc1.weight", "keeps 17980", "kept 18980")


def test_edited_record_kept_without_its_density_is_refused(cli, out: Path) -> None:
    edit_manifest(out, lambda m: record(m, "fc2.weight").update(kept=1))
    refused(cli, out, "fc2.weight", "density")


def test_masks_swapped_from_another_run_are_refused(cli, runs: Path, out: Path) -> None:
    shutil.copyfile(runs / "half" / "masks.safetensors", out / "masks.safetensors")
    refused(cli, out, "fc1.weight", "17980")


def test_a_flipped_mask_bit_is_refused(cli, out: Path) -> None:
    edit_mask_byte(out, "fc3.weight", 0, lambda byte: byte ^ 0x80)
    refused(cli, out, "fc3.weight", "kept 526")


def test_a_set_pad_bit_is_refused(cli, tmp_path: Path) -> None:
    """15 weights pack into 2 bytes; the last bit is pad. Moving a set bit there keeps the
    popcount right, so only the pad check catches it."""
    ckpt = save_f32(tmp_path / "w.safetensors", {"fc.weight": np.arange(1, 16).reshape(5, 3)})
    assert cli("apply", ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o", "-q").code == 0
    assert cli("inspect", tmp_path / "o").code == 0
    edit_mask_byte(tmp_path / "o", "fc.weight", -1, lambda byte: (byte & ~0x02) | 0x01)  # bit 14 → pad
    refused(cli, tmp_path / "o", "fc.weight", "pad bits")


def test_a_truncated_shape_is_refused(cli, out: Path) -> None:
    edit_manifest(out, lambda m: record(m, "fc1.weight").update(shape=[300]))
    refused(cli, out, "fc1.weight", "numel 235200", "holds 300")


def test_a_record_that_contradicts_the_model_is_refused(cli, out: Path) -> None:
    edit_manifest(out, lambda m: record(m, "fc1.bias").update(dtype="F16"))
    refused(cli, out, "fc1.bias", "F32[300]", "F16[300]")


def test_a_mask_the_manifest_does_not_prune_is_refused(cli, out: Path) -> None:
    def unprune(manifest: dict[str, Any]) -> None:  # a consistent manifest, but not the masks' one
        fc3 = record(manifest, "fc3.weight")
        manifest["totals"]["kept"] -= fc3["kept"]
        manifest["totals"]["prunable"] -= fc3["numel"]
        manifest["totals"]["sparsity"] = 1 - manifest["totals"]["kept"] / manifest["totals"]["prunable"]
        fc3.update(pruned=False, kept=fc3["numel"], density=1.0)

    edit_manifest(out, unprune)
    refused(cli, out, "fc3.weight", "does not prune")


def test_a_nan_in_the_manifest_is_refused(cli, out: Path) -> None:
    path = out / "manifest.json"
    path.write_text(path.read_text().replace('"min_density": 0.0', '"min_density": NaN'))
    refused(cli, out, "$.selection.min_density", "finite")


def test_files_outside_the_folder_are_refused(cli, out: Path) -> None:
    edit_manifest(out, lambda m: m["files"].update(masks="../half/masks.safetensors"))
    refused(cli, out, "files.masks")


def test_a_folder_without_its_masks_is_refused(cli, out: Path) -> None:
    (out / "masks.safetensors").unlink()
    refused(cli, out, "masks.safetensors")


def test_a_manifest_alone_is_checked_against_itself(cli, out: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(out / "manifest.json", alone / "manifest.json")
    r = cli("inspect", alone / "manifest.json", "--json", "--expect-sparsity", "0.9")
    assert r.code == 0 and strict_json(r.out)["verified"] == {"masks": False, "model": False}
    assert "only the manifest's own numbers were checked" in r.err
    edit_manifest(alone, lambda m: m["totals"].update(kept=1, sparsity=1 - 1 / m["totals"]["prunable"]))
    refused(cli, alone / "manifest.json", "totals.kept is 1")


def test_json_of_an_empty_tensor_is_finite(cli, tmp_path: Path) -> None:
    ckpt = save_f32(tmp_path / "e.safetensors", {"fc.weight": np.zeros((0, 4)), "b": np.ones(3)})
    report = strict_json(cli("inspect", ckpt, "--json").out)
    assert report["tensors"][0]["density"] == 1.0 and report["totals"]["sparsity"] == 0.0
    assert cli("apply", ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o", "-q").code == 0
    strict_json(cli("inspect", tmp_path / "o", "--json").out)


def test_non_finite_report_values_become_null() -> None:
    signal = {
        "after": {"synflow_r": float("inf"), "jacobian": {"mean": float("nan"), "n": [1.0, -float("inf")]}}
    }
    text = json.dumps(finite_or_null(signal), allow_nan=False)
    assert strict_json(text) == {"after": {"synflow_r": None, "jacobian": {"mean": None, "n": [1.0, None]}}}


@pytest.mark.parametrize("value", ["100000", "99999999999", "9" * 5000])
def test_a_huge_thread_count_is_refused_fast(cli, tmp_path: Path, monkeypatch, value: str) -> None:
    ckpt = save_f32(tmp_path / "w.safetensors", {"fc.weight": np.ones((4, 4))})
    monkeypatch.setenv("PRUNECLI_THREADS", value)
    started = time.monotonic()
    r = cli("apply", ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o")
    assert time.monotonic() - started < 10
    assert r.code == 2 and r.err.count("\n") == 1 and "from 0 to" in r.err, r.err
    assert len(r.err) < 300 and not (tmp_path / "o").exists()


def test_the_thread_cap_is_four_per_usable_core(monkeypatch) -> None:
    monkeypatch.setattr(ordered, "usable_cores", lambda: 2)
    monkeypatch.setenv("PRUNECLI_THREADS", "8")
    assert worker_count() == 8
    monkeypatch.setenv("PRUNECLI_THREADS", "9")
    with pytest.raises(UsageError, match="above 8") as refusal:
        worker_count()
    assert "from 0 to 8" in refusal.value.hint
