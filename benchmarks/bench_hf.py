#!/usr/bin/env python3
"""Benchmark `prunecli prune --method wanda` on a sharded bf16 Hugging Face Llama folder (issue 11).

What is measured, on one generated folder and one set of calibration token windows:

- **prunecli**, twice: `prunecli prune DIR -m wanda --data tokens.npz --sparsity 0.5 --scope row
  --dtype bfloat16 --batch-size B -o OUT` (Wanda compares scores within each output row), as it
  runs by default on a transformer folder (block by block: `--sequential`), and with
  `--no-sequential` (one-shot: every layer scored on the dense model's activations).
- **the floor**: what any Wanda run has to do at least: load the same model in bf16 with
  transformers (`AutoModelForCausalLM.from_pretrained`) and run one forward pass over the same
  windows, in the same batches, under `torch.no_grad()`. Its peak RSS is the model plus one
  batch of activations. Issue 11's targets: prunecli's wall time and peak RSS at most 1.3x the
  floor's.
- **imports**: a process that only imports what both of them import (numpy, torch,
  transformers and its Llama module). Subtracting it gives the figures without the imports.
- **llm-compressor**: its WandaPruningModifier (`oneshot`, sequential pipeline, one window per
  batch) through `benchmarks/llmc_wanda.py`, run by the Python of its own virtualenv (it pins
  another transformers): wall and peak RSS as ratios to prunecli's, and the masks compared.

Why the masks may differ: llm-compressor calibrates block by block, and block i sees the outputs
of the already pruned block i-1; so does prunecli's default, while `--no-sequential` gives every
layer the dense model's activations. Block 0 sees the same inputs in all three, so its masks
should agree. To tell what is left there, the bench recomputes block 0's Wanda scores from the
dense model: with prunecli's own `wanda_scores`, and in float32 from float32 statistics
(llm-compressor's arithmetic), once with transformers' default attention (as prunecli runs) and
once with eager attention (which llm-compressor forces while calibrating); and compares the masks
each gives (stable sort in each row, lower index pruned first among ties) with the tools' outputs.

Every command runs as its own child of this driver: wall time from spawn to reap, peak RSS the
`ru_maxrss` that `os.wait4` returns for that child, and the CPU time the rest of the machine used
meanwhile (a contention flag). The driver imports no numpy or torch, so its own small high-water
RSS (folded into each child's figure at exec) stays far below every figure. The order of the
commands rotates from round to round; ratios are given best run of each and round by round.
`--phases` adds one in-process run of each prunecli mode that notes the time and RSS at each of
its stages.

    .venv/bin/python benchmarks/bench_hf.py                         # small Llama, 2 cores: minutes
    .venv/bin/python benchmarks/bench_hf.py --size large --no-llmc  # GPU host (device auto)
    .venv/bin/python benchmarks/bench_hf.py --layers 2 --windows 8 --repeat 1   # smoke test

The generated folder is reused while its specification (sizes, seed) is unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / "_work" / "hf"
DEFAULT_LLMC_PYTHON = Path("/work/llmc-venv/bin/python")
MIB = 1024 * 1024
TARGET = 1.3  # issue 11: prunecli's wall and peak RSS at most this many times the floor's
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# prunecli's modes: key -> (label, extra CLI arguments, `sequential` for pipelines.prune.prune)
MODES: dict[str, tuple[str, list[str], bool | None]] = {
    "sequential": ("prunecli prune (default: block by block)", [], None),
    "oneshot": ("prunecli prune --no-sequential", ["--no-sequential"], False),
}


@dataclasses.dataclass(frozen=True)
class Size:
    """The generated model (a Llama config) and its calibration windows."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    windows: int  # calibration windows (rows of input_ids)
    seq_len: int  # tokens per window
    batch_size: int  # windows per forward pass
    shards: int  # the folder is written in about this many safetensors files (at least 3)
    device: str  # where prunecli and the floor run


SIZES = {
    # minutes on 2 CPU cores without native bf16 matmuls (~7 GFLOP/s here)
    "small": Size(512, 1376, 4, 8, 4, 8000, 16, 128, 8, 4, "cpu"),
    # TinyLlama-1.1B's shape and the papers' calibration set (128 windows of 2048 tokens)
    "large": Size(2048, 5632, 22, 32, 4, 32000, 128, 2048, 8, 6, "auto"),
}


