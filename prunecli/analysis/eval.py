"""Evaluation on held-out data: how well a (pruned) model still does, and how much it lost.

- A classifier: top-1 accuracy over every example of a labelled data file, overall and per class
  (classes 0..the largest label), evaluated in order, `batch_size` examples at a time.
- A causal language model: perplexity exp(mean next-token NLL) over every token of a text
  (consecutive, non-overlapping windows of `seq_len` tokens) or over every row of token ids.
- Against a baseline (the dense model, evaluated on the same data): the accuracy drop overall and
  per class, and the worst class; or the perplexity ratio and relative increase.
- A gate (`Gate`): `max_drop` (accuracy points as a fraction; for a language model the relative
  perplexity increase) and `max_class_drop`; `check` lists what exceeded them.

Reports are plain JSON-able dicts. The model runs where its parameters are, in eval mode, without
gradients. torch is imported inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import InputError, ScoreError, UsageError
from prunecli.progress import NoProgress, Progress

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunecli.calibration.data import Calibration, Examples

CLASSIFICATION, LANGUAGE_MODELING = "classification", "language-modeling"
DEFAULT_BATCH = 256  # examples per forward pass (token data: calibration.tokens.DEFAULT_BATCH windows)
SLACK = 1e-9  # a drop equal to the limit passes, whatever the rounding of the two accuracies


def task_of(source: str) -> str:
    """The task a data source is for: token data means a language model, anything else a classifier."""
    from prunecli.calibration.tokens import is_token_source

    return LANGUAGE_MODELING if is_token_source(source) else CLASSIFICATION


@dataclass(frozen=True)
class Gate:
    """Limits on the loss against a baseline; None means unchecked.

    `max_drop`: accuracy points as a fraction (0.02: two points) for a classifier; the relative
    perplexity increase (0.1: 10% higher) for a language model. `max_class_drop`: accuracy points
    for any one class (classifiers only).
    """

    max_drop: float | None = None
    max_class_drop: float | None = None

    def validate(self, has_baseline: bool, task: str) -> None:
        """Refuse limits that are not finite numbers ≥ 0, or that have nothing to compare with."""
        for name in ("max_drop", "max_class_drop"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UsageError(f"`{name}` {value} is not a finite number ≥ 0",
                                 "give a fraction, e.g. 0.02 for two accuracy points",
                                 option=name, value=value, bounds=(0.0, math.inf))  # fmt: skip
        given = [n for n in ("max_drop", "max_class_drop") if getattr(self, n) is not None]
        if given and not has_baseline:
            raise UsageError(f"`{given[0]}` limits the loss against a baseline, and none was given",
                             "add `baseline` with the dense checkpoint", option=given[0])  # fmt: skip
        if self.max_class_drop is not None and task == LANGUAGE_MODELING:
            raise UsageError("`max_class_drop` is for classifiers; a language model has no classes",
                             "use `max_drop` (the relative perplexity increase)",
                             option="max_class_drop", value=self.max_class_drop)  # fmt: skip


@dataclass(frozen=True)
class EvalData:
    """What the models are evaluated on: every labelled example, or every token window."""

    task: str
    source: str
    fingerprint: str
    batch_size: int
    examples: Examples | None = None  # a classifier's
    tokens: Calibration | None = None  # a language model's (ids with PAD, next-token labels)


def load_eval_data(
    source: str,
    model: nn.Module,
    *,
    tokenizer_folder: Path | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    inputs_key: str | None = None,
    labels_key: str | None = None,
    trust_remote_code: bool = False,
) -> EvalData:
    """The data of `source`, all of it, checked against `model` where that takes the model.

    Args:
        source: labelled examples (`.npz/.npy/.safetensors/.pt`, read as calibration data is),
            or token data for a language model: `.txt`/`.jsonl` text (tokenized with the
            tokenizer in `tokenizer_folder`) or token ids (`input_ids`).
        batch_size: examples (default 256) or token windows (default 8) per forward pass.
        seq_len: tokens per window cut from text (default 2048, capped at the model's maximum).
    """
    from prunecli.calibration.data import SYNTHETIC, load_examples
    from prunecli.calibration.tokens import DEFAULT_BATCH as TOKEN_BATCH
    from prunecli.calibration.tokens import load_token_windows
    from prunecli.models.hf import max_positions

    if batch_size is not None and batch_size < 1:
        raise UsageError(f"`batch_size` must be at least 1, got {batch_size}", "e.g. `batch_size` 256",
                         option="batch_size", value=batch_size, bounds=(1, math.inf))  # fmt: skip
    if task_of(source) == LANGUAGE_MODELING:
        for name, key in (("inputs_key", inputs_key), ("labels_key", labels_key)):
            if key is not None:
                raise UsageError(f"`{name}` names arrays of labelled examples, and {source} is token data",
                                 f"drop `{name}`", option=name, value=key)  # fmt: skip
        embeddings = getattr(model, "get_input_embeddings", lambda: None)()
        tokens = load_token_windows(
            source, tokenizer_folder=tokenizer_folder, vocab_size=getattr(embeddings, "num_embeddings", None),
            max_len=max_positions(model), seq_len=seq_len, batch_size=batch_size or TOKEN_BATCH,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
        return EvalData(
            LANGUAGE_MODELING, source, tokens.fingerprint, batch_size or TOKEN_BATCH, tokens=tokens
        )
    if seq_len is not None:
        raise UsageError(f"`seq_len` is for token data, and {source} is not", "drop `seq_len`",
                         option="seq_len", value=seq_len)  # fmt: skip
    if source.partition(":")[0] in SYNTHETIC:
        raise UsageError(f"{source} has no labels to measure accuracy against",
                         "give a file of inputs and labels, e.g. test.npz",
                         option="data", value=source)  # fmt: skip
    examples = load_examples(source, inputs_key=inputs_key, labels_key=labels_key)
    if examples.labels is None:
        raise InputError(
            f"{source} has no labels, so accuracy cannot be measured",
            "save labels beside the inputs (labels or y), or name them with `labels_key`",
        )
    return EvalData(
        CLASSIFICATION, source, examples.fingerprint, batch_size or DEFAULT_BATCH, examples=examples
    )


def evaluate(model: nn.Module, data: EvalData, progress: Progress | None = None) -> dict[str, Any]:
    """The model's accuracy (per class too) or perplexity on `data`, on the model's device.

    Returns, for a classifier, `task`, `examples`, `correct`, `accuracy` and `classes` (one
    record per class 0..the largest label: `class`, `examples`, `correct`, `accuracy`, None for a
    class without examples); for a language model `task`, `windows`, `seq_len`, `tokens` (the
    tokens predicted), `nll` (their mean negative log-likelihood) and `perplexity` (exp(nll)).

    Example:
        >>> data = load_eval_data("test.npz", model)
        >>> evaluate(model, data)["classes"][3]  # doctest: +SKIP
        {'class': 3, 'examples': 107, 'correct': 101, 'accuracy': 0.9439252336448598}
    """
    import torch

    progress = progress or NoProgress()
    mode = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if data.examples is not None:
                return _accuracy(model, data.examples, data.batch_size, progress)
            assert data.tokens is not None
            return _perplexity(model, data.tokens, progress)
    finally:
        model.train(mode)


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model computes: its first parameter's device and floating dtype."""
    import torch

    params = [p for p in model.parameters() if p.is_floating_point()] or list(model.parameters())
    if not params:
        return torch.device("cpu"), torch.float32
    return params[0].device, params[0].dtype if params[0].is_floating_point() else torch.float32


def _logits(model: nn.Module, inputs: torch.Tensor, first: bool, source: str) -> torch.Tensor:
    """The model's logits for a batch; on the first batch, inputs it rejects are an input error."""
    import torch

    from prunecli.calibration.forward import forward

    try:
        logits = forward(model, inputs)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        if not first:
            raise
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:150]
        raise InputError(f"examples of {source} with shape {list(inputs.shape[1:])} do not fit the model "
                         f"({reason})", "check `data` against `arch`") from None  # fmt: skip
    if not bool(torch.isfinite(logits).all()):
        raise ScoreError(f"the model's outputs on {source} contain NaN or infinite values",
                         "check the checkpoint's weights, or use `dtype` float32")  # fmt: skip
    return logits


