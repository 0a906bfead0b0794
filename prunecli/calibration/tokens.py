"""Token calibration data for language models: token ids from a file, or windows cut from text.

Two sources:
- an `.npz` or `.safetensors` file with an integer `input_ids` array (N, T) and, optionally, an
  `attention_mask` of the same shape: up to `num_samples` rows are drawn with the seed;
- text: a `.txt` file (one document) or `.jsonl` (one JSON object per line with a `text` field),
  tokenized with the model folder's tokenizer; documents are joined by the end-of-text token,
  and `num_samples` windows of `seq_len` tokens start at seeded random offsets (as the Wanda
  and SparseGPT papers draw their C4 windows).

Ids stay int64; a padded position carries `PAD` (−1), which `calibration.forward` turns into the
attention mask. Each window's labels are its next tokens (`IGNORE` at the last position and
wherever the next token is padding), so the default `lm` loss is next-token cross-entropy. The
fingerprint covers the file's bytes, the tokenizer's files and every sampling parameter.
For evaluation, `load_token_windows` takes every token once, in order, instead of a sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.calibration.data import Calibration, fingerprint
from prunecli.calibration.forward import PAD
from prunecli.calibration.losses import IGNORE
from prunecli.errors import InputError, UsageError
from prunecli.io.checkpoints import require_file, sha256_of_files

TEXT_SUFFIXES = (".txt", ".jsonl")
ID_SUFFIXES = (".npz", ".safetensors")
IDS_KEY, MASK_KEY = "input_ids", "attention_mask"
DEFAULT_SEQ_LEN = 2048
DEFAULT_SAMPLES = 128  # the Wanda and SparseGPT papers' calibration set
DEFAULT_BATCH = 8
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "added_tokens.json", "vocab.txt", "spiece.model",
)  # fmt: skip


def is_token_source(source: str) -> bool:
    """Text, or a file of arrays with an `input_ids` array."""
    path = Path(source)
    if path.suffix in TEXT_SUFFIXES:
        return True
    if path.suffix not in ID_SUFFIXES or not path.is_file():
        return False
    return IDS_KEY in _array_names(path)


def load_tokens(
    source: str,
    *,
    tokenizer_folder: Path | None,
    vocab_size: int | None,
    max_len: int | None,
    seq_len: int | None = None,
    num_samples: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> Calibration:
    """Seeded token batches (ids, next-token labels) on the CPU; see the module docstring.

    Args:
        tokenizer_folder: where the tokenizer of text lives (the model folder); None refuses text.
        vocab_size: ids must be below it (None: not checked).
        max_len: the model's longest sequence; caps the default `seq_len` and refuses longer rows.
    """
    for name, value in (("seq_len", seq_len), ("num_samples", num_samples), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"`{name}` must be at least 1, got {value}", "pass a positive integer",
                             option=name, value=value)  # fmt: skip
    path = Path(source)
    require_file(path, "calibration data")
    samples = num_samples or DEFAULT_SAMPLES
    rng = np.random.default_rng(seed)
    if path.suffix in TEXT_SUFFIXES:
        if tokenizer_folder is None:
            raise UsageError(f"text data {path} needs a tokenizer", "prune a Hugging Face model folder "
                             "(its tokenizer is used), or give token ids in an .npz (input_ids)")  # fmt: skip
        length = _window_length(seq_len, max_len)
        stream = _tokenize(path, tokenizer_folder, trust_remote_code)
        ids, mask = _windows(stream, length, samples, rng, path)
        content = sha256_of_files([path, *_tokenizer_files(tokenizer_folder)])
    else:
        ids, mask = _rows(path, seq_len, max_len)
        chosen = rng.permutation(len(ids))[:samples] if len(ids) > samples else np.arange(len(ids))
        ids, mask = ids[chosen], mask[chosen]
        content = sha256_of_files([path])
    _check_vocabulary(ids, mask, vocab_size, path)
    size = batch_size or DEFAULT_BATCH
    params: dict[str, Any] = {"kind": "tokens", "seq_len": int(ids.shape[1]), "num_samples": samples,
                              "batch_size": size, "seed": seed}  # fmt: skip
    batches = _batches(ids, mask, size)
    return Calibration(
        batches, fingerprint(content, params), (int(ids.shape[1]),), None, source, size, None, seed
    )


def load_token_windows(
    source: str,
    *,
    tokenizer_folder: Path | None,
    vocab_size: int | None,
    max_len: int | None,
    seq_len: int | None = None,
    batch_size: int | None = None,
    trust_remote_code: bool = False,
) -> Calibration:
    """Every token of `source` once, in order, for evaluation (perplexity): not a sample.

    Text is cut into consecutive, non-overlapping windows of `seq_len` tokens (default as in
    `load_tokens`), the last one shorter and padded; token ids are taken row by row, all of
    them. Each window predicts its own tokens after the first, so labels are as in `load_tokens`.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"`{name}` must be at least 1, got {value}", "pass a positive integer",
                             option=name, value=value)  # fmt: skip
    path = Path(source)
    require_file(path, "data")
    if path.suffix in TEXT_SUFFIXES:
        if tokenizer_folder is None:
            raise UsageError(f"text data {path} needs a tokenizer",
                             "use a Hugging Face model folder (its tokenizer), or token ids")  # fmt: skip
        stream = _tokenize(path, tokenizer_folder, trust_remote_code)
        length = min(_window_length(seq_len, max_len), stream.size)
        count = -(-stream.size // length)
        ids, mask = np.zeros((count, length), dtype=np.int64), np.zeros((count, length), dtype=bool)
        ids.reshape(-1)[: stream.size], mask.reshape(-1)[: stream.size] = stream, True
        content = sha256_of_files([path, *_tokenizer_files(tokenizer_folder)])
    else:
        ids, mask = _rows(path, seq_len, max_len)
        content = sha256_of_files([path])
    _check_vocabulary(ids, mask, vocab_size, path)
    size = batch_size or DEFAULT_BATCH
    params = {"kind": "token-windows", "seq_len": int(ids.shape[1]), "batch_size": size}
    return Calibration(
        _batches(ids, mask, size), fingerprint(content, params), (int(ids.shape[1]),), None, source, size
    )


def _rows(path: Path, seq_len: int | None, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a token-ids file, refused when longer than the model takes."""
    if seq_len is not None:
        raise UsageError("`seq_len` cuts windows from text; token ids come in rows already",
                         "drop `seq_len`", option="seq_len", value=seq_len)  # fmt: skip
    ids, mask = _read_ids(path)
    if max_len is not None and ids.shape[1] > max_len:
        raise InputError(f"rows of {path} hold {ids.shape[1]} tokens, more than the model's {max_len}",
                         f"cut them to {max_len} tokens or fewer")  # fmt: skip
    return ids, mask


def _window_length(seq_len: int | None, max_len: int | None) -> int:
    """Tokens per window cut from text: `seq_len`, else 2048 capped at the model's maximum."""
    length = seq_len or min(DEFAULT_SEQ_LEN, max_len or DEFAULT_SEQ_LEN)
    if max_len is not None and length > max_len:
        raise UsageError(f"`seq_len` {length} is longer than the model's {max_len} positions",
                         f"use `seq_len` {max_len} or less", option="seq_len", value=length)  # fmt: skip
    return length


def _array_names(path: Path) -> list[str]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as loaded:
                return list(loaded.files)
        except (OSError, ValueError, EOFError):
            return []
    from prunecli.io.safetensors_file import SafetensorsReader

    try:
        with SafetensorsReader(path) as reader:
            return list(reader.tensors)
    except InputError:
        return []


def _read_ids(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (N, T), mask bool (N, T)), checked: integer ids, a mask of the same shape."""
    arrays = _read_arrays(path, (IDS_KEY, MASK_KEY))
    ids = arrays[IDS_KEY]
    if ids.dtype.kind not in "iu":
        raise InputError(f"'{IDS_KEY}' in {path} are {ids.dtype}, not integers",
                         "save the token ids as an integer array (int64)")  # fmt: skip
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"'{IDS_KEY}' in {path} has shape {ids.shape}, not (rows, tokens)",
                         "save a 2-D array of token ids, one row per sequence")  # fmt: skip
    mask = arrays.get(MASK_KEY)
    if mask is None:
        return ids.astype(np.int64), np.ones(ids.shape, dtype=bool)
    if mask.shape != ids.shape:
        raise InputError(f"'{MASK_KEY}' in {path} has shape {mask.shape}, but '{IDS_KEY}' has {ids.shape}",
                         "save one mask entry per token")  # fmt: skip
    if not np.isin(mask, (0, 1)).all():
        raise InputError(f"'{MASK_KEY}' in {path} holds values other than 0 and 1", "save a 0/1 mask")
    return ids.astype(np.int64), mask.astype(bool)


def _read_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as loaded:
                return {k: np.asarray(loaded[k]) for k in keys if k in loaded.files}
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"token ids {path} cannot be read ({str(exc)[:120]})", "save it again") from None
    from prunecli.io.dtypes import raw_dtype
    from prunecli.io.safetensors_file import SafetensorsReader

    with SafetensorsReader(path) as reader:
        found = {}
        for key in keys:
            if key in reader.tensors:
                info = reader.tensors[key]
                found[key] = np.array(reader.read(key).view(raw_dtype(info.dtype)).reshape(info.shape))
        return found


def _tokenize(path: Path, folder: Path, trust_remote_code: bool) -> np.ndarray:
    """The text's token ids as one stream, documents joined by the end-of-text token."""
    from prunecli.models.hf import load_tokenizer

    documents = _documents(path)
    tokenizer = load_tokenizer(folder, trust_remote_code)
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pieces: list[list[int]] = []
    for document in documents:
        pieces.append(tokenizer(document, add_special_tokens=False)["input_ids"])
        pieces.append(separator)
    stream = np.fromiter((i for piece in pieces[:-1] for i in piece), dtype=np.int64)
    if stream.size == 0:
        raise InputError(f"text data {path} gives no tokens", "give a file with text in it")
    return stream


def _documents(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"text data {path} is not UTF-8 (byte {exc.start})", "save it as UTF-8") from None
    if path.suffix == ".txt":
        documents = [text] if text.strip() else []
    else:
        documents = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(
                    f"line {number} of {path} is not JSON", "write one JSON object per line"
                ) from None
            value = record.get("text") if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise InputError(f"line {number} of {path} has no string 'text' field",
                                 'write objects like {"text": "..."}')  # fmt: skip
            if value.strip():
                documents.append(value)
    if not documents:
        raise InputError(f"text data {path} is empty", "give a file with text in it")
    return documents


def _windows(
    stream: np.ndarray, length: int, samples: int, rng: np.random.Generator, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    if stream.size < length:
        raise InputError(f"text data {path} holds {stream.size} tokens, fewer than one window of {length}",
                         f"use `seq_len` {stream.size} or less, or more text")  # fmt: skip
    starts = rng.integers(0, stream.size - length + 1, size=samples)
    ids = np.stack([stream[s : s + length] for s in starts])
    return ids, np.ones(ids.shape, dtype=bool)


def _check_vocabulary(ids: np.ndarray, mask: np.ndarray, vocab_size: int | None, path: Path) -> None:
    used = ids[mask]
    if used.size and used.min() < 0:
        raise InputError(f"{path} holds a negative token id ({int(used.min())})", "token ids start at 0")
    if vocab_size is not None and used.size and used.max() >= vocab_size:
        raise InputError(
            f"{path} holds token id {int(used.max())}, outside the model's {vocab_size}-token vocabulary",
            "tokenize with this model's tokenizer",
        )


def _batches(ids: np.ndarray, mask: np.ndarray, size: int) -> list[tuple[Any, Any]]:
    """(ids with PAD where masked, next-token labels with IGNORE) in batches of `size` rows."""
    import torch

    tokens = np.where(mask, ids, PAD)
    labels = np.full(ids.shape, IGNORE, dtype=np.int64)
    follows = mask[:, :-1] & mask[:, 1:]
    labels[:, :-1] = np.where(follows, ids[:, 1:], IGNORE)
    xs = torch.from_numpy(np.ascontiguousarray(tokens)).split(size)
    ys = torch.from_numpy(labels).split(size)
    return list(zip(xs, ys, strict=True))


def _tokenizer_files(folder: Path) -> list[Path]:
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
