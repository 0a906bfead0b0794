"""The LLM quality study (benchmarks/llm) works end to end on a toy budget, and its checks bite.

The corpus is the standard library's own documentation (pydoc_data), so nothing outside the
repository and the interpreter is read; llm-compressor is not needed (only prunecli runs here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))


def write_weights(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, folder / "m.safetensors"
    )
    return folder


def test_split_keeps_topics_whole_and_apart() -> None:
    from benchmarks.llm import data

    texts = data.topics()
    split = data.split_topics(texts)
    parts = [set(split.part(name)) for name in data.PARTS]
    assert sum(map(len, parts)) == len(texts) and set().union(*parts) == set(texts)
    total = sum(map(len, texts.values()))
    for name in ("calibration", "heldout"):
        share = sum(len(texts[k]) for k in split.part(name)) / total
        assert 0.05 < share <= 0.1, (name, share)
    assert split == data.split_topics(dict(reversed(list(texts.items()))))  # order-free


def test_nm_check_catches_a_bad_mask(tmp_path: Path) -> None:
    from benchmarks.llm.runs import decoder_sparsity

    good = np.tile(np.array([1.0, 0.0, 2.0, 0.0]), (3, 2))  # 2 kept of every 4
    bad = good.copy()
    bad[1, 5] = 3.0  # the second group of row 1 keeps 3 of 4
    names = {"model.layers.0.mlp.up_proj.weight": good, "lm_head.weight": np.ones((2, 8))}
    result = decoder_sparsity(write_weights(tmp_path / "good", names), "2:4")
    assert result["pattern_ok"] is True and result["sparsity"] == 0.5 and result["tensors"] == 1
    names["model.layers.0.mlp.up_proj.weight"] = bad
    result = decoder_sparsity(write_weights(tmp_path / "bad", names), "2:4")
    assert result["pattern_ok"] is False and result["sparsity"] == pytest.approx(11 / 24)


def test_mask_agreement_counts_entries_and_iou(tmp_path: Path) -> None:
    from benchmarks.llm.agreement import compare, kept_masks

    a = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    b = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    name = "model.layers.0.self_attn.q_proj.weight"
    masks = [kept_masks(write_weights(tmp_path / n, {name: w})) for n, w in (("a", a), ("b", b))]
    result = compare(*masks)
    assert result["identical"] == pytest.approx(6 / 8)
    assert result["iou"] == pytest.approx(3 / 5)  # kept by both 3, by either 5
    assert result["chance"]["iou"] == pytest.approx(1 / 3)  # density 1/2
    assert compare(masks[0], masks[0])["iou"] == 1.0


def dump(path: Path, value: object) -> None:
    from benchmarks.llm import data

    path.parent.mkdir(parents=True, exist_ok=True)
    data.dump_json(path, value)


def synthetic_cache(work: Path) -> None:
    """A finished study's cache with made-up numbers: ours trails at wanda 60% and 2:4 failed."""
    from benchmarks.llm.data import PARTS

    model = work / "model-abc"
    model.mkdir(parents=True)
    steps = [[70, 120.0], [140, 60.0]]
    dump(
        model / "train.json",
        {
            "shape": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "intermediate_size": 128, "vocab_size": 512, "seq_len": 64},
            "params": {"total": 100_000, "decoder_linear": 60_000},
            "schedule": {"steps": 140, "batch_size": 8, "lr": 0.003, "warmup": 10, "min_lr_ratio": 0.1,
                         "weight_decay": 0.1, "clip": 1.0, "seed": 0},
            "loss": [4.0] * 140, "heldout_ppl": steps, "seconds": 120.0, "steps_per_s": 1.17,
        },
    )  # fmt: skip
    part = {"topics": 3, "chars": 1000}
    dump(
        work / "data" / "split.json",
        {"source": "pydoc_data.topics", "topics": 9, "chars": 3000, "vocab_size": 512,
         "parts": dict.fromkeys(PARTS, part), "tokens": dict.fromkeys(PARTS, 400),
         "heldout_keys": ["a", "b"], "calibration_keys": ["c"]},
    )  # fmt: skip
    ppl = {("magnitude", "0.5"): 70.0, ("magnitude", "0.6"): 90.0, ("wanda", "0.5"): 64.0,
           ("wanda", "0.6"): 75.0, ("sparsegpt", "0.5"): 62.0, ("sparsegpt", "0.6"): 70.0}  # fmt: skip
    runs = {}

    def add(tool: str, method: str, setting: str, mode: str, value: float | None) -> None:
        key = f"{tool}-{method}-{setting}-{mode}-k"
        result = {"key": key, "tool": tool, "method": method, "setting": setting, "mode": mode,
                  "sparsity_target": 0.5 if ":" in setting else float(setting)}  # fmt: skip
        if value is None:
            result |= {"status": "failed", "error": "exit 1\nboom"}
        else:
            result |= {"status": "ok", "heldout_ppl": value, "wall_s": 10.0 if tool == "prunecli" else 20.0,
                       "peak_rss_bytes": 2**28 if tool == "prunecli" else 2**29,
                       "achieved": {"sparsity": 0.5, "tensor_sparsity_range": [0.5, 0.5],
                                    "pattern_ok": True if ":" in setting else None}}  # fmt: skip
            if tool == "prunecli" and method != "magnitude":
                result["manifest"] = {"method": {"params": {"sequential": mode == "sequential"}}}
        dump(work / "runs" / key / "result.json", result)
        runs[key] = key

    for (method, setting), value in ppl.items():
        if method == "magnitude":
            add("prunecli", method, setting, "-", value)
            continue
        add("llmcompressor", method, setting, "sequential", value)
        trail = 1.05 if (method, setting) == ("wanda", "0.6") else 0.99
        for mode in ("one-shot", "sequential"):
            add("prunecli", method, setting, mode, value * trail)
    add("prunecli", "wanda", "2:4", "sequential", None)
    add("prunecli", "magnitude", "0.5", "row-scope", 80.0)  # a diagnostic: must not pass for the baseline
    mine, theirs = "prunecli-wanda-0.5-sequential-k", "llmcompressor-wanda-0.5-sequential-k"
    by_weight = {f"model.layers.{i}.mlp.{n}_proj.weight": iou for i, n, iou in
                 [(0, "up", 1.0), (1, "down", 0.75), (1, "up", 0.85), (2, "up", 0.8)]}  # fmt: skip
    agreement = {"mine": mine, "theirs": theirs, "identical": 0.9, "iou": 0.8, "iou_range": [0.75, 0.85],
                 "chance": {"identical": 0.5, "iou": 1 / 3}, "weights": 4,
                 "iou_by_weight": by_weight}  # fmt: skip
    dump(work / "agreement" / f"{mine}--{theirs}.json", agreement)
    dump(work / "runs" / "dense-model-abc" / "result.json", {"key": "dense", "heldout_ppl": 50.0})
    dump(
        work / "study.json",
        {"command": "python -m benchmarks.llm", "machine": "test", "model_dir": "model-abc", "calib": "c.npz",
         "calib_windows": [16, 64], "calib_seed": 0, "heldout_windows": [10, 64],
         "prunecli_methods": ["magnitude", "sparsegpt", "wanda"], "prunecli_has_sequential": True,
         "dense": "dense-model-abc", "runs": runs, "wall_s": 60.0},
    )  # fmt: skip