# --------------------------------------------------------------------------------------------
# Hidden sub-commands, each run in a child process; the only places that import numpy or torch.
# --------------------------------------------------------------------------------------------


def import_stack() -> None:
    """What prunecli and the floor both import before any work: numpy, torch, transformers."""
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import transformers
    from transformers.models.llama import modeling_llama  # noqa: F401

    transformers.logging.set_verbosity_error()


def worker_build(args: list[str]) -> None:
    """Write a seeded random bf16 Llama folder in shards, and seeded random token windows."""
    size, folder, tokens, seed = Size(**json.loads(args[0])), Path(args[1]), Path(args[2]), int(args[3])
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        vocab_size=size.vocab,
        max_position_embeddings=max(2048, size.seq_len),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(str(folder), max_shard_size=total // size.shards + 1)
    del model
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, size.vocab, size=(size.windows, size.seq_len), dtype=np.int64)
    np.savez(tokens, input_ids=ids)


def worker_imports(args: list[str]) -> None:
    """The imports alone: the part of both processes that is neither prunecli nor the floor."""
    import_stack()


def worker_floor(args: list[str]) -> None:
    """Load the folder in bf16 and run one forward pass over every window, in batches; write the
    time of each part as JSON."""
    folder, tokens, batch_size, device, out = Path(args[0]), Path(args[1]), int(args[2]), args[3], args[4]
    start = time.perf_counter()
    import_stack()
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    imported = time.perf_counter()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).to(device).eval()
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
    Path(out).write_text(json.dumps(phases))


class StageClock:
    """A prunecli Progress that notes the time and the RSS (now, peak) when each stage starts."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: list[dict[str, Any]] = []

    def stage(self, description: str, total: int) -> None:
        self.stages.append({"stage": description, "t_s": time.perf_counter() - self.start, **_rss_now()})

    def advance(self) -> None:
        pass


def _rss_now() -> dict[str, float]:
    """This process's resident set now and at its peak, MiB (Linux /proc/self/status)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found["rss_mib" if key == "VmRSS" else "peak_mib"] = int(value.split()[0]) / 1024
    return found


def worker_phases(args: list[str]) -> None:
    """prunecli's prune called in process with a StageClock: where its time and memory go."""
    folder, tokens, out, sparsity = args[0], args[1], Path(args[2]), float(args[3])
    batch_size, device, sequential, result = int(args[4]), args[5], json.loads(args[6]), Path(args[7])
    clock = StageClock()
    clock.stage("imports", 0)
    import_stack()
    from prunecli.pipelines.prune import prune
    from prunecli.selection.spec import SelectionSpec

    spec = SelectionSpec(density=1.0 - sparsity, scope="row")
    mode = {} if sequential is None else {"sequential": sequential}
    clock.stage("prune() called", 0)
    prune(
        folder, out, spec, "wanda", data=tokens, dtype="bfloat16", batch_size=batch_size,
        device=device, force=True, progress=clock, **mode,
    )  # fmt: skip
    clock.stage("done", 0)
    result.write_text(json.dumps(clock.stages))


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file of a model folder that holds it."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    from safetensors import safe_open

    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        if path.name != "masks.safetensors":
            with safe_open(str(path), framework="pt") as handle:
                files.update(dict.fromkeys(handle.keys(), path))
    return files


def _read(files: dict[str, Path], name: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(files[name]), framework="pt") as handle:
        return handle.get_tensor(name)


def _overlap(a: Any, b: Any) -> dict[str, int]:
    """Counts behind the IoU of two kept-masks (bool tensors of one shape)."""
    return {
        "kept_a": int(a.sum()),
        "kept_b": int(b.sum()),
        "intersection": int((a & b).sum()),
        "union": int((a | b).sum()),
        "equal": int((a == b).sum()),
        "numel": a.numel(),
    }


def _summed(parts: list[dict[str, int]]) -> dict[str, float]:
    """Summed counts with IoU (|A∩B|/|A∪B|) and the fraction of equal mask entries."""
    total: dict[str, float] = {key: sum(p[key] for p in parts) for key in parts[0]}
    total["iou"] = total["intersection"] / total["union"]
    total["equal_fraction"] = total["equal"] / total["numel"]
    return total


