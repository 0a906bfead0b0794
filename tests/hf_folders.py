"""Tiny Hugging Face model folders for the tests, built from configs (no downloads).

Each folder is what `save_pretrained(..., max_shard_size=...)` writes: sharded safetensors with
`model.safetensors.index.json`, `config.json`, `generation_config.json`, and a word-level
tokenizer trained here on text that ships with Python (the standard library's documentation
topics), so text calibration runs without network access.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

VOCAB = 128
MAX_POSITIONS = 64


def corpus() -> str:
    """Real English text from the standard library's pydoc topics (a few kB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)[:12])


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer of VOCAB entries, trained on `corpus()`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator([corpus()], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def llama(folder: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A 2-block Llama (separate lm_head) saved in about 5 shards, with a tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).to(dtype).save_pretrained(folder, max_shard_size="20KB")
    save_tokenizer(folder)
    return folder


def gpt2(folder: Path, seed: int = 0) -> Path:
    """A 2-block GPT-2: Conv1D weights stored (in, out), lm_head tied to wte (absent from the file)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=MAX_POSITIONS,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder, max_shard_size="20KB")
    save_tokenizer(folder)
    return folder


def token_ids(path: Path, rows: int = 8, length: int = 16, seed: int = 0, **extra: np.ndarray) -> Path:
    """An .npz of seeded int64 `input_ids` (rows, length) inside the vocabulary."""
    ids = np.random.default_rng(seed).integers(3, VOCAB, (rows, length), dtype=np.int64)
    np.savez(path, input_ids=ids, **extra)
    return path
