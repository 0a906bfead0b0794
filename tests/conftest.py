"""Shared fixtures: run the CLI in-process, and build small checkpoints on disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from prunecli.cli.app import run
from prunecli.io.safetensors_file import write_arrays

# Real MNIST for the tests comes from the repository itself: the digits that ship with prunecli
# (prunecli/assets/mnist_demo.npz: the first 2,000 official training and 1,000 test images).
# Nothing outside the repository is read, so a clean clone runs every test.
MNIST_ASSET = Path(__file__).resolve().parents[1] / "prunecli" / "assets" / "mnist_demo.npz"


# In CI (the environment variable CI set, as CI services and .ci/run do) a skip is a failure,
# except for the skips that depend on the machine, not on files: no CUDA / GPU, and the test that
# needs a non-root user. A test that skips because data is missing hides a broken test.
CI_ALLOWED_SKIPS = ("cuda", "gpu", "root may write anywhere")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _forbidden_skip(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The reason of a skip that CI must treat as a failure, or None (xfail is not a skip)."""
    if not report.skipped or hasattr(report, "wasxfail") or not _in_ci():
        return None
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)
    if any(allowed in reason.lower() for allowed in CI_ALLOWED_SKIPS):
        return None
    return reason


def _fail_skip(report: pytest.CollectReport | pytest.TestReport, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"CI is set: skipping is a failure here (only CUDA/GPU and non-root skips are allowed): {reason}\n"
        "Tests must use data in the repository or data they make, never files beside it."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report = yield
    reason = _forbidden_skip(report)
    if reason is not None:
        _fail_skip(report, reason)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield  # a whole module skipped at import (pytest.importorskip, allow_module_level)
    reason = _forbidden_skip(report)
    if reason is not None:
        _fail_skip(report, reason)
    return report


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `train.npz` (2,000 digits) and `test.npz` (1,000 digits) made from the
    shipped MNIST asset, each with `images` uint8 (N, 28, 28) and `labels` uint8 (N,): the layout
    of an MNIST data folder that `--data` and benchmarks/reproduce read."""
    folder = tmp_path_factory.mktemp("mnist")
    with np.load(MNIST_ASSET) as data:
        np.savez_compressed(folder / "train.npz", images=data["images"], labels=data["labels"])
        np.savez_compressed(folder / "test.npz", images=data["test_images"], labels=data["test_labels"])
    return folder


@pytest.fixture(scope="session")
def mnist_train(mnist_dir: Path) -> Path:
    """The shipped training digits as an .npz with `images` and `labels`."""
    return mnist_dir / "train.npz"


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
