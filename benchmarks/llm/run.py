"""Run the LLM quality study end to end (see the package docstring, `benchmarks/llm/__init__.py`).

Usage:
    nice -n 5 python -m benchmarks.llm [--work DIR] [--steps N] [--only TEXT] [--only-report] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.llm import agreement, data, lookup, prepare, report, runs
from benchmarks.llm.model import Schedule, Shape

ROOT = Path(__file__).resolve().parents[2]
CALIB_WINDOWS, CALIB_SEED = 128, 0
QUICK_HELDOUT = 64  # --quick scores only the first 64 held-out windows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="cache (benchmarks/_work/llm[-quick])")
    parser.add_argument("--docs", type=Path, default=None, help="report folder (docs; --quick: WORK)")
    parser.add_argument(
        "--steps", type=int, default=Schedule.steps, help="training steps (default %(default)s)"
    )
    parser.add_argument("--only", default=None, help="run only runs whose name contains this text")
    parser.add_argument("--only-report", action="store_true", help="write the report from the cache only")
    parser.add_argument(
        "--quick", action="store_true", help="harness check: a 2-layer toy model, 20 steps, 16 + 64 windows"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads here and in each tool")
    parser.add_argument("--device", default="cpu", help="prunecli's --device (llm-compressor: CPU)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to one pruning run")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for study.json's record of the command
    args.work = args.work or ROOT / "benchmarks" / "_work" / ("llm-quick" if args.quick else "llm")
    args.docs = args.docs or (args.work if args.quick else ROOT / "docs")
    return args


def machine(threads: int) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU(s), {threads} torch threads, torch {torch.__version__}"


def dense_baseline(model_dir: Path, heldout, work: Path) -> dict:
    """The unpruned model's held-out perplexity and decoder sparsity, cached in WORK/runs/dense."""
    folder = work / "runs" / f"dense-{model_dir.name}"
    path = folder / "result.json"
    if path.exists():
        return json.loads(path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "key": folder.name,
        "status": "ok",
        "heldout_ppl": runs.evaluate(model_dir, heldout),
        "achieved": runs.decoder_sparsity(model_dir, None),
    }
    data.dump_json(path, result)
    return result


def settings(args: argparse.Namespace) -> tuple[Shape, Schedule, int]:
    """(model shape, training schedule, calibration windows); --quick shrinks all three."""
    shape, schedule = Shape(), replace(Schedule(), steps=args.steps)
    if not args.quick:
        return shape, schedule, CALIB_WINDOWS
    toy = replace(
        shape, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, seq_len=64,
    )  # fmt: skip
    return toy, replace(schedule, steps=min(args.steps, 20), warmup=5, eval_every=10), 16


def earlier_invocations(previous: dict) -> list[dict]:
    """The invocations study.json lists (a study.json from before the list: its one command)."""
    if "invocations" in previous:
        return previous["invocations"]
    if "command" in previous:
        return [{"command": previous["command"], "wall_s": previous.get("wall_s", 0.0), "runs": None}]
    return []


def study(args: argparse.Namespace) -> None:
    """Build what is missing, run every planned run not yet finished, and keep study.json current."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    shape, schedule, windows = settings(args)
    tokenizer, streams = prepare.prepare_data(args.work, shape.vocab_size)
    model_dir = prepare.ensure_model(args.work, shape, schedule, tokenizer, streams)
    calib = prepare.ensure_calibration(args.work, streams["calibration"], windows, shape.seq_len, CALIB_SEED)
    heldout = data.tiled_windows(streams["heldout"], shape.seq_len)[: QUICK_HELDOUT if args.quick else None]
    dense = dense_baseline(model_dir, heldout, args.work)
    print(f"dense: held-out perplexity {dense['heldout_ppl']:.3f}", flush=True)
    ctx = runs.Context(model_dir, calib, heldout, args.threads, args.device, args.timeout)
    abilities = runs.prunecli_abilities()
    study_path = args.work / "study.json"
    previous = json.loads(study_path.read_text()) if study_path.exists() else {}
    same_model = previous.get("model_dir") == model_dir.name
    record = {
        "command": shlex.join(["python", "-m", "benchmarks.llm", *args.argv]),
        "machine": machine(args.threads),
        "model_dir": model_dir.name,
        "calib": calib.name,
        "calib_windows": [windows, shape.seq_len],
        "calib_seed": CALIB_SEED,
        "heldout_windows": list(heldout.shape),
        "prunecli_methods": abilities["methods"],
        "prunecli_has_sequential": "--sequential" in abilities["help"],
        "dense": dense["key"],
        # run name -> run folder; runs outside --only keep their earlier entry
        "runs": previous.get("runs", {}) if same_model else {},
        # every invocation on this model: command, wall seconds (training included), runs it covered
        "invocations": earlier_invocations(previous) if same_model else [],
    }
    todo = [r for r in runs.plan() if args.only is None or args.only in r.name]
    this = {"command": record["command"], "wall_s": 0.0, "runs": len(todo)}
    record["invocations"].append(this)
    for i, run in enumerate(todo, 1):
        result = runs.execute(run, ctx, args.work, abilities)
        record["runs"][run.name] = result["key"]
        record["wall_s"] = this["wall_s"] = round(time.perf_counter() - started, 1)
        data.dump_json(study_path, record)  # after every run, so --only-report sees partial studies
        detail = f"ppl {result['heldout_ppl']:.3f}" if result["status"] == "ok" else result["error"][-200:]
        print(f"[{i}/{len(todo)}] {run.name}: {result['status']}: {detail}", flush=True)


def compare_masks(work: Path) -> None:
    """Cache the mask agreement of every prunecli run with llm-compressor's at the same setting."""
    pairs = agreement.all_pairs(work, lookup.load(work)["runs"])
    print(f"mask agreement: {len(pairs)} pairs of prunecli and llm-compressor runs", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.only_report:
        study(args)
    compare_masks(args.work)
    report.write(args.work, args.docs)


if __name__ == "__main__":
    main()
