"""The study's language model: a small Llama trained here on CPU, and held-out perplexity.

`train` runs AdamW with linear warmup and cosine decay on random windows of the train split,
seeded, and prints the train loss and held-out perplexity as it goes. `perplexity` is the
exponential of the mean next-token NLL over non-overlapping windows of the training length
(the first token of each window is context only).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    """The Llama configuration's free numbers (the rest are transformers' Llama defaults)."""

    vocab_size: int = 4096
    hidden_size: int = 512
    intermediate_size: int = 1536
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    seq_len: int = 128


@dataclass(frozen=True)
class Schedule:
    steps: int = 280
    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 70


def build(shape: Shape, bos: int, eos: int):
    """A freshly initialised LlamaForCausalLM (float32, untied lm_head), seeded by the caller."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.seq_len,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
        dtype="float32",
    )
    return LlamaForCausalLM(config)


def count_params(model) -> dict[str, int]:
    """Total parameters, and those of the Linear weights inside the decoder blocks (the pruned set)."""
    import torch

    blocks = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")
    )
    return {"total": sum(p.numel() for p in model.parameters()), "decoder_linear": blocks}


def perplexity(model, windows: np.ndarray, batch_size: int = 16) -> tuple[float, int]:
    """(exp of the mean next-token NLL, tokens scored) over the given (N, T) windows."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = torch.from_numpy(windows[start : start + batch_size])
            logits = model(input_ids=ids).logits[:, :-1].float()  # (B, T-1, V)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += ids[:, 1:].numel()
    return math.exp(total / count), count


def lr_at(step: int, schedule: Schedule) -> float:
    """Linear warmup to `lr`, then cosine down to `lr * min_lr_ratio` at the last step."""
    if step < schedule.warmup:
        return schedule.lr * (step + 1) / schedule.warmup
    progress = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
    floor = schedule.lr * schedule.min_lr_ratio
    return floor + (schedule.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, stream: np.ndarray, heldout: np.ndarray, schedule: Schedule, seq_len: int) -> dict:
    """Train in place; returns the log (loss and held-out perplexity by step, seconds, steps/s)."""
    import torch

    torch.manual_seed(schedule.seed)
    rng = np.random.default_rng(schedule.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=schedule.lr,
        betas=(0.9, 0.95),
    )
    log: dict = {"schedule": asdict(schedule), "loss": [], "heldout_ppl": []}
    started = time.perf_counter()
    for step in range(schedule.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        starts = rng.integers(0, len(stream) - seq_len + 1, size=schedule.batch_size)
        ids = torch.from_numpy(np.stack([stream[s : s + seq_len] for s in starts]))
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.clip)
        optimizer.step()
        log["loss"].append(round(loss.item(), 4))
        done = step + 1
        if done % schedule.eval_every == 0 or done == schedule.steps:
            ppl, _ = perplexity(model, heldout)
            log["heldout_ppl"].append([done, round(ppl, 3)])
            elapsed = time.perf_counter() - started
            recent = np.mean(log["loss"][-schedule.eval_every :])
            print(
                f"step {done}/{schedule.steps}: train loss {recent:.3f}, held-out ppl {ppl:.2f}, "
                f"{elapsed:.0f} s ({done / elapsed:.2f} steps/s)",
                flush=True,
            )
    log["seconds"] = round(time.perf_counter() - started, 1)
    log["steps_per_s"] = round(schedule.steps / log["seconds"], 3)
    return log
