"""Heavy imports stay off the paths that do not need them (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import save_f32

PROBE = """
import sys
from prunecli.cli.app import run
code = run(sys.argv[1:])
heavy = sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def heavy_modules(*args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    return proc.returncode, line.removeprefix("HEAVY=")


def test_help_imports_no_torch() -> None:
    assert heavy_modules("--help") == (0, "")
    assert heavy_modules("apply", "--help") == (0, "")


def test_data_free_commands_on_safetensors_import_no_torch(tmp_path: Path) -> None:
    ckpt = save_f32(
        tmp_path / "m.safetensors", {"fc.weight": np.random.default_rng(0).standard_normal((8, 8))}
    )
    out = tmp_path / "out"
    assert heavy_modules("apply", str(ckpt), "-m", "magnitude", "-s", "0.5", "-o", str(out)) == (0, "")
    assert heavy_modules("inspect", str(out / "manifest.json")) == (0, "")
    assert heavy_modules("inspect", str(out / "model.safetensors"), "--json") == (0, "")
    assert heavy_modules("score", str(ckpt), "-m", "lamp", "-o", str(tmp_path / "s.safetensors")) == (0, "")
    assert heavy_modules("methods") == (0, "")
