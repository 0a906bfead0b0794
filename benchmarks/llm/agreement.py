"""How far two tools' masks agree, for the same method and setting, from their saved models.

A weight is kept when it is non-zero in the saved decoder Linear weights (model.layers.*, 2-D);
both tools write dense safetensors, so the mask is read the same way for each. Two numbers per
pair, over all those weights together:

    identical   fraction of mask entries that are the same (kept in both or pruned in both)
    iou         |kept in both| / |kept in either|: 1 when the kept sets are equal

At sparsity s two independent random masks give identical ≈ s² + (1-s)² and IoU ≈ (1-s)/(1+s),
the floor each number is read against (`chance`). A pair is cached in
WORK/agreement/A-KEY--B-KEY.json, so it is computed once per pair of finished runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.llm import data


def kept_masks(folder: Path) -> dict[str, np.ndarray]:
    """Name -> boolean kept mask of every 2-D weight under model.layers.* in a saved model folder."""
    from safetensors import safe_open

    masks: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        if shard.name == "masks.safetensors":
            continue
        with safe_open(str(shard), framework="np") as handle:
            for name in handle.keys():
                if name.startswith("model.layers.") and name.endswith(".weight"):
                    weight = handle.get_tensor(name)
                    if weight.ndim == 2:
                        masks[name] = weight != 0
    return masks


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """identical / iou over the weights both hold, overall and per weight (per-weight iou only)."""
    names = sorted(set(a) & set(b))
    if not names:
        raise ValueError("the two models share no decoder Linear weight")
    same = both = either = total = 0
    per_weight: dict[str, float] = {}
    for name in names:
        if a[name].shape != b[name].shape:
            raise ValueError(f"{name}: shapes {a[name].shape} and {b[name].shape} differ")
        inter = int(np.logical_and(a[name], b[name]).sum())
        union = int(np.logical_or(a[name], b[name]).sum())
        same += int((a[name] == b[name]).sum())
        both, either, total = both + inter, either + union, total + a[name].size
        per_weight[name] = inter / union if union else 1.0
    density = sum(int(b[n].sum()) for n in names) / total
    return {
        "weights": len(names),
        "entries": total,
        "identical": same / total,
        "iou": both / either if either else 1.0,
        "chance": {"identical": density**2 + (1 - density) ** 2, "iou": density / (2 - density)},
        "iou_range": [min(per_weight.values()), max(per_weight.values())],
        "iou_by_weight": per_weight,
    }


def pair(work: Path, mine: dict, theirs: dict) -> dict | None:
    """The cached comparison of two finished runs' masks (None when an output is gone)."""
    folder = work / "agreement"
    path = folder / f"{mine['key']}--{theirs['key']}.json"
    if path.exists():
        return json.loads(path.read_text())
    outs = [work / "runs" / run["key"] / "out" for run in (mine, theirs)]
    if not all(out.is_dir() for out in outs):
        return None
    result = {"mine": mine["key"], "theirs": theirs["key"], **compare(*(kept_masks(out) for out in outs))}
    folder.mkdir(parents=True, exist_ok=True)
    data.dump_json(path, result)
    return result


def all_pairs(work: Path, results: list[dict]) -> list[dict]:
    """Every prunecli Wanda/SparseGPT run against llm-compressor's run of the same method and setting."""
    ok = [r for r in results if r.get("status") == "ok"]
    found = []
    for theirs in (r for r in ok if r["tool"] == "llmcompressor"):
        for mine in ok:
            same = (mine["method"], mine["setting"]) == (theirs["method"], theirs["setting"])
            if mine["tool"] == "prunecli" and same:
                result = pair(work, mine, theirs)
                if result is not None:
                    found.append(result)
    return found
