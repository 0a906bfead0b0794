"""The lottery-ticket study on real MNIST, driven through the prunecli command line.

LeNet-300-100 from one initialisation (`prunecli init --seed 0`); every network below is trained
by the same command, `train_ticket.py` (Adam, same epochs and batch size; `--seed` sets the data
order), and tested on the official 10,000 test digits by `prunecli eval --baseline DENSE --json`,
DENSE being the dense network trained that way (seed 0):

1. Tickets: `prunecli lottery` trains, prunes 20% of the surviving weights by magnitude and
   rewinds the survivors to the initialisation, ROUNDS times (0.8^11 = 8.6% density), once per
   training seed (0 and 1). Round K's ticket is trained by round K+1 (the last one by this script).
2. Random re-initialisation: each round's masks on a second initialisation (`prunecli init
   --seed 100`, `prunecli apply --masks`), trained with seed 0.
3. Two tickets: `prunecli intersect` of the two seeds' masks at every round; at some rounds the
   intersection is put on the initialisation (`apply --masks`) and trained with each seed.
4. Pruning at initialisation: `prunecli prune` (random, magnitude, SNIP, SynFlow) at 90-99%.

Each finished unit is one JSON line in WORK/tickets.jsonl and `prunecli lottery` resumes its own
rounds, so an interrupted study resumes where it stopped. The results go to
benchmarks/reproduce/results/tickets.json (`--quick`: WORK/tickets.json); `report.py` renders
them into docs/results.md.

Usage:
    nice -n 5 python benchmarks/reproduce/tickets.py [--quick] [--jobs 2] [--data DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MNIST = Path(os.environ.get("PRUNECLI_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
ARCH = "lenet-300-100"


@dataclass(frozen=True)
class Plan:
    """What the study runs; the work folder holds one plan only."""

    rounds: int = 11
    rate: float = 0.2
    seeds: tuple[int, ...] = (0, 1)  # training seeds of the two tickets (data order)
    init_seed: int = 0
    reinit_seed: int = 100
    epochs: int = 2
    lr: float = 1.2e-3  # Adam
    batch_size: int = 128
    examples: int | None = None  # first N training digits (None: all)
    max_steps: int | None = None
    intersect_rounds: tuple[int, ...] = (4, 8, 11)  # where the intersection is trained
    curve_seeds: tuple[int, ...] = (0, 1)  # tickets tested at every round; others at intersect_rounds
    methods: tuple[str, ...] = ("random", "magnitude", "snip", "synflow")
    sparsities: tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)


QUICK = Plan(
    rounds=2, epochs=1, examples=512, max_steps=25, intersect_rounds=(2,), curve_seeds=(0,),
    methods=("magnitude", "snip"), sparsities=(0.9,),
)  # fmt: skip


class Study:
    """Runs the units of a plan as prunecli subprocesses in WORK, caching each unit's record."""

    def __init__(self, plan: Plan, work: Path, data: Path, jobs: int) -> None:
        self.plan, self.work, self.jobs = plan, work.resolve(), jobs
        self.train_npz, self.test_npz = (data / "train.npz").resolve(), (data / "test.npz").resolve()
        self.cache = self.work / "tickets.jsonl"
        self.lock = threading.Lock()
        self.records: dict[str, dict] = {}
        if self.cache.exists():
            for line in self.cache.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.records[row.pop("key")] = row

    # ------------------------------------------------------------------ commands
    def cli(self, *args: object) -> str:
        """`prunecli ARGS` in a subprocess; its stdout, or an error quoting its stderr."""
        return self.run([sys.executable, "-m", "prunecli", *map(str, args)])

    def run(self, command: list[str]) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.work)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"exit {done.returncode}: {shlex.join(command)}\n{tail}")
        return done.stdout

    def train_argv(self, seed: int) -> list[str]:
        """The training command without its three paths."""
        argv = [sys.executable, str(HERE / "train_ticket.py")]
        argv += ["--data", str(self.train_npz), "--epochs", str(self.plan.epochs), "--seed", str(seed)]
        argv += ["--lr", str(self.plan.lr), "--batch-size", str(self.plan.batch_size)]
        if self.plan.examples is not None:
            argv += ["--examples", str(self.plan.examples)]
        if self.plan.max_steps is not None:
            argv += ["--max-steps", str(self.plan.max_steps)]
        return argv

    def train(self, folder: Path, out: Path, seed: int) -> None:
        """Train an apply/lottery output folder (its weights, with its masks) into `out`."""
        argv = self.train_argv(seed)
        paths = [str(folder / "model.safetensors"), str(folder / "manifest.json"), str(out)]
        self.run([*argv[:2], *paths, *argv[2:]])

    def evaluate(self, checkpoint: Path) -> dict:
        """Test accuracy, per class, and the drops against the dense network (`eval --baseline`)."""
        report = json.loads(
            self.cli("eval", checkpoint, "--arch", ARCH, "--data", self.test_npz, "--baseline", self.dense,
                     "--device", "cpu", "--json", "-q")
        )  # fmt: skip
        return {
            "accuracy": report["accuracy"],
            "examples": report["examples"],
            "drop": report["drop"],
            "worst_class": report["worst_class"],
            "classes": [{k: c[k] for k in ("class", "accuracy", "drop")} for c in report["classes"]],
        }

    # ------------------------------------------------------------------ paths
    def imp(self, seed: int) -> Path:
        return self.work / f"imp-s{seed}"

    @property
    def init(self) -> Path:
        return self.work / f"init-{self.plan.init_seed}.safetensors"

    @property
    def dense(self) -> Path:
        return self.imp(self.plan.seeds[0]) / "round-1-trained.safetensors"

    def trained_ticket(self, seed: int, k: int) -> Path:
        """Round k's ticket trained: round k+1's training, or this study's for the last round."""
        if k < self.plan.rounds:
            return self.imp(seed) / f"round-{k + 1}-trained.safetensors"
        return self.work / f"ticket-s{seed}-r{k}.safetensors"

    # ------------------------------------------------------------------ units
    def make_init(self, seed: int) -> dict:
        self.cli(
            "init", "--arch", ARCH, "--seed", seed, "-o", self.work / f"init-{seed}.safetensors", "--force"
        )
        return {"seed": seed}

    def lottery(self, seed: int) -> dict:
        command = shlex.join(self.train_argv(seed)[:2]) + " {weights} {masks} {out} "
        command += shlex.join(self.train_argv(seed)[2:])
        report = json.loads(  # paths relative to WORK, so the lineage reads the same anywhere
            self.cli("lottery", self.init.name, "--train", command, "--rounds", self.plan.rounds,
                     "--rate", self.plan.rate, "-o", self.imp(seed).name, "--json", "-q")
        )  # fmt: skip
        rounds = []
        for r in report["rounds"]:
            manifest = json.loads((self.work / r["path"] / "manifest.json").read_text())
            parent = ((manifest.get("lineage") or {}).get("masks") or [{}])[0]  # round 0 has none
            rounds.append({
                "round": r["round"], "kept": r["kept"], "prunable": r["prunable"], "sparsity": r["sparsity"],
                "densities": {t["name"]: t["density"] for t in manifest["tensors"] if t["pruned"]},
                "parent": parent.get("path"), "parent_sha256": parent.get("sha256"),
            })  # fmt: skip
        shown = command.replace(shlex.quote(sys.executable), "python").replace(str(ROOT) + "/", "")
        return {"seed": seed, "command": shown, "rounds": rounds}

    def ticket(self, seed: int, k: int) -> dict:
        trained = self.trained_ticket(seed, k)
        if k == self.plan.rounds:
            self.train(self.imp(seed) / f"round-{k}", trained, seed)
        return {"seed": seed, "round": k, **self.evaluate(trained)}

    def reinit(self, k: int) -> dict:
        folder = self.work / f"reinit-r{k}"
        reinit, masks = self.work / f"init-{self.plan.reinit_seed}.safetensors", self.imp(self.plan.seeds[0])
        self.cli("apply", reinit, "--masks", masks / f"round-{k}", "-o", folder, "--force", "-q")
        self.train(folder, folder / "trained.safetensors", self.plan.seeds[0])
        return {"round": k, **self.evaluate(folder / "trained.safetensors")}

    def intersect(self, k: int) -> dict:
        common = self.work / f"intersect-r{k}"
        report = json.loads(
            self.cli("intersect", *(self.imp(s) / f"round-{k}" for s in self.plan.seeds), "-o", common,
                     "--force", "--json", "-q")
        )  # fmt: skip
        record = {"round": k, "totals": report["totals"], "tensors": report["tensors"], "trained": {}}
        if k in self.plan.intersect_rounds:
            folder = self.work / f"intersect-r{k}-init"
            self.cli("apply", self.init, "--masks", common, "-o", folder, "--force", "-q")
            for seed in self.plan.seeds:
                out = folder / f"trained-s{seed}.safetensors"
                self.train(folder, out, seed)
                record["trained"][str(seed)] = self.evaluate(out)
        return record

    def pai(self, method: str, sparsity: float) -> dict:
        folder = self.work / f"pai-{method}-{sparsity}"
        self.cli("prune", self.init, "-m", method, "--arch", ARCH, "--data", self.train_npz,
                 "--batch-size", 100, "--sparsity", sparsity, "--seed", self.plan.seeds[0],
                 "-o", folder, "--force", "-q")  # fmt: skip
        manifest = json.loads((folder / "manifest.json").read_text())
        self.train(folder, folder / "trained.safetensors", self.plan.seeds[0])
        return {
            "method": method, "sparsity": sparsity, "kept": manifest["totals"]["kept"],
            **self.evaluate(folder / "trained.safetensors"),
        }  # fmt: skip

    # ------------------------------------------------------------------ driving
    def phase(self, units: dict[str, Callable[[], dict]]) -> None:
        """Run the units not cached yet, `jobs` at a time, caching each record when it finishes."""
        todo = {k: f for k, f in units.items() if k not in self.records}

        def one(key: str) -> None:
            started = time.perf_counter()
            record = {**todo[key](), "seconds": round(time.perf_counter() - started, 2)}
            with self.lock:
                self.records[key] = record
                with self.cache.open("a") as f:
                    f.write(json.dumps({"key": key, **record}) + "\n")
                print(f"[{len(self.records)}] {key}: {summary(record)} ({record['seconds']} s)", flush=True)

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for future in [pool.submit(one, key) for key in todo]:
                future.result()

    def units(self) -> list[dict[str, Callable[[], dict]]]:
        """The phases in order; a unit runs after every unit of the phases before it."""
        p, seeds = self.plan, self.plan.seeds
        last: dict[str, Callable[[], dict]] = {}
        every = range(p.rounds + 1)
        tested = {s: every if s in p.curve_seeds else p.intersect_rounds for s in seeds}
        last |= {f"ticket/s{s}/r{k}": bound(self.ticket, s, k) for s in seeds for k in tested[s]}
        last |= {f"reinit/r{k}": bound(self.reinit, k) for k in range(1, p.rounds + 1)}
        last |= {f"intersect/r{k}": bound(self.intersect, k) for k in range(1, p.rounds + 1)}
        last |= {f"pai/{m}/{s}": bound(self.pai, m, s) for m in p.methods for s in p.sparsities}
        return [
            {f"init/{s}": bound(self.make_init, s) for s in (p.init_seed, p.reinit_seed)},
            {f"imp/s{s}": bound(self.lottery, s) for s in seeds},
            dict(sorted(last.items(), key=lambda kv: -self.cost(kv[0]))),  # long units first
        ]

    def cost(self, key: str) -> int:
        """Trainings a unit runs, to start the long ones first."""
        if key.startswith("intersect/"):
            return 2 * (int(key.split("/r")[1]) in self.plan.intersect_rounds)
        return int(not key.startswith("ticket/") or key.endswith(f"/r{self.plan.rounds}"))


