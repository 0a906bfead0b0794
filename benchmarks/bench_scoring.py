"""Scoring cost against its floor, the iterative methods against a plain reference loop, and the
exact top-k against torch's own selection.

Every figure is a ratio measured in the same run:
- SNIP and GraSP against one plain forward+backward pass of the same batch;
- the iterative methods (issue 17), each step against the forward+backward it needs: SynFlow
  in float64 (its default) against one forward+backward of its all-ones input in float64 and
  in float32, and in float32 against float32's; beside them the reference loop (float64, one
  global `torch.kthvalue` over every weight per step, as the Synaptic-Flow code does); FORCE
  and Iter-SNIP against one forward+backward of their calibration batch. Measurements are
  interleaved and the best of `--repeat` is kept;
- `prune --method synflow` as a whole process against the reference loop as a whole process
  (load, loop, save), interleaved, with their masks compared (`--process`);
- `prunecli.scoring.topk` against `torch.kthvalue` and `torch.topk` over the concatenated
  scores (the selection a naive implementation would do each step).

Usage:
    python benchmarks/bench_scoring.py [--device cuda] [--quick] [--steps 20] [--repeat 3]
    python benchmarks/bench_scoring.py --only iterative --models vgg16,resnet18 --batch 32 \
        --shape resnet18=3x64x64
    python benchmarks/bench_scoring.py --process [--arch vgg16] [--steps 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call

from prunecli.io.safetensors_header import TensorInfo
from prunecli.models import default_input_shape, resolve_model
from prunecli.scoring.force import iterative_snip_scores
from prunecli.scoring.functional import leaf_weights
from prunecli.scoring.grasp import grasp_scores
from prunecli.scoring.snip import snip_scores
from prunecli.scoring.synflow import synflow_scores
from prunecli.scoring.topk import bit_keys, keep_largest, topk_masks
from prunecli.selection.prunable import looks_prunable


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> float:
    """Median wall time of `fn` after one warm-up, synchronising the device."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeat: int) -> dict[str, float]:
    """Best wall time of each of `fns`, run in turn `repeat` times (the first round also warms
    up). Each is a whole run: an iterative method's steps, or as many single passes of a floor,
    so both sides average over the same stretch of a shared machine's noise."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def passes(fn: Callable[[], object], count: int) -> Callable[[], None]:
    """`fn` run `count` times in a row: a floor timed over as many passes as the method's steps."""
    return lambda: [fn() for _ in range(count)] and None


def prunable(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if looks_prunable(n, TensorInfo("F32", tuple(p.shape)))]


