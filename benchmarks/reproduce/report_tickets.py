"""The "Lottery tickets" section of docs/results.md, and docs/results-lottery.png, from tickets.json.

`report.py` calls `section` after its own part, so one command regenerates the whole page:

    python benchmarks/reproduce/report.py benchmarks/reproduce/results

Every number comes from the results file that `tickets.py` writes; none is typed by hand. The
papers' claims are quoted as such, and each "agrees"/"differs" is decided by the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = "tickets.json"
PLOT = "results-lottery.png"
FRANKLE = "https://arxiv.org/abs/1803.03635"  # The Lottery Ticket Hypothesis
HOOKER = "https://arxiv.org/abs/1911.05248"  # What Do Compressed Deep Neural Networks Forget?
CLEAR = 0.005  # half a point: smaller gaps are called ties in the findings


def load(folder: Path) -> dict | None:
    path = folder / RESULTS
    return json.loads(path.read_text()) if path.exists() else None


def shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    root = Path(__file__).resolve().parents[2]
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.2f}"


def acc(run: dict | None) -> float | None:
    return None if run is None else run["accuracy"]


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def rounds(study: dict) -> list[dict]:
    return study["runs"][f"imp/s{study['plan']['seeds'][0]}"]["rounds"]


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def imp_table(study: dict) -> list[str]:
    """Per round: density (overall and per layer), each ticket, the random reinit, the gap."""
    runs, seeds = study["runs"], study["plan"]["seeds"]
    layers = list(rounds(study)[0]["densities"])
    head = ["round", "density", *layers, *(f"ticket, seed {s}" for s in seeds), "random reinit"]
    lines = [row([*head, "ticket − reinit"]), "|---" * (len(head) + 1) + "|"]
    for r in rounds(study):
        k = r["round"]
        tickets = [acc(runs.get(f"ticket/s{s}/r{k}")) for s in seeds]
        reinit = acc(runs.get(f"reinit/r{k}"))
        lines.append(
            row([
                str(k) if k else "0 (dense)", f"{100 * (1 - r['sparsity']):.1f}%",
                *(f"{100 * d:.1f}%" for d in r["densities"].values()),
                *map(pct, tickets), pct(reinit), pts(diff(tickets[0], reinit)),
            ])
        )  # fmt: skip
    return lines


def shared(run: dict) -> float:
    """The share of a ticket's kept weights that the other ticket keeps too."""
    return run["totals"]["result_kept"] / run["totals"]["kept"][0]


def pair_table(study: dict) -> list[str]:
    """Per round: how much the two seeds' tickets share, and the intersection against each ticket."""
    runs, seeds = study["runs"], study["plan"]["seeds"]
    head = ["round", "ticket density", "kept by both", "vs chance", "intersection density"]
    for s in seeds:
        head += [f"ticket, seed {s}", f"intersection, seed {s}", "Δ"]
    lines = [row(head), "|---" * len(head) + "|"]
    for r in rounds(study)[1:]:
        k, run = r["round"], study["runs"][f"intersect/r{r['round']}"]
        cells = [str(k), f"{100 * (1 - r['sparsity']):.1f}%", f"{100 * shared(run):.1f}%"]
        cells += [f"{run['totals']['vs_chance']:.2f}×", f"{100 * run['totals']['result_density']:.1f}%"]
        for s in seeds:
            ticket, common = acc(runs.get(f"ticket/s{s}/r{k}")), acc(run["trained"].get(str(s)))
            cells += [pct(ticket), pct(common), pts(diff(common, ticket))]
        lines.append(row(cells))
    return lines