def bound(function: Callable[..., dict], *args: object) -> Callable[[], dict]:
    return lambda: function(*args)


def summary(record: dict) -> str:
    if "accuracy" in record:
        return f"accuracy {record['accuracy']:.4f}, drop {record['drop']:+.4f}"
    if "rounds" in record:
        return f"{len(record['rounds']) - 1} rounds, last sparsity {record['rounds'][-1]['sparsity']:.4f}"
    if "totals" in record:
        shared = record["totals"]["result_kept"] / record["totals"]["kept"][0]
        return f"shared {shared:.1%}, {len(record['trained'])} trained"
    return "done"


def digits_in(path: Path, examples: int | None) -> int:
    with np.load(path) as data:
        n = len(data["labels"])
    return min(n, examples) if examples is not None else n


def check_plan(work: Path, plan: Plan) -> None:
    """A work folder belongs to one plan: refuse to mix the cached units of another."""
    path = work / "plan.json"
    wanted = json.loads(json.dumps(asdict(plan)))
    if path.exists() and json.loads(path.read_text()) != wanted:
        raise SystemExit(f"{work} holds a study with another plan ({path}); give another --work or remove it")
    path.write_text(json.dumps(wanted, indent=1))


def device_line() -> str:
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "1")
    cpu = f"{platform.machine()}, {os.cpu_count()} cores, {threads} thread a process"
    return f"CPU ({cpu}), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 25 steps on 512 digits, 2 methods")
    parser.add_argument("--data", type=Path, default=MNIST, help="folder with train.npz and test.npz")
    parser.add_argument(
        "--work", type=Path, default=None, help="run cache (default benchmarks/_work/tickets)"
    )
    parser.add_argument("--results", type=Path, default=None, help="results JSON to write")
    parser.add_argument("--jobs", type=int, default=1, help="units run at a time (each one process)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    work = args.work or ROOT / "benchmarks" / "_work" / ("tickets-quick" if args.quick else "tickets")
    work.mkdir(parents=True, exist_ok=True)
    check_plan(work, plan)
    results = args.results or (work / "tickets.json" if args.quick else HERE / "results" / "tickets.json")
    study = Study(plan, work, args.data, args.jobs)
    started, load = time.perf_counter(), os.getloadavg()[0]  # the machine may be shared
    print(f"{len(study.records)} units cached in {work}; {args.jobs} at a time", flush=True)
    try:
        for units in study.units():
            study.phase(units)
    except RuntimeError as error:  # a command failed: the finished units stay cached
        raise SystemExit(f"error: {error}\nrerun the same command to resume") from error
    wall = time.perf_counter() - started
    with (work / "walls.jsonl").open("a") as f:
        f.write(json.dumps({"wall_s": round(wall, 1), "jobs": args.jobs, "load_at_start": load}) + "\n")
    walls = [json.loads(line) for line in (work / "walls.jsonl").read_text().splitlines()]
    quick = " --quick" if args.quick else ""
    payload = {
        "format": "prunecli.tickets-study",
        "plan": asdict(plan),
        "command": f"nice -n 5 python benchmarks/reproduce/tickets.py{quick} --jobs {args.jobs}",
        "wall_s": round(sum(w["wall_s"] for w in walls), 1),
        "invocations": walls,
        "compute_s": round(sum(r["seconds"] for r in study.records.values()), 1),
        "device": device_line(),
        "train_digits": digits_in(study.train_npz, plan.examples),
        "test_digits": digits_in(study.test_npz, None),
        "train_sha256": hashlib.sha256(study.train_npz.read_bytes()).hexdigest(),
        "runs": dict(sorted(study.records.items())),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {results}: {len(study.records)} units, {wall:.0f} s this run", flush=True)
    return results


if __name__ == "__main__":
    main()