def _layer_of(name: str) -> int | None:
    for before, part in itertools.pairwise(name.split(".")):
        if before == "layers" and part.isdigit():
            return int(part)
    return None


def row_kept(scores: Any, pruned_per_row: int) -> Any:
    """Keep all but the `pruned_per_row` lowest scores of each row; ties: lower index pruned first."""
    import torch

    order = torch.sort(scores, dim=1, stable=True).indices[:, :pruned_per_row]
    kept = torch.ones(scores.shape, dtype=torch.bool)
    kept.scatter_(1, order, False)
    return kept


def threshold_ties(scores: Any, pruned_per_row: int) -> dict[str, int]:
    """Rows whose keep/prune boundary falls inside a group of equal scores, and the weights in
    those groups: there the tie rule, not the score, decides which are kept."""
    import torch

    values = torch.sort(scores, dim=1).values
    threshold = values[:, pruned_per_row - 1 : pruned_per_row]
    split = (values[:, pruned_per_row:] == threshold).any(dim=1)
    tied = ((values == threshold) & split[:, None]).sum()
    return {"rows_split_by_a_tie": int(split.sum()), "rows": scores.shape[0], "tied_weights": int(tied)}


REFERENCES = {
    "prunecli_scores": "prunecli's wanda_scores",
    "float32_scores": "float32 scores",
    "float32_eager": "float32 scores, eager attention",
}


