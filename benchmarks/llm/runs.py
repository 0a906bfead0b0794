"""One pruning run of the LLM study: plan, command, measure, evaluate, cache.

A run is (tool, method, setting, mode). Its folder WORK/runs/NAME-HASH holds the tool's output
model, its stdout/stderr, and result.json, written last. HASH covers every setting that changes
the result (the model, the calibration file, the command line), so a changed setting gets a new
folder and a finished one is never redone. result.json's `status` is one of:

    ok       pruned, measured and evaluated
    failed   the tool exited non-zero (or timed out); `error` holds its last stderr lines
    pending  the tool cannot run this yet (a method or flag it does not have); not attempted

failed and pending runs are tried again on the next invocation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.llm import data

ROOT = Path(__file__).resolve().parents[2]
LLMC_PYTHON = Path(os.environ.get("LLMC_PYTHON", "/work/llmc-venv/bin/python"))
LLMC_RUNNER = ROOT / "benchmarks" / "llmc_wanda.py"
# argv: RSS_FILE COMMAND...; runs COMMAND, writes its ru_maxrss (KiB) and exits with its code.
LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "child.returncode = os.waitstatus_to_exitcode(status)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(child.returncode)\n"
)
SETTINGS = ("0.5", "0.6", "0.7", "2:4", "4:8")
DATA_METHODS = ("wanda", "sparsegpt")


@dataclass(frozen=True)
class Run:
    tool: str  # prunecli | llmcompressor
    method: str  # magnitude | wanda | sparsegpt
    setting: str  # a sparsity ("0.5") or an N:M pattern ("2:4")
    mode: str = "-"  # data methods: one-shot | sequential (llm-compressor: always sequential);
    # diagnostics: row-scope | layer-scope (the other ranking scope; Wanda then block by block)

    @property
    def name(self) -> str:
        return f"{self.tool}-{self.method}-{self.setting.replace(':', 'of')}-{self.mode}".rstrip("-")

    @property
    def pattern(self) -> str | None:
        return self.setting if ":" in self.setting else None

    @property
    def sparsity(self) -> float:
        if self.pattern:
            keep, group = (int(p) for p in self.pattern.split(":"))
            return 1.0 - keep / group
        return float(self.setting)


@dataclass(frozen=True)
class Context:
    """What every run shares: the dense model, the calibration file, held-out windows, limits."""

    model: Path
    calib: Path
    heldout: np.ndarray
    threads: int
    device: str
    timeout_s: float


def plan() -> list[Run]:
    """Every run, the comparisons first; prunecli's one-shot SparseGPT (no reference to match) last."""
    runs = [Run("prunecli", "magnitude", s) for s in SETTINGS]
    runs += [Run("prunecli", "wanda", s, mode) for mode in ("one-shot", "sequential") for s in SETTINGS]
    for method in DATA_METHODS:
        runs += [Run("llmcompressor", method, s, "sequential") for s in SETTINGS]
    runs += [Run("prunecli", "sparsegpt", s, mode) for mode in ("sequential", "one-shot") for s in SETTINGS]
    return runs + diagnostics()


def diagnostics() -> list[Run]:
    """Runs that only explain others: each ranking scope swapped (magnitude per row, Wanda per tensor)."""
    unstructured = [s for s in SETTINGS if ":" not in s]
    runs = [Run("prunecli", "magnitude", s, "row-scope") for s in unstructured]
    return runs + [Run("prunecli", "wanda", s, "layer-scope") for s in unstructured]


def prunecli_abilities() -> dict:
    """The methods `prunecli methods --json` lists and the flags `prunecli prune --help` shows."""
    exe = [sys.executable, "-m", "prunecli"]
    methods = json.loads(subprocess.run([*exe, "methods", "--json"], capture_output=True, check=True).stdout)
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    help_text = subprocess.run([*exe, "prune", "--help"], capture_output=True, text=True, env=env).stdout
    return {"methods": sorted(m["name"] for m in methods), "help": help_text}


def prunecli_command(run: Run, ctx: Context, out: Path, abilities: dict) -> list[str] | str:
    """The prune command line, or why it cannot run yet (a str)."""
    if run.method not in abilities["methods"]:
        return f"prunecli has no method {run.method!r} yet (`prunecli methods`)"
    command = [sys.executable, "-m", "prunecli", "prune", str(ctx.model), "-m", run.method, "-o", str(out)]
    command += ["--device", ctx.device, "--seed", "0", "--force", "--quiet"]
    if run.method != "magnitude":
        command += ["--data", str(ctx.calib)]
        flag = "--no-sequential" if run.mode == "one-shot" else "--sequential"
        if flag in abilities["help"]:
            command.append(flag)
        elif flag == "--sequential":
            return "prunecli prune has no --sequential yet"
    if run.pattern:
        return [*command, "--pattern", run.pattern, "--sparsity", "0.5"]
    # Magnitude is ranked within each tensor (the papers' baseline); Wanda within each output row;
    # a diagnostic run ("row-scope", "layer-scope") swaps the scope.
    scope = {"magnitude": ["--scope", "layer"], "wanda": ["--scope", "row"]}.get(run.method, [])
    if run.mode.endswith("-scope"):
        scope = ["--scope", run.mode.removesuffix("-scope")]
    return [*command, "--sparsity", run.setting, *scope]


