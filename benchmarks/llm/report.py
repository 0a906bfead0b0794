"""Turn the LLM study's run cache into docs/results-llm.md and docs/results-llm.png.

Reads only the cache (`lookup.py`); every number on the page comes from it, none is typed by
hand. The tables are built here, the analyses in `findings.py`.

Usage:
    python -m benchmarks.llm --only-report [--work DIR] [--docs DIR]
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.llm import findings
from benchmarks.llm.lookup import (
    METHODS,
    MODES,
    SETTINGS,
    TRAILS,
    UNSTRUCTURED,
    cell,
    find,
    load,
    ok,
    ratio,
    rise,
    setting_label,
    trails,
    value,
)

USAGE = """\
One command runs the whole study and writes this page; every step is cached under `--work`, so a
re-run only does what is missing (a failed or pending run is tried again):

```sh
nice -n 5 .venv/bin/python -m benchmarks.llm                # data, tokenizer, model, runs, report
.venv/bin/python -m benchmarks.llm --only-report            # this page and the plot, from the cache
.venv/bin/python -m benchmarks.llm --only llmcompressor-wanda   # only the runs whose name matches
```

The llm-compressor side runs `benchmarks/llmc_wanda.py` in its own virtualenv (`LLMC_PYTHON`,
default `/work/llmc-venv/bin/python`; llm-compressor pins its own transformers), made with

```sh
python3 -m venv /work/llmc-venv
/work/llmc-venv/bin/pip install torch==2.13.0    # the CPU build, before llm-compressor pulls one
/work/llmc-venv/bin/pip install llmcompressor
```

See `benchmarks/llm/__init__.py` for the cache layout."""


def ppl_ratio(mine: dict | None, theirs: dict | None) -> str:
    text = ratio(value(mine, "heldout_ppl"), value(theirs, "heldout_ppl"))
    return f"**{text}**" if trails(mine, theirs) else text


def perplexity_table(runs: list[dict], dense: float) -> list[str]:
    lines = [
        "| method | setting | prunecli one-shot | prunecli sequential | llm-compressor | one-shot ÷ theirs "
        "| sequential ÷ theirs | rise over dense: sequential / theirs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        for setting in SETTINGS:
            if method == "magnitude":
                run = find(runs, "prunecli", method, setting, "-")
                cells = [cell(run), "n/a", "n/a", "–", "–", rise(run, dense)]
            else:
                one, seq, theirs = (find(runs, tool, method, setting, mode) for tool, mode in MODES)
                cells = [cell(one), cell(seq), cell(theirs), ppl_ratio(one, theirs), ppl_ratio(seq, theirs)]
                cells.append(f"{rise(seq, dense)} / {rise(theirs, dense)}")
            lines.append(f"| {method} | {setting_label(setting)} | " + " | ".join(cells) + " |")
    return lines


def cost_cells(runs: list[dict], key: str, scale: float) -> list[str]:
    shown = [value(run, key) for run in runs]
    text = [f"{v / scale:.0f}" if v is not None else "–" for v in shown]
    return [" / ".join(text), ratio(shown[1], shown[2], 2)]


def ratio_summary(runs: list[dict], label: str, key: str) -> str:
    """One line: the range and median of prunecli sequential ÷ llm-compressor for `key` (median: one
    run slowed by the shared machine moves it least)."""
    parts = []
    for method in METHODS[1:]:
        found = []
        for setting in SETTINGS:
            mine = value(find(runs, "prunecli", method, setting, "sequential"), key)
            theirs = value(find(runs, "llmcompressor", method, setting), key)
            if mine and theirs:
                found.append(mine / theirs)
        if found:
            spread = f"{min(found):.2f}–{max(found):.2f}"
            parts.append(
                f"{method} {spread} (median {statistics.median(found):.2f} over {len(found)} settings)"
            )
    text = "; ".join(parts) if parts else "no pair finished yet"
    return f"{label}, prunecli sequential ÷ llm-compressor: {text}."


def cost_table(runs: list[dict]) -> list[str]:
    lines = [
        "| method | setting | wall s: one-shot / sequential / llm-compressor | sequential ÷ theirs "
        "| peak RSS MiB: one-shot / sequential / llm-compressor | sequential ÷ theirs |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS[1:]:
        for setting in SETTINGS:
            trio = [find(runs, tool, method, setting, mode) for tool, mode in MODES]
            if not any(ok(run) for run in trio):
                continue
            cells = cost_cells(trio, "wall_s", 1) + cost_cells(trio, "peak_rss_bytes", 2**20)
            lines.append(f"| {method} | {setting_label(setting)} | " + " | ".join(cells) + " |")
    for label, key in (("wall time", "wall_s"), ("peak RSS", "peak_rss_bytes")):
        lines += ["", ratio_summary(runs, label, key)]
    magnitude = [r for r in runs if ok(r) and r["method"] == "magnitude" and r["mode"] == "-"]
    if magnitude:
        wall = sum(r["wall_s"] for r in magnitude) / len(magnitude)
        rss = max(r["peak_rss_bytes"] or 0 for r in magnitude)
        lines += ["", f"prunecli magnitude (no data): {wall:.0f} s and {rss / 2**20:.0f} MiB peak RSS a run."]
    return lines


def recorded_mode(run: dict) -> str:
    """The mode as the tool recorded it: prunecli's manifest `method.params.sequential`."""
    if run["tool"] == "llmcompressor":
        return "sequential pipeline"
    if run["method"] == "magnitude":
        return "– (no data)"
    sequential = run["manifest"]["method"]["params"].get("sequential")
    text = {True: "sequential: true", False: "sequential: false", None: "no `sequential` (one-shot)"}
    clash = (sequential is True) != (run["mode"] != "one-shot")
    return text[sequential] + (f" **≠ requested {run['mode']}**" if clash else "")


