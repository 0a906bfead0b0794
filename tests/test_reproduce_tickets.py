"""The lottery-ticket study (benchmarks/reproduce/tickets.py) end to end on a tiny budget, and its report.

`--quick` runs 2 lottery rounds of 25 steps on 512 of the digits that ship with prunecli
(conftest's `mnist_dir`), the random re-initialisation, the two tickets' intersection and two
pruning-at-init methods at 90%, all through the prunecli command line in subprocesses. The
assertions read the files the commands wrote, not only the study's own summary.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from prunecli.training.masks import read_masks

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE = ROOT / "benchmarks" / "reproduce"
LAYERS = ("fc1.weight", "fc2.weight", "fc3.weight")

pytestmark = pytest.mark.slow


def load(name: str) -> object:
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", REPRODUCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict:
    """The quick study, run once: its work folder, results file and parsed results."""
    base = tmp_path_factory.mktemp("tickets")
    work, results = base / "work", base / "results" / "tickets.json"
    args = [
        "--quick",
        "--data",
        str(mnist_dir),
        "--work",
        str(work),
        "--results",
        str(results),
        "--jobs",
        "2",
    ]
    written = load("tickets").main(args)
    assert written == results
    return {"work": work, "results": results, "args": args, "data": json.loads(results.read_text())}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rounds_keep_0_8_to_the_k_and_name_their_parent(study: dict) -> None:
    runs, work = study["data"]["runs"], study["work"]
    for seed in (0, 1):
        rounds = runs[f"imp/s{seed}"]["rounds"]
        assert [r["round"] for r in rounds] == [0, 1, 2]
        for r in rounds:
            assert r["kept"] == round(0.8 ** r["round"] * r["prunable"]) and r["prunable"] == 266_200
            assert r["sparsity"] == pytest.approx(1 - 0.8 ** r["round"], abs=1e-5)
            kept = sum(
                int(m.sum()) for m in read_masks(work / f"imp-s{seed}" / f"round-{r['round']}").values()
            )
            assert kept == r["kept"]
        assert rounds[0]["parent"] is None
        for r in rounds[1:]:
            parent = f"imp-s{seed}/round-{r['round'] - 1}"
            assert r["parent"] == parent
            assert r["parent_sha256"] == sha256(work / parent / "masks.safetensors")
    assert "train_ticket.py {weights} {masks} {out} --data" in runs["imp/s0"]["command"]
    assert "--seed 1" in runs["imp/s1"]["command"] and "--seed 0" in runs["imp/s0"]["command"]


def test_intersection_is_what_both_tickets_keep(study: dict) -> None:
    runs, work = study["data"]["runs"], study["work"]
    for k in (1, 2):
        a, b = (read_masks(work / f"imp-s{s}" / f"round-{k}") for s in (0, 1))
        common = read_masks(work / f"intersect-r{k}")
        assert all(np.array_equal(common[n], a[n] & b[n]) for n in LAYERS)
        totals = runs[f"intersect/r{k}"]["totals"]
        assert totals["result_kept"] == sum(int(common[n].sum()) for n in LAYERS)
        assert (
            totals["result_kept"] <= min(totals["kept"])
            and totals["kept"] == [runs["imp/s0"]["rounds"][k]["kept"]] * 2
        )
        assert totals["result_density"] <= min(totals["densities"])
    trained = runs["intersect/r2"]["trained"]
    assert set(trained) == {"0", "1"} and runs["intersect/r1"]["trained"] == {}
    init, rewound = (
        load_file(work / "init-0.safetensors"),
        load_file(work / "intersect-r2-init" / "model.safetensors"),
    )
    common = read_masks(work / "intersect-r2")
    for name in LAYERS:  # the intersection sits on the initialisation
        assert np.array_equal(rewound[name], np.where(common[name], init[name], 0))


def test_reinit_has_the_ticket_masks_on_another_initialisation(study: dict) -> None:
    work = study["work"]
    reinit, other = (
        load_file(work / "reinit-r2" / "model.safetensors"),
        load_file(work / "init-100.safetensors"),
    )
    ticket = read_masks(work / "imp-s0" / "round-2")
    masks = read_masks(work / "reinit-r2")
    for name in LAYERS:
        assert np.array_equal(masks[name], ticket[name])
        assert np.array_equal(reinit[name], np.where(ticket[name], other[name], 0))
    assert not np.array_equal(other["fc1.weight"], load_file(work / "init-0.safetensors")["fc1.weight"])


def test_every_network_is_tested_against_the_dense_one(study: dict) -> None:
    runs = study["data"]["runs"]
    tested = {k for k, r in runs.items() if "accuracy" in r}
    assert tested == {
        "ticket/s0/r0", "ticket/s0/r1", "ticket/s0/r2", "ticket/s1/r2", "reinit/r1", "reinit/r2",
        "pai/magnitude/0.9", "pai/snip/0.9",
    }  # fmt: skip
    dense = runs["ticket/s0/r0"]
    assert dense["drop"] == 0 and dense["examples"] == 1000 and len(dense["classes"]) == 10
    for key in tested:
        run = runs[key]
        assert 0 < run["accuracy"] <= 1
        assert run["drop"] == pytest.approx(dense["accuracy"] - run["accuracy"])
        drops = [c["drop"] for c in run["classes"]]
        assert run["worst_class"] == {"class": int(np.argmax(drops)), "drop": max(drops)}
    for seed, run in runs["intersect/r2"]["trained"].items():
        assert run["drop"] == pytest.approx(dense["accuracy"] - run["accuracy"]), seed
    assert runs["pai/snip/0.9"]["kept"] == round(0.1 * 266_200)
    data = study["data"]
    assert data["train_digits"] == 512 and data["test_digits"] == 1000 and data["plan"]["rounds"] == 2


def test_rerun_runs_nothing_and_another_plan_is_refused(
    study: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = study["work"] / "tickets.jsonl"
    before = cache.read_text()
    tickets = load("tickets")
    tickets.main(study["args"])
    assert cache.read_text() == before
    assert f"{len(before.splitlines())} units cached" in capsys.readouterr().out
    full = [a for a in study["args"] if a != "--quick"]
    with pytest.raises(SystemExit, match="holds a study with another plan"):
        tickets.main(full)


def test_report_renders_both_studies_on_one_page(study: dict, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(study["results"], results / "tickets.json")
    shutil.copy(REPRODUCE / "results" / "results-0.jsonl", results)  # the committed pruning-at-init runs
    load("report").main_with([str(results), "--out", str(tmp_path)])
    page = (tmp_path / "results.md").read_text()
    assert "## lenet-300-100" in page and "## Against the papers" in page  # the existing part stays
    lottery = page[page.index("## Lottery tickets") :]
    runs = study["data"]["runs"]
    dense, ticket = runs["ticket/s0/r0"]["accuracy"], runs["ticket/s0/r2"]["accuracy"]
    assert f"| 0 (dense) | 100.0% | 100.0% | 100.0% | 100.0% | {100 * dense:.2f} | – | – | – |" in lottery
    layers = " | ".join(f"{100 * d:.1f}%" for d in runs["imp/s0"]["rounds"][2]["densities"].values())
    tickets = " | ".join(f"{100 * runs[f'ticket/s{s}/r2']['accuracy']:.2f}" for s in (0, 1))
    reinit = runs["reinit/r2"]["accuracy"]
    assert (
        f"| 2 | 64.0% | {layers} | {tickets} | {100 * reinit:.2f} | {100 * (ticket - reinit):+.2f} |"
        in lottery
    )
    shared = runs["intersect/r2"]["totals"]["result_kept"] / runs["intersect/r2"]["totals"]["kept"][0]
    assert f"| 2 | 64.0% | {100 * shared:.1f}% |" in lottery
    for method in ("magnitude", "snip"):
        worst = runs[f"pai/{method}/0.9"]["worst_class"]
        assert f"| {method} | 90.0% | {100 * runs[f'pai/{method}/0.9']['accuracy']:.2f} |" in lottery
        assert f"| {worst['class']} | {100 * worst['drop']:+.2f} |" in lottery
    assert (
        "| IMP ticket (round 2) | 36.0% |" in lottery and "| its random reinit (round 2) | 36.0% |" in lottery
    )
    assert "![IMP tickets" in lottery and (tmp_path / "results-lottery.png").stat().st_size > 10_000