def float32_squares(model: Any, modules: dict[str, Any], batches: list[tuple[Any, None]]) -> dict[str, Any]:
    """Σ x_j² per input feature of each module, in float32 from float32 inputs (as llm-compressor)."""
    import torch

    squares: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def accumulate(_: Any, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            squares[name] = squares.get(name, 0) + x.pow(2).sum(0)

        return accumulate

    hooks = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            for ids, _ in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        for handle in hooks:
            handle.remove()
    return squares


def layer0_reference(
    folder: Path, tokens: Path, batch_size: int, names: list[str], density: float
) -> dict[str, dict[str, Any]]:
    """Block 0's kept-masks recomputed from the dense model, three ways (see REFERENCES).

    Block 0's inputs do not depend on the later blocks, so the model is cut to its first block
    (and its head, whose logits nothing here needs).
    "prunecli_scores" are prunecli's own `wanda_scores`; "float32_scores" are |W|·‖X_j‖ in
    float32 over float32 statistics of the same passes (transformers' default attention, as
    prunecli builds the model); "float32_eager" the same with eager attention, which
    llm-compressor forces while calibrating (`calibration_forward_context`). Returns, per tensor,
    each kept-mask, its ties, and the dtype prunecli's scores come in.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from prunecli.scoring.wanda import wanda_scores
    from prunecli.selection.threshold import keep_count

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
    model.model.layers = model.model.layers[:1]
    model.lm_head = torch.nn.Identity()  # no logits needed: the hooks see all there is to see
    with np.load(tokens) as archive:
        batches = [(b, None) for b in torch.from_numpy(archive["input_ids"]).split(batch_size)]
    modules = {name: model.get_submodule(name.rpartition(".")[0]) for name in names}
    lazy = wanda_scores(model, names, batches)
    dtypes = {name: str(lazy[name].dtype) for name in names}
    scores = {"prunecli_scores": {name: lazy[name].float() for name in names}}
    for key, attention in (("float32_scores", model.config._attn_implementation), ("float32_eager", "eager")):
        model.config._attn_implementation = attention
        squares = float32_squares(model, modules, batches)
        scores[key] = {
            name: module.weight.detach().abs().float() * squares[name].sqrt()[None, :]
            for name, module in modules.items()
        }
    result = {}
    for name, module in modules.items():
        columns = module.weight.shape[1]
        pruned = columns - keep_count(columns, density)
        result[name] = {key: row_kept(found[name], pruned) for key, found in scores.items()}
        result[name]["ties"] = {key: threshold_ties(found[name], pruned) for key, found in scores.items()}
        result[name]["dtype"] = dtypes[name]
    return result


def compare_folders(
    names: list[str], ours: dict[str, Path], theirs: dict[str, Path], source: dict[str, Path]
) -> dict[str, Any]:
    """Kept sets (nonzero weights) of two pruned folders: overall, per block and per tensor."""
    per_tensor, source_zeros = {}, 0
    for name in names:
        source_zeros += int((_read(source, name) == 0).sum())
        per_tensor[name] = _overlap(_read(ours, name) != 0, _read(theirs, name) != 0)
    layers: dict[int | None, list[dict[str, int]]] = {}
    for name, counts in per_tensor.items():
        layers.setdefault(_layer_of(name), []).append(counts)
    return {
        "source_zeros": source_zeros,
        "overall": _summed(list(per_tensor.values())),
        "layers": {str(layer): _summed(parts) for layer, parts in sorted(layers.items())},
        "tensors": {name: _summed([counts]) for name, counts in per_tensor.items()},
    }


def worker_compare(args: list[str]) -> None:
    """Compare each prunecli output with llm-compressor's, and block 0 with its recomputation.

    args: SOURCE LLMC_OUT TOKENS BATCH SPARSITY RESULT MODE=FOLDER...
    """
    source, theirs_dir, tokens = Path(args[0]), Path(args[1]), Path(args[2])
    batch_size, sparsity, out = int(args[3]), float(args[4]), Path(args[5])
    outputs = {mode: Path(folder) for mode, _, folder in (a.partition("=") for a in args[6:])}
    src, theirs = _weight_files(source), _weight_files(theirs_dir)
    first_mode = next(iter(outputs.values()))
    manifest = json.loads((first_mode / "manifest.json").read_text())
    names = [t["name"] for t in manifest["tensors"] if t["pruned"]]
    report: dict[str, Any] = {"pruned_tensors": len(names), "modes": {}}
    report["pruned_only_by_llmcompressor"] = [
        name
        for name in theirs
        if name not in names
        and name in src
        and _read(src, name).ndim == 2
        and int((_read(theirs, name) == 0).sum()) > int((_read(src, name) == 0).sum())
    ]
    files = {mode: _weight_files(folder) for mode, folder in outputs.items()}
    for mode, ours in files.items():
        report["modes"][mode] = compare_folders(names, ours, theirs, src)
    if len(files) > 1:
        (a, fa), (b, fb) = list(files.items())[:2]
        report["between_modes"] = {"modes": [a, b], **compare_folders(names, fa, fb, src)}
    first = [name for name in names if _layer_of(name) == 0]
    reference = layer0_reference(source, tokens, batch_size, first, 1.0 - sparsity)
    diagnosis: dict[str, Any] = {"prunecli_scores_dtype": reference[first[0]]["dtype"]}
    for key in REFERENCES:
        ties = [reference[n]["ties"][key] for n in first]
        against = {"llmcompressor": theirs, **files}
        diagnosis[key] = {
            "iou_vs": {
                who: _summed([_overlap(reference[n][key], _read(f, n) != 0) for n in first])["iou"]
                for who, f in against.items()
            },
            "iou_vs_llmcompressor_by_tensor": {
                n: _summed([_overlap(reference[n][key], _read(theirs, n) != 0)])["iou"] for n in first
            },
            "ties": {k: sum(t[k] for t in ties) for k in ties[0]},
        }
    report["layer0_reference"] = diagnosis
    out.write_text(json.dumps(report, indent=1))


WORKERS: dict[str, Callable[[list[str]], None]] = {
    "_build": worker_build,
    "_imports": worker_imports,
    "_floor": worker_floor,
    "_phases": worker_phases,
    "_compare": worker_compare,
}


# --------------------------------------------------------------------------------------------
# The driver (standard library only).
# --------------------------------------------------------------------------------------------


def _busy_cpu_s() -> float:
    """CPU seconds all processes on the machine have used so far (/proc/stat), or NaN."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measure(label: str, argv: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run argv as one child: wall time spawn..reap, its ru_maxrss and CPU time, and the CPU time
    the rest of the machine used meanwhile."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        busy, start = _busy_cpu_s(), time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall, busy = time.perf_counter() - start, _busy_cpu_s() - busy
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{label} failed with exit code {code}; see {log}")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "label": label,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
        "others_cpu_s": max(0.0, busy - cpu),
        "argv": argv,
    }


