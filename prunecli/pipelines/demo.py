"""Library side of `prunecli demo`: SNIP vs magnitude vs random on LeNet-5 and real digits.

The data ships with the package (`prunecli/assets/mnist_demo.npz`: 2,000 training and 1,000
test digits from MNIST, CC BY-SA 3.0), so the demo needs no download and no `../shared`.
The CLI prunes the same initial weights with each method through the code paths users run
(init → score → apply); this module trains each result briefly with its masks attached.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

DEMO_ARCH = "lenet-5"
DEMO_METHODS = ("snip", "magnitude", "random")
DEMO_SPARSITY = 0.95


def demo_data_path() -> Path:
    """The packaged digits (an .npz with images/labels and test_images/test_labels)."""
    return Path(str(resources.files("prunecli") / "assets" / "mnist_demo.npz"))


def _test_set() -> tuple[Any, Any]:
    import numpy as np
    import torch

    with np.load(demo_data_path()) as data:
        images = torch.from_numpy(data["test_images"].astype(np.float32) / 255.0).unsqueeze(1)
        return images, torch.from_numpy(data["test_labels"].astype(np.int64))


def train_and_test(folder: Path, epochs: int, seed: int) -> float:
    """Train the pruned model with masks attached (Adam, batch 64); return test accuracy."""
    import torch

    from prunecli.calibration.data import load_calibration
    from prunecli.io.checkpoints import load_state_dict
    from prunecli.models import resolve_model
    from prunecli.training.masks import attach_masks

    torch.manual_seed(seed)
    model = resolve_model(DEMO_ARCH)
    model.load_state_dict(load_state_dict(folder / "model.safetensors"))
    attach_masks(model, folder)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = load_calibration(str(demo_data_path()), batch_size=64, num_batches=31, seed=seed)
    model.train()
    for _ in range(epochs):
        for inputs, labels in train.batches:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    model.eval()
    images, labels = _test_set()
    with torch.no_grad():
        return float((model(images).argmax(dim=1) == labels).float().mean())
