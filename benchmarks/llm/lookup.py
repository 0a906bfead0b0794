"""Reading the LLM study's cache: the result files, and how one run is found and shown.

The report (`report.py`) and its analyses (`findings.py`) share these; they read only
WORK/study.json, WORK/data/split.json, the model's train.json, the runs' result.json and the
mask-agreement files.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.llm.runs import SETTINGS

METHODS = ("magnitude", "wanda", "sparsegpt")
UNSTRUCTURED = tuple(s for s in SETTINGS if ":" not in s)
MODES = (("prunecli", "one-shot"), ("prunecli", "sequential"), ("llmcompressor", "sequential"))
TRAILS = 0.02  # flag a setting where ours is more than 2% above llm-compressor's perplexity


def load(work: Path) -> dict:
    """Everything the page needs, read from the cache."""
    study = json.loads((work / "study.json").read_text())
    model_dir = work / study["model_dir"]
    runs = {}
    for name, key in study["runs"].items():
        path = work / "runs" / key / "result.json"
        if path.exists():
            runs[name] = json.loads(path.read_text())
    keys = {run["key"] for run in runs.values()}
    pairs = [json.loads(path.read_text()) for path in sorted((work / "agreement").glob("*.json"))]
    return {
        "agreement": [p for p in pairs if p["mine"] in keys and p["theirs"] in keys],
        "study": study,
        "split": json.loads((work / "data" / "split.json").read_text()),
        "train": json.loads((model_dir / "train.json").read_text()),
        "dense": json.loads((work / "runs" / study["dense"] / "result.json").read_text()),
        "runs": list(runs.values()),
    }


def find(runs: list[dict], tool: str, method: str, setting: str, mode: str | None = None) -> dict | None:
    for run in runs:
        if (run["tool"], run["method"], run["setting"]) == (tool, method, setting):
            if mode is None or run["mode"] == mode:
                return run
    return None


def ok(run: dict | None) -> bool:
    return run is not None and run["status"] == "ok"


def cell(run: dict | None) -> str:
    if run is None:
        return "–"
    if run["status"] != "ok":
        return run["status"]
    return f"{run['heldout_ppl']:.2f}"


def ratio(a: float | None, b: float | None, digits: int = 3) -> str:
    return f"{a / b:.{digits}f}" if a is not None and b else "–"


def value(run: dict | None, key: str) -> float | None:
    return run[key] if ok(run) and run.get(key) is not None else None


def setting_label(setting: str) -> str:
    return f"{setting} (50%)" if ":" in setting else f"{float(setting):.0%}"


def trails(mine: dict | None, theirs: dict | None) -> bool:
    a, b = value(mine, "heldout_ppl"), value(theirs, "heldout_ppl")
    return a is not None and b is not None and a > b * (1 + TRAILS)


def rise(run: dict | None, dense: float) -> str:
    """The perplexity a run added to the dense model's, signed."""
    ppl = value(run, "heldout_ppl")
    return "–" if ppl is None else f"{ppl - dense:+.2f}"
