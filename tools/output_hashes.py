"""The sha256 of every file a fixed set of prunecli runs writes: proof that a refactor changed nothing.

Record before a change, check after it, on the same machine and torch build:

    python tools/output_hashes.py record hashes.json
    python tools/output_hashes.py check hashes.json     # exit 1 and the differing files if any

The runs cover every selection rule (global, layer+ERK, --min-density, N:M, row, --structure,
--shuffle, --invert, LAMP scores) and the model-based methods (snip, grasp, synflow, force,
wanda) on LeNet-300-100 with the MNIST digits that ship with prunecli, plus an ONNX export.
Paths are relative to a scratch folder, so manifests do not depend on where it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = str(Path(__file__).resolve().parents[1] / "prunecli" / "assets" / "mnist_demo.npz")
MODEL = ["--arch", "lenet-300-100", "--data", "data.npz", "--batch-size", "64"]
RUNS: list[list[str]] = [
    ["init", "--arch", "lenet-300-100", "--seed", "3", "-o", "init.safetensors"],
    ["apply", "init.safetensors", "-m", "magnitude", "-s", "0.9", "-o", "global"],
    ["apply", "init.safetensors", "-m", "magnitude", "-s", "0.9", "--allocation", "erk", "-o", "layer-erk"],
    ["apply", "init.safetensors", "-m", "magnitude", "-s", "0.98", "--min-density", "0.05", "-o", "floors"],
    ["apply", "init.safetensors", "-m", "magnitude", "--pattern", "2:4", "-o", "nm"],
    ["apply", "init.safetensors", "-m", "magnitude", "-s", "0.7", "--scope", "row", "-o", "row"],
    ["apply", "init.safetensors", "-m", "magnitude", "-s", "0.5", "--structure", "filter", "-o", "filter"],
    ["apply", "init.safetensors", "-m", "random", "-s", "0.9", "--shuffle", "--seed", "5", "-o", "shuffle"],
    ["apply", "init.safetensors", "-m", "magnitude", "-s", "0.9", "--invert", "-o", "invert"],
    ["score", "init.safetensors", "-m", "lamp", "-o", "lamp.safetensors"],
    ["apply", "init.safetensors", "--scores", "lamp.safetensors", "-s", "0.95", "-o", "lamp"],
    ["prune", "init.safetensors", "-m", "snip", *MODEL, "-s", "0.95", "-o", "snip"],
    ["prune", "init.safetensors", "-m", "grasp", *MODEL, "-s", "0.95", "-o", "grasp"],
    ["prune", "init.safetensors", "-m", "synflow", "--arch", "lenet-300-100", "--iterations", "10",
     "-s", "0.98", "-o", "synflow"],
    ["prune", "init.safetensors", "-m", "force", *MODEL, "--iterations", "3", "-s", "0.95", "-o", "force"],
    ["prune", "init.safetensors", "-m", "wanda", *MODEL, "-s", "0.5", "-o", "wanda"],
    ["export", "global", "--arch", "lenet-300-100", "-o", "global.onnx"],
]  # fmt: skip


def run_all(folder: Path) -> dict[str, str]:
    """Run every command in `folder` and hash what it wrote: {relative path: sha256}."""
    (folder / "data.npz").symlink_to(DATA)
    for args in RUNS:
        done = subprocess.run(
            [sys.executable, "-m", "prunecli", *args, "-q"], cwd=folder, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"prunecli {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "data.npz"
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "check"])
    parser.add_argument("hashes", type=Path, help="JSON file of recorded hashes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prunecli-hashes-") as tmp:
        hashes = run_all(Path(tmp))
    if args.mode == "record":
        args.hashes.write_text(json.dumps(hashes, indent=2) + "\n")
        print(f"recorded {len(hashes)} files in {args.hashes}")
        return 0
    recorded = json.loads(args.hashes.read_text())
    differing = sorted(k for k in recorded.keys() | hashes.keys() if recorded.get(k) != hashes.get(k))
    for name in differing:
        print(f"differs: {name}")
    print(f"{len(hashes) - len(differing)} of {len(recorded)} files identical")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
