"""The reproduction study's runner and report work end to end on a tiny budget.

The data folder is made from the digits that ship with prunecli (conftest's `mnist_dir`:
2,000 training, 1,000 test digits) and handed to the runner through PRUNECLI_MNIST, its input
path, so nothing outside the repository is read."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> object:
    spec = importlib.util.spec_from_file_location(
        f"reproduce_{name}", ROOT / "benchmarks" / "reproduce" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_runner_resumes_and_report_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mnist_dir: Path
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("PRUNECLI_MNIST", str(mnist_dir))  # read when run.py is loaded
    run = load("run")
    assert run.MNIST == mnist_dir
    args = [
        "--quick",
        "--work",
        str(tmp_path),
        "--only",
        "lenet-300-100/snip/0.9/",
        "--epochs",
        "1",
        "--train-examples",
        "512",
        "--device",
        "cpu",
    ]
    run.main(args)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["method"] == "snip" and 0.1 < rows[0]["accuracy"] <= 1
    assert set(rows[0]["densities"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    run.main(args)  # cached: nothing new runs
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    assert "1 runs cached, 0 to go" in capsys.readouterr().out
    load("report").main_with([str(tmp_path), "--out", str(tmp_path)])
    page = (tmp_path / "results.md").read_text()
    assert "| snip |" in page and (tmp_path / "results.png").stat().st_size > 1000