def worker_argv(name: str, *args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), name, *(str(a) for a in args)]


def prunecli_argv(opts: argparse.Namespace, mode: str, out: Path) -> list[str]:
    script = Path(sys.executable).parent / "prunecli"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "prunecli"]
    return [
        *command, "prune", str(opts.model), "--method", "wanda", "--data", str(opts.tokens),
        "--sparsity", repr(opts.sparsity), "--scope", "row", "--dtype", "bfloat16",
        "--batch-size", str(opts.size.batch_size), "--device", opts.size.device,
        "-o", str(out), "--force", "--quiet", *MODES[mode][1], *opts.prunecli_arg,
    ]  # fmt: skip


def llmc_argv(opts: argparse.Namespace, out: Path, result: Path) -> list[str]:
    return [
        str(opts.llmc_python), str(HERE / "llmc_wanda.py"), "--model", str(opts.model),
        "--tokens", str(opts.tokens), "--sparsity", repr(opts.sparsity), "--method", "wanda",
        "--out", str(out), "--json", str(result),
    ]  # fmt: skip


def build(opts: argparse.Namespace, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Generate the folder and the tokens, unless the same specification is already there."""
    spec = json.dumps({"size": dataclasses.asdict(opts.size), "seed": opts.seed}, sort_keys=True)
    stamp = opts.work / "spec.json"
    if not opts.rebuild and stamp.exists() and stamp.read_text() == spec and opts.tokens.exists():
        return {"label": "build (reused)", "wall_s": 0.0}
    shutil.rmtree(opts.model, ignore_errors=True)
    sizes = json.dumps(dataclasses.asdict(opts.size))
    result = measure("build", worker_argv("_build", sizes, opts.model, opts.tokens, opts.seed), env, log)
    stamp.write_text(spec)
    return result


def folder_facts(folder: Path) -> dict[str, Any]:
    """Bytes and shards of a safetensors folder, from its index and file sizes."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    return {"shards": len(shards), "bytes": sum((folder / s).stat().st_size for s in shards)}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def run_rounds(opts: argparse.Namespace, env: dict[str, str], log: Path) -> list[dict[str, dict]]:
    """`--repeat` rounds of every command, the order rotating from round to round;
    llm-compressor runs in the first `--llmc-repeat` rounds only."""
    floor_json, llmc_json = opts.work / "floor.json", opts.work / "llmc.json"

    def floor() -> dict[str, Any]:
        size = opts.size
        argv = worker_argv("_floor", opts.model, opts.tokens, size.batch_size, size.device, floor_json)
        run = measure("floor: from_pretrained + forward", argv, env, log)
        run["phases"] = read_json(floor_json)
        return run

    def prunecli(mode: str) -> Callable[[], dict[str, Any]]:
        return lambda: measure(MODES[mode][0], prunecli_argv(opts, mode, opts.work / f"out_{mode}"), env, log)

    def llmc() -> dict[str, Any]:
        shutil.rmtree(opts.work / "out_llmc", ignore_errors=True)
        argv = llmc_argv(opts, opts.work / "out_llmc", llmc_json)
        run = measure("llm-compressor oneshot (llmc_wanda.py)", argv, env, log)
        found = read_json(llmc_json)
        run["phases"] = {k: found[k] for k in ("load_s", "oneshot_s", "save_s", "total_s")}
        return run

    commands: dict[str, Callable[[], dict[str, Any]]] = {
        "imports": lambda: measure("imports only", worker_argv("_imports"), env, log),
        "floor": floor,
        **{mode: prunecli(mode) for mode in opts.modes},
        "llmc": llmc,
    }
    rounds = []
    for rep in range(opts.repeat):
        names = [n for n in commands if n != "llmc" or (opts.llmc and rep < opts.llmc_repeat)]
        shift = rep % len(names)
        done = {}
        for who in names[shift:] + names[:shift]:
            print(f"  round {rep + 1}: {who} ...", flush=True)
            done[who] = commands[who]()
        rounds.append({who: done[who] for who in commands if who in done})
    return rounds


def prunecli_mode(manifest: Path) -> str:
    """How prunecli scored, from its manifest: the method's parameters and where the scores came from."""
    method = read_json(manifest)["method"]
    scores = (method.get("scores") or {}).get("path")
    return f"method params {json.dumps(method.get('params', {}), sort_keys=True)}, scores {scores}"


def best(rounds: list[dict[str, dict]], who: str, key: str) -> float:
    """The least-disturbed figure: the minimum over the rounds that ran `who`."""
    return min(r[who][key] for r in rounds if who in r)


def ratio_row(
    rounds: list[dict[str, dict]],
    metric: str,
    key: str,
    num: str,
    den: str,
    target: float | None = None,
    less_imports: bool = False,
) -> dict[str, Any]:
    """num's figure over den's (`key`: wall_s, cpu_s or rss_mib): best run of each, and within each
    round. CPU time is steadier than wall time on a machine shared with other work.

    With `less_imports`, the imports-only process's figure is taken off both sides first.
    """

    def value(figures: dict[str, dict], who: str) -> float:
        return figures[who][key] - (figures["imports"][key] if less_imports else 0.0)

    need = (num, den, "imports") if less_imports else (num, den)
    usable = [r for r in rounds if all(who in r for who in need)]
    per_round = [value(r, num) / value(r, den) for r in usable]
    best_of = {who: {key: best(rounds, who, key)} for who in need}
    ratio = value(best_of, num) / value(best_of, den)
    return {
        "metric": metric,
        "best_of_each": ratio,
        "per_round": per_round,
        "median_per_round": statistics.median(per_round),
        "target": target,
        "met": None if target is None else ratio <= target,
    }


def ratios(rounds: list[dict[str, dict]], modes: list[str]) -> list[dict[str, Any]]:
    """Every figure as a ratio to one measured in the same run."""
    rows = []
    for mode in modes:
        rows += [
            ratio_row(rounds, f"{mode}: wall / floor wall", "wall_s", mode, "floor", TARGET),
            ratio_row(rounds, f"{mode}: peak RSS / floor peak RSS", "rss_mib", mode, "floor", TARGET),
            ratio_row(rounds, f"{mode}: CPU time / floor CPU time", "cpu_s", mode, "floor"),
            ratio_row(rounds, f"{mode}: wall, imports off both", "wall_s", mode, "floor", less_imports=True),
            ratio_row(rounds, f"{mode}: RSS, imports off both", "rss_mib", mode, "floor", less_imports=True),
        ]
    if any("llmc" in r for r in rounds):
        for mode in modes:
            rows.append(ratio_row(rounds, f"llm-compressor wall / {mode} wall", "wall_s", "llmc", mode))
            rows.append(ratio_row(rounds, f"llm-compressor CPU time / {mode}'s", "cpu_s", "llmc", mode))
            rows.append(ratio_row(rounds, f"llm-compressor peak RSS / {mode}'s", "rss_mib", "llmc", mode))
    return rows


def print_report(
    opts: argparse.Namespace,
    facts: dict,
    rounds: list[dict],
    rows: list[dict],
    masks: dict | None,
    phases: dict[str, list[dict]],
) -> None:
    s = opts.size
    llmc_rounds = min(opts.llmc_repeat, opts.repeat) if opts.llmc else 0
    print()
    print(
        f"model: random bf16 Llama, hidden {s.hidden}, intermediate {s.intermediate}, {s.layers} layers, "
        f"heads {s.heads}/{s.kv_heads} kv, vocab {s.vocab}: {facts['bytes'] / MIB:,.1f} MiB in "
        f"{facts['shards']} shards; calibration {s.windows} windows x {s.seq_len} tokens, batches of "
        f"{s.batch_size} (llm-compressor: 1); sparsity {opts.sparsity}, per output row; seed {opts.seed}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, {_mem_total_gib():.1f} GiB RAM; device {s.device}; "
        f"python {sys.version.split()[0]}; rounds {opts.repeat} (llm-compressor in {llmc_rounds})"
    )
    print(f"prunecli under test: {opts.prunecli_origin}")
    for mode, how in opts.prunecli_modes.items():
        print(f"  {mode}: {how}")
    print()
    print("| command | round | wall s | CPU s | peak RSS MiB | others' CPU s | inside (s) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for i, done in enumerate(rounds, 1):
        for m in done.values():
            inside = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in m.get("phases", {}).items())
            print(
                f"| {m['label']} | {i} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {m['rss_mib']:,.0f} "
                f"| {m['others_cpu_s']:.1f} | {inside} |"
            )
    print()
    print("| ratio | best run of each | round by round | median | target | met |")
    print("|---|---:|---|---:|---|---|")
    for r in rows:
        target = "-" if r["target"] is None else f"<= {r['target']:g}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        per = ", ".join(f"{v:.2f}" for v in r["per_round"])
        median = r["median_per_round"]
        print(f"| {r['metric']} | {r['best_of_each']:.3f} | {per} | {median:.3f} | {target} | {met} |")
    for mode, stages in phases.items():
        print()
        print(f"prunecli ({mode}) stage by stage, in process (time from start; RSS now / peak, MiB):")
        for p in stages:
            print(f"  {p['t_s']:7.2f} s  {p['rss_mib']:7.0f} / {p['peak_mib']:7.0f}  {p['stage']}")
    if masks:
        print_masks(masks)
    busy = [m for done in rounds for m in done.values()]
    if any(m["others_cpu_s"] > max(2.0, 0.1 * m["wall_s"]) for m in busy):
        print("\nwarning: other processes used the CPU during some runs (others' CPU s); timings are noisy")


def print_masks(masks: dict) -> None:
    modes = list(masks["modes"])
    print()
    print(
        f"masks vs llm-compressor's ({masks['pruned_tensors']} tensors; kept = nonzero; IoU of kept sets / "
        f"fraction of equal mask entries; pruned by llm-compressor only: "
        f"{masks['pruned_only_by_llmcompressor'] or 'none'}):"
    )
    between = masks.get("between_modes")
    extra = f" {' vs '.join(between['modes'])} |" if between else ""
    print("| block |" + "".join(f" {m} vs llm-compressor |" for m in modes) + extra)
    print("|---|" + "---:|" * (len(modes) + bool(between)))
    for layer in [*masks["modes"][modes[0]]["layers"], "all"]:
        cells = []
        for found in [masks["modes"][m] for m in modes] + ([between] if between else []):
            c = found["overall"] if layer == "all" else found["layers"][layer]
            cells.append(f" {c['iou']:.4f} / {c['equal_fraction']:.4f} |")
        print(f"| {layer} |" + "".join(cells))
    zeros = masks["modes"][modes[0]]["source_zeros"]
    print(f"(zeros already in the source's pruned tensors: {zeros})")
    ref = masks["layer0_reference"]
    print()
    dtype = ref["prunecli_scores_dtype"]
    print(f"block 0 recomputed from the dense model (prunecli's Wanda scores are {dtype}):")
    who = list(ref["prunecli_scores"]["iou_vs"])
    print("| block 0 masks from |" + "".join(f" IoU vs {w} |" for w in who) + " rows split by a tie | tied |")
    print("|---|" + "---:|" * (len(who) + 2))
    for key, label in REFERENCES.items():
        r, t = ref[key], ref[key]["ties"]
        cells = "".join(f" {r['iou_vs'][w]:.4f} |" for w in who)
        print(f"| {label} |{cells} {t['rows_split_by_a_tie']:,} of {t['rows']:,} | {t['tied_weights']:,} |")


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="preset sizes (default small)")
    for field in dataclasses.fields(Size):
        kind = str if field.name == "device" else int
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=kind, default=None, help=f"override the preset's {field.name}")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="rounds of imports, floor and prunecli (best of)")
    p.add_argument("--llmc-repeat", type=int, default=1, help="rounds that also run llm-compressor")
    p.add_argument("--llmc-python", type=Path, default=DEFAULT_LLMC_PYTHON, help="llm-compressor's Python")
    p.add_argument("--no-llmc", dest="llmc", action="store_false", help="skip llm-compressor")
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"prunecli modes to run, comma-separated, from {', '.join(MODES)} (default: both)",
    )
    p.add_argument(
        "--prunecli-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every `prunecli prune` (repeatable, --prunecli-arg=--flag)",
    )
    p.add_argument("--phases", action="store_true", help="also run each mode in process, timing its stages")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="working folder (benchmarks/_work/hf)")
    p.add_argument("--rebuild", action="store_true", help="generate the folder even if it is there")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    opts = p.parse_args(argv)
    preset = dataclasses.asdict(SIZES[opts.size])
    opts.size = Size(**{k: v if getattr(opts, k) is None else getattr(opts, k) for k, v in preset.items()})
    opts.modes = [m for m in opts.modes.split(",") if m]
    if not opts.modes or not set(opts.modes) <= set(MODES):
        p.error(f"--modes takes {', '.join(MODES)}")
    if opts.size.shards < 3:
        p.error("--shards must be at least 3")
    if opts.repeat < 1 or not 0.0 < opts.sparsity < 1.0:
        p.error("--repeat must be at least 1 and --sparsity strictly between 0 and 1")
    if opts.llmc and not opts.llmc_python.exists():
        print(f"note: {opts.llmc_python} not found: llm-compressor is skipped", file=sys.stderr)
        opts.llmc = False
    opts.model, opts.tokens = opts.work / "model", opts.work / "tokens.npz"
    return opts


