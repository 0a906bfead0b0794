"""Torch checkpoints: weights_only loading, unwrapping, prefix stripping, refusing pickles."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from prunecli.errors import CheckpointError
from prunecli.io.checkpoints import load_state_dict, open_checkpoint

MARKER = Path("/tmp/prunecli-pickle-was-executed")


class Payload:
    """Unpickling this would create a file: the test checks it never happens."""

    def __reduce__(self) -> tuple:
        return (MARKER.touch, ())


def test_plain_state_dict(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as ckpt:
        assert ckpt.tensors["fc.weight"].shape == (2, 3) and ckpt.notes == []


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_and_prefixed_state_dict(tmp_path: Path, wrapper: str) -> None:
    inner = collections.OrderedDict(
        [("module.fc.weight", torch.ones(2, 3)), ("module.fc.bias", torch.zeros(2))]
    )
    torch.save({wrapper: inner, "epoch": 3}, tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as ckpt:
        assert list(ckpt.tensors) == ["fc.weight", "fc.bias"]
        assert any(wrapper in n for n in ckpt.notes) and any("module." in n for n in ckpt.notes)


def test_bf16_pt_round_trip(tmp_path: Path) -> None:
    t = torch.randn(4, 4).to(torch.bfloat16)
    torch.save({"w": t}, tmp_path / "m.bin")
    assert torch.equal(load_state_dict(tmp_path / "m.bin")["w"], t)


def test_pickled_class_is_refused_not_executed(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    torch.save({"w": torch.ones(1), "evil": Payload()}, tmp_path / "evil.pt")
    MARKER.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="refused"):
        open_checkpoint(tmp_path / "evil.pt")
    assert not MARKER.exists()


def test_truncated_pt_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(100, 100)}, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        open_checkpoint(tmp_path / "cut.pt")


def test_file_without_tensors_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 3}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="no tensors"):
        open_checkpoint(tmp_path / "m.pt")


def test_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "m.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint suffix"):
        open_checkpoint(tmp_path / "m.ckpt")


def test_sha256_of_files_hashes_the_bytes_in_order(tmp_path: Path) -> None:
    import hashlib
    import os

    from prunecli.io.checkpoints import HASH_PIECE, sha256_of_files

    first, empty = tmp_path / "a.bin", tmp_path / "empty.bin"
    first.write_bytes(os.urandom(2 * HASH_PIECE + 3))  # whole pieces and a remainder
    empty.write_bytes(b"")
    expected = hashlib.sha256(first.read_bytes() * 2).hexdigest()
    assert sha256_of_files([first, empty, first]) == expected
