"""The training command of the lottery-ticket study: train LeNet-300-100 with its masks held fixed.

`prunecli lottery` runs it once per round as `train_ticket.py {weights} {masks} {out} ...`, and
`tickets.py` runs the same command on every other network it compares (random re-initialisations,
intersections, pruning-at-init masks), so each one is trained in exactly the same way: Adam,
the same learning rate, batch size, epochs and data order for a given `--seed`. The pruned
weights stay exactly zero through `prunecli.attach_masks`.

Pixels are scaled to [0, 1] (x / 255), as `prunecli eval` reads uint8 images, so the test
digits go to `prunecli eval --data` unchanged.

Usage:
    python benchmarks/reproduce/train_ticket.py WEIGHTS MASKS OUT --data train.npz
        [--epochs 2] [--seed 0] [--examples N] [--max-steps N] [--batch-size 128] [--lr 1.2e-3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from prunecli import attach_masks
from prunecli.io.checkpoints import load_state_dict, save_state_dict
from prunecli.models import build_model

ARCH = "lenet-300-100"


def load_digits(path: Path, examples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `examples` digits of an .npz with uint8 `images` and `labels`, pixels in [0, 1]."""
    with np.load(path) as data:
        images, labels = data["images"], data["labels"]
        if examples is not None:
            images, labels = images[:examples], labels[:examples]
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        return x, torch.from_numpy(labels.astype(np.int64))


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
    max_steps: int | None = None,
) -> tuple[int, float]:
    """Adam on shuffled mini-batches; the seed fixes the data order. Returns (steps, last loss)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # after attach_masks: no stale state
    generator = torch.Generator().manual_seed(seed)
    steps, loss = 0, torch.tensor(float("nan"))
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            if max_steps is not None and steps >= max_steps:
                return steps, loss.item()
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            steps += 1
    return steps, loss.item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="the (masked) weights to train from")
    parser.add_argument("masks", type=Path, help="their mask set: an apply/lottery round folder or manifest")
    parser.add_argument("out", type=Path, help="where the trained state dict is written (safetensors)")
    parser.add_argument("--data", type=Path, required=True, help=".npz with uint8 images and labels")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="data order")
    parser.add_argument("--examples", type=int, default=None, help="train on the first N digits only")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1.2e-3)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    x, y = load_digits(args.data, args.examples)
    model = build_model(ARCH)
    model.load_state_dict(load_state_dict(args.weights))
    attach_masks(model, args.masks)
    steps, loss = train(
        model, x, y, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
        max_steps=args.max_steps,
    )  # fmt: skip
    save_state_dict(model.state_dict(), args.out, {}, force=True)
    print(
        f"trained {args.weights} on {len(x)} digits: {steps} steps, last loss {loss:.4f}, "
        f"{time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