def run_phases(opts: argparse.Namespace, env: dict[str, str], log: Path) -> dict[str, list[dict]]:
    """One in-process run of each mode with a StageClock (not part of the ratios)."""
    found = {}
    for mode in opts.modes:
        print(f"  prunecli ({mode}) in process, stage by stage ...", flush=True)
        result, out = opts.work / f"phases_{mode}.json", opts.work / "out_phases"
        sequential = json.dumps(MODES[mode][2])
        argv = worker_argv(
            "_phases", opts.model, opts.tokens, out, opts.sparsity, opts.size.batch_size,
            opts.size.device, sequential, result,
        )  # fmt: skip
        measure(f"prunecli in process ({mode})", argv, env, log)
        found[mode] = read_json(result)
        shutil.rmtree(out, ignore_errors=True)
    return found


def compare_masks(opts: argparse.Namespace, env: dict[str, str], log: Path) -> dict[str, Any]:
    print("  comparing the masks ...", flush=True)
    result = opts.work / "masks.json"
    outputs = [f"{mode}={opts.work / f'out_{mode}'}" for mode in opts.modes]
    argv = worker_argv(
        "_compare", opts.model, opts.work / "out_llmc", opts.tokens, opts.size.batch_size, opts.sparsity,
        result, *outputs,
    )  # fmt: skip
    measure("compare masks", argv, env, log)
    return read_json(result)