def llmc_command(run: Run, ctx: Context, out: Path) -> list[str] | str:
    """The llmc_wanda.py command line (its JSON report goes beside `out`), or why it cannot run."""
    if not LLMC_PYTHON.exists():
        return f"no llm-compressor interpreter at {LLMC_PYTHON} (set LLMC_PYTHON)"
    command = [str(LLMC_PYTHON), str(LLMC_RUNNER), "--model", str(ctx.model), "--tokens", str(ctx.calib)]
    command += ["--method", run.method, "--out", str(out), "--json", str(out.parent / "llmc.json")]
    if run.pattern:
        return [*command, "--pattern", run.pattern]
    return [*command, "--sparsity", run.setting]


def run_key(run: Run, ctx: Context, command: list[str] | str) -> str:
    """A hash of everything that decides the result; the paths inside the command are left out."""
    parts = {
        "run": asdict(run),
        "model": (ctx.model / "train.json").read_text(),
        "calib": data.sha256_file(ctx.calib),
        "command": [a for a in command if "/" not in a] if isinstance(command, list) else command,
        "device": ctx.device,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]


def timed(command: list[str], folder: Path, ctx: Context) -> dict:
    """Run `command` with stdout/stderr in `folder`: exit code, wall seconds, peak RSS bytes.

    The peak RSS is ru_maxrss from wait4, taken by a bare Python launcher rather than by this
    process: a child forked from a process that holds torch and a model would count that memory.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(ctx.threads), "TOKENIZERS_PARALLELISM": "false"}
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    rss_file = folder / "maxrss_kib.txt"
    rss_file.unlink(missing_ok=True)
    wrapped = [sys.executable, "-S", "-c", LAUNCHER, str(rss_file), *command]
    started = time.perf_counter()
    with (folder / "stdout.txt").open("wb") as out, (folder / "stderr.txt").open("wb") as err:
        child = subprocess.Popen(wrapped, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            child.wait(timeout=ctx.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return {"rc": "timeout", "wall_s": time.perf_counter() - started, "peak_rss_bytes": None}
    wall = time.perf_counter() - started
    peak = int(rss_file.read_text()) * 1024 if rss_file.exists() else None
    return {"rc": child.returncode, "wall_s": wall, "peak_rss_bytes": peak}


def decoder_sparsity(folder: Path, pattern: str | None) -> dict:
    """Zeros in the 2-D weights under model.layers.* (the decoder Linear weights) of a saved model."""
    from safetensors import safe_open

    zeros = total = 0
    per_tensor: dict[str, float] = {}
    pattern_ok = True
    for shard in sorted(folder.glob("*.safetensors")):
        if shard.name == "masks.safetensors":
            continue
        with safe_open(str(shard), framework="np") as handle:
            for name in handle.keys():
                if not name.startswith("model.layers.") or not name.endswith(".weight"):
                    continue
                weight = handle.get_tensor(name)
                if weight.ndim != 2:
                    continue
                is_zero = weight == 0  # (out, in)
                zeros, total = zeros + int(is_zero.sum()), total + is_zero.size
                per_tensor[name] = float(is_zero.mean())
                if pattern:
                    keep, group = (int(p) for p in pattern.split(":"))
                    kept = (~is_zero).reshape(weight.shape[0], -1, group).sum(axis=-1)
                    pattern_ok &= bool((kept <= keep).all())
    values = list(per_tensor.values())
    return {
        "sparsity": zeros / total if total else None,
        "tensors": len(per_tensor),
        "tensor_sparsity_range": [min(values), max(values)] if values else None,
        "pattern_ok": pattern_ok if pattern else None,
    }


def evaluate(folder: Path, heldout: np.ndarray) -> float:
    """Held-out perplexity of a saved model folder, loaded with transformers in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.llm.model import perplexity

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return perplexity(model, heldout)[0]


def tool_details(run: Run, out: Path) -> dict:
    """The pruning tool's own account: prunecli's manifest method/selection, llm-compressor's JSON."""
    if run.tool == "prunecli":
        manifest = json.loads((out / "manifest.json").read_text())
        return {"manifest": {key: manifest[key] for key in ("method", "selection", "totals")}}
    report = json.loads((out.parent / "llmc.json").read_text())
    keep = ("modifier", "oneshot_s", "load_s", "save_s", "total_s", "peak_rss_bytes", "versions")
    return {"llmc": {key: report[key] for key in keep}}


def execute(run: Run, ctx: Context, work: Path, abilities: dict) -> dict:
    """The run's result, from its cache when finished, else by running it now."""

    def command_in(folder: Path) -> list[str] | str:
        if run.tool == "prunecli":
            return prunecli_command(run, ctx, folder / "out", abilities)
        return llmc_command(run, ctx, folder / "out")

    folder = work / "runs" / f"{run.name}-{run_key(run, ctx, command_in(Path('RUN')))}"
    command = command_in(folder)
    result_path = folder / "result.json"
    if result_path.exists():
        cached = json.loads(result_path.read_text())
        if cached["status"] == "ok":
            return cached
    folder.mkdir(parents=True, exist_ok=True)
    base = {"key": folder.name, **asdict(run), "sparsity_target": run.sparsity, "model": ctx.model.name}
    if isinstance(command, str):
        result = {**base, "status": "pending", "error": command}
        data.dump_json(result_path, result)
        return result
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    measured = timed(command, folder, ctx)
    base |= {"command": command, **measured}
    if measured["rc"] != 0:
        tail = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()[-15:]
        result = {**base, "status": "failed", "error": "\n".join([f"exit {measured['rc']}", *tail])}
    else:
        result = {**base, "status": "ok", **tool_details(run, out)}
        result["achieved"] = decoder_sparsity(out, run.pattern)
        result["heldout_ppl"] = evaluate(out, ctx.heldout)
    data.dump_json(result_path, result)
    return result
