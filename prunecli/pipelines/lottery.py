"""`lottery`: iterative magnitude pruning with rewinding, driving the user's own training command.

Frankle & Carbin 2019, "The Lottery Ticket Hypothesis" (https://arxiv.org/abs/1803.03635); the
rewind to an early checkpoint instead of the initialisation is Frankle et al. 2020, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis" (https://arxiv.org/abs/1912.05671).

`OUT/round-0/` is the start: INIT with dense masks. Round K runs the training command on round
K-1's weights and masks, scores the trained weights (magnitude by default), prunes `rate` of the
weights that survived (cumulative, `apply_with_masks`: round K keeps round((1 − rate)^K · N) of
the N prunable weights) and rewinds the survivors to INIT, or to `rewind_to`: `OUT/round-K/` is a
full apply output holding the rewound ticket, and its manifest's `lineage` names round K-1's masks
and the trained weights.

The command is split with `shlex.split` and run without a shell; in each argument `{weights}`
becomes round K-1's `model.safetensors`, `{masks}` its `manifest.json` (what `attach_masks`
takes), `{out}` the file the command must write (`OUT/round-K-trained.safetensors`, kept) and
`{round}` the round number. Its output goes to `OUT/round-K-train.log`.

Each round folder appears whole, only once its round has succeeded, so a rerun after a crash
skips the finished rounds (a round counts when its lineage names the previous round's masks by
sha256) and goes on; `OUT/lottery.json` holds the settings that decide the masks, which a rerun
must share.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunecli.errors import InputError, OutputExistsError, ScoreError, UsageError
from prunecli.io.checkpoints import open_checkpoint
from prunecli.io.manifest import MANIFEST_FILE, MODEL_FILE, read_manifest
from prunecli.io.mask_sets import PackedMasks, open_mask_set
from prunecli.io.outputs import output_lock, refuse_overlap, write_bytes
from prunecli.pipelines.apply import apply_opened
from prunecli.pipelines.apply_masks import MethodScores, apply_with_masks
from prunecli.pipelines.train_command import Echo, TrainCommand, check_trained, run_command
from prunecli.scoring.registry import Method, get_method
from prunecli.selection.prunable import prunable_names
from prunecli.selection.spec import SelectionSpec

SETTINGS_FILE = "lottery.json"
SETTINGS_FORMAT = "prunecli.lottery"


@dataclass
class Round:
    """One finished round: its folder, what it keeps, and whether this run trained it."""

    round: int
    path: str
    kept: int
    prunable: int
    sparsity: float
    resumed: bool


@dataclass
class LotteryRun:
    """What `lottery` did: the output folder and every round up to the last one asked for."""

    output: str
    rounds: list[Round] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"output": self.output, "rounds": [asdict(r) for r in self.rounds]}


def lottery(
    init: Path | str,
    output: Path | str,
    train: str,
    *,
    rounds: int,
    rate: float = 0.2,
    rewind_to: Path | str | None = None,
    score: str = "magnitude",
    scope: str = "global",
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    seed: int = 0,
    force: bool = False,
    echo: Echo | None = None,
    note: Echo | None = None,
) -> LotteryRun:
    """Iterative magnitude pruning with rewinding (see the module docstring).

    Args:
        init: the initial weights (round 0, and the rewind target unless `rewind_to`).
        output: the folder of the rounds (created; its parent must exist).
        train: the training command, e.g. "python train.py {weights} {masks} {out}".
        rounds: how many rounds of training and pruning.
        rate: the fraction of the surviving weights each round prunes, in (0, 1).
        rewind_to: where the survivors are rewound to (an early checkpoint of the dense run).
        score: a per-tensor method scoring the trained weights: magnitude, random or lamp.
        scope: "global" (one ranking) or "layer" (each tensor loses `rate` of its weights).
        force: start over, removing the rounds of an earlier run in `output`.
        echo: receives the training command's output, line by line.
        note: receives one line per step ("round 2: training ...").

    Returns:
        Each round's folder, kept count and sparsity, and whether it was resumed.

    Raises:
        UsageError, InputError: bad settings, a command that writes nothing or the wrong tensors
            (nothing of that round is kept); CommandFailed: the command exited non-zero.

    Example:
        >>> run = lottery("init.safetensors", "imp", "python train.py {weights} {masks} {out}", rounds=3)
        >>> run.rounds[-1].sparsity
        0.488
    """
    note = note or (lambda line: None)
    command = TrainCommand.parse(train)
    method = _check(rounds, rate, score, scope)
    out, init, rewind = Path(output), Path(init), Path(rewind_to) if rewind_to else None
    with output_lock(out):
        refuse_overlap(out, _files_of(init) + (_files_of(rewind) if rewind else []), folder=True)
        settings = _settings(init, rewind, rate, method, scope, include, exclude, seed)
        _prepare(out, settings, force)
        run = LotteryRun(str(out))
        previous = _round_zero(out, init, method, settings, run, note)
        for k in range(1, rounds + 1):
            previous = _round(out, k, previous, command, rewind or init, method, settings, run, echo, note)
    return run


def _check(rounds: int, rate: float, score: str, scope: str) -> Method:
    if rounds < 1:
        raise UsageError(
            f"`rounds` {rounds} must be at least 1", "e.g. `rounds` 5", option="rounds", value=rounds
        )
    if not 0.0 < rate < 1.0:  # NaN fails this too
        raise UsageError(
            f"`rate` {rate} is outside (0, 1)",
            "give the fraction of survivors each round prunes, e.g. 0.2",
            option="rate",
            value=rate,
            bounds=(0.0, 1.0),
        )
    if scope not in ("global", "layer"):
        raise UsageError(
            f"`scope` {scope!r} is not global or layer",
            "use global or layer",
            option="scope",
            value=scope,
            allowed=("global", "layer"),
        )
    method = get_method(score)
    if method.needs_model or method.scorer is None:
        raise UsageError(
            f"`score` {method.name} needs a model; lottery scores the trained weights alone",
            "use magnitude, random or lamp",
            option="score",
            value=method.name,
        )
    return method


def _files_of(path: Path) -> list[Path]:
    with open_checkpoint(path) as ckpt:
        return list(ckpt.files)


def _settings(
    init: Path,
    rewind: Path | None,
    rate: float,
    method: Method,
    scope: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    seed: int,
) -> dict[str, Any]:
    """What decides the masks, as `lottery.json` records it; a rerun must give the same."""
    with open_checkpoint(init) as ckpt:
        names = prunable_names(ckpt.tensors, include, exclude, ckpt.config_folder is not None)
        shapes, init_sha = {n: ckpt.tensors[n].shape for n in names}, ckpt.sha256()
    rewind_sha = None
    if rewind is not None:
        with open_checkpoint(rewind) as ckpt:
            for name, shape in shapes.items():
                if name not in ckpt.tensors or ckpt.tensors[name].shape != shape:
                    raise InputError(
                        f"`rewind_to` {rewind} has no {name} of shape {list(shape)}, as {init} has",
                        "rewind to a checkpoint of the same model",
                        option="rewind_to",
                    )
            rewind_sha = ckpt.sha256()
    return {
        "format": SETTINGS_FORMAT,
        "init_sha256": init_sha,
        "rewind_sha256": rewind_sha,
        "rate": rate,
        "score": method.name,
        "scope": scope,
        "include": list(include),
        "exclude": list(exclude),
        "seed": seed,
    }


def _prepare(out: Path, settings: dict[str, Any], force: bool) -> None:
    """Create `out`, or check that it holds a run with these settings (removing it with `force`)."""
    path = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder", "name a folder for -o")
    if out.is_dir() and any(out.iterdir()):
        earlier = _read_settings(path) if path.is_file() else None
        if force:
            _remove_rounds(out)
        elif earlier is None:
            raise OutputExistsError(
                f"output folder {out} is not empty and holds no lottery run",
                "choose another folder, or pass `force` to start over there",
            )
        elif earlier != settings:
            changed = [key for key in settings if earlier.get(key) != settings[key]]
            raise InputError(
                f"{out} holds a lottery run with other settings ({', '.join(changed)})",
                "rerun with the same settings to resume it, or pass `force` to start over",
            )
    out.mkdir(exist_ok=True)
    write_bytes(path, (json.dumps(settings, indent=2) + "\n").encode())


def _read_settings(path: Path) -> dict[str, Any] | None:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) and settings.get("format") == SETTINGS_FORMAT else None


def _remove_rounds(out: Path) -> None:
    """Remove what lottery wrote in `out` (rounds, trained weights, logs, settings), nothing else."""
    ours = re.compile(r"^round-\d+(-trained\.safetensors|-train\.log)?$|^" + re.escape(SETTINGS_FILE) + "$")
    for entry in out.iterdir():
        if ours.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _finished(folder: Path, k: int, parent_sha: str) -> PackedMasks | None:
    """Round `k`'s masks when its folder holds that round, made from the masks of sha256
    `parent_sha` (round 0: from INIT of that sha256); None when the folder is absent."""
    if not folder.exists():
        return None
    stale = InputError(
        f"{folder} does not continue this run (it was made from other masks or settings)",
        "pass `force` to start over",
    )
    manifest = read_manifest(folder / MANIFEST_FILE) if (folder / MANIFEST_FILE).is_file() else None
    lineage = (manifest or {}).get("lineage") or {}
    if lineage.get("kind") != "lottery" or lineage.get("round") != k:
        raise stale
    made_from = manifest["source"]["sha256"] if k == 0 else (lineage["masks"] or [{}])[0].get("sha256")
    if made_from != parent_sha:
        raise stale
    return open_mask_set(folder)


def _round_zero(
    out: Path, init: Path, method: Method, settings: dict[str, Any], run: LotteryRun, note: Echo
) -> PackedMasks:
    folder = out / "round-0"
    masks = _finished(folder, 0, settings["init_sha256"])
    resumed = masks is not None
    if masks is None:
        note(f"round 0: {init} with dense masks -> {folder}")
        spec = SelectionSpec(
            density=1.0,
            scope=settings["scope"],
            include=tuple(settings["include"]),
            exclude=tuple(settings["exclude"]),
        )
        with open_checkpoint(init) as ckpt:
            apply_opened(
                ckpt,
                folder,
                spec,
                method=method,
                scores=None,
                scores_path=None,
                seed=settings["seed"],
                force=False,
                lineage={"kind": "lottery", "masks": [], "round": 0},
            )
        masks = open_mask_set(folder)
    run.rounds.append(_summary(0, folder, masks, resumed))
    return masks


def _round(
    out: Path,
    k: int,
    previous: PackedMasks,
    command: TrainCommand,
    rewind: Path,
    method: Method,
    settings: dict[str, Any],
    run: LotteryRun,
    echo: Echo | None,
    note: Echo,
) -> PackedMasks:
    folder, parent = out / f"round-{k}", out / f"round-{k - 1}"
    masks = _finished(folder, k, previous.sha256)
    if masks is not None:
        note(f"round {k}: finished earlier, kept")
        run.rounds.append(_summary(k, folder, masks, resumed=True))
        return masks
    trained, log = out / f"round-{k}-trained.safetensors", out / f"round-{k}-train.log"
    trained.unlink(missing_ok=True)  # from an attempt that stopped half-way
    argv = command.argv(weights=parent / MODEL_FILE, masks=parent / MANIFEST_FILE, out=trained, round=k)
    note(f"round {k}: training: {shlex.join(argv)}")
    run_command(argv, log, k, echo)
    check_trained(trained, previous, k)
    density = (1.0 - settings["rate"]) ** k
    note(f"round {k}: pruning to density {density:.6g} by {method.name} and rewinding to {rewind}")
    spec = SelectionSpec(
        density=density,
        scope=settings["scope"],
        include=tuple(settings["include"]),
        exclude=tuple(settings["exclude"]),
    )
    with open_checkpoint(rewind) as ckpt, open_checkpoint(trained) as weights:
        scores = MethodScores(weights, previous.names, method, settings["seed"])
        lineage = {
            "kind": "lottery",
            "round": k,
            "trained": {"path": str(trained), "sha256": weights.sha256(), "command": argv},
        }
        try:
            apply_with_masks(
                ckpt,
                folder,
                previous,
                spec,
                scores=scores,
                provenance=dict(scores.metadata),
                seed=settings["seed"],
                lineage=lineage,
            )
        except ScoreError as exc:
            raise ScoreError(
                f"round {k}: the trained weights {trained}: {exc.message}",
                "the training diverged? check its log " + str(log),
            ) from None
    masks = open_mask_set(folder)
    run.rounds.append(_summary(k, folder, masks, resumed=False))
    return masks


def _summary(k: int, folder: Path, masks: PackedMasks, resumed: bool) -> Round:
    kept = sum(masks.kept(n) for n in masks.names)
    prunable = sum(math.prod(masks.shapes[n]) for n in masks.names)
    return Round(k, str(folder), kept, prunable, 1.0 - kept / prunable if prunable else 0.0, resumed)