def sparsity_table(runs: list[dict]) -> list[str]:
    lines = [
        "| run | target | achieved (decoder Linear) | per-tensor range | N:M holds | mode recorded |",
        "|---|---|---|---|---|---|",
    ]
    for run in sorted((r for r in runs if ok(r)), key=lambda r: (r["tool"], r["method"], r["setting"])):
        achieved = run["achieved"]
        low, high = achieved["tensor_sparsity_range"]
        holds = {None: "–", True: "yes", False: "**no**"}[achieved["pattern_ok"]]
        mode = recorded_mode(run)
        lines.append(
            f"| {run['key']} | {run['sparsity_target']:.4f} | {achieved['sparsity']:.4f} "
            f"| {low:.4f}–{high:.4f} | {holds} | {mode} |"
        )
    return lines


def not_done(runs: list[dict]) -> list[str]:
    lines = []
    for run in sorted((r for r in runs if not ok(r)), key=lambda r: r["key"]):
        err = run["error"].strip().splitlines()
        reason = err[0] if len(err) == 1 else f"{err[0]}: {err[-1]}"
        lines.append(f"- `{run['key']}` ({run['status']}): {reason}")
    return lines or ["- none"]


def plot(runs: list[dict], dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"magnitude": "tab:gray", "wanda": "tab:blue", "sparsegpt": "tab:red"}
    series = [("prunecli", "one-shot", "-", "o"), ("prunecli", "sequential", "-.", "^")]
    series.append(("llmcompressor", "sequential", "--", "s"))
    for method in METHODS:
        for tool, mode, style, marker in series:
            wanted = "-" if method == "magnitude" else mode
            if method == "magnitude" and (tool != "prunecli" or mode != "one-shot"):
                continue
            points = [find(runs, tool, method, s, wanted) for s in UNSTRUCTURED]
            xy = [(100 * float(r["setting"]), r["heldout_ppl"]) for r in points if ok(r)]
            label = f"{method}, {tool}" + ("" if method == "magnitude" else f" ({mode})")
            if xy:
                ax.plot(*zip(*xy, strict=True), style, marker=marker, color=colours[method], label=label)
            for offset, setting in ((-1.2, "2:4"), (1.2, "4:8")):
                run = find(runs, tool, method, setting, wanted)
                if ok(run):
                    ax.plot(50 + offset, run["heldout_ppl"], marker=marker, color=colours[method], ms=8,
                            mfc="none", ls="none")  # fmt: skip
    ax.axhline(dense, color="black", lw=0.8, ls=":", label=f"dense ({dense:.1f})")
    shown = [y for line in ax.get_lines() for y in line.get_ydata()]
    wide = max(shown) / min(shown) > 3  # a log scale only when the perplexities span a wide range
    if wide:
        ax.set_yscale("log")
    ax.set_xlabel("sparsity of the decoder Linear weights (%); hollow: 2:4 left of 50, 4:8 right")
    ax.set_ylabel("held-out perplexity" + (" (log scale)" if wide else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def llmc_versions(runs: list[dict]) -> str:
    """ ", with llmcompressor X, compressed-tensors Y, ..." from a finished llm-compressor run's record."""
    for run in runs:
        if ok(run) and "llmc" in run:
            versions = run["llmc"]["versions"]
            text = ", with " + ", ".join(f"{name} {version}" for name, version in versions.items())
            break
    else:
        return ""
    for run in runs:
        if ok(run) and "llmc" in run and run["method"] == "sparsegpt":
            modifier = run["llmc"]["modifier"]
            text += (
                f"; SparseGPT: block size {modifier['block_size']}, dampening {modifier['dampening_frac']}"
            )
            break
    for run in runs:
        if ok(run) and "manifest" in run and run["method"] == "sparsegpt":
            params = run["manifest"]["method"]["params"]
            text += f" (prunecli's manifest: block size {params['block_size']}, damp {params['damp']})"
            break
    return text


def invocations(study: dict) -> list[str]:
    """The commands that filled the cache, each with its wall time (cached steps take none)."""
    listed = study.get("invocations") or [
        {"command": study["command"], "wall_s": study["wall_s"], "runs": None}
    ]
    shown = "; ".join(
        f"`{item['command']}`: {item['wall_s'] / 60:.0f} min"
        + (f" ({item['runs']} runs)" if item["runs"] is not None else "")
        for item in listed
    )
    return [f"- **Commands** that filled the cache, with their wall time (cached steps take none): {shown}."]


def header(cache: dict) -> list[str]:
    study, split, train = cache["study"], cache["split"], cache["train"]
    shape, params, sched = train["shape"], train["params"], train["schedule"]
    parts = split["parts"]
    tokens = split["tokens"]
    calib_n, calib_t = study["calib_windows"]
    held_n, held_t = study["heldout_windows"]
    seen = sched["steps"] * sched["batch_size"] * shape["seq_len"]
    part_text = "; ".join(
        f"{name} {parts[name]['topics']} topics, {parts[name]['chars']:,} characters, {tokens[name]:,} tokens"
        for name in ("train", "calibration", "heldout")
    )
    return [
        f"- **Machine**: {study['machine']}; shared with other work, the study ran under `nice`.",
        f"- **Corpus**: {split['source']}, {split['topics']} topics, {split['chars']:,} characters, split "
        f"by topic (SHA-256 order of the key, ≈10% of the characters each to held-out and calibration): "
        f"{part_text}. Held-out topics: {', '.join(split['heldout_keys'])}.",
        f"- **Tokenizer**: byte-level BPE trained on the train part, {split['vocab_size']:,} tokens "
        "(`<unk>`, `<s>`, `</s>`), saved as `PreTrainedTokenizerFast` in the model folder.",
        f"- **Model**: `LlamaForCausalLM`, {params['total']:,} parameters, {params['decoder_linear']:,} of "
        f"them in the decoder blocks' Linear weights (the pruned set); hidden {shape['hidden_size']}, "
        f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']} heads, MLP "
        f"{shape['intermediate_size']}, vocabulary {shape['vocab_size']}, untied `lm_head`, float32.",
        f"- **Training**: {sched['steps']} AdamW steps (lr {sched['lr']}, {sched['warmup']} warmup "
        f"steps, cosine to {sched['min_lr_ratio']:g}×, weight decay {sched['weight_decay']}, clip "
        f"{sched['clip']}) of {sched['batch_size']} × {shape['seq_len']} tokens at random offsets "
        f"({seen:,} tokens, {seen / tokens['train']:.1f} passes over the train part), seed "
        f"{sched['seed']}: {train['seconds'] / 60:.0f} min ({train['steps_per_s']} steps/s); final "
        f"train loss {sum(train['loss'][-25:]) / 25:.3f} (mean of the last 25 steps), held-out "
        f"perplexity by step: {', '.join(f'{s}: {p:.1f}' for s, p in train['heldout_ppl'])}.",
        f"- **Calibration**: {calib_n} windows × {calib_t} tokens at seeded offsets (seed "
        f"{study['calib_seed']}) in the calibration part, one `input_ids` npz given to both tools.",
        f"- **Evaluation**: held-out perplexity = exp(mean next-token NLL) over {held_n} non-overlapping "
        f"windows of {held_t} tokens ({held_n * (held_t - 1):,} predicted tokens), transformers in "
        "float32 in the project's venv, the same code for every run.",
        "- **Timing**: wall time and peak RSS (ru_maxrss from wait4) of the whole pruning process, from "
        "start to saved model (imports, loading, calibration, writing), with the same thread count.",
    ]


def write(work: Path, docs: Path) -> None:
    cache = load(work)
    runs, dense = cache["runs"], cache["dense"]["heldout_ppl"]
    docs.mkdir(parents=True, exist_ok=True)
    plot(runs, dense, docs / "results-llm.png")
    study = cache["study"]
    sequential = "has" if study["prunecli_has_sequential"] else "does not have"
    lines = [
        "# Results: LLM pruning quality, prunecli against llm-compressor",
        "",
        "Generated by `benchmarks/llm/report.py` from the run cache; no number here is typed by hand.",
        "",
        USAGE,
        "",
        *invocations(study),
        *header(cache),
        f"- **prunecli** at the time of the last run lists {', '.join(study['prunecli_methods'])}, and "
        f"`prune` {sequential} `--sequential`. Magnitude is ranked per tensor (`--scope layer`), Wanda per "
        "output row (`--scope row`), SparseGPT at its own default; N:M runs pass `--pattern N:M -s 0.5`. "
        "The default set on a model folder is the Linear weights inside the decoder blocks, the same set "
        "`llmc_wanda.py` targets (embeddings and `lm_head` dense).",
        "- **llm-compressor** runs its `WandaPruningModifier` / `SparseGPTModifier` through `oneshot` with "
        "the sequential pipeline (each block calibrated on the previous pruned blocks' outputs), one window "
        f"a batch, `mask_structure` for N:M{llmc_versions(runs)}.",
        "",
        f"**Dense baseline: held-out perplexity {dense:.3f}.**",
        "",
        "![perplexity against sparsity](results-llm.png)",
        "",
        "## Held-out perplexity",
        "",
        "÷ theirs: prunecli's perplexity over llm-compressor's at the same setting (below 1: ours is "
        f"better; bold: ours more than {TRAILS:.0%} worse). llm-compressor is always sequential, so the "
        "like-for-like column is prunecli sequential. The last column is what pruning added to the dense "
        "perplexity, the part in which the tools can differ.",
        "",
        *perplexity_table(runs, dense),
        "",
        "## Cost of the pruning process",
        "",
        "The machine was shared with other jobs throughout, often with more runnable work than its two "
        "cores: the same stage of the same tool took from seconds to tens of seconds from one run to the "
        "next, so a single wall time, and the ratio of two, carries that noise (read the medians, not a "
        "single setting). Peak RSS does not depend on the load.",
        "",
        *cost_table(runs),
        "",
        "## Mask agreement with llm-compressor",
        "",
        "A weight counts as kept when it is non-zero in the saved model; over all decoder Linear "
        "weights of the two runs. Identical: the fraction of mask entries that match; IoU: weights kept by "
        "both over weights kept by either. The random-mask column is what two unrelated masks of that "
        "density would score.",
        "",
        *findings.agreement_table(runs, cache["agreement"]),
        "",
        "prunecli one-shot scores every block on the dense model's activations, so from block 1 on its "
        "masks differ from llm-compressor's by design. Where the like-for-like (sequential) masks part "
        "(block by block, a difference in one block changes the calibration inputs of every later block, "
        "so the first block that differs is where the two rules differ):",
        "",
        *findings.first_divergence(runs, cache["agreement"]),
        "",
        "## Achieved sparsity",
        "",
        *sparsity_table(runs),
        "",
        "## Runs not finished",
        "",
        *not_done(runs),
        "",
        "## Against the papers",
        "",
        "SparseGPT (Frantar & Alistarh 2023) and Wanda (Sun et al. 2024) report, on LLaMA and OPT at "
        "50–70% unstructured sparsity, sparsegpt ≤ wanda < magnitude in perplexity (Wanda close to "
        "SparseGPT at 50%, behind it as sparsity grows). Here:",
        "",
        "- prunecli, one-shot:",
        *findings.paper_order(runs, "prunecli", "one-shot"),
        "- prunecli, sequential:",
        *findings.paper_order(runs, "prunecli", "sequential"),
        "- llm-compressor (magnitude from prunecli):",
        *findings.paper_order(runs, "llmcompressor", "sequential"),
        "",
        "Which ranking scope the ordering depends on: the same prunecli runs with the scope swapped "
        "(magnitude ranked within each output row, `--scope row`; Wanda within each whole tensor, "
        "`--scope layer`, block by block), held-out perplexity (rise over dense):",
        "",
        *findings.scope_table(runs, dense),
        "",
        *findings.reading(runs),
        "",
        f"Settings where ours trails llm-compressor by more than {TRAILS:.0%} perplexity:",
        "",
        *findings.flags(runs),
        "",
        "## prunecli against llm-compressor",
        "",
        "Perplexity, prunecli over llm-compressor at the same method and setting:",
        "",
        *findings.closeness(runs),
        "",
        "Settings where the two tools prune a different number of weights. The count rules differ: for "
        "Wanda, prunecli keeps round(density × inputs) weights of each row and llm-compressor prunes "
        "int(sparsity × inputs); for SparseGPT, prunecli keeps round(density × entries) of each tensor, "
        "shared out over its 128-column blocks, and llm-compressor prunes every weight of a block at or "
        "below the saliency of rank int(sparsity × block entries), one more than that share (see "
        "`docs/methods.md`, sparsegpt):",
        "",
        *findings.count_differences(runs),
        "",
    ]
    (docs / "results-llm.md").write_text("\n".join(lines))
    done = sum(ok(r) for r in runs)
    print(f"wrote {docs / 'results-llm.md'} and results-llm.png from {done} finished runs of {len(runs)}")
