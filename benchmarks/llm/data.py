"""The corpus, its split, the tokenizer and the token windows of the LLM study.

The corpus is the CPython documentation shipped with the standard library:
`pydoc_data.topics.topics`, a dict of topic key -> text (79 topics, ~0.46 MB in Python 3.11).
Topics are ordered by the SHA-256 of their key and dealt out in that order: a topic goes to
held-out if it fits in held-out's 10% share of the characters, else to calibration if it fits in
its 10% share, else to train. No topic is split, so no text is shared between parts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECIAL = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}
PARTS = ("train", "calibration", "heldout")


@dataclass(frozen=True)
class Split:
    """Topic keys of each part, in SHA-256 order."""

    train: tuple[str, ...]
    calibration: tuple[str, ...]
    heldout: tuple[str, ...]

    def part(self, name: str) -> tuple[str, ...]:
        return getattr(self, name)


def topics() -> dict[str, str]:
    from pydoc_data.topics import topics as table

    return dict(table)


def split_topics(texts: dict[str, str], heldout: float = 0.1, calibration: float = 0.1) -> Split:
    """Deal the topics into train / calibration / held-out by character share (see the module doc)."""
    total = sum(len(text) for text in texts.values())
    order = sorted(texts, key=lambda key: hashlib.sha256(key.encode()).hexdigest())
    parts: dict[str, list[str]] = {name: [] for name in PARTS}
    used = dict.fromkeys(PARTS, 0)
    budget = {"heldout": heldout * total, "calibration": calibration * total}
    for key in order:
        size = len(texts[key])
        name = next((p for p in ("heldout", "calibration") if used[p] + size <= budget[p]), "train")
        parts[name].append(key)
        used[name] += size
    return Split(**{name: tuple(keys) for name, keys in parts.items()})


def train_tokenizer(texts: list[str], vocab_size: int) -> object:
    """A byte-level BPE tokenizer (no unknown bytes) as a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL["unk"], SPECIAL["bos"], SPECIAL["eos"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=SPECIAL["unk"],
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["eos"],
    )


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """The texts encoded one after another, each followed by the end-of-text token: (tokens,) int64."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


def random_windows(stream: np.ndarray, count: int, length: int, seed: int) -> np.ndarray:
    """`count` windows of `length` tokens at offsets drawn with `seed`: (count, length) int64."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - length + 1, size=count)
    return np.stack([stream[s : s + length] for s in starts])


def tiled_windows(stream: np.ndarray, length: int) -> np.ndarray:
    """Non-overlapping windows of `length` tokens from the start; the last partial one is dropped."""
    count = len(stream) // length
    return stream[: count * length].reshape(count, length)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_info(texts: dict[str, str], split: Split) -> dict:
    """What study.json records about the corpus: Python version, sizes, and the topics of each part."""
    return {
        "source": f"pydoc_data.topics (Python {sys.version.split()[0]})",
        "topics": len(texts),
        "chars": sum(len(t) for t in texts.values()),
        "parts": {
            name: {"topics": len(split.part(name)), "chars": sum(len(texts[k]) for k in split.part(name))}
            for name in PARTS
        },
        "heldout_keys": list(split.heldout),
        "calibration_keys": list(split.calibration),
    }


def dump_json(path: Path, value: object) -> None:
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode())