def drop_rows(study: dict) -> list[tuple[str, float, dict]]:
    """(method, sparsity, run) for each pruning-at-init run, then the last two IMP rounds."""
    runs, plan = study["runs"], study["plan"]
    out = [(m, s, runs[f"pai/{m}/{s}"]) for m in plan["methods"] for s in plan["sparsities"]]
    for r in rounds(study)[-2:]:
        k = r["round"]
        if f"ticket/s{plan['seeds'][0]}/r{k}" in runs and k > 0:
            out.append((f"IMP ticket (round {k})", r["sparsity"], runs[f"ticket/s{plan['seeds'][0]}/r{k}"]))
            if f"reinit/r{k}" in runs:
                out.append((f"its random reinit (round {k})", r["sparsity"], runs[f"reinit/r{k}"]))
    return out


def ratio(run: dict) -> float | None:
    """Worst class's drop over the overall drop; None when the overall drop is under half a point."""
    return run["worst_class"]["drop"] / run["drop"] if run["drop"] > CLEAR else None


def drop_table(study: dict) -> list[str]:
    lines = [
        "| method | sparsity | accuracy | drop | worst class | its drop | worst ÷ overall |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, sparsity, run in drop_rows(study):
        worst, r = run["worst_class"], ratio(run)
        cells = [method, f"{100 * sparsity:.1f}%", pct(run["accuracy"]), pts(run["drop"])]
        cells += [str(worst["class"]), pts(worst["drop"]), "–" if r is None else f"{r:.1f}×"]
        lines.append(row(cells))
    return lines


def matrix_sparsity(study: dict) -> float:
    sparsities = study["plan"]["sparsities"]
    return 0.98 if 0.98 in sparsities else sparsities[-1]


def class_table(study: dict) -> list[str]:
    """Each class's drop per method at one sparsity, under the dense network's accuracy per class."""
    runs, s = study["runs"], matrix_sparsity(study)
    dense = runs[f"ticket/s{study['plan']['seeds'][0]}/r0"]["classes"]
    lines = [row(["", *(str(c["class"]) for c in dense)]), "|---" * (len(dense) + 1) + "|"]
    lines.append(row(["dense accuracy", *(pct(c["accuracy"]) for c in dense)]))
    for method in study["plan"]["methods"]:
        lines.append(
            row([f"{method}: drop", *(pts(c["drop"]) for c in runs[f"pai/{method}/{s}"]["classes"])])
        )
    return lines


def findings(study: dict) -> list[str]:
    runs, seeds, plan = study["runs"], study["plan"]["seeds"], study["plan"]
    dense = runs[f"ticket/s{seeds[0]}/r0"]["accuracy"]
    imp = [(r["round"], 1 - r["sparsity"]) for r in rounds(study)[1:]]
    ticket = {k: runs[f"ticket/s{seeds[0]}/r{k}"]["accuracy"] for k, _ in imp}
    reinit = {k: runs[f"reinit/r{k}"]["accuracy"] for k, _ in imp}
    last, density = imp[-1]
    above = [k for k, d in imp if d >= 0.1]
    beat = [k for k in above if ticket[k] >= dense]
    out = [
        f"- **Tickets against the dense network:** the ticket (seed {seeds[0]}) is at least as accurate as "
        f"the dense network ({pct(dense)}%) in {len(beat)} of the {len(above)} rounds at 10% density or "
        f"more; at {100 * density:.1f}% density (round {last}) it scores {pct(ticket[last])}% "
        f"({pts(ticket[last] - dense)} points). [Frankle & Carbin 2019]({FRANKLE}) report tickets above "
        "10–20% of the weights that reach higher test accuracy than the dense network: this "
        f"{'agrees' if len(beat) >= len(above) / 2 and ticket[last] >= dense - CLEAR else 'differs'}."
    ]
    gaps = {k: ticket[k] - reinit[k] for k, _ in imp}
    worst = max(gaps, key=gaps.get)
    ahead = sum(g > CLEAR for g in gaps.values())
    out.append(
        f"- **Tickets against random re-initialisation:** the same masks on a new initialisation score "
        f"below the ticket by more than half a point in {ahead} of {len(gaps)} rounds, by up to "
        f"{pts(gaps[worst])} points (at {100 * dict(imp)[worst]:.1f}% density, round {worst}). The paper "
        f"reports that reinitialised tickets learn slower and lose accuracy as they get sparser: this "
        f"{'agrees' if gaps[last] > CLEAR and ahead >= len(gaps) / 2 else 'differs'}."
    )
    pairs = [runs[f"intersect/r{k}"] for k, _ in imp]
    shares = [shared(p) for p in pairs]
    final = runs[f"intersect/r{plan['intersect_rounds'][-1]}"]
    deltas = [
        common["accuracy"] - runs[f"ticket/s{s}/r{p['round']}"]["accuracy"]
        for p in pairs
        for s, common in ((int(s), c) for s, c in p["trained"].items())
    ]
    out.append(
        f"- **Two tickets:** trained with data orders {seeds[0]} and {seeds[1]} from the same "
        f"initialisation, the tickets keep {100 * min(shares):.1f}–{100 * max(shares):.1f}% of the same "
        f"weights (rounds 1–{last}, {min(p['totals']['vs_chance'] for p in pairs):.2f}–"
        f"{max(p['totals']['vs_chance'] for p in pairs):.2f}× chance); their intersection, rewound and "
        f"trained with each seed, scores {pts(min(deltas))} to {pts(max(deltas))} points against that "
        f"seed's ticket (rounds {', '.join(map(str, plan['intersect_rounds']))}), while keeping fewer "
        f"weights (round {final['round']}: {100 * final['totals']['result_density']:.1f}% against "
        f"{100 * final['totals']['densities'][0]:.1f}%)."
    )
    ratios = [r for _, _, run in drop_rows(study) if (r := ratio(run)) is not None] or [float("nan")]
    classes = [run["worst_class"]["class"] for _, _, run in drop_rows(study)]
    common_class = max(sorted(set(classes)), key=classes.count)  # ties: the smallest class
    out.append(
        f"- **Per class:** the worst class loses {np.median(ratios):.1f}× the overall drop (median over "
        f"the rows that lose more than half a point; {min(ratios):.1f}–{max(ratios):.1f}×); class "
        f"{common_class} is the worst in {classes.count(common_class)} of {len(classes)} rows. "
        f"[Hooker et al. 2019]({HOOKER}) report that the accuracy pruning costs is not spread evenly "
        "over classes."
    )
    return out


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    runs, seeds, plan = study["runs"], study["plan"]["seeds"], study["plan"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    dense = 100 * runs[f"ticket/s{seeds[0]}/r0"]["accuracy"]
    left.axhline(dense, color="grey", linestyle=":", label=f"dense, seed {seeds[0]}")
    density = {r["round"]: 100 * (1 - r["sparsity"]) for r in rounds(study)}
    series = [(f"ticket, seed {s}", f"ticket/s{s}/r", "o-") for s in seeds] + [
        ("random reinit", "reinit/r", "s--")
    ]
    for label, prefix, style in series:
        ks = [k for k in density if f"{prefix}{k}" in runs]
        left.plot(
            [density[k] for k in ks], [100 * runs[f"{prefix}{k}"]["accuracy"] for k in ks], style, label=label
        )
    for s in seeds:
        pairs = [runs[f"intersect/r{k}"] for k in plan["intersect_rounds"]]
        xs = [100 * p["totals"]["result_density"] for p in pairs]
        left.plot(
            xs, [100 * p["trained"][str(s)]["accuracy"] for p in pairs], "D", label=f"intersection, seed {s}"
        )
    left.set_xscale("log")
    left.xaxis.set_major_locator(ticker.FixedLocator([100, 50, 20, 10, 5, 2, 1]))
    left.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    left.xaxis.set_minor_formatter(ticker.NullFormatter())
    left.invert_xaxis()
    left.set_xlabel("weights kept (%), log scale")
    left.set_ylabel("test accuracy (%)")
    left.set_title("LeNet-300-100: IMP tickets (20% a round, rewound to init)")
    left.legend(fontsize=8)
    for i, method in enumerate(plan["methods"]):
        xs = [100 * s for s in plan["sparsities"]]
        chosen = [runs[f"pai/{method}/{s}"] for s in plan["sparsities"]]
        color = f"C{i}"
        right.plot(xs, [100 * r["drop"] for r in chosen], "o-", color=color, label=f"{method}: overall")
        right.plot(
            xs,
            [100 * r["worst_class"]["drop"] for r in chosen],
            "v--",
            color=color,
            label=f"{method}: worst class",
        )
    right.set_xlabel("sparsity (%)")
    right.set_ylabel("accuracy drop against dense (points)")
    right.set_title("Pruning at initialisation: overall and worst-class drop")
    right.legend(fontsize=8, ncol=2)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(results: Path, out: Path) -> list[str]:
    """The section's markdown lines (none without a results file); writes the plot into `out`."""
    study = load(results)
    if study is None:
        return []
    plan = study["plan"]
    plot(study, out / PLOT)
    lines = [
        "## Lottery tickets",
        "",
        f"From `{shown(results / RESULTS)}`, written by `benchmarks/reproduce/tickets.py`.",
        "",
        f"- LeNet-300-100 from one initialisation (`prunecli init --seed {plan['init_seed']}`). Every "
        "network is trained by the same command, `benchmarks/reproduce/train_ticket.py`: "
        f"{plan['epochs']} epoch(s) of Adam (lr {plan['lr']}, batch {plan['batch_size']}) on "
        f"{study['train_digits']:,} training digits, pixels scaled to [0, 1], masks held fixed by "
        "`prunecli.attach_masks`; the training seed sets the data order. This is a short schedule: the "
        "dense network is not trained to convergence.",
        f"- Tested on {study['test_digits']:,} test digits with `prunecli eval --baseline DENSE --json`, "
        f"DENSE being the dense network trained the same way (seed {plan['seeds'][0]}); *drop* is DENSE's "
        "accuracy minus the network's, in points (negative: better than DENSE).",
        f"- Tickets: `prunecli lottery --rounds {plan['rounds']} --rate {plan['rate']}` (global magnitude, "
        f"rewound to the initialisation), once per training seed ({', '.join(map(str, plan['seeds']))}). "
        f"Random reinit: each round's masks on `prunecli init --seed {plan['reinit_seed']}` (`apply "
        "--masks`). Two tickets: `prunecli intersect` of the two seeds' rounds; the intersection is put "
        "on the initialisation and trained with each seed. Pruning at initialisation: `prunecli prune` "
        "(100 training digits for SNIP), then trained the same way. One run per cell: no error bars.",
        f"- Command: `{study['command']}`; {study['device']}; wall time {study['wall_s']:.0f} s "
        f"({len(study['invocations'])} invocation(s), {study['compute_s']:.0f} s summed over units; load "
        f"average {max(w['load_at_start'] for w in study['invocations']):.1f} at the start).",
        "",
        f"![IMP tickets, random reinit and intersections; drops per method]({PLOT})",
        "",
        "### Tickets against random re-initialisation",
        "",
        "Test accuracy (%) of each round's masks, trained from the initialisation (ticket) or from a new "
        "one:",
        "",
        *imp_table(study),
        "",
        "### Two tickets from two training seeds",
        "",
        "Weights both tickets keep (as a share of one ticket's, and against independent random masks of "
        "the same per-layer densities), and the intersection trained from the initialisation (%):",
        "",
        *pair_table(study),
        "",
        "### Accuracy drop per class",
        "",
        "Overall drop and the class that drops most (points), for each pruning-at-initialisation method "
        "and for the last IMP rounds (worst ÷ overall: – when the overall drop is under half a point):",
        "",
        *drop_table(study),
        "",
        f"Drop per class at {100 * matrix_sparsity(study):.0f}% sparsity (points), under the dense network's "
        "accuracy per class (%):",
        "",
        *class_table(study),
        "",
        "### Lottery tickets against the papers",
        "",
        *findings(study),
        "",
    ]
    return lines