def _accuracy(model: nn.Module, examples: Examples, batch_size: int, progress: Progress) -> dict[str, Any]:
    device, dtype = _placement(model)
    labels = examples.labels
    assert labels is not None
    classes = int(labels.max()) + 1
    correct = np.zeros(classes, dtype=np.int64)
    progress.stage("evaluating", -(-len(labels) // batch_size))
    for i, (x, y) in enumerate(examples.batches(batch_size)):
        logits = _logits(model, x.to(device, dtype), i == 0, examples.source)
        if i == 0:
            _check_outputs(logits, classes, examples.source)
        hit = (logits.argmax(dim=1).cpu() == y).numpy()
        correct += np.bincount(y.numpy()[hit], minlength=classes)
        progress.advance()
    counts = np.bincount(labels, minlength=classes)
    records = [
        {"class": c, "examples": int(counts[c]), "correct": int(correct[c]),
         "accuracy": float(correct[c] / counts[c]) if counts[c] else None}
        for c in range(classes)
    ]  # fmt: skip
    total = int(correct.sum())
    return {"task": CLASSIFICATION, "examples": len(labels), "correct": total,
            "accuracy": total / len(labels), "classes": records}  # fmt: skip


def _check_outputs(logits: torch.Tensor, classes: int, source: str) -> None:
    """A classifier's (batch, classes) logits, with a class for every label."""
    if logits.ndim != 2:
        raise InputError(
            f"the model's output has shape {list(logits.shape)}, not (batch, classes)",
            "evaluate a classifier on labelled examples, a language model on token data",
        )
    if classes > logits.shape[1]:
        raise InputError(
            f"labels in {source} go up to {classes - 1}, but the model has {logits.shape[1]} classes",
            f"use data labelled 0..{logits.shape[1] - 1}, or the model those labels belong to",
        )


def _perplexity(model: nn.Module, tokens: Calibration, progress: Progress) -> dict[str, Any]:
    import torch.nn.functional as F

    from prunecli.calibration.losses import IGNORE

    device, _ = _placement(model)
    nll, count = 0.0, 0
    progress.stage("evaluating", len(tokens.batches))
    for i, (ids, labels) in enumerate(tokens.batches):
        assert labels is not None
        logits = _logits(model, ids.to(device), i == 0, tokens.source)  # (B, T, V)
        if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
            raise InputError(f"the model's output has shape {list(logits.shape)}, not (batch, tokens, "
                             "vocabulary)", "evaluate a causal language model on token data")  # fmt: skip
        flat = logits.reshape(-1, logits.shape[-1]).float()
        target = labels.to(device).reshape(-1)
        nll += float(F.cross_entropy(flat, target, ignore_index=IGNORE, reduction="sum").double())
        count += int((target != IGNORE).sum())
        progress.advance()
    if count == 0:
        raise InputError(f"{tokens.source} leaves no token to predict (every window holds one token)",
                         "give more text, or longer rows")  # fmt: skip
    mean = nll / count
    return {"task": LANGUAGE_MODELING, "windows": sum(len(x) for x, _ in tokens.batches),
            "seq_len": tokens.example_shape[0], "tokens": count, "nll": mean,
            "perplexity": math.exp(min(mean, 709.0))}  # fmt: skip


def with_baseline(report: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """`report` with `baseline` (the same data's report on the reference model) and the loss.

    A classifier gains per class `baseline_accuracy` and `drop` (baseline − this; positive is
    worse), and `drop` and `worst_class` (the class that dropped most; the lowest on a tie)
    overall. A language model gains `perplexity_ratio` (this / baseline) and
    `perplexity_increase` (the ratio − 1). Without a baseline every one of these is None, so a
    report always has the same keys.
    """
    if baseline is not None and report["task"] != baseline["task"]:
        raise InputError("the checkpoint and the baseline give different kinds of output",
                         "compare two checkpoints of one model")  # fmt: skip
    summary = (
        None if baseline is None else {k: v for k, v in baseline.items() if k not in ("task", "classes")}
    )
    out = {**report, "baseline": summary}
    if report["task"] == LANGUAGE_MODELING:
        ratio = None if baseline is None else report["perplexity"] / baseline["perplexity"]
        return {**out, "perplexity_ratio": ratio, "perplexity_increase": None if ratio is None else ratio - 1}
    theirs = baseline["classes"] if baseline else [{"accuracy": None}] * len(report["classes"])
    classes = []
    for mine, base in zip(report["classes"], theirs, strict=True):
        known = mine["accuracy"] is not None and base["accuracy"] is not None
        drop = base["accuracy"] - mine["accuracy"] if known else None
        classes.append({**mine, "baseline_accuracy": base["accuracy"], "drop": drop})
    if baseline is None:
        return {**out, "classes": classes, "drop": None, "worst_class": None}
    dropped = [c for c in classes if c["drop"] is not None]
    worst = max(dropped, key=lambda c: c["drop"])  # max keeps the first (lowest class) of equals
    return {**out, "classes": classes, "drop": baseline["accuracy"] - report["accuracy"],
            "worst_class": {"class": worst["class"], "drop": worst["drop"]}}  # fmt: skip


def check(report: dict[str, Any], gate: Gate) -> list[str]:
    """What exceeded the gate's limits, one sentence each (empty: passed, or nothing to check)."""
    failures = []
    if report["task"] == LANGUAGE_MODELING:
        increase = report.get("perplexity_increase")
        if gate.max_drop is not None and increase is not None and not increase <= gate.max_drop + SLACK:
            base, mine = report["baseline"]["perplexity"], report["perplexity"]
            failures.append(f"perplexity rose by {increase:.2%} ({base:.4g} -> {mine:.4g}), more than "
                            f"max-drop {gate.max_drop:g} (relative)")  # fmt: skip
        return failures
    drop = report.get("drop")
    if gate.max_drop is not None and drop is not None and drop > gate.max_drop + SLACK:
        base, mine = report["baseline"]["accuracy"], report["accuracy"]
        failures.append(f"accuracy dropped by {drop:.4f} ({base:.4f} -> {mine:.4f}), more than "
                        f"max-drop {gate.max_drop:g}")  # fmt: skip
    if gate.max_class_drop is not None and drop is not None:
        over = [
            c for c in report["classes"] if c["drop"] is not None and c["drop"] > gate.max_class_drop + SLACK
        ]
        if over:
            listed = ", ".join(f"class {c['class']} by {c['drop']:.4f}" for c in over)
            failures.append(f"{len(over)} class(es) dropped by more than max-class-drop "
                            f"{gate.max_class_drop:g}: {listed}")  # fmt: skip
    return failures
