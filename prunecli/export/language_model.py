"""Sparse ONNX export of a Hugging Face causal language model: token ids in, logits out.

The model is built from the folder's `config.json` with transformers (no weights initialised,
key-value cache off, eval mode), the checkpoint's (masked) weights are copied in, and the model
is exported behind a small wrapper whose `forward(input_ids, attention_mask)` returns the logits
tensor. The file's inputs are `input_ids` and `attention_mask`, int64 (batch, sequence), both
axes dynamic (the batch fixed by `static_batch`); its output is `logits`, (batch, sequence,
vocabulary). The initializers carry the checkpoint's parameter names (the wrapper's prefix is
removed), so the sparse pass stores the pruned weights sparse as it does for any model.

Exporter: the TorchScript exporter (`dynamo=False`), as for the other models. The dynamo exporter
(torch 2.13's default) was tried first on the tiny Llama and GPT-2 models of the tests, with
onnxscript 0.7.2 installed for the trial (onnxscript is not a dependency of prunecli; without it
the dynamo exporter cannot run at all). It exported both and its logits agreed with transformers'
wherever a position attends to at least one token, but it took 14-20 s per model against
0.7-0.9 s, and its optimiser stored each of Llama's Linear weights transposed under a
generated name (`val_76` for `model.layers.0.self_attn.q_proj.weight`), so the initializers no
longer were the checkpoint's tensors under their names, which the per-tensor report relies on. (At
positions with no visible key, left padding, its logits also differed from transformers' by up
to 0.08; the TorchScript export agrees to 1.2e-7 there too.)

Tracing: transformers builds the attention mask by tensor operations when it sees
`torch.jit.is_tracing()`, so the trace follows the inputs' values and shapes; its remaining
tracer warnings (shape checks in its masking and attention code) are not shown. The trace uses
a mask with padding, so no "no padding" shortcut is recorded, and `--verify` checks two shapes
with and without padding against transformers' own forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunecli.calibration.forward import logits_of
from prunecli.errors import UsageError
from prunecli.export.trace import Traced, check_size, refuse_non_finite, run_exporter, torch_outputs
from prunecli.export.verify import Feeds

if TYPE_CHECKING:
    import onnx
    import torch

    from prunecli.export.to_onnx import ExportRequest

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "logits"
SHAPES = ((2, 8), (3, 5))  # (batch, sequence) of the two verification runs; the first is also traced
PREFIX = "model."  # the wrapper's attribute, in front of every parameter name


def config_folder_of(arch: str | None, weights: Path) -> Path | None:
    """The Hugging Face folder that describes the model: `hf:DIR` of `arch`, or, without `arch`,
    the folder of the weights when it holds `config.json`; None for any other model."""
    from prunecli.models.hf import config_folder, is_hf_spec, spec_folder

    if arch is not None:
        return spec_folder(arch) if is_hf_spec(arch) else None
    return config_folder(weights)


def trace_language_model(request: ExportRequest, folder: Path, weights: Path) -> Traced:
    """Build the model of `folder`, load `weights`, and export it into memory.

    Returns the ONNX model with the two verification runs (seeded token ids within the
    vocabulary, and transformers' logits on them) computed before the export.
    """
    import torch

    _refuse_image_options(request)
    model, sha256, notes = _load(request, folder, weights)
    runs = _runs(model, request.seed, request.static_batch)
    example = tuple(torch.from_numpy(runs[0][0][name]) for name in INPUTS)
    dims = {0: "batch", 1: "sequence"} if request.static_batch is None else {1: "sequence"}
    axes = {name: dims for name in (*INPUTS, OUTPUT)}
    wrapper, quiet = _logits_module(model), [_transformers_folder()]
    proto, export_notes = run_exporter(wrapper, example, INPUTS, [OUTPUT], axes, request.opset, quiet)
    _strip_prefix(proto, PREFIX)
    if request.static_batch is not None:  # the exporter leaves the logits' batch unnamed: fix it
        proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value = request.static_batch
    name = type(model).__name__
    return Traced(proto, runs, sha256, name, ["sequence"], notes + export_notes)


def _refuse_image_options(request: ExportRequest) -> None:
    for option in ("input_shape", "data"):
        if getattr(request, option) is not None:
            raise UsageError(
                f"`{option}` is for models with a float input; a language model takes token ids "
                "(batch, sequence), both axes dynamic",
                f"drop `{option}`",
                option=option,
                value=getattr(request, option),
            )
    if request.arch_args:
        raise UsageError("`arch_args` is for factories; a Hugging Face model is built from its config.json",
                         "drop `arch_args`", option="arch_args")  # fmt: skip


def _load(request: ExportRequest, folder: Path, weights: Path) -> tuple[torch.nn.Module, str, list[str]]:
    """The model of `folder` in the asked dtype, with the checkpoint's tensors copied in."""
    import torch

    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.io.torch_files import raw_to_torch, torch_dtype
    from prunecli.models import check_weights
    from prunecli.models.hf import build_model

    model = build_model(folder, getattr(torch, request.dtype), request.trust_remote_code)
    with open_checkpoint(weights) as ckpt:
        meta = {
            n: torch.empty(i.shape, dtype=torch_dtype(i.dtype), device="meta")
            for n, i in ckpt.tensors.items()
        }
        check_weights(model, meta, str(weights))  # names, shapes and kinds of dtype, before reading
        state = model.state_dict()
        with torch.no_grad():
            for name, info in ckpt.tensors.items():
                tensor = raw_to_torch(ckpt.read(name), info.dtype)
                refuse_non_finite({name: tensor})
                state[name].copy_(tensor)
        sha256, notes = ckpt.sha256(), list(ckpt.notes)
    check_size(model, type(model).__name__, request.dtype)
    return model.eval(), sha256, notes


def _runs(
    model: torch.nn.Module, seed: int, static_batch: int | None
) -> list[tuple[Feeds, list[np.ndarray]]]:
    """Seeded token ids for two shapes, with transformers' logits on them.

    The first run (also the trace's example) pads the end of its first row (`attention_mask` 0);
    the second has no padding. Sequences are cut to the model's longest.
    """
    import torch

    from prunecli.models.hf import max_positions

    vocab = model.get_input_embeddings().num_embeddings
    longest = max_positions(model) or max(t for _, t in SHAPES)
    rng = np.random.default_rng(seed)
    runs = []
    for i, (batch, length) in enumerate(SHAPES):
        batch, length = static_batch or batch, min(length, longest)
        ids = rng.integers(0, vocab, (batch, length), dtype=np.int64)  # (batch, sequence)
        mask = np.ones_like(ids)
        if i == 0:
            mask[0, max(1, length - 3) :] = 0  # right padding keeps every causal query row unmasked
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        runs.append(({"input_ids": ids, "attention_mask": mask}, torch_outputs([logits_of(out)])))
    return runs


def _logits_module(model: torch.nn.Module) -> torch.nn.Module:
    """`model` behind `forward(input_ids, attention_mask)` -> its logits (batch, sequence, vocabulary)."""
    from torch import nn

    class CausalLMLogits(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model  # the PREFIX of the exported names

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return logits_of(self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))

    return CausalLMLogits(model).eval()


def _strip_prefix(proto: onnx.ModelProto, prefix: str) -> None:
    """Rename the initializers `prefix`NAME to NAME, and the Identity aliases of them, in place."""
    graph = proto.graph
    names = {i.name for i in graph.initializer}
    aliases = {n.output[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in names}
    renamed = {n: n[len(prefix) :] for n in names | aliases if n.startswith(prefix)}
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | names
    if set(renamed.values()) & (taken - set(renamed)):
        return  # a name would clash: keep the exporter's names
    for init in graph.initializer:
        init.name = renamed.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [renamed.get(v, v) for v in node.input]
        node.output[:] = [renamed.get(v, v) for v in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)


def _transformers_folder() -> str:
    import transformers

    return str(Path(transformers.__file__).parent) + "/"
