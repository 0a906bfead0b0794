"""Scoring cost against its floor, and the exact top-k against torch's own selection.

Every figure is a ratio measured in the same run:
- SNIP and GraSP against one plain forward+backward pass of the same batch;
- one SynFlow iteration against one forward+backward of its all-ones input, and the share
  of the iteration spent selecting;
- `prunecli.scoring.topk.topk_masks` against `torch.kthvalue` and `torch.topk` over the
  concatenated scores (the selection a naive implementation would do each step).

Usage:
    python benchmarks/bench_scoring.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from prunecli.io.safetensors_header import TensorInfo
from prunecli.models import default_input_shape, resolve_model
from prunecli.scoring.functional import leaf_weights
from prunecli.scoring.grasp import grasp_scores
from prunecli.scoring.snip import snip_scores
from prunecli.scoring.synflow import synflow_scores
from prunecli.scoring.topk import topk_masks
from prunecli.selection.prunable import looks_prunable


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> float:
    """Median wall time of `fn` after one warm-up, synchronising the device."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def prunable(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if looks_prunable(n, TensorInfo("F32", tuple(p.shape)))]


def floor_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One plain forward+backward with respect to the prunable weights."""
    names = prunable(model)
    weights = leaf_weights(model, names)
    loss = torch.nn.functional.cross_entropy(torch.func.functional_call(model, weights, (x,)), y)
    torch.autograd.grad(loss, list(weights.values()))


def bench_model(arch: str, batch: int, device: torch.device) -> None:
    torch.manual_seed(0)
    model = resolve_model(arch).to(device).eval().requires_grad_(False)
    shape = default_input_shape(arch)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    names = prunable(model)
    base = timed(lambda: floor_pass(model, x, y), device)
    snip = timed(lambda: snip_scores(model, names, [(x, y)]), device)
    grasp = timed(lambda: grasp_scores(model, names, [(x, y)]), device)
    print(
        f"{arch:10s} batch {batch:4d}: forward+backward {base * 1e3:8.1f} ms | "
        f"SNIP {snip / base:5.2f}x | GraSP {grasp / base:5.2f}x"
    )
    model64 = model.double()
    ones = torch.ones(1, *shape, device=device, dtype=torch.float64)

    def flow_floor() -> None:
        w = leaf_weights(model64, names)
        torch.autograd.grad(torch.func.functional_call(model64, w, (ones,)).sum(), list(w.values()))

    steps = 10
    flow_base = timed(flow_floor, device)
    iterative = timed(
        lambda: synflow_scores(model64, names, shape, density=0.01, iterations=steps), device, 1
    )
    scores = {n: torch.rand_like(p) for n, p in model64.named_parameters() if n in names}
    select = timed(
        lambda: topk_masks(list(scores.values()), int(0.01 * sum(s.numel() for s in scores.values()))), device
    )
    per_step = iterative / steps
    print(
        f"{'':10s} SynFlow fp64 step {per_step * 1e3:8.1f} ms = {per_step / flow_base:5.2f}x its "
        f"forward+backward; selection {select / per_step:5.1%} of a step"
    )


def bench_topk(numel: int, device: torch.device) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    parts = [torch.rand(numel // 8, generator=g, device=device) for _ in range(8)]
    k = numel // 20
    ours = timed(lambda: topk_masks(parts, k), device)
    flat = lambda: torch.cat(parts)  # noqa: E731 - the baseline pays for the concatenation too
    kth = timed(lambda: flat().kthvalue(numel - k + 1), device) if device.type == "cpu" else float("nan")
    top = timed(lambda: torch.topk(flat(), k), device)
    print(
        f"top-k of {numel / 1e6:6.1f}M float32 (keep 5%): prunecli masks {ours * 1e3:8.1f} ms = "
        f"{ours / top:5.2f}x torch.topk (values+indices only), {ours / kth:5.2f}x torch.kthvalue (cpu only)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small models only (seconds)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    runs = [("lenet-300-100", 100), ("resnet20", 128)]
    if not args.quick:
        runs += [("vgg16", 128), ("resnet18", 64 if device.type == "cuda" else 8)]
    for arch, batch in runs:
        bench_model(arch, batch, device)
    for numel in [1_000_000] if args.quick else [1_000_000, 25_000_000, 100_000_000]:
        bench_topk(numel, device)


if __name__ == "__main__":
    main()
