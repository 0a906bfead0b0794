"""Scores files: float32 scores keyed by parameter name, with provenance metadata.

`write_scores` writes a method's scores as they come (`prunecli.pipelines.score` makes them);
`open_scores` reads one back and checks it against the checkpoint it will be applied to.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from prunecli.errors import InputError
from prunecli.io.checkpoints import Checkpoint, open_checkpoint
from prunecli.io.outputs import output_file
from prunecli.io.safetensors_file import SafetensorsWriter

SCORES_FORMAT = "prunecli.scores"


def write_scores(
    out: Path,
    entries: list[tuple[str, tuple[int, ...]]],
    scores: Iterable[tuple[str, np.ndarray]],
    metadata: dict[str, str],
    force: bool,
    inputs: Iterable[Path] = (),
) -> None:
    """Write float32 scores as they come (one tensor in memory at a time), atomically.

    `inputs` are the files the scores came from: the output may not replace any of them.
    """
    with (
        output_file(out, force, inputs),
        SafetensorsWriter(out, [(n, "F32", shape) for n, shape in entries], metadata) as writer,
    ):
        for name, array in scores:
            writer.write(name, np.ascontiguousarray(array, np.float32))


def open_scores(path: Path, ckpt: Checkpoint) -> Checkpoint:
    """Open a scores file and check every entry against `ckpt`.

    Names missing from the checkpoint, a shape that differs, or a non-float32 entry raise
    InputError naming the first offender.
    """
    if not path.name.endswith(".safetensors"):
        raise InputError(f"scores file {path} is not a .safetensors file", "write it with prunecli score")
    scores = open_checkpoint(path)
    try:
        for name, info in scores.tensors.items():
            if name not in ckpt.tensors:
                raise InputError(
                    f"scores name {name!r} is not in the checkpoint {ckpt.path}",
                    "score the same checkpoint you apply",
                )
            if info.shape != ckpt.tensors[name].shape:
                raise InputError(
                    f"scores for {name} have shape {list(info.shape)} but the checkpoint has "
                    f"{list(ckpt.tensors[name].shape)}",
                    "score the same checkpoint you apply",
                )
            if info.dtype != "F32":
                raise InputError(f"scores for {name} are {info.dtype}, not F32", "write scores as float32")
    except BaseException:
        scores.close()
        raise
    return scores
