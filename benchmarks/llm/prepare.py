"""The study's inputs, each built once and cached under WORK: data, tokenizer, model, calibration file.

WORK/data/split.json         the corpus split (topic keys of each part, sizes)
WORK/data/tokenizer/         the BPE tokenizer (PreTrainedTokenizerFast)
WORK/data/streams.npz        each part as one token stream (topics joined by </s>)
WORK/model-KEY/              the trained model, sharded float32 safetensors, with the tokenizer;
                             KEY hashes the shape, the schedule and the tokenizer; train.json is
                             written last and marks the folder complete
WORK/calib-KEY.npz           input_ids (128, seq_len) from the calibration part, seeded
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.llm import data
from benchmarks.llm.model import Schedule, Shape, build, count_params, perplexity, train

MARKER = "train.json"


def prepare_data(work: Path, vocab_size: int) -> tuple[object, dict[str, np.ndarray]]:
    """(tokenizer, token stream of each part), built on the first call and read afterwards."""
    from transformers import PreTrainedTokenizerFast

    folder = work / "data"
    streams_path, tok_dir = folder / "streams.npz", folder / "tokenizer"
    if streams_path.exists() and (folder / "split.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
        with np.load(streams_path) as archive:
            return tokenizer, {name: archive[name] for name in data.PARTS}
    folder.mkdir(parents=True, exist_ok=True)
    texts = data.topics()
    split = data.split_topics(texts)
    tokenizer = data.train_tokenizer([texts[k] for k in split.train], vocab_size)
    tokenizer.save_pretrained(str(tok_dir))
    streams = {
        name: data.token_stream(tokenizer, [texts[k] for k in split.part(name)]) for name in data.PARTS
    }
    info = data.corpus_info(texts, split)
    info["tokens"] = {name: len(stream) for name, stream in streams.items()}
    info["vocab_size"] = len(tokenizer)
    data.save_npz(streams_path, **streams)
    data.dump_json(folder / "split.json", info)  # written last: marks the data complete
    return tokenizer, streams


def model_key(shape: Shape, schedule: Schedule, tokenizer_dir: Path) -> str:
    tok = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    text = json.dumps(
        {"shape": asdict(shape), "schedule": asdict(schedule), "tokenizer": tok}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def ensure_model(work: Path, shape: Shape, schedule: Schedule, tokenizer, streams: dict) -> Path:
    """The trained model folder; trained, evaluated and saved only when its marker is missing."""
    import torch

    folder = work / f"model-{model_key(shape, schedule, work / 'data' / 'tokenizer')}"
    if (folder / MARKER).exists():
        print(f"model: cached in {folder}", flush=True)
        return folder
    torch.manual_seed(schedule.seed)
    model = build(shape, tokenizer.bos_token_id, tokenizer.eos_token_id)
    params = count_params(model)
    print(
        f"model: Llama, {params['total']:,} parameters ({params['decoder_linear']:,} in the decoder "
        f"blocks' Linear weights); training {schedule.steps} steps of {schedule.batch_size} x "
        f"{shape.seq_len} tokens on {len(streams['train']):,} train tokens",
        flush=True,
    )
    heldout = data.tiled_windows(streams["heldout"], shape.seq_len)
    log = train(model, streams["train"], heldout, schedule, shape.seq_len)
    ppl, tokens = perplexity(model, heldout)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), max_shard_size="20MB")
    tokenizer.save_pretrained(str(tmp))
    summary = {"shape": asdict(shape), "params": params, "heldout_ppl": ppl, "heldout_tokens": tokens, **log}
    data.dump_json(tmp / MARKER, summary)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"model: held-out perplexity {ppl:.3f} over {tokens:,} tokens; saved {folder}", flush=True)
    return folder


def ensure_calibration(work: Path, stream: np.ndarray, count: int, length: int, seed: int) -> Path:
    """The shared calibration file: `count` windows of `length` tokens at seeded offsets."""
    digest = hashlib.sha256(stream.tobytes() + f"{count}/{length}/{seed}".encode()).hexdigest()[:10]
    path = work / f"calib-{digest}.npz"
    if not path.exists():
        data.save_npz(path, input_ids=data.random_windows(stream, count, length, seed))
    return path
