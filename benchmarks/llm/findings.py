"""What the LLM study's numbers say: mask agreement, where the tools part, the papers' ordering.

Every sentence is decided from the cache (see `lookup.py`); nothing here is typed by hand.
"""

from __future__ import annotations

from benchmarks.llm.lookup import (
    METHODS,
    MODES,
    SETTINGS,
    TRAILS,
    UNSTRUCTURED,
    cell,
    find,
    ok,
    rise,
    setting_label,
    trails,
    value,
)


def agreement_table(runs: list[dict], pairs: list[dict]) -> list[str]:
    """Identical mask entries and IoU of the kept weights, prunecli against llm-compressor."""
    by_keys = {(p["mine"], p["theirs"]): p for p in pairs}
    lines = [
        "| method | setting | one-shot: identical / IoU | sequential: identical / IoU "
        "| two random masks: identical / IoU | sequential: lowest IoU of one weight |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS[1:]:
        for setting in SETTINGS:
            one, seq, theirs = (find(runs, tool, method, setting, mode) for tool, mode in MODES)
            if not ok(theirs):
                continue
            found = [by_keys.get((mine["key"], theirs["key"])) if ok(mine) else None for mine in (one, seq)]
            if not any(found):
                continue
            cells = [f"{p['identical']:.4f} / {p['iou']:.4f}" if p else "–" for p in found]
            chance = next(p for p in found if p)["chance"]
            cells.append(f"{chance['identical']:.4f} / {chance['iou']:.4f}")
            cells.append(f"{found[1]['iou_range'][0]:.4f}" if found[1] else "–")
            lines.append(f"| {method} | {setting_label(setting)} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else ["No pair of finished runs with saved outputs yet."]


def scope_table(runs: list[dict], dense: float) -> list[str]:
    """The diagnostic runs beside the study's: each method ranked per tensor and per output row."""
    columns = [
        ("magnitude", "-"),
        ("magnitude", "row-scope"),
        ("wanda", "layer-scope"),
        ("wanda", "sequential"),
    ]
    lines = [
        "| setting | magnitude per tensor | magnitude per row | Wanda per tensor | Wanda per row |",
        "|---|---|---|---|---|",
    ]
    for setting in UNSTRUCTURED:
        found = [find(runs, "prunecli", method, setting, mode) for method, mode in columns]
        if ok(found[1]) or ok(found[2]):
            shown = [f"{cell(run)} ({rise(run, dense)})" if ok(run) else cell(run) for run in found]
            lines.append(f"| {setting_label(setting)} | " + " | ".join(shown) + " |")
    return lines if len(lines) > 2 else ["No diagnostic run finished yet."]


def first_divergence(runs: list[dict], pairs: list[dict]) -> list[str]:
    """For each sequential pair whose masks differ: the first decoder block where they do, its weights.

    Block by block, a difference in block i changes every later block's calibration inputs, so
    the first differing block is where the tools' rules part; the later ones only follow."""
    keys = {run["key"]: run for run in runs}
    out = []
    for found in sorted(pairs, key=lambda p: p["mine"]):
        mine = keys.get(found["mine"])
        differ = {name: iou for name, iou in found["iou_by_weight"].items() if iou < 1}
        if mine is None or not differ or mine["mode"] != "sequential":
            continue
        block = min(int(name.split(".")[2]) for name in differ)
        names = sorted(n for n in differ if int(n.split(".")[2]) == block)
        shown = ", ".join(
            f"`{n.split('.', 3)[3].removesuffix('.weight')}` (IoU {differ[n]:.6f})" for n in names
        )
        out.append(
            f"- {mine['method']} {setting_label(mine['setting'])}, prunecli {mine['mode']}: "
            f"{len(differ)} of {found['weights']} weights differ; first in block {block}: {shown}."
        )
    return out or ["- none: every sequential pair's masks are identical."]


def paper_order(runs: list[dict], tool: str, mode: str) -> list[str]:
    """Does sparsegpt <= wanda < magnitude hold at each unstructured setting for this tool and mode?

    Each inequality is judged on its own, and the broken ones are named. Magnitude needs no data
    and only prunecli runs it; it is the baseline for both tools.
    """
    out, held = [], 0
    for setting in UNSTRUCTURED:
        ppl = {"magnitude": value(find(runs, "prunecli", "magnitude", setting, "-"), "heldout_ppl")}
        for method in METHODS[1:]:
            ppl[method] = value(find(runs, tool, method, setting, mode), "heldout_ppl")
        have = {m: p for m, p in ppl.items() if p is not None}
        if "magnitude" not in have or len(have) < 2:
            continue
        broken = [f"{m} ≥ magnitude" for m in METHODS[1:] if m in have and have[m] >= have["magnitude"]]
        if "sparsegpt" in have and "wanda" in have and have["sparsegpt"] > have["wanda"]:
            broken.append("sparsegpt > wanda")
        held += not broken
        shown = ", ".join(f"{m} {p:.2f}" for m, p in have.items())
        missing = [m for m in METHODS if m not in have]
        note = f" ({', '.join(missing)} not run yet)" if missing else ""
        verdict = "holds" if not broken else f"**does not hold**: {', '.join(broken)}"
        out.append(f"  - {setting_label(setting)}: {shown}: {verdict}{note}")
    if not out:
        return ["  - no finished runs yet"]
    return [f"  - holds at {held} of {len(out)} unstructured settings", *out]


def wanda_pairs(runs: list[dict]) -> list[tuple[dict | None, dict | None]]:
    """(prunecli sequential, llm-compressor) Wanda runs at each setting."""
    return [
        (find(runs, "prunecli", "wanda", s, "sequential"), find(runs, "llmcompressor", "wanda", s))
        for s in SETTINGS
    ]


def reading(runs: list[dict]) -> list[str]:
    """What the ordering results say, in words decided from the numbers (nothing typed by hand)."""
    sides = [("prunecli", "one-shot"), ("prunecli", "sequential"), ("llmcompressor", "sequential")]

    def ppl(tool: str, method: str, setting: str, mode: str) -> float | None:
        return value(find(runs, tool, method, setting, mode), "heldout_ppl")

    rows = [
        (ppl("prunecli", "magnitude", s, "-"), ppl(t, "wanda", s, m), ppl(t, "sparsegpt", s, m))
        for t, m in sides
        for s in UNSTRUCTURED
    ]
    rows = [row for row in rows if None not in row]
    if not rows:
        return []
    sgpt_first = all(sg <= w and sg < mag for mag, w, sg in rows)
    wanda_behind = sum(w >= mag for mag, w, _ in rows)
    lines = [
        f"Reading: over {len(rows)} (tool, mode, sparsity) triples, SparseGPT "
        + ("is the best of the three in every one" if sgpt_first else "is not always the best")
        + f", and Wanda is behind magnitude in {wanda_behind}."
    ]
    scoped = [
        (ppl("prunecli", "magnitude", s, "row-scope"), ppl("prunecli", "wanda", s, "layer-scope"))
        for s in UNSTRUCTURED
    ]
    scoped = [pair for pair in scoped if None not in pair]
    if wanda_behind and scoped:
        both = [
            pair
            for s in UNSTRUCTURED
            for pair in (
                (ppl("prunecli", "magnitude", s, "-"), ppl("prunecli", "wanda", s, "layer-scope")),
                (ppl("prunecli", "magnitude", s, "row-scope"), ppl("prunecli", "wanda", s, "sequential")),
            )
        ]
        same_scope = [w >= mag for mag, w in both if mag is not None and w is not None]
        agree = not any(trails(mine, theirs) or trails(theirs, mine) for mine, theirs in wanda_pairs(runs))
        if same_scope and all(same_scope) and agree:
            lines[0] += (
                " Ranked within the same scope (both per tensor, or both per row) Wanda is still behind, so "
                "the ranking scope does not explain it: the activation weighting ‖X_j‖ itself ranks worse "
                "than |W| alone on this model. The Wanda paper ties its gain over magnitude to the few input "
                "features of very large magnitude that emerge in large language models; whether this small "
                "model, trained for minutes, lacks them is not measured here. Since llm-compressor's Wanda "
                "gives the same perplexity (within 2% both ways), the ordering is a property of the model, "
                "not of either tool."
            )
    return lines


def flags(runs: list[dict]) -> list[str]:
    out = []
    for method in METHODS[1:]:
        for setting in SETTINGS:
            theirs = find(runs, "llmcompressor", method, setting)
            for mode in ("one-shot", "sequential"):
                mine = find(runs, "prunecli", method, setting, mode)
                if trails(mine, theirs):
                    a, b = mine["heldout_ppl"], theirs["heldout_ppl"]
                    out.append(
                        f"- **{method} {setting_label(setting)}, prunecli {mode}**: {a:.2f} vs "
                        f"llm-compressor {b:.2f}, {100 * (a / b - 1):.1f}% higher perplexity."
                    )
    return out or [f"- none: no setting where ours trails llm-compressor by more than {TRAILS:.0%}."]


def closeness(runs: list[dict]) -> list[str]:
    """How far prunecli's perplexity is from llm-compressor's, over every like-for-like pair."""
    out = []
    for mode in ("sequential", "one-shot"):
        gaps = []
        for method in METHODS[1:]:
            for setting in SETTINGS:
                mine = value(find(runs, "prunecli", method, setting, mode), "heldout_ppl")
                theirs = value(find(runs, "llmcompressor", method, setting), "heldout_ppl")
                if mine and theirs:
                    gaps.append((mine / theirs - 1, f"{method} {setting_label(setting)}"))
        if gaps:
            low, high = min(gaps), max(gaps)
            out.append(
                f"- prunecli {mode} ÷ llm-compressor, {len(gaps)} settings: from {100 * low[0]:+.3f}% "
                f"({low[1]}) to {100 * high[0]:+.3f}% ({high[1]})."
            )
    return out or ["- no pair finished yet."]


def count_differences(runs: list[dict]) -> list[str]:
    """Sequential pairs whose achieved sparsity differs: the per-row count is rounded differently."""
    out = []
    for method in METHODS[1:]:
        for setting in SETTINGS:
            mine = find(runs, "prunecli", method, setting, "sequential")
            theirs = find(runs, "llmcompressor", method, setting)
            if not (ok(mine) and ok(theirs)):
                continue
            a, b = mine["achieved"], theirs["achieved"]
            if a["tensor_sparsity_range"] != b["tensor_sparsity_range"]:
                ranges = [" to ".join(f"{x:.6f}" for x in r["tensor_sparsity_range"]) for r in (a, b)]
                out.append(
                    f"- {method} {setting_label(setting)}: per-weight sparsity {ranges[0]} in prunecli, "
                    f"{ranges[1]} in llm-compressor."
                )
    return out or ["- none: both tools prune the same number of weights in every tensor."]