def test_report_from_a_synthetic_cache(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks.llm import report

    synthetic_cache(tmp_path)
    report.write(tmp_path, tmp_path / "docs")
    page = (tmp_path / "docs" / "results-llm.md").read_text()
    assert "**Dense baseline: held-out perplexity 50.000.**" in page
    assert "| magnitude | 50% | 70.00 | n/a | n/a | – | – | +20.00 |" in page
    assert "| wanda | 60% | 78.75 | 78.75 | 75.00 | **1.050** | **1.050** | +28.75 / +25.00 |" in page
    assert "| sparsegpt | 50% | 61.38 | 61.38 | 62.00 | 0.990 | 0.990 | +11.38 / +12.00 |" in page
    assert "**wanda 60%, prunecli sequential**: 78.75 vs llm-compressor 75.00, 5.0% higher" in page
    assert "sparsegpt" not in page.split("more than 2% perplexity:")[1].split("##")[0]
    assert "(failed): exit 1: boom" in page
    assert "| wanda | 50% | 10 / 10 / 20 | 0.50 | 256 / 256 / 512 | 0.50 |" in page
    assert "wanda 0.50–0.50 (median 0.50 over 2 settings)" in page
    assert "| 50% | 70.00 (+20.00) | 80.00 (+30.00) | – | 63.36 (+13.36) |" in page
    assert page.count("holds at 2 of 2 unstructured settings") == 3
    assert "| wanda | 50% | – | 0.9000 / 0.8000 | 0.5000 / 0.3333 | 0.7500 |" in page
    first = "3 of 4 weights differ; first in block 1: `mlp.down_proj` (IoU 0.750000), `mlp.up_proj` (IoU 0.85"
    assert f"- wanda 50%, prunecli sequential: {first}0000)." in page
    assert (tmp_path / "docs" / "results-llm.png").stat().st_size > 5000


def test_quick_study_prunes_evaluates_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("transformers")
    from benchmarks.llm import run

    argv = ["--quick", "--work", str(tmp_path), "--steps", "3", "--threads", "1"]
    run.main([*argv, "--only", "prunecli-wanda-2of4-seq"])
    study = json.loads((tmp_path / "study.json").read_text())
    assert list(study["runs"]) == ["prunecli-wanda-2of4-sequential"]
    assert study["command"].endswith("--only prunecli-wanda-2of4-seq") and study["heldout_windows"] == [
        64,
        64,
    ]
    dense = json.loads((tmp_path / "runs" / study["dense"] / "result.json").read_text())["heldout_ppl"]
    assert math.isfinite(dense) and 1 < dense < 2 * 512  # 3 steps: not far from uniform over 512
    key = study["runs"]["prunecli-wanda-2of4-sequential"]
    result = json.loads((tmp_path / "runs" / key / "result.json").read_text())
    assert result["status"] == "ok", result.get("error")
    assert math.isfinite(result["heldout_ppl"]) and result["heldout_ppl"] > 1
    assert result["achieved"]["pattern_ok"] is True and result["achieved"]["tensors"] == 14
    assert result["achieved"]["sparsity"] == pytest.approx(0.5)
    assert result["wall_s"] > 0 and result["peak_rss_bytes"] > 2**20
    assert result["manifest"]["method"]["params"]["sequential"] is True
    page = (tmp_path / "results-llm.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| wanda | 2:4 (50%) |"))
    rise = f"{result['heldout_ppl'] - dense:+.2f}"
    assert row == f"| wanda | 2:4 (50%) | – | {result['heldout_ppl']:.2f} | – | – | – | {rise} / – |"
    assert f"| {key} | 0.5000 | 0.5000 | 0.5000–0.5000 | yes | sequential: true |" in page
    (tmp_path / "results-llm.md").unlink()
    run.main([*argv, "--only-report"])  # the page again, from the cache alone
    assert (tmp_path / "results-llm.md").read_text() == page