def main(argv: list[str]) -> int:
    if argv and argv[0] in WORKERS:
        WORKERS[argv[0]](argv[1:])
        return 0
    opts = parse_args(argv)
    opts.work.mkdir(parents=True, exist_ok=True)
    log = opts.work / "bench.log"
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    print(f"building the folder in {opts.work} ...", flush=True)
    built = build(opts, env, log)
    facts = folder_facts(opts.model)
    if facts["shards"] < 3:
        sys.exit(f"the folder has {facts['shards']} shards, not >= 3; raise --shards")
    origin = [sys.executable, "-c", "import prunecli; print(prunecli.__version__, prunecli.__file__)"]
    found = subprocess.run(origin, env=env, cwd=opts.work, capture_output=True, text=True, check=True)
    opts.prunecli_origin = found.stdout.strip()
    rounds = run_rounds(opts, env, log)
    opts.prunecli_modes = {m: prunecli_mode(opts.work / f"out_{m}" / "manifest.json") for m in opts.modes}
    phases = run_phases(opts, env, log) if opts.phases else {}
    masks = compare_masks(opts, env, log) if opts.llmc else None
    rows = ratios(rounds, opts.modes)
    print_report(opts, facts, rounds, rows, masks, phases)
    if opts.json:
        summary = {
            "size": dataclasses.asdict(opts.size), "sparsity": opts.sparsity, "seed": opts.seed,
            "folder": facts, "build": built, "cpus": os.cpu_count(), "prunecli": opts.prunecli_origin,
            "prunecli_modes": opts.prunecli_modes, "rounds": rounds, "ratios": rows,
            "prunecli_stages": phases, "masks": masks,
        }  # fmt: skip
        opts.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
