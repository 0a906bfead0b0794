"""`prune` for methods that decide masks layer by layer (Wanda, SparseGPT) on language models.

Block by block (the default for a transformer folder: `sequential`), each block is calibrated on
the outputs of the pruned blocks before it, with only that block's weights on the device
(`calibration.sequential`). One-shot (`sequential=False`), the whole dense model runs and every
layer is decided from its dense inputs. Either way the masks are decided while calibrating, by
the selection rule the user gave (`scoring.layerwise.MaskRule`), and handed to `apply` as they
are, as a mask set (`io.mask_sets.MaskScores`). SparseGPT's updated weights wait in a temporary
safetensors file beside the output, removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli import __version__
from prunecli.errors import UsageError
from prunecli.io.checkpoints import Checkpoint
from prunecli.io.mask_sets import MaskScores, PackedMasks
from prunecli.io.scores_file import SCORES_FORMAT
from prunecli.progress import NoProgress, Progress
from prunecli.scoring.layerwise import LayerResults, MaskRule, weights_writer

if TYPE_CHECKING:
    from prunecli.pipelines.score import ScoreRequest
    from prunecli.selection.spec import SelectionSpec


@dataclass
class Layerwise:
    """What a layer-by-layer run decided: masks, updated weights (or None), notes."""

    masks: MaskScores  # 1 where kept, 0 where pruned; `kept` gives apply's exact counts
    weights: Checkpoint | None
    notes: list[str]


@contextmanager
def pruned_layer_by_layer(
    req: ScoreRequest, spec: SelectionSpec, output: Path, progress: Progress | None = None
) -> Iterator[Layerwise]:
    """Run `req.method`'s block pruner over the model (see the module docstring)."""
    import torch

    from prunecli.distributed import is_main, share, world_size
    from prunecli.io.checkpoints import SafetensorsCheckpoint, open_checkpoint
    from prunecli.io.outputs import temp_name
    from prunecli.models import check_weights
    from prunecli.models.hf import build_model, is_hf_spec, linear_weights, spec_folder, stored_transposed
    from prunecli.pipelines.loading import _copy_into, calibration_of, load_model, resolve_device
    from prunecli.selection.prunable import prunable_names

    progress = progress or NoProgress()
    method, options = req.method, _options(req)
    if not is_hf_spec(req.arch):
        raise UsageError(f"{method.name} prunes Hugging Face language models layer by layer",
                         "give a model folder with config.json, or `arch` hf:DIR",
                         option="arch", value=req.arch)  # fmt: skip
    if req.data is None:
        raise UsageError(f"{method.name} needs calibration data", "add `data` FILE (text or token ids)",
                         option="data")  # fmt: skip
    device = resolve_device(req.device)
    precision = req.dtype or "float32"
    dtype = getattr(torch, precision)
    sequential = req.sequential is not False
    with open_checkpoint(req.checkpoint) as ckpt:
        if sequential:
            progress.stage("building the model", 0)
            model = build_model(spec_folder(req.arch), dtype, req.trust_remote_code)
            check_weights(model, _meta_tensors(ckpt), str(req.checkpoint))
            layers = linear_weights(model)
            names = [n for n in prunable_names(ckpt.tensors, req.include, req.exclude, True) if n in layers]
        else:
            model, names, _ = load_model(req, dtype, progress)
            model.to(device)
        model.requires_grad_(False)
        calibration = calibration_of(req, model)
        batches = [(x.to(device), None) for x, _ in share(calibration.batches)]  # this rank's
        rule = MaskRule.of(spec, stored_transposed(model))
        order = _pruning_order(names, sequential, model)
        results = LayerResults(
            {n: ckpt.tensors[n].shape for n in order}, {n: ckpt.tensors[n].dtype for n in order}
        )
        updates = method.returns == "weights" and is_main()  # rank 0 alone writes
        weights_path = output.absolute().parent / temp_name(output) if updates else None
        try:
            with _writer(weights_path, results):
                pruner = method.layerwise(options, rule, results)
                if sequential:
                    from prunecli.calibration.sequential import run_sequential

                    def load(target: torch.Tensor, name: str) -> None:
                        _copy_into(target, ckpt, name, ckpt.tensors[name].dtype)

                    offload = req.offload_dir
                    run_sequential(model, ckpt, batches, order, pruner, device, load, progress, offload)
                else:
                    _run_one_shot(model, batches, order, pruner, progress)
            params = {"sequential": sequential, "dtype": precision, "device": device.type, **options.params()}
            if world_size() > 1:
                params["world_size"] = world_size()
            metadata = _metadata(req, params, calibration, ckpt.sha256())
            label = Path(f"(decided while calibrating: {method.name})")
            weights = SafetensorsCheckpoint(weights_path) if weights_path is not None else None
            try:
                yield Layerwise(_mask_set(label, results, metadata), weights, list(results.notes))
            finally:
                if weights is not None:
                    weights.close()
        finally:
            if weights_path is not None:
                weights_path.unlink(missing_ok=True)


