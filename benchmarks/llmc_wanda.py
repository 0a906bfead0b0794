"""Prune a Hugging Face model folder with llm-compressor's Wanda or SparseGPT, as a reference run.

This is the other side of a side-by-side benchmark: it runs llm-compressor's own one-shot pruning
on the same model folder and the same calibration token windows that prunecli is given, saves the
pruned model as dense safetensors, and writes timings, peak memory and per-weight sparsity as JSON.

It needs llm-compressor, which pins its own transformers, so it runs in a separate virtualenv
(not the project's), e.g. /work/llmc-venv with torch 2.13.0 (CPU) and llmcompressor 0.14:

    /work/llmc-venv/bin/python benchmarks/llmc_wanda.py --model MODEL_DIR --tokens tokens.npz \\
        --sparsity 0.5 --method wanda --out pruned_dir --json result.json
    # N:M: keep N of every M consecutive input weights of each output (2:4 = 50% sparsity)
    /work/llmc-venv/bin/python benchmarks/llmc_wanda.py ... --pattern 2:4 --method sparsegpt ...

Inputs:
    --model   a folder with config.json and (possibly sharded, possibly bf16) safetensors; the model
              is loaded in the dtype the checkpoint declares.
    --tokens  an .npz holding an integer array `input_ids` of shape (N, T); each row is one
              calibration window. All N windows are used, in full (no shuffling, no truncation), one
              window per batch, with an attention mask of ones.

What is pruned: every Linear layer inside the decoder blocks (the model's no-split module classes,
which are also the blocks llm-compressor's sequential pipeline calibrates one at a time), with an
unstructured mask at the given sparsity, or with `--pattern N:M` a mask that keeps N of every M
consecutive input weights of each output row (prunecli's `--pattern` convention; llm-compressor's
`mask_structure` counts the pruned weights instead, so `--pattern 1:4` becomes "3:4"; 2:4 and 4:8
read the same either way). A pattern implies the sparsity, 1 - N/M. lm_head is never pruned. Note
that llm-compressor's own default (targets=["Linear"], ignore=[]) would prune lm_head as well.

The JSON holds: oneshot_s (the oneshot call alone), load_s, save_s, total_s (the whole run from
the script's start, imports and the final checks included), peak_rss_bytes (ru_maxrss of this
process), the package versions, the modifier settings, and for every pruned weight its fraction of
exact zeros (`sparsity`) and the lowest and highest fraction over its output rows
(`row_sparsity_range`); `unpruned_linear_sparsity` shows the Linear weights left alone (lm_head).

Everything runs offline: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
VERSIONED_PACKAGES = ("llmcompressor", "compressed-tensors", "transformers", "torch", "datasets")


def set_offline() -> None:
    """Forbid every Hugging Face download; must run before transformers or datasets is imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    parser.add_argument("--tokens", type=Path, required=True, help=".npz with int array input_ids (N, T)")
    parser.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero (0.5)")
    parser.add_argument("--pattern", default=None, help="N:M mask: keep N of every M inputs (e.g. 2:4)")
    parser.add_argument("--method", choices=("wanda", "sparsegpt"), default="wanda")
    parser.add_argument("--out", type=Path, required=True, help="folder for the pruned model")
    parser.add_argument("--json", type=Path, required=True, help="file for the results")
    args = parser.parse_args(argv)
    args.mask_structure = "0:0"
    if args.pattern is not None:
        keep, group = parse_pattern(args.pattern, parser)
        implied = 1.0 - keep / group
        if args.sparsity is not None and abs(args.sparsity - implied) > 1e-9:
            parser.error(f"--pattern {args.pattern} implies --sparsity {implied:g}, not {args.sparsity:g}")
        args.sparsity = implied
        args.mask_structure = f"{group - keep}:{group}"  # llm-compressor counts the pruned weights
    if args.sparsity is None:
        args.sparsity = 0.5
    if not 0.0 < args.sparsity < 1.0:
        parser.error("--sparsity must lie strictly between 0 and 1")
    return args


