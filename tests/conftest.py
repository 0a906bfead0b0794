"""Shared fixtures: run the CLI in-process, and build small checkpoints on disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from prunecli.cli.app import run
from prunecli.io.safetensors_file import write_arrays

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `prunecli ARGS...` in-process and return (exit code, stdout, stderr)."""

    def invoke(*args: str | Path) -> Result:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def save_f32(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Write float32 arrays as a safetensors file."""
    write_arrays(path, {k: ("F32", np.asarray(v, np.float32)) for k, v in tensors.items()}, metadata or {})
    return path


@pytest.fixture
def mlp_ckpt(tmp_path: Path) -> Path:
    """A small tie-free MLP checkpoint: two weight matrices, their biases, and a norm."""
    rng = np.random.default_rng(0)
    return save_f32(
        tmp_path / "mlp.safetensors",
        {
            "fc1.weight": rng.standard_normal((16, 12)),
            "fc1.bias": rng.standard_normal(16),
            "norm.weight": np.ones(16),
            "fc2.weight": rng.standard_normal((4, 16)) * 3,
            "fc2.bias": np.zeros(4),
        },
    )
