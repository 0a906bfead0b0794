"""`prune`: `score` and `apply` in one call, with the scores held in memory.

No scores file is written: the scores go into a `ScoresInMemory`, which `apply` reads as it
would read the file. The manifest still records the hash the file would have had (the
safetensors bytes are deterministic), so `prune` writes the same bytes as `score` then `apply`.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.distributed import all_done, is_main
from prunecli.errors import UsageError
from prunecli.io.checkpoints import Checkpoint
from prunecli.io.safetensors_file import header_bytes
from prunecli.io.safetensors_header import TensorInfo
from prunecli.pipelines.apply import Applied, apply_opened
from prunecli.pipelines.score import ScoredModel, score, score_request, scored
from prunecli.progress import Progress
from prunecli.scoring.registry import Method, get_method
from prunecli.selection.spec import SelectionSpec

# score()'s keyword arguments that prune() passes through; the others it sets itself.
_OWN = {"sparsity", "seed", "force", "progress"}
SCORING_ARGUMENTS = tuple(
    p.name
    for p in inspect.signature(score).parameters.values()
    if p.kind is p.KEYWORD_ONLY and p.name not in _OWN
)


class ScoresInMemory(Checkpoint):
    """Float32 scores keyed by name, read like a scores file (`apply.plan.KeySource` reads it).

    `sha256` is the hash of the file `write_scores` would write from the same scores: the
    safetensors header, then each tensor's float32 bytes in order.
    """

    def __init__(
        self, label: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str], sha256: str
    ) -> None:
        super().__init__(label)
        self.files = []  # nothing on disk for an output to overlap
        self.metadata = dict(metadata)
        self._arrays = arrays
        self._sha256 = sha256
        offset = 0
        for name, array in arrays.items():
            self.tensors[name] = TensorInfo("F32", tuple(array.shape), offset, offset + array.nbytes)
            offset += array.nbytes

    @classmethod
    def collect(cls, scored: ScoredModel, label: Path) -> ScoresInMemory:
        """Hold every tensor of the stream, hashing the file it would make as it goes."""
        entries = [(name, "F32", tuple(shape)) for name, shape in scored.entries]
        digest = hashlib.sha256(header_bytes(entries, scored.metadata))
        arrays: dict[str, np.ndarray] = {}
        for (name, array), (expected, _, shape) in zip(scored.scores, entries, strict=True):
            data = np.ascontiguousarray(array, np.float32)
            if name != expected or data.size != np.prod(shape, dtype=np.int64):
                raise ValueError(
                    f"expected scores of {expected} {list(shape)}, got {name} {list(data.shape)}"
                )
            digest.update(data.reshape(-1).view(np.uint8).data)
            arrays[name] = data.reshape(shape)
        return cls(label, arrays, scored.metadata, digest.hexdigest())

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        """A copy of the scores of `name`, in `scratch` (a uint8 buffer) when it is large enough."""
        array = self._arrays[name]
        if scratch is None or scratch.nbytes < array.nbytes:
            return array.copy()
        out = scratch[: array.nbytes].view(np.float32).reshape(array.shape)
        np.copyto(out, array)
        return out

    def sha256(self) -> str:
        return self._sha256


def prune(
    checkpoint: Path | str,
    output: Path | str,
    spec: SelectionSpec,
    method: str | Method,
    *,
    seed: int = 0,
    force: bool = False,
    isometry: tuple[int, float] | None = None,
    max_shard_size: int | None = None,
    sequential: bool | None = None,
    offload_dir: Path | str | None = None,
    progress: Progress | None = None,
    **scoring: Any,
) -> Applied:
    """Score `checkpoint` with `method` and apply `spec`, writing `output/` as `apply` does.

    Args:
        spec: the selection rule; an iterative method is scored at its target sparsity.
        method: a registered name ("snip") or a `Method`.
        seed: the seed of scoring and of selection.
        force: replace an existing output folder (one that prunecli wrote).
        isometry: (steps, learning rate) of the approximate-isometry fix after masking, or None.
        max_shard_size: bytes per output weights file (None: shard like the input).
        sequential: for methods that decide masks while calibrating (Wanda, SparseGPT): block by
            block, each block on the pruned blocks' outputs (None: yes, on a transformer folder).
        offload_dir: where block-by-block activations wait (None: in memory).
        scoring: `score`'s keyword arguments for the method (arch, data, batch_size,
            iterations, options, ...; see `prunecli.pipelines.score.score`).
        progress: reports stages and steps; silent by default.

    Returns:
        The manifest (also written) and notes; the same bytes as `score` then `apply`.

    Example:
        >>> from prunecli.pipelines.prune import prune
        >>> from prunecli.selection.spec import SelectionSpec
        >>> applied = prune("init.safetensors", "out", SelectionSpec(density=0.05), "snip",
        ...                 arch="lenet-300-100", data="random:1x28x28")
    """
    from prunecli.io.checkpoints import checkpoint_files, open_checkpoint
    from prunecli.io.outputs import check_output_folder, existing_inputs

    unknown = sorted(set(scoring) - set(SCORING_ARGUMENTS))
    if unknown:
        raise TypeError(f"prune() got unexpected keyword arguments: {', '.join(unknown)}")
    checkpoint, output = Path(checkpoint), Path(output)
    chosen = get_method(method) if isinstance(method, str) else method
    inputs = checkpoint_files(checkpoint) + existing_inputs(scoring.get("arch"), scoring.get("data"))
    check_output_folder(output, force, inputs)  # early, before minutes of scoring
    spec.validate()
    sparsity = 1.0 - spec.density if chosen.iterative else None
    request = score_request(
        checkpoint, chosen, sparsity=sparsity, seed=seed, sequential=sequential,
        offload_dir=None if offload_dir is None else Path(offload_dir), **scoring,
    )  # fmt: skip
    writing = {"seed": seed, "force": force, "inputs": inputs, "isometry": isometry,
               "max_shard_size": max_shard_size, "progress": progress}  # fmt: skip
    if _layer_by_layer(request):
        return _prune_layer_by_layer(request, output, spec, writing)
    label = Path(f"(computed by prune: {chosen.name})")
    with scored(request, progress) as result:
        held = ScoresInMemory.collect(result, label)
    all_done()
    if not is_main():  # under torchrun every rank scores, and rank 0 alone writes
        return Applied({}, result.notes)
    with open_checkpoint(checkpoint) as ckpt:
        manifest = apply_opened(ckpt, output, spec, method=None, scores=held, scores_path=label, **writing)
        return Applied(manifest, result.notes + [n for n in ckpt.notes if n not in result.notes])


def _layer_by_layer(request: Any) -> bool:
    """Whether the method decides masks while calibrating: always for one that returns weights
    (SparseGPT); for Wanda, block by block on a transformer unless `sequential` is False."""
    from prunecli.models.hf import is_hf_spec

    method = request.method
    if method.layerwise is None:
        if request.sequential:
            raise UsageError(f"{method.name} cannot prune block by block", "drop `sequential`",
                             option="sequential", value=True)  # fmt: skip
        return False
    return method.returns == "weights" or (request.sequential is not False and is_hf_spec(request.arch))


def _prune_layer_by_layer(
    request: Any, output: Path, spec: SelectionSpec, writing: dict[str, Any]
) -> Applied:
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.pipelines.layerwise import layerwise_spec, pruned_layer_by_layer

    spec, notes = layerwise_spec(spec, request.method)
    with pruned_layer_by_layer(request, spec, output, writing["progress"]) as done:
        all_done()
        if not is_main():
            return Applied({}, notes + done.notes)
        with open_checkpoint(request.checkpoint) as ckpt:
            manifest = apply_opened(
                ckpt, output, spec, method=None, scores=done.masks, scores_path=done.masks.path,
                given=done.masks.kept, weights=done.weights, **writing,
            )  # fmt: skip
            return Applied(manifest, notes + done.notes + list(ckpt.notes))
