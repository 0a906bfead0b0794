"""Peak memory of `prunecli score --method wanda` on a large stack of Linear layers.

Wanda needs no labels and no backward pass, so its memory should be that of inference: the
model, one batch of activations, and the input statistics. The figure reported is the
scoring process's peak RSS (ru_maxrss from wait4) over the model's bytes plus one batch of
activations, with a bare `import torch` process as the interpreter's own baseline.

Usage:
    python benchmarks/bench_wanda.py [--width 4096] [--depth 48] [--rows 128] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.3  # peak RSS at most this many times (model bytes + one batch of activations)


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{child.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--rows", type=int, default=128, help="calibration rows (one batch)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "wanda")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prunecli = [sys.executable, "-m", "prunecli"]
    spec = [
        "--arch",
        f"{ROOT / 'benchmarks' / 'stacked.py'}:stacked",
        "--arch-args",
        json.dumps({"width": args.width, "depth": args.depth}),
    ]
    ckpt, scores = args.work / "stacked.safetensors", args.work / "wanda.safetensors"
    init_wall, _ = measure([*prunecli, "init", *spec, "-o", str(ckpt), "--force", "-q"])
    _, baseline = measure([sys.executable, "-c", "import torch, prunecli.cli.app"])
    wall, peak = measure(
        [
            *prunecli,
            "score",
            str(ckpt),
            "-m",
            "wanda",
            *spec,
            "--data",
            f"random:{args.width}",
            "--batch-size",
            str(args.rows),
            "-o",
            str(scores),
            "--force",
            "-q",
        ]
    )
    params = args.depth * args.width * args.width + args.width * 10
    model_mib = params * 4 / 2**20
    activations_mib = 2 * args.rows * args.width * 4 / 2**20  # a layer's input and output
    ratio = peak / (model_mib + activations_mib)
    print(
        f"model: {params / 1e6:.1f}M fp32 parameters = {model_mib:,.0f} MiB; one batch of activations "
        f"({args.rows} rows): {activations_mib:.1f} MiB; init took {init_wall:.1f} s"
    )
    print(f"bare `import torch, prunecli.cli.app` process: {baseline:,.0f} MiB")
    print(
        f"prunecli score --method wanda: {wall:.1f} s, peak RSS {peak:,.0f} MiB = {ratio:.3f}x "
        f"(model + activations); target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'}"
    )
    if not args.keep:
        shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