def parse_pattern(text: str, parser: argparse.ArgumentParser) -> tuple[int, int]:
    """(N, M) from "N:M" with 0 < N < M, or a parser error."""
    try:
        keep, group = (int(part) for part in text.split(":"))
    except ValueError:
        parser.error(f"--pattern must look like 2:4, got {text!r}")
    if not 0 < keep < group:
        parser.error(f"--pattern N:M needs 0 < N < M, got {text!r}")
    return keep, group


def read_safetensors_dtypes(path: Path) -> dict[str, str]:
    """Tensor name -> safetensors dtype string, read from the file's JSON header only."""
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    return {name: info["dtype"] for name, info in header.items() if name != "__metadata__"}


def checkpoint_dtype_name(model_dir: Path) -> str:
    """The floating dtype the checkpoint is stored in, as a torch attribute name ("bfloat16", ...).

    config.json's `dtype` (transformers 5) or `torch_dtype` (older) is taken when present;
    otherwise the most common floating dtype among the safetensors tensors.
    """
    config = json.loads((model_dir / "config.json").read_text())
    for holder in (config, config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            value = holder.get(key)
            if isinstance(value, str) and value in SAFETENSORS_DTYPES.values():
                return value
    counts: dict[str, int] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        for dtype in read_safetensors_dtypes(shard).values():
            if dtype in SAFETENSORS_DTYPES:
                counts[SAFETENSORS_DTYPES[dtype]] = counts.get(SAFETENSORS_DTYPES[dtype], 0) + 1
    if not counts:
        sys.exit(f"{model_dir}: no dtype in config.json and no floating safetensors tensors")
    return max(counts, key=lambda name: counts[name])


def load_windows(path: Path) -> np.ndarray:
    """The (N, T) int64 calibration windows stored under `input_ids`."""
    import numpy as np

    with np.load(path) as archive:
        if "input_ids" not in archive:
            sys.exit(f"{path}: no array named input_ids")
        ids = archive["input_ids"]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        sys.exit(f"{path}: input_ids must be a non-empty (N, T) array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        sys.exit(f"{path}: input_ids must be integers, got {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def placeholder_tokenizer() -> Any:
    """A one-token tokenizer, only to satisfy oneshot.

    oneshot insists on a processor whenever a dataset is given, and tries to load one from the
    model folder (failing when the folder has none). The calibration data here is already token
    ids and collated by truncation, so the processor is never used to encode anything, and no
    output_dir is passed to oneshot, so it is not saved either.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def decoder_block_classes(model: torch.nn.Module) -> list[str]:
    """Class names of the decoder blocks: the modules llm-compressor calibrates one after another."""
    from llmcompressor.utils.pytorch.module import infer_sequential_targets

    targets = infer_sequential_targets(model)
    return [targets] if isinstance(targets, str) else list(targets)


def linear_names_in_blocks(model: torch.nn.Module, block_classes: list[str]) -> list[str]:
    """Qualified names of the Linear layers that sit inside a decoder block."""
    import torch

    names: list[str] = []
    for block_name, block in model.named_modules():
        if type(block).__name__ not in block_classes:
            continue
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                names.append(f"{block_name}.{name}")
    return names


def weight_sparsity(weight: torch.Tensor) -> tuple[float, float, float]:
    """(fraction of exact zeros, lowest and highest fraction of zeros in one output row)."""
    zeros = (weight == 0).reshape(weight.shape[0], -1)
    per_row = zeros.float().mean(dim=1)
    return zeros.float().mean().item(), per_row.min().item(), per_row.max().item()


def saved_weight_sparsity(out_dir: Path) -> dict[str, tuple[float, float, float]]:
    """weight_sparsity of every 2-D tensor in the saved safetensors, by checkpoint name."""
    from safetensors import safe_open

    result: dict[str, tuple[float, float, float]] = {}
    for shard in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.ndim == 2:
                    result[name] = weight_sparsity(tensor)
    return result


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def package_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    args = parse_args(argv)
    set_offline()

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM

    windows = load_windows(args.tokens)
    num_windows, window_len = (int(size) for size in windows.shape)
    dtype_name = checkpoint_dtype_name(args.model)

    load_start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=getattr(torch, dtype_name))
    model.eval()
    load_s = time.perf_counter() - load_start
    if getattr(model.config, "vocab_size", None) and int(windows.max()) >= model.config.vocab_size:
        sys.exit(f"{args.tokens}: token id {int(windows.max())} >= vocab_size {model.config.vocab_size}")

    block_classes = decoder_block_classes(model)
    expected = linear_names_in_blocks(model, block_classes)
    if not expected:
        sys.exit(f"no Linear layers found inside decoder blocks {block_classes}")

    # Targets are the decoder blocks themselves: the modifier then hooks every Linear inside each
    # block, and nothing outside them (embeddings, final norm, lm_head). The ignore entry is a
    # second guard only; a regex is needed because llm-compressor names a matched module
    # "<target name>.<child name>", which ends with a dot when the target is the layer itself.
    targets = block_classes
    ignore = ["re:(.*\\.)?lm_head(\\..*)?$"]
    modifier_class = WandaPruningModifier if args.method == "wanda" else SparseGPTModifier
    modifier = modifier_class(
        sparsity=args.sparsity, mask_structure=args.mask_structure, targets=targets, ignore=ignore
    )

    calibration = Dataset.from_dict(
        {"input_ids": windows.tolist(), "attention_mask": [[1] * window_len] * num_windows}
    )

    oneshot_start = time.perf_counter()
    oneshot(
        model=model,
        processor=placeholder_tokenizer(),
        recipe=modifier,
        dataset=calibration,
        num_calibration_samples=num_windows,
        max_seq_length=window_len,
        shuffle_calibration_samples=False,
        batch_size=1,
        data_collator="truncation",
        pipeline="sequential",
    )
    oneshot_s = time.perf_counter() - oneshot_start

    save_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    # save_pretrained is llm-compressor's wrapper here; save_compressed=False keeps weights dense.
    model.save_pretrained(str(args.out), save_compressed=False)
    save_s = time.perf_counter() - save_start

    # Sparsity as left in memory, for every Linear layer; then the saved files must agree.
    in_memory = {
        f"{name}.weight": weight_sparsity(module.weight.detach())
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    pruned_names = [f"{name}.weight" for name in expected]
    pruned = {name: in_memory[name] for name in pruned_names}
    unpruned = {name: stats[0] for name, stats in in_memory.items() if name not in pruned}
    numels = {name: model.get_parameter(name).numel() for name in pruned_names}
    overall = sum(pruned[name][0] * numels[name] for name in pruned_names) / sum(numels.values())
    on_disk = saved_weight_sparsity(args.out)
    mismatched = [
        name for name, stats in in_memory.items() if name in on_disk and on_disk[name][0] != stats[0]
    ]
    if mismatched:
        sys.exit(f"saved sparsity differs from the in-memory model for {mismatched[:5]}")

    modifier_settings: dict[str, Any] = {
        "class": modifier_class.__name__,
        "sparsity": args.sparsity,
        "pattern": args.pattern,
        "mask_structure": modifier.mask_structure,
        "targets": targets,
        "ignore": ignore,
    }
    if args.method == "sparsegpt":
        modifier_settings["block_size"] = modifier.block_size
        modifier_settings["dampening_frac"] = modifier.dampening_frac

    result = {
        "tool": "llmcompressor",
        "method": args.method,
        "model": str(args.model),
        "dtype": dtype_name,
        "tokens": str(args.tokens),
        "num_windows": num_windows,
        "window_len": window_len,
        "out": str(args.out),
        "modifier": modifier_settings,
        "oneshot_s": oneshot_s,
        "load_s": load_s,
        "save_s": save_s,
        "total_s": time.perf_counter() - start,
        "peak_rss_bytes": peak_rss_bytes(),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "overall_pruned_sparsity": overall,
        "sparsity": {name: stats[0] for name, stats in pruned.items()},
        "row_sparsity_range": {name: [stats[1], stats[2]] for name, stats in pruned.items()},
        "unpruned_linear_sparsity": unpruned,
        "saved_tensors_checked": len(set(on_disk) & set(in_memory)),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.method}: oneshot {oneshot_s:.2f}s, total {result['total_s']:.2f}s, "
        f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB, "
        f"{len(pruned)} weights at {result['overall_pruned_sparsity']:.4f} sparsity -> {args.json}"
    )


if __name__ == "__main__":
    main()
