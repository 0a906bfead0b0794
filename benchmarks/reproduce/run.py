"""Reproduce the pruning-at-initialisation findings on real MNIST with prunecli's own code paths.

For LeNet-300-100 and LeNet-5, each method, sparsity and seed: initialise (prunecli init) →
score (prunecli.pipelines.score, the code behind `prunecli score`) → apply (the code behind
`prunecli apply`) → train with masks held fixed (prunecli.attach_masks; Adam, the same
short schedule for every run) → test accuracy on the official 10,000 test digits.
Sanity checks of Frankle et al. 2021: layerwise-shuffled masks and inverted scores.

Every run is cached as one JSON line in WORK/results.jsonl, so an interrupted study resumes
where it stopped. `--quick` runs one seed, two sparsities and one epoch (minutes on 2 CPU
cores). `report.py` turns the cache into docs/results.md and the plot.

Usage:
    python benchmarks/reproduce/run.py [--quick] [--work DIR] [--epochs N] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from prunecli.analysis.inspect import summarize
from prunecli.io.checkpoints import load_state_dict
from prunecli.models import resolve_model
from prunecli.models.initialize import init_checkpoint
from prunecli.pipelines.apply import apply
from prunecli.pipelines.score import resolve_device
from prunecli.pipelines.score import score as score_checkpoint
from prunecli.scoring import get_method
from prunecli.selection.spec import SelectionSpec
from prunecli.training.masks import attach_masks

ROOT = Path(__file__).resolve().parents[2]
MNIST = Path(os.environ.get("PRUNECLI_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
ARCHS = ("lenet-300-100", "lenet-5")
METHODS = ("random", "magnitude", "snip", "grasp", "synflow", "force", "iter-snip")
SPARSITIES = (0.9, 0.95, 0.98, 0.99, 0.995)
SANITY = (("snip", 0.95), ("snip", 0.98), ("synflow", 0.95), ("synflow", 0.98))
MEAN, STD = 0.1307, 0.3081  # the usual MNIST normalisation


@dataclass(frozen=True)
class Run:
    arch: str
    method: str
    sparsity: float
    seed: int
    ablation: str = "none"  # none | shuffle | invert

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.method}/{self.sparsity}/{self.seed}/{self.ablation}"


def load_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(MNIST / f"{split}.npz") as data:
        images = (data["images"].astype(np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(data["labels"].astype(np.int64))


def calibration_file(work: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """The normalised training digits as an .npz that `--data` reads (float32: not rescaled).

    Written to a temporary name and renamed, so parallel shards never read a partial file.
    """
    path = work / "mnist-train-normalised.npz"
    if not path.exists():
        tmp = work / f".calib-{os.getpid()}.npz"
        np.savez(tmp, inputs=images.numpy(), labels=labels.numpy().astype(np.uint8))
        os.replace(tmp, path)
    return path


def score(run: Run, init: Path, calib: Path, out: Path, device: str) -> None:
    """Scores through the library call behind `prunecli score`; 100 examples a batch."""
    method = get_method(run.method)
    score_checkpoint(
        init, method, out, arch=run.arch if method.needs_model else None, device=device, seed=run.seed,
        data=str(calib) if method.data == "batches" else None, batch_size=100,
        per_class=10 if run.method == "grasp" else None,  # GraSP's class-balanced 10 per class
        sparsity=run.sparsity if method.iterative else None, force=True,
    )  # fmt: skip


def train_and_test(run: Run, folder: Path, data: dict, epochs: int, device: torch.device) -> float:
    torch.manual_seed(run.seed)
    model = resolve_model(run.arch)
    model.load_state_dict(load_state_dict(folder / "model.safetensors"))
    attach_masks(model, folder)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = (t.to(device) for t in data["train"])
    generator = torch.Generator().manual_seed(run.seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).to(device).split(128):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    correct = 0
    tx, ty = data["test"]
    with torch.no_grad():
        for start in range(0, len(tx), 1000):
            logits = model(tx[start : start + 1000].to(device))
            correct += int((logits.argmax(1).cpu() == ty[start : start + 1000]).sum())
    return correct / len(tx)


def execute(run: Run, work: Path, calib: Path, data: dict, epochs: int, device: torch.device) -> dict:
    started = time.perf_counter()
    folder = work / "runs" / run.key.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    init = folder / "init.safetensors"
    init_checkpoint(run.arch, init, seed=run.seed, force=True)
    scores = folder / "scores.safetensors"
    score(run, init, calib, scores, device.type)
    spec = SelectionSpec(
        density=1.0 - run.sparsity, shuffle=run.ablation == "shuffle", invert=run.ablation == "invert"
    )
    out = folder / "out"
    apply(init, out, spec, scores=scores, seed=run.seed, force=True)
    summary = summarize(out)
    accuracy = train_and_test(run, out, data, epochs, device)
    return {
        **asdict(run),
        "accuracy": accuracy,
        "epochs": epochs,
        "densities": {t["name"]: t["density"] for t in summary["tensors"] if t["pruned"]},
        "collapsed": summary["collapsed"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def plan(quick: bool) -> list[Run]:
    seeds = (0,) if quick else (0, 1, 2)
    sparsities = (0.9, 0.99) if quick else SPARSITIES
    runs = [Run(a, m, s, seed) for a in ARCHS for m in METHODS for s in sparsities for seed in seeds]
    for arch in ARCHS:
        for method, sparsity in SANITY if not quick else SANITY[:1]:
            runs += [Run(arch, method, sparsity, seed, ab) for ab in ("shuffle", "invert") for seed in seeds]
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, two sparsities, one epoch")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "reproduce")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 5; quick 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default=None, help="run only keys containing this text (e.g. lenet-5/snip)")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many new runs")
    parser.add_argument("--train-examples", type=int, default=None, help="train on the first N digits only")
    parser.add_argument(
        "--shard", default="0/1", help="I/N: run every N-th run starting at I (parallel workers)"
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="results file (default WORK/results.jsonl)"
    )
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 5)
    device = resolve_device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.results or args.work / "results.jsonl"
    done = set()
    for path in [cache, *args.work.glob("results*.jsonl")]:
        if path.exists():
            done |= {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}
    index, count = (int(p) for p in args.shard.split("/"))
    data = {"train": load_mnist("train"), "test": load_mnist("test")}
    if args.train_examples:
        data["train"] = tuple(t[: args.train_examples] for t in data["train"])
    calib = calibration_file(args.work, *data["train"])  # shards race benignly: same bytes
    todo = [
        r
        for r in plan(args.quick)[index::count]
        if r.key not in done and (args.only is None or args.only in r.key)
    ]
    todo = todo[: args.limit] if args.limit is not None else todo
    print(f"{len(done)} runs cached, {len(todo)} to go, on {device}, {epochs} epoch(s) each", flush=True)
    for i, run in enumerate(todo, 1):
        result = execute(run, args.work, calib, data, epochs, device)
        with cache.open("a") as f:
            f.write(json.dumps({"key": run.key, **result}) + "\n")
        print(
            f"[{i}/{len(todo)}] {run.key}: accuracy {result['accuracy']:.4f} ({result['seconds']} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
