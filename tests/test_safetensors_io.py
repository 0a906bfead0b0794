"""safetensors reading and writing: bit-exact round trips, compatibility, corrupt files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from prunecli.errors import CheckpointError
from prunecli.io.checkpoints import load_state_dict, open_checkpoint, save_state_dict
from prunecli.io.safetensors_file import SafetensorsWriter, write_arrays

DTYPES = [
    torch.bfloat16,
    torch.float16,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def sample(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        t = torch.randn(3, 5, generator=g).to(dtype)
        t[0, 0] = -0.0  # the sign of zero must survive
        return t
    if dtype == torch.bool:
        return torch.rand(3, 5, generator=g) > 0.5
    return torch.randint(-100 if dtype.is_signed else 0, 100, (3, 5), generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_is_bit_exact_and_readable_by_safetensors(tmp_path: Path, dtype: torch.dtype) -> None:
    original = {"a.weight": sample(dtype), "b": sample(dtype)[1]}
    path = tmp_path / "x.safetensors"
    save_state_dict(original, path, {"k": "v"})
    for loaded in (load_file(path), load_state_dict(path)):
        for name, tensor in original.items():
            assert loaded[name].dtype == dtype
            assert torch.equal(loaded[name].view(torch.uint8), tensor.contiguous().view(torch.uint8))


def test_reads_files_written_by_safetensors(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(4, 4).to(torch.bfloat16), "n": torch.arange(3)}
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"m": "1"})
    with open_checkpoint(tmp_path / "ref.safetensors") as ckpt:
        assert ckpt.metadata == {"m": "1"}
        assert ckpt.tensors["w"].dtype == "BF16" and ckpt.tensors["w"].shape == (4, 4)
        raw = ckpt.read("w")
        np.testing.assert_array_equal(raw, tensors["w"].view(torch.int16).numpy().view(np.uint16))


def test_non_contiguous_and_empty_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"t": base.t(), "e": torch.zeros(0, 3)}
    save_state_dict(tensors, tmp_path / "x.safetensors", {})
    loaded = load_file(tmp_path / "x.safetensors")
    assert torch.equal(loaded["t"], base.t()) and loaded["e"].shape == (0, 3)


def test_sharded_index(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2, 2)}, tmp_path / "m-1.safetensors")
    save_file({"b": torch.zeros(3, 2)}, tmp_path / "m-2.safetensors")
    index = {"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_state_dict(tmp_path / "m.safetensors.index.json")
    assert torch.equal(loaded["a"], torch.ones(2, 2)) and loaded["b"].shape == (3, 2)


def test_sharded_index_with_missing_shard(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing"):
        open_checkpoint(tmp_path / "m.safetensors.index.json")


def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    write_arrays(path, {"w": ("F32", np.ones((64, 64), np.float32))}, {})
    return path


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    data = good_file(tmp_path).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        open_checkpoint(cut)


@pytest.mark.parametrize("length", [0, 5])
def test_too_short_file_is_refused(tmp_path: Path, length: int) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x00" * length)
    with pytest.raises(CheckpointError, match="too short"):
        open_checkpoint(path)


def test_corrupt_header_is_refused(tmp_path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [2, 2], "data_off'
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(CheckpointError, match="header is not JSON"):
        open_checkpoint(path)


def test_header_with_wrong_offsets_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(CheckpointError, match="offsets"):
        open_checkpoint(path)


def test_huge_header_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        open_checkpoint(path)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError), SafetensorsWriter(path, [("w", "F32", (2,))]) as out:
        out.write("w", np.zeros(2, np.float32))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unfinished_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="never written"), SafetensorsWriter(path, [("w", "F32", (2,))]):
        pass
    assert list(tmp_path.iterdir()) == []


def test_scalar_tensors_keep_their_shape(tmp_path: Path) -> None:
    tensors = {"bn.num_batches_tracked": torch.tensor(7), "w": torch.ones(2)}
    save_state_dict(tensors, tmp_path / "x.safetensors", {})
    loaded = load_state_dict(tmp_path / "x.safetensors")
    assert loaded["bn.num_batches_tracked"].shape == () and loaded["bn.num_batches_tracked"].item() == 7


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "I32"])
def test_zero_count_in_blocks_counts_both_zeros(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """Blocks of 7 entries: ±0.0 are zeros wherever a block boundary falls; ints count plain 0."""
    from prunecli.io import dtypes

    monkeypatch.setattr(dtypes, "ZERO_BLOCK", 7)
    raw = np.zeros(50, dtype=dtypes.raw_dtype(dtype))
    bits = dtypes.as_unsigned(raw)
    sign = 1 << (8 * raw.itemsize - 1)
    bits[[3, 7, 20, 49]] = 5  # nonzero
    bits[[8, 13, 14]] = sign  # -0.0 for floats; a large negative int otherwise
    zeros = 46 if dtypes.is_float(dtype) else 43
    assert dtypes.zero_count(raw.reshape(5, 10), dtype) == zeros
