#!/usr/bin/env python3
"""Block-by-block pruning of a deep Hugging Face Llama folder: wall time against one forward
pass, and peak memory against the checkpoint's size (issue 12).

What is measured, each as its own child process (wall time spawn..reap, peak RSS and CPU time
from `os.wait4`, and the CPU the rest of the machine used meanwhile):

- **the floor**: `AutoModelForCausalLM.from_pretrained(DIR)` in the checkpoint's dtype, then one
  forward pass of the calibration windows in the same batches under `torch.no_grad()`.
- **prunecli**, block by block (`prune` on a decoder folder runs `--sequential` by default):
  `prunecli prune DIR --method wanda --scope row --sparsity 0.5` and the same with
  `--method sparsegpt`.
- **imports only**: numpy, torch and transformers' Llama, which every command above pays.

Targets: sequential Wanda's wall time at most 1.3x the floor's; sequential peak RSS at most 0.3x
the checkpoint's size on disk, for a checkpoint of at least 24 blocks.

Why Wanda's wall cannot reach 1.0x the floor: block i's statistics come from its dense weights,
and block i+1's inputs from block i after it was pruned, so every block runs twice (once to
observe, once to propagate), as in the Wanda and SparseGPT papers' code and in llm-compressor.
The report therefore also gives the ratio against twice the floor's forward time plus its load.

The folder is written block by block (one shard per block, seeded normal weights), so a model
far larger than memory can be generated: `--size 7b --dtype bfloat16 --device cuda` writes a
Llama-2-7B-shaped folder (about 13 GB) for a GPU host.

    .venv/bin/python benchmarks/bench_sequential.py                 # 24 blocks, ~4.4 GB, minutes
    .venv/bin/python benchmarks/bench_sequential.py --layers 2 --hidden 256 --intermediate 688 \
        --methods wanda                                             # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_hf import ENV, import_stack, measure  # noqa: E402

DEFAULT_WORK = HERE / "_work" / "sequential"
MIB = 1024 * 1024
WALL_TARGET = 1.3  # issue 12: sequential Wanda's wall at most this many times one forward pass
RSS_TARGET = 0.3  # issue 12: sequential peak RSS at most this fraction of the checkpoint's size


@dataclasses.dataclass(frozen=True)
class Size:
    """A Llama config and its calibration windows."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    windows: int
    seq_len: int
    batch_size: int


SIZES = {
    # 1.09B parameters, 4.4 GB in float32: minutes on 2 CPU cores
    "deep": Size(2048, 5632, 24, 32, 4, 8000, 8, 64, 4),
    # Llama-2-7B's shape, with the papers' calibration set: for a GPU host
    "7b": Size(4096, 11008, 32, 32, 32, 32000, 128, 2048, 8),
}


# --------------------------------------------------------------------------------------------
# Hidden sub-commands, each run in a child process.
# --------------------------------------------------------------------------------------------


def worker_build(args: list[str]) -> None:
    """Write a seeded random Llama folder one block at a time (one shard per block), and token
    windows: the whole model is never in memory, so any size can be written."""
    size, folder, dtype_name, seed = Size(**json.loads(args[0])), Path(args[1]), args[2], int(args[3])
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.kv_heads, vocab_size=size.vocab,
        max_position_embeddings=max(2048, size.seq_len), tie_word_embeddings=False, dtype=dtype_name,
        architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in LlamaForCausalLM(config).state_dict().items()}
    dtype = getattr(torch, dtype_name)
    groups: dict[str, list[str]] = {}
    for name in shapes:
        parts = name.split(".")
        key = f"layers-{int(parts[2]):03d}" if parts[:2] == ["model", "layers"] else "outside"
        groups.setdefault(key, []).append(name)
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for key, names in groups.items():
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shapes[name], dtype=dtype)
            else:
                tensors[name] = (torch.randn(shapes[name], generator=generator) * 0.02).to(dtype)
            total += tensors[name].numel() * tensors[name].element_size()
        file = f"model-{key}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(str(folder))
    ids = np.random.default_rng(seed).integers(
        0, size.vocab, size=(size.windows, size.seq_len), dtype=np.int64
    )
    np.savez(folder.parent / "tokens.npz", input_ids=ids)


def worker_imports(args: list[str]) -> None:
    import_stack()


def worker_floor(args: list[str]) -> None:
    """Load the folder in its dtype and run one forward pass over every window, in batches."""
    folder, tokens, batch_size, device, dtype_name, out = (
        Path(args[0]), Path(args[1]), int(args[2]), args[3], args[4], Path(args[5]),
    )  # fmt: skip
    start = time.perf_counter()
    import_stack()
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    imported = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype_name))
    model = model.to(device).eval()
    loaded = time.perf_counter()
    with np.load(tokens) as archive:
        ids = torch.from_numpy(archive["input_ids"])
    with torch.no_grad():
        for batch in ids.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    done = time.perf_counter()
    phases = {"import_s": imported - start, "load_s": loaded - imported, "forward_s": done - loaded}
    if device.startswith("cuda"):
        phases["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
    out.write_text(json.dumps(phases))


WORKERS = {"_build": worker_build, "_imports": worker_imports, "_floor": worker_floor}


# --------------------------------------------------------------------------------------------
# The driver (imports neither numpy nor torch, so its own RSS stays small).
# --------------------------------------------------------------------------------------------


def worker_argv(name: str, *args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), name, *(str(a) for a in args)]