def _mask_set(label: Path, results: LayerResults, metadata: dict[str, str]) -> MaskScores:
    """The decided masks as a mask set, hashed over names and bits (there is no file)."""
    digest = hashlib.sha256()
    for name in results.shapes:
        digest.update(name.encode() + b"\0" + results.packed[name].tobytes())
    packed = PackedMasks(
        str(label), label, None, dict(results.packed), dict(results.shapes), digest.hexdigest()
    )
    return MaskScores(packed, list(results.shapes), metadata, sha256=packed.sha256)


def layerwise_spec(spec: SelectionSpec, method: Any) -> tuple[SelectionSpec, list[str]]:
    """The spec a layer-by-layer run uses: a global scope, which needs every layer's scores at
    once, becomes the method's own per-layer scope (Wanda: per row), with a note saying so."""
    from dataclasses import replace

    if spec.scope != "global" or spec.pattern is not None:
        return spec, []
    scope = method.default_scope if method.default_scope in ("layer", "row") else "layer"
    note = (f"{method.name} decides each layer's mask while calibrating, so the global scope cannot "
            f"apply: used `scope` {scope}")  # fmt: skip
    return replace(spec, scope=scope), [note]


def _meta_tensors(ckpt: Checkpoint) -> dict[str, Any]:
    import torch

    from prunecli.io.torch_files import torch_dtype

    return {
        n: torch.empty(i.shape, dtype=torch_dtype(i.dtype), device="meta") for n, i in ckpt.tensors.items()
    }


def _options(req: ScoreRequest) -> Any:
    from prunecli.scoring.options import build_options, check_keys
    from prunecli.scoring.registry import all_methods

    check_keys(req.method, req.options, all_methods())
    return build_options(req.method, req.options, {}, all_methods())


@contextmanager
def _writer(path: Path | None, results: LayerResults) -> Iterator[None]:
    if path is None:
        yield
        return
    with weights_writer(path, results) as writer:
        results.weights = writer
        yield
    results.weights = None


def _pruning_order(names: list[str], sequential: bool, model: Any) -> list[str]:
    """The order layers are decided in: block by block when sequential, else the checkpoint's."""
    if not sequential:
        return names
    from prunecli.calibration.sequential import decoder_blocks

    blocks = decoder_blocks(model)
    pattern = re.compile(re.escape(blocks.path) + r"\.(\d+)\.")

    def block_of(name: str) -> int:
        found = pattern.match(name)
        return int(found.group(1)) if found else -1

    return sorted(names, key=block_of)  # stable: within a block, the checkpoint's order


def _run_one_shot(model: Any, batches: list[Any], names: list[str], pruner: Any, progress: Progress) -> None:
    """Every layer observed on the dense model's forward passes, then every layer decided."""
    import torch

    from prunecli.calibration.forward import forward

    modules = dict(model.named_modules())
    layers = {n: modules[n.rpartition(".")[0]] for n in names}
    hooks = pruner.observe(layers)
    progress.stage("calibrating (one shot)", len(batches))
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                forward(model, inputs)
                progress.advance()
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        pruner.prune(layers)


def _metadata(req: ScoreRequest, params: dict[str, Any], calibration: Any, source_sha: str) -> dict[str, str]:
    return {
        "format": SCORES_FORMAT,
        "method": req.method.name,
        "params": json.dumps(params, sort_keys=True),
        "seed": str(req.seed),
        "source_sha256": source_sha,
        "arch": req.arch or "",
        "data_fingerprint": calibration.fingerprint,
        "data": json.dumps(calibration.record(), sort_keys=True),
        "prunecli_version": __version__,
    }