def floor_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One plain forward+backward with respect to the prunable weights."""
    names = prunable(model)
    weights = leaf_weights(model, names)
    loss = torch.nn.functional.cross_entropy(functional_call(model, weights, (x,)), y)
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


# ------------------------------------------------------------------ the iterative methods (issue 17)


def positive_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    positive = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        for tensor in positive.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    return positive


def flow_floor(positive: torch.nn.Module, names: list[str], ones: torch.Tensor) -> Callable[[], object]:
    """One forward+backward of the all-ones input through |θ|, with respect to the prunable
    weights (the leaves are made once, outside the timed call)."""
    params = dict(positive.named_parameters())
    weights = {n: params[n].detach().clone().requires_grad_(True) for n in names}

    def run() -> object:
        flow = functional_call(positive, weights, (ones,), strict=False).sum()
        return torch.autograd.grad(flow, list(weights.values()))

    return run


def data_floor(
    model: torch.nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor
) -> Callable[[], object]:
    """One forward+backward of the calibration batch, with respect to the prunable weights."""
    weights = leaf_weights(model, names)

    def run() -> object:
        loss = torch.nn.functional.cross_entropy(functional_call(model, weights, (x,)), y)
        return torch.autograd.grad(loss, list(weights.values()))

    return run


def reference_loop(
    model: torch.nn.Module, names: list[str], shape: tuple[int, ...], density: float, iterations: int
) -> dict[str, torch.Tensor]:
    """SynFlow as the Synaptic-Flow code runs it, in float64: |θ| with the masks applied in the
    forward pass, then one global `torch.kthvalue` over every weight's score per step, and the
    weights at or below it pruned (`masks`: keep = score > threshold)."""
    positive = positive_copy(model, torch.float64)
    params = dict(positive.named_parameters())
    theta = {n: params[n].detach().clone().requires_grad_(True) for n in names}
    masks = {n: torch.ones_like(w) for n, w in theta.items()}
    ones = torch.ones((1, *shape), dtype=torch.float64, device=theta[names[0]].device)
    for t in range(1, iterations + 1):
        masked = {n: w * masks[n] for n, w in theta.items()}
        flow = functional_call(positive, masked, (ones,), strict=False).sum()
        grads = torch.autograd.grad(flow, list(theta.values()))
        scores = {n: (g * theta[n].detach()).abs() for n, g in zip(theta, grads, strict=True)}
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        prune = int((1.0 - density ** (t / iterations)) * flat.numel())
        if prune >= 1:
            threshold = torch.kthvalue(flat.cpu(), prune).values
            masks = {n: (s > threshold.to(s.device)).to(s.dtype) for n, s in scores.items()}
    return {n: m.bool() for n, m in masks.items()}


def mask_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> int:
    return sum(int((a[n].cpu() != b[n].cpu()).sum()) for n in a)


def bench_iterative(
    arch: str, batch: int, device: torch.device, steps: int, repeat: int, shape: tuple[int, ...] | None = None
) -> None:
    """Per-step cost of SynFlow, FORCE and Iter-SNIP against their forward+backward floors, and of
    the reference loop beside them."""
    from prunecli.models.init import initialize

    model = initialize(resolve_model(arch), "kaiming-normal", 0).to(device).eval().requires_grad_(False)
    names, shape = prunable(model), shape or default_input_shape(arch)
    model64 = copy.deepcopy(model).double()
    ones32 = torch.ones((1, *shape), device=device)
    density = 0.01
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    trained = copy.deepcopy(model).train()  # FORCE and Iter-SNIP score in train mode
    out: dict[str, object] = {}
    fns = {
        "floor32": passes(flow_floor(positive_copy(model, torch.float32), names, ones32), steps),
        "floor64": passes(flow_floor(positive_copy(model, torch.float64), names, ones32.double()), steps),
        "synflow64": lambda: out.__setitem__(
            "sf64", synflow_scores(model64, names, shape, density, steps)[1]
        ),
        "synflow32": lambda: out.__setitem__("sf32", synflow_scores(model, names, shape, density, steps)[1]),
        "reference": lambda: out.__setitem__("ref", reference_loop(model, names, shape, density, steps)),
        "data_floor": passes(data_floor(trained, names, x, y), steps),
        "force": lambda: iterative_snip_scores(trained, names, [(x, y)], 0.05, steps, revive=True),
        "iter_snip": lambda: iterative_snip_scores(trained, names, [(x, y)], 0.05, steps, revive=False),
    }
    step = {k: t / steps for k, t in interleaved(fns, device, repeat).items()}
    f32, f64, fb = step["floor32"], step["floor64"], step["data_floor"]
    size = "x".join(map(str, shape))
    print(
        f"{arch:10s} {size:9s} | {f32 * 1e3:7.1f} {f64 * 1e3:7.1f} ms ({f64 / f32:4.2f}x) | "
        f"fp64 {step['synflow64'] / f64:5.2f}x {step['synflow64'] / f32:5.2f}x | "
        f"fp32 {step['synflow32'] / f32:5.2f}x | "
        f"ref {step['reference'] / f64:5.2f}x {step['reference'] / f32:5.2f}x | "
        f"fp64/ref {step['synflow64'] / step['reference']:4.2f} | b{batch} {fb * 1e3:7.1f} ms | "
        f"FORCE {step['force'] / fb:5.2f}x | Iter-SNIP {step['iter_snip'] / fb:5.2f}x"
    )
    print(
        f"{'':10s} masks, bits differing: SynFlow fp64 vs the reference loop "
        f"{mask_difference(out['sf64'], out['ref'])}, SynFlow fp32 vs fp64 "
        f"{mask_difference(out['sf32'], out['sf64'])} (of {sum(m.numel() for m in out['sf64'].values()):,})"
    )


# ------------------------------------------------------------------ whole processes


def reference_process(checkpoint: str, arch: str, steps: int, sparsity: float, output: str) -> None:
    """The reference loop as a process of its own: load, float64, loop, save weights and masks."""
    from safetensors.torch import load_file, save_file

    model = resolve_model(arch)
    model.load_state_dict(load_file(checkpoint))
    model = model.double().eval().requires_grad_(False)
    names = prunable(model)
    masks = reference_loop(model, names, default_input_shape(arch), 1.0 - sparsity, steps)
    state = {n: t.float().contiguous() for n, t in model.state_dict().items()}
    for name, mask in masks.items():
        state[name] = state[name] * mask
    os.makedirs(output, exist_ok=True)
    save_file(state, os.path.join(output, "model.safetensors"))
    save_file({n: m.to(torch.uint8) for n, m in masks.items()}, os.path.join(output, "masks.safetensors"))


def run_child(command: list[str], threads: int | None) -> tuple[float, float]:
    """(wall s, CPU s) of one child process, from spawn to reap."""
    env = dict(os.environ, **({} if threads is None else {"OMP_NUM_THREADS": str(threads)}))
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status})")
    return wall, usage.ru_utime + usage.ru_stime


def bench_process(arch: str, steps: int, sparsity: float, repeat: int, threads: int | None) -> None:
    """`prunecli prune --method synflow` against the reference loop, each as a whole process."""
    import numpy as np
    from safetensors.numpy import load_file

    from prunecli.training.masks import read_masks

    work = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    ckpt = work / "init.safetensors"
    subprocess.run(
        [sys.executable, "-m", "prunecli", "init", "--arch", arch, "-o", str(ckpt), "--quiet"], check=True
    )
    ours = [sys.executable, "-m", "prunecli", "prune", str(ckpt), "-m", "synflow", "--arch", arch,
            "--iterations", str(steps), "--sparsity", str(sparsity), "-o", str(work / "ours"),
            "--force", "--quiet"]  # fmt: skip
    ref = [sys.executable, __file__, "--reference-process", str(ckpt), "--arch", arch, "--steps", str(steps),
           "--sparsity", str(sparsity), "--output", str(work / "ref")]  # fmt: skip
    rounds: dict[str, list[tuple[float, float]]] = {"prune": [], "reference": []}
    for r in range(repeat):
        order = [("prune", ours), ("reference", ref)]
        for name, command in order if r % 2 == 0 else order[::-1]:
            rounds[name].append(run_child(command, threads))
    for name, runs in rounds.items():
        walls = ", ".join(f"{w:.2f}" for w, _ in runs)
        cpu = f"{min(c for _, c in runs):.2f}–{max(c for _, c in runs):.2f}"
        print(f"{arch} {name:9s}: wall s {walls} | CPU s {cpu}")
    pairs = [p / q for (p, _), (q, _) in zip(rounds["prune"], rounds["reference"], strict=True)]
    best = min(w for w, _ in rounds["prune"]) / min(w for w, _ in rounds["reference"])
    each = ", ".join(f"{p:.2f}" for p in pairs)
    cpu = min(c for _, c in rounds["prune"]) / min(c for _, c in rounds["reference"])
    print(
        f"prune / reference loop: {best:.2f}x best of each; round by round {each}; "
        f"CPU s {cpu:.2f}x best of each"
    )
    mine, theirs = read_masks(work / "ours"), load_file(str(work / "ref" / "masks.safetensors"))
    differ = sum(int(np.count_nonzero(mine[n] != theirs[n].astype(bool))) for n in mine)
    kept = sum(int(m.sum()) for m in mine.values()), sum(int(m.sum()) for m in theirs.values())
    print(f"masks: {differ} bits differ; kept {kept[0]:,} (prune) and {kept[1]:,} (reference loop)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(driver peak RSS {peak:.0f} MiB; work in {work})")


# ------------------------------------------------------------------ selection alone


def bench_topk(numel: int, device: torch.device) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    parts = [torch.rand(numel // 8, generator=g, device=device) for _ in range(8)]
    k = numel // 20
    ours = timed(lambda: topk_masks(parts, k), device)
    flat_keys = bit_keys(torch.cat(parts))
    keep = torch.empty(numel, dtype=torch.bool, device=device)
    fast = timed(lambda: keep_largest(flat_keys, k, keep), device)
    flat = lambda: torch.cat(parts)  # noqa: E731 - the baseline pays for the concatenation too
    kth = timed(lambda: flat().kthvalue(numel - k + 1), device) if device.type == "cpu" else float("nan")
    top = timed(lambda: torch.topk(flat(), k), device)
    print(
        f"top-k of {numel / 1e6:6.1f}M float32 (keep 5%): topk_masks {ours * 1e3:8.1f} ms = "
        f"{ours / top:5.2f}x torch.topk, {ours / kth:5.2f}x torch.kthvalue (cpu only); "
        f"keep_largest on one buffer {fast * 1e3:7.1f} ms = {fast / top:5.2f}x torch.topk"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small models, 3 steps, batch 16 (seconds)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the iterative methods")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--models", default=None, help="comma-separated zoo names for the iterative table")
    parser.add_argument("--batch", type=int, default=None, help="calibration batch of FORCE and Iter-SNIP")
    parser.add_argument(
        "--shape", action="append", default=[], help="ARCH=CxHxW: input shape of the iterative table"
    )
    parser.add_argument("--only", choices=["oneshot", "iterative", "topk"], default=None)
    parser.add_argument("--process", action="store_true", help="prune vs the reference loop, whole processes")
    parser.add_argument("--arch", default="vgg16", help="model of --process")
    parser.add_argument("--sparsity", type=float, default=0.99, help="sparsity of --process")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--reference-process", metavar="CKPT", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_process:
        return reference_process(args.reference_process, args.arch, args.steps, args.sparsity, args.output)
    if args.process:
        return bench_process(args.arch, args.steps, args.sparsity, args.repeat, args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.batch, args.repeat = min(args.steps, 3), args.batch or 16, 1
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    cpu = device.type == "cpu"
    runs = [("lenet-300-100", 100), ("resnet20", 128)]
    if not args.quick:
        runs += [("vgg16", 128), ("resnet18", 64 if not cpu else 8)]
    if args.only in (None, "oneshot"):
        for arch, batch in runs:
            bench_model(arch, batch, device)
    if args.only in (None, "iterative"):
        models = args.models.split(",") if args.models else [a for a, _ in runs]
        shapes = {a: tuple(int(d) for d in size.split("x")) for a, size in (o.split("=") for o in args.shape)}
        print(f"iterative, {args.steps} steps, a step / its floor (best of {args.repeat}); SynFlow to 99%, "
              "FORCE and Iter-SNIP to 95%:")  # fmt: skip
        print(f"{'model':10s} {'input':9s} | flow floor fp32 fp64 | SynFlow fp64 / floor fp64, fp32 "
              "| fp32 / fp32 | reference / fp64, fp32 | fp64 / ref "
              "| data floor | FORCE, Iter-SNIP / it")  # fmt: skip
        for arch in models:
            batch = args.batch or dict(runs).get(arch, 8)
            bench_iterative(arch, batch, device, args.steps, args.repeat, shapes.get(arch))
    if args.only in (None, "topk"):
        for numel in [1_000_000] if args.quick else [1_000_000, 25_000_000, 100_000_000]:
            bench_topk(numel, device)


if __name__ == "__main__":
    main()
