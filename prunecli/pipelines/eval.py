"""Evaluation end to end: checkpoint (+ baseline) + held-out data -> a report, gated.

`evaluate` is the one call behind `prunecli eval`. Each checkpoint is built and loaded as the
model-based methods load it (`loading.load_checkpoint_model`), moved to the device, and run on
every example or token of the data (`prunecli.analysis.eval`). The data is read once, with the
checkpoint's own tokenizer for text, so both models see the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli.analysis.eval import Gate, check, load_eval_data, task_of, with_baseline
from prunecli.analysis.eval import evaluate as evaluate_model
from prunecli.errors import UsageError
from prunecli.pipelines.loading import load_checkpoint_model, resolve_device
from prunecli.pipelines.score import COMPUTE_DTYPES
from prunecli.progress import NoProgress, Progress

if TYPE_CHECKING:
    import torch


def evaluate(
    checkpoint: Path | str,
    data: str,
    *,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    baseline: Path | str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    inputs_key: str | None = None,
    labels_key: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    max_drop: float | None = None,
    max_class_drop: float | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate `checkpoint` on `data`, against `baseline` when given, and check the limits.

    Args:
        checkpoint, baseline: a checkpoint file, an `apply` output folder or a Hugging Face model
            folder. `arch` (with `arch_args`) builds both; without it, a folder's `config.json`.
        data: labelled examples (accuracy) or token data (perplexity); see
            `prunecli.analysis.eval.load_eval_data` for it and `batch_size`, `seq_len` and the keys.
        device, dtype: where and in which precision the forward passes run (default float32).
        max_drop, max_class_drop: the gate (`prunecli.analysis.eval.Gate`); both need a baseline.

    Returns:
        The report of `prunecli.analysis.eval.evaluate` with `checkpoint`, `arch`, `data`,
        `data_fingerprint`, `device`, `dtype`, the baseline's fields (`with_baseline`), `checks`
        (`passed`, `failures`, `max_drop`, `max_class_drop`) and `notes` for the user.

    Example:
        >>> report = evaluate("out/", "test.npz", arch="lenet-300-100", baseline="init.safetensors",
        ...                   max_drop=0.02)
        >>> report["drop"], report["worst_class"], report["checks"]["failures"]  # doctest: +SKIP
    """
    gate = Gate(max_drop, max_class_drop)
    gate.validate(baseline is not None, task_of(data))
    if dtype not in (None, *COMPUTE_DTYPES):
        raise UsageError(f"unknown `dtype` {dtype!r}", f"use one of {', '.join(COMPUTE_DTYPES)}",
                         option="dtype", value=dtype, allowed=COMPUTE_DTYPES)  # fmt: skip
    import torch

    from prunecli.models.hf import is_hf_spec, spec_folder

    precision = dtype or "float32"
    place = (resolve_device(device), getattr(torch, precision))
    progress = progress or NoProgress()
    options = {"arch_args": dict(arch_args or {}), "trust_remote_code": trust_remote_code}
    model, used, notes = _loaded(Path(checkpoint), arch, options, place, progress)
    tokenizer = spec_folder(used) if is_hf_spec(used) else None
    samples = load_eval_data(
        data, model, tokenizer_folder=tokenizer, batch_size=batch_size, seq_len=seq_len,
        inputs_key=inputs_key, labels_key=labels_key, trust_remote_code=trust_remote_code,
    )  # fmt: skip
    report = {"checkpoint": str(checkpoint), "arch": used, **evaluate_model(model, samples, progress)}
    del model  # before the baseline is loaded
    reference = None
    if baseline is not None:
        model, used, more = _loaded(Path(baseline), arch, options, place, progress)
        notes += [f"baseline: {line}" for line in more]
        reference = {"checkpoint": str(baseline), "arch": used, **evaluate_model(model, samples, progress)}
    settings = {"data": data, "data_fingerprint": samples.fingerprint, "device": place[0].type,
                "dtype": precision}  # fmt: skip
    head = {key: report[key] for key in ("task", "checkpoint", "arch")}
    report = {**head, **settings, **with_baseline(report, reference)}
    failures = check(report, gate)
    report["checks"] = {"passed": not failures, "failures": failures, "max_drop": max_drop,
                        "max_class_drop": max_class_drop}  # fmt: skip
    report["notes"] = notes
    return report


def _loaded(
    checkpoint: Path,
    arch: str | None,
    options: dict[str, Any],
    place: tuple[torch.device, torch.dtype],
    progress: Progress,
) -> tuple[torch.nn.Module, str, list[str]]:
    """The checkpoint's model on the device, in the precision (a transformers model is built in it
    and keeps the buffers it wants in float32)."""
    from prunecli.models.hf import is_hf_spec

    device, dtype = place
    model, used, notes = load_checkpoint_model(checkpoint, arch, dtype=dtype, progress=progress, **options)
    model.to(device=device) if is_hf_spec(used) else model.to(device=device, dtype=dtype)
    return model.requires_grad_(False), used, notes