def prunecli_argv(opts: argparse.Namespace, method: str, out: Path) -> list[str]:
    script = Path(sys.executable).parent / "prunecli"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "prunecli"]
    scope = ["--scope", "row"] if method == "wanda" else []
    return [
        *command, "prune", str(opts.model), "--method", method, "--data", str(opts.tokens),
        "--sparsity", "0.5", *scope, "--dtype", opts.dtype, "--batch-size", str(opts.size.batch_size),
        "--device", opts.device, "-o", str(out), "--force", "--quiet",
    ]  # fmt: skip


def build(opts: argparse.Namespace, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Generate the folder and the tokens, unless the same specification is already there."""
    spec = json.dumps({"size": dataclasses.asdict(opts.size), "dtype": opts.dtype, "seed": opts.seed})
    stamp = opts.work / "spec.json"
    if stamp.exists() and stamp.read_text() == spec and opts.tokens.exists():
        return {"label": "build (reused)", "wall_s": 0.0}
    stamp.unlink(missing_ok=True)
    shutil.rmtree(opts.model, ignore_errors=True)
    sizes = json.dumps(dataclasses.asdict(opts.size))
    result = measure("build", worker_argv("_build", sizes, opts.model, opts.dtype, opts.seed), env, log)
    stamp.write_text(spec)
    return result


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="deep")
    for field in dataclasses.fields(Size):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="wanda,sparsegpt", help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    opts = parser.parse_args(argv)
    overrides = {f.name: getattr(opts, f.name) for f in dataclasses.fields(Size) if getattr(opts, f.name)}
    opts.size = dataclasses.replace(SIZES[opts.size], **overrides)
    opts.model, opts.tokens = opts.work / "model", opts.work / "tokens.npz"
    opts.methods = [m for m in opts.methods.split(",") if m]
    return opts


def report(opts: argparse.Namespace, size_bytes: int, runs: dict[str, dict[str, Any]]) -> list[str]:
    floor, phases = runs["floor"], runs["floor"]["phases"]
    two_passes = floor["wall_s"] + phases["forward_s"]  # the floor with its forward run twice
    lines = [
        f"checkpoint: {opts.size.layers} blocks, {size_bytes / MIB:,.0f} MiB ({opts.dtype}); "
        f"calibration {opts.size.windows} x {opts.size.seq_len} tokens, batch {opts.size.batch_size}; "
        f"device {opts.device}, {os.cpu_count()} CPUs",
        f"floor: {floor['wall_s']:.1f} s wall (import {phases['import_s']:.1f}, load {phases['load_s']:.1f}, "
        f"forward {phases['forward_s']:.1f}), {floor['rss_mib']:,.0f} MiB peak RSS",
        f"imports only: {runs['imports']['wall_s']:.1f} s, {runs['imports']['rss_mib']:,.0f} MiB",
        "",
        "| run | wall s | CPU s | others' CPU s | peak RSS MiB | wall / floor | wall / (floor + 1 forward) "
        "| RSS / checkpoint |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, run in runs.items():
        if key == "imports":
            continue
        lines.append(
            f"| {run['label']} | {run['wall_s']:.1f} | {run['cpu_s']:.1f} | {run['others_cpu_s']:.1f} "
            f"| {run['rss_mib']:,.0f} | {run['wall_s'] / floor['wall_s']:.2f} "
            f"| {run['wall_s'] / two_passes:.2f} | {run['rss_mib'] * MIB / size_bytes:.3f} |"
        )
    if "wanda" in runs:
        wall = runs["wanda"]["wall_s"] / floor["wall_s"]
        verdict = "met" if wall <= WALL_TARGET else "missed"
        lines.append(f"\nsequential Wanda wall / floor: {wall:.2f} (target <= {WALL_TARGET}: {verdict})")
    for method in opts.methods:
        share = runs[method]["rss_mib"] * MIB / size_bytes
        verdict = "met" if share <= RSS_TARGET else "missed"
        lines.append(
            f"sequential {method} peak RSS / checkpoint: {share:.3f} (target <= {RSS_TARGET}: {verdict})"
        )
    return lines


def main(argv: list[str]) -> int:
    if argv and argv[0] in WORKERS:
        WORKERS[argv[0]](argv[1:])
        return 0
    opts = parse_args(argv)
    opts.work.mkdir(parents=True, exist_ok=True)
    log = opts.work / "bench.log"
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    print(f"building the folder in {opts.work} ...", file=sys.stderr, flush=True)
    built = build(opts, env, log)
    size_bytes = checkpoint_bytes(opts.model)
    runs: dict[str, dict[str, Any]] = {}
    runs["imports"] = measure("imports only", worker_argv("_imports"), env, log)
    phases = opts.work / "floor.json"
    floor_args = (opts.model, opts.tokens, opts.size.batch_size, opts.device, opts.dtype, phases)
    runs["floor"] = measure("floor: load + one forward", worker_argv("_floor", *floor_args), env, log)
    runs["floor"]["phases"] = json.loads(phases.read_text())
    for method in opts.methods:
        print(f"prunecli prune --method {method} ...", file=sys.stderr, flush=True)
        argv_ = prunecli_argv(opts, method, opts.work / f"out_{method}")
        runs[method] = measure(f"prunecli {method}, sequential", argv_, env, log)
    lines = report(opts, size_bytes, runs)
    print("\n".join(lines))
    if opts.json:
        summary = {"size": dataclasses.asdict(opts.size), "dtype": opts.dtype, "device": opts.device,
                   "checkpoint_bytes": size_bytes, "build": built, "runs": runs}  # fmt: skip
        opts.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
