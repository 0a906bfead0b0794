"""`prunecli lottery`: iterative magnitude pruning with rewinding, around your training command."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from prunecli.cli import completion
from prunecli.cli import options as opt
from prunecli.cli.output import emit_json, note, stderr_console


class LotteryScope(str, Enum):
    """`lottery --scope`: one ranking over all tensors, or `--rate` of each tensor's survivors."""

    GLOBAL = "global"
    LAYER = "layer"


Train = Annotated[
    str,
    typer.Option(
        "--train",
        metavar="CMD",
        help="Training command, run without a shell: it trains {weights} (masks: {masks}) and writes {out}.",
    ),
]
Rounds = Annotated[int, typer.Option("--rounds", min=1, help="Rounds of training and pruning.")]
Rate = Annotated[float, typer.Option("--rate", help="Fraction of the surviving weights each round prunes.")]
RewindTo = Annotated[
    Optional[Path],
    typer.Option("--rewind-to", help="Rewind the survivors to this checkpoint (default: INIT)."),
]
ScoreMethod = Annotated[
    str,
    typer.Option(
        "--score",
        help="How the trained weights are scored: magnitude, random or lamp.",
        autocompletion=completion.data_free_methods,
    ),
]
Scope = Annotated[
    LotteryScope, typer.Option("--scope", help="global: one ranking; layer: each tensor loses --rate.")
]


def render(run: dict[str, Any], console: Console) -> None:
    """One row per round: its folder, sparsity and kept count, and whether it was resumed."""
    table = Table(title=f"lottery rounds in {run['output']}", title_justify="left")
    for header in ("round", "folder", "sparsity", "kept", ""):
        table.add_column(header, justify="left" if header in ("folder", "") else "right", no_wrap=True)
    for r in run["rounds"]:
        status = "resumed" if r["resumed"] else "new"
        kept = f"{r['kept']:,} of {r['prunable']:,}"
        table.add_row(str(r["round"]), r["path"], f"{r['sparsity']:.4f}", kept, status)
    console.print(table, markup=False)


def lottery(
    init: opt.Checkpoint,
    output: opt.OutputFolder,
    train: Train,
    rounds: Rounds,
    rate: Rate = 0.2,
    rewind_to: RewindTo = None,
    score: ScoreMethod = "magnitude",
    scope: Scope = LotteryScope.GLOBAL,
    seed: opt.Seed = opt.DEFAULT_SEED,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    force: opt.Force = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Find a lottery ticket: train, prune --rate of the survivors by magnitude, rewind; --rounds times.

    OUT/round-K/ is a full apply output per round: the rewound weights, the masks, the manifest.

    The command runs without a shell, with {weights}, {masks} (for attach_masks), {out}, {round} filled in.

    A rerun resumes after the last finished round. See docs/lottery.md.

    Examples:

      prunecli lottery init.safetensors --train 'python train.py {weights} {masks} {out}' --rounds 5 -o imp/

      prunecli lottery init.safetensors --train './train.sh {weights} {out}' --rounds 10 --scope layer -o imp/

      prunecli lottery init.safetensors --train '...' --rounds 10 --rewind-to step500.safetensors -o late/
    """
    from prunecli.pipelines.lottery import lottery as run_lottery

    def echo(line: str) -> None:
        sys.stderr.write(line)
        sys.stderr.flush()

    run = run_lottery(
        init, output, train, rounds=rounds, rate=rate, rewind_to=rewind_to, score=score, scope=scope.value,
        include=tuple(include or ()), exclude=tuple(exclude or ()), seed=seed, force=force,
        echo=None if quiet else echo, note=lambda line: note(line, quiet),
    ).as_json()  # fmt: skip
    last = run["rounds"][-1]
    note(f"the ticket of round {last['round']} is {last['path']} (sparsity {last['sparsity']:.4f})", quiet)
    if json_out:
        emit_json(run)
    elif not quiet:
        render(run, stderr_console())
