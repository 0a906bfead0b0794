"""Calibration data: every source kind, seeded sampling, fingerprints, and every error path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_safetensors_numpy
from safetensors.torch import save_file as save_safetensors_torch

from prunecli.calibration.data import KEY_PAIRS, Calibration, check_labels, load_calibration, parse_shape
from prunecli.errors import EXIT_BAD_INPUT, InputError, PruneError, UsageError


def toy(n: int = 40, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n float32 examples of shape (2, 3); example i is filled with i, so batches show which rows."""
    x = np.repeat(np.arange(n, dtype=np.float32), 6).reshape(n, 2, 3)
    return x, (np.arange(n) % classes).astype(np.int64)


def npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def rows(calib: Calibration) -> list[int]:
    """The example ids (see `toy`) in batch order."""
    return [int(v) for x, _ in calib.batches for v in x[:, 0, 0]]


def all_labels(calib: Calibration) -> np.ndarray:
    return np.concatenate([y.numpy() for _, y in calib.batches])


def raises(exc: type[PruneError], *fragments: str, **kwargs: object) -> PruneError:
    """Call load_calibration and check the error type, its message fragments and a hint."""
    source = kwargs.pop("source")
    with pytest.raises(exc) as info:
        load_calibration(str(source), **kwargs)
    for fragment in fragments:
        assert fragment in info.value.message
    assert info.value.hint
    assert info.value.exit_code == EXIT_BAD_INPUT
    return info.value


def raises_exactly(exc: type[PruneError], message: str, hint: str, tmp_path: Path, **kwargs: object) -> None:
    """Call load_calibration and compare the whole message (tmp_path written as <tmp>) and hint."""
    source = kwargs.pop("source")
    with pytest.raises(exc) as info:
        load_calibration(str(source), **kwargs)
    error = info.value
    assert (error.message.replace(str(tmp_path), "<tmp>"), error.hint, error.exit_code) == (
        message,
        hint,
        EXIT_BAD_INPUT,
    )


# --- parse_shape -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"), [("3x32x32", (3, 32, 32)), ("784", (784,)), (" 1X28x28 ", (1, 28, 28))]
)
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


BAD_SHAPES = ["", " ", "x", "3x", "x3", "3xx3", "0", "3x0x3", "-1", "3x-2", "3.5", "abc", "3,32", "３"]


@pytest.mark.parametrize("text", BAD_SHAPES)
def test_parse_shape_refuses(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_shape(text)
    assert "3x32x32" in info.value.hint
    assert info.value.exit_code == EXIT_BAD_INPUT


# --- every source kind -----------------------------------------------------------------------


def test_npz_inputs_and_labels(tmp_path: Path) -> None:
    x, y = toy()
    calib = load_calibration(str(npz(tmp_path, inputs=x, labels=y)), batch_size=8, num_batches=3)
    assert len(calib.batches) == 3
    for inputs, labels in calib.batches:
        assert inputs.dtype == torch.float32 and tuple(inputs.shape) == (8, 2, 3)
        assert labels is not None and labels.dtype == torch.int64 and tuple(labels.shape) == (8,)
        assert torch.equal(labels, inputs[:, 0, 0].long() % 4)  # labels stay with their examples
    assert len(set(rows(calib))) == 24  # without replacement
    assert calib.example_shape == (2, 3)
    assert calib.num_classes == 4


@pytest.mark.parametrize(("inputs_name", "labels_name"), KEY_PAIRS)
def test_default_key_pairs(tmp_path: Path, inputs_name: str, labels_name: str) -> None:
    x, y = toy()
    path = npz(tmp_path, **{inputs_name: x, labels_name: y, "other": np.zeros(3)})
    calib = load_calibration(str(path), batch_size=5)
    assert calib.num_classes == 4
    assert torch.equal(calib.batches[0][1], calib.batches[0][0][:, 0, 0].long() % 4)


def test_x_prefers_y_and_inputs_prefer_labels(tmp_path: Path) -> None:
    x, y = toy()
    path = npz(tmp_path, x=x, y=y, labels=y + 10)
    assert load_calibration(str(path), batch_size=4).num_classes == 4
    path = npz(tmp_path, "e.npz", inputs=x, y=y + 10, labels=y)
    assert load_calibration(str(path), batch_size=4).num_classes == 4


def test_explicit_keys(tmp_path: Path) -> None:
    x, y = toy()
    path = npz(tmp_path, inputs=np.zeros((40, 1)), feats=x, classes=y + 1)
    calib = load_calibration(str(path), batch_size=6, inputs_key="feats", labels_key="classes")
    assert calib.example_shape == (2, 3)
    assert calib.num_classes == 5
    assert torch.equal(calib.batches[0][1], calib.batches[0][0][:, 0, 0].long() % 4 + 1)


def test_inputs_without_labels(tmp_path: Path) -> None:
    calib = load_calibration(str(npz(tmp_path, x=toy()[0])), batch_size=4, num_batches=2)
    assert all(labels is None for _, labels in calib.batches)
    assert calib.num_classes is None
    assert calib.record()["has_labels"] is False


def test_npy_holds_inputs_only(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", toy()[0])
    calib = load_calibration(str(tmp_path / "d.npy"), batch_size=10, num_batches=2)
    assert [tuple(x.shape) for x, _ in calib.batches] == [(10, 2, 3), (10, 2, 3)]
    assert calib.num_classes is None
    raises(UsageError, ".npy", source=tmp_path / "d.npy", labels_key="labels")


@pytest.mark.parametrize("api", ["numpy", "torch"])
def test_safetensors(tmp_path: Path, api: str) -> None:
    x, y = toy()
    path = tmp_path / "d.safetensors"
    if api == "numpy":
        save_safetensors_numpy({"inputs": x, "labels": y}, str(path))
    else:  # bf16 inputs (whole numbers up to 40 are exact in bf16) and int32 labels
        tensors = {"x": torch.from_numpy(x).bfloat16(), "y": torch.from_numpy(y).int()}
        save_safetensors_torch(tensors, str(path))
    calib = load_calibration(str(path), batch_size=8, num_batches=2)
    assert calib.batches[0][0].dtype == torch.float32
    assert torch.equal(calib.batches[0][1], calib.batches[0][0][:, 0, 0].long() % 4)
    assert calib.num_classes == 4


def test_pt_dict_tuple_and_tensor(tmp_path: Path) -> None:
    x, y = toy()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    torch.save({"inputs": tx, "labels": ty, "note": "ignored"}, tmp_path / "dict.pt")
    torch.save((tx, ty), tmp_path / "tuple.pt")
    torch.save([tx.half(), ty], tmp_path / "list.pt")
    torch.save(tx, tmp_path / "bare.pt")
    expected = load_calibration(str(npz(tmp_path, inputs=x, labels=y)), batch_size=8)
    for name in ("dict.pt", "tuple.pt", "list.pt"):
        calib = load_calibration(str(tmp_path / name), batch_size=8)
        assert torch.equal(calib.batches[0][0], expected.batches[0][0])
        assert torch.equal(calib.batches[0][1], expected.batches[0][1])
    assert load_calibration(str(tmp_path / "bare.pt"), batch_size=8).num_classes is None


def test_pt_with_pickled_objects_is_refused_not_run(tmp_path: Path) -> None:
    torch.save({"inputs": torch.zeros(4, 2), "extra": Path("x")}, tmp_path / "evil.pt")
    raises(InputError, "pickled", source=tmp_path / "evil.pt", batch_size=2)


def test_random_and_ones(tmp_path: Path) -> None:
    calib = load_calibration("random:3x4x4", batch_size=16, num_batches=3, seed=1)
    assert [tuple(x.shape) for x, _ in calib.batches] == [(16, 3, 4, 4)] * 3
    assert all(labels is None for _, labels in calib.batches)
    values = torch.cat([x for x, _ in calib.batches])
    assert values.dtype == torch.float32 and abs(values.mean()) < 0.2 and 0.8 < values.std() < 1.2
    again = load_calibration("random:3x4x4", batch_size=16, num_batches=3, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(calib.batches, again.batches, strict=True))
    other = load_calibration("random:3x4x4", batch_size=16, num_batches=3, seed=2)
    assert not torch.equal(calib.batches[0][0], other.batches[0][0])
    ones = load_calibration("ones:784", batch_size=5, num_batches=2)
    assert all(torch.equal(x, torch.ones(5, 784)) for x, _ in ones.batches)
    assert ones.example_shape == (784,) and ones.num_classes is None


def test_record_is_json(tmp_path: Path) -> None:
    x, y = toy()
    record = load_calibration(str(npz(tmp_path, x=x, y=y)), batch_size=8, num_batches=2, seed=3).record()
    assert json.loads(json.dumps(record)) == record
    assert record == {
        "source": str(tmp_path / "d.npz"),
        "fingerprint": record["fingerprint"],
        "batch_size": 8,
        "num_batches": 2,
        "per_class": None,
        "seed": 3,
        "examples": 16,
        "has_labels": True,
    }
    assert len(record["fingerprint"]) == 64 and int(record["fingerprint"], 16) >= 0


# --- input conversion ------------------------------------------------------------------------


def test_uint8_inputs_are_scaled_to_unit_range(tmp_path: Path) -> None:
    x = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    calib = load_calibration(str(npz(tmp_path, inputs=x)), batch_size=2, seed=0)
    got = np.sort(calib.batches[0][0].numpy(), axis=0)
    np.testing.assert_allclose(got, [[0.0, 0.4], [0.2, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.float16, np.float64, np.bool_])
def test_other_numeric_inputs_are_cast_unchanged(tmp_path: Path, dtype: type) -> None:
    x = np.array([[0, 1], [1, 1]], dtype=dtype)
    calib = load_calibration(str(npz(tmp_path, inputs=x)), batch_size=2)
    assert calib.batches[0][0].dtype == torch.float32
    assert sorted(calib.batches[0][0].tolist()) == [[0.0, 1.0], [1.0, 1.0]]


def test_whole_float_labels_are_accepted(tmp_path: Path) -> None:
    x, y = toy()
    calib = load_calibration(str(npz(tmp_path, x=x, y=y.astype(np.float32))), batch_size=4)
    assert calib.batches[0][1].dtype == torch.int64 and calib.num_classes == 4


# --- sampling --------------------------------------------------------------------------------


def test_per_class_is_balanced_and_ignores_num_batches(tmp_path: Path) -> None:
    x, y = toy(n=60, classes=3)
    path = npz(tmp_path, x=x, y=y)
    calib = load_calibration(str(path), per_class=7, batch_size=8, num_batches=1)
    assert [len(b[0]) for b in calib.batches] == [8, 8, 5]  # 21 examples, the last batch smaller
    assert np.bincount(all_labels(calib)).tolist() == [7, 7, 7]
    assert len(set(rows(calib))) == 21
    assert all(torch.equal(lab, x[:, 0, 0].long() % 3) for x, lab in calib.batches)
    assert calib.record()["num_batches"] == 3 and calib.record()["per_class"] == 7
    same = load_calibration(str(path), per_class=7, batch_size=8, num_batches=5)
    assert rows(same) == rows(calib) and same.fingerprint == calib.fingerprint


def test_per_class_batches_are_shuffled(tmp_path: Path) -> None:
    x, y = toy(n=60, classes=3)
    calib = load_calibration(str(npz(tmp_path, x=x, y=y)), per_class=10, batch_size=30)
    assert all_labels(calib).tolist() != sorted(all_labels(calib).tolist())


def test_same_seed_same_batches_and_fingerprint(tmp_path: Path) -> None:
    x, y = toy()
    path = npz(tmp_path, x=x, y=y)
    for kwargs in ({"batch_size": 10, "num_batches": 2}, {"per_class": 5, "batch_size": 6}):
        a = load_calibration(str(path), seed=7, **kwargs)
        b = load_calibration(str(path), seed=7, **kwargs)
        c = load_calibration(str(path), seed=8, **kwargs)
        assert rows(a) == rows(b) and a.fingerprint == b.fingerprint
        assert all(torch.equal(p[1], q[1]) for p, q in zip(a.batches, b.batches, strict=True))
        assert rows(a) != rows(c) and a.fingerprint != c.fingerprint


def test_fingerprint_follows_bytes_and_parameters(tmp_path: Path) -> None:
    x, y = toy()
    path = npz(tmp_path, x=x, y=y, z=y, w=x)
    base = {"batch_size": 4, "num_batches": 2, "seed": 0}
    reference = load_calibration(str(path), **base).fingerprint
    changes = [
        {"batch_size": 8},
        {"num_batches": 3},
        {"seed": 1},
        {"per_class": 2},
        {"labels_key": "z"},
        {"inputs_key": "w"},
    ]
    prints = {load_calibration(str(path), **{**base, **change}).fingerprint for change in changes}
    assert reference not in prints and len(prints) == len(changes)
    copy = tmp_path / "copy" / "same.npz"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert load_calibration(str(copy), **base).fingerprint == reference  # bytes, not the path
    assert load_calibration(str(path), **base, inputs_key="x", labels_key="y").fingerprint == reference
    edited = npz(tmp_path, "edited.npz", x=x + 1, y=y, z=y, w=x)
    assert load_calibration(str(edited), **base).fingerprint != reference


def test_synthetic_fingerprints() -> None:
    one = load_calibration("random:3x8", batch_size=4).fingerprint
    assert load_calibration("random:3X8", batch_size=4).fingerprint == one
    others = {
        load_calibration("random:3x9", batch_size=4).fingerprint,
        load_calibration("random:3x8", batch_size=5).fingerprint,
        load_calibration("random:3x8", batch_size=4, num_batches=2).fingerprint,
        load_calibration("random:3x8", batch_size=4, seed=1).fingerprint,
        load_calibration("ones:3x8", batch_size=4).fingerprint,
    }
    assert one not in others and len(others) == 5


# --- errors ----------------------------------------------------------------------------------


def test_missing_directory_and_unknown_suffix(tmp_path: Path) -> None:
    kinds = "name a .npz, .npy, .safetensors or .pt file, or random:SHAPE / ones:SHAPE"
    message = "calibration data <tmp>/nope.npz does not exist"
    raises_exactly(InputError, message, kinds, tmp_path, source=tmp_path / "nope.npz")
    message = "calibration data <tmp> is a directory, not a file"
    raises_exactly(InputError, message, kinds, tmp_path, source=tmp_path)
    (tmp_path / "d.csv").write_text("1,2\n")
    message = "calibration data <tmp>/d.csv has an unknown suffix '.csv'"
    raises_exactly(InputError, message, kinds, tmp_path, source=tmp_path / "d.csv")


@pytest.mark.parametrize("name", ["d.npz", "d.npy", "d.safetensors", "d.pt"])
@pytest.mark.parametrize("content", [b"", b"not an array file at all", b"\x80\x02"])
def test_corrupt_files(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    raises(InputError, str(tmp_path / name), source=tmp_path / name)


def test_truncated_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, inputs=np.random.default_rng(0).standard_normal((200, 50)))
    path.write_bytes(path.read_bytes()[:-300])
    raises(InputError, "cannot be read", source=path)


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.array([{"a": 1}, None], dtype=object))
    raises(InputError, "cannot be read", source=tmp_path / "d.npz")


def test_empty_data(tmp_path: Path) -> None:
    raises(InputError, "0 examples", source=npz(tmp_path, inputs=np.zeros((0, 3)), labels=np.zeros(0)))
    raises(InputError, "no arrays", source=npz(tmp_path, "none.npz"))
    torch.save({}, tmp_path / "empty.pt")
    raises(InputError, "no arrays", source=tmp_path / "empty.pt")


def test_missing_keys_list_what_is_there(tmp_path: Path) -> None:
    path = npz(tmp_path, feats=toy()[0], classes=toy()[1])
    message = "<tmp>/d.npz has no array named inputs, x or images; it has ['classes', 'feats']"
    raises_exactly(InputError, message, "name the inputs array with `inputs_key`", tmp_path, source=path)
    message = "<tmp>/d.npz has no inputs array 'pixels'; it has ['classes', 'feats']"
    raises_exactly(InputError, message, "pick one of those", tmp_path, source=path, inputs_key="pixels")
    keys = {"inputs_key": "feats", "labels_key": "target"}
    message = "<tmp>/d.npz has no labels array 'target'; it has ['classes', 'feats']"
    raises_exactly(InputError, message, "pick one of those", tmp_path, source=path, **keys)


def test_bad_labels(tmp_path: Path) -> None:
    x, y = toy()
    raises(InputError, "40 examples", "(39,)", source=npz(tmp_path, "a.npz", x=x, y=y[:-1]))
    error = raises(InputError, "(40, 4)", source=npz(tmp_path, "b.npz", x=x, y=np.eye(4)[y]))
    assert "one-hot" in error.hint
    raises(InputError, "negative", "example 1", source=npz(tmp_path, "c.npz", x=x, y=np.where(y == 1, -1, y)))
    raises(InputError, "whole numbers", source=npz(tmp_path, "d.npz", x=x, y=y + 0.5))
    raises(InputError, "whole numbers", source=npz(tmp_path, "e.npz", x=x, y=y.astype(str)))


def test_bad_inputs(tmp_path: Path) -> None:
    x, y = toy()
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = x.copy()
        bad[12, 1, 2] = value
        path = npz(tmp_path, f"{name}.npz", x=bad)
        raises(InputError, "example 12", "NaN or infinite", source=path, batch_size=40)
    overflow = x.astype(np.float64)
    overflow[3] = 1e300  # finite in float64, infinite in float32
    raises(InputError, "example 3", source=npz(tmp_path, "big.npz", x=overflow), batch_size=40)
    raises(InputError, "not numbers", source=npz(tmp_path, "s.npz", x=np.array([["a", "b"]])), batch_size=1)
    raises(InputError, "not numbers", source=npz(tmp_path, "c.npz", x=np.ones((2, 2), complex)), batch_size=1)
    raises(InputError, "(40,)", source=npz(tmp_path, "flat.npz", x=y.astype(np.float32)))


def test_too_few_examples(tmp_path: Path) -> None:
    path = npz(tmp_path, x=toy()[0])
    error = raises(InputError, "has 40 examples", "48", source=path, batch_size=16, num_batches=3)
    assert "`batch_size`" in error.hint and "40" in error.hint
    assert len(load_calibration(str(path), batch_size=40).batches[0][0]) == 40


def test_per_class_errors(tmp_path: Path) -> None:
    x, y = toy()
    error = raises(InputError, "class 0 has 10 examples", source=npz(tmp_path, x=x, y=y), per_class=11)
    assert "10" in error.hint
    gap = np.where(y == 2, 3, y)  # no example of class 2
    raises(InputError, "class 2 has 0 examples", source=npz(tmp_path, "gap.npz", x=x, y=gap), per_class=1)
    raises(InputError, "needs labels", source=npz(tmp_path, "nolabels.npz", x=x), per_class=1)
    raises(UsageError, "no labels", source="random:4", per_class=1)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"batch_size": 0}, "`batch_size`"),
        ({"num_batches": 0}, "`num_batches`"),
        ({"per_class": 0}, "`per_class`"),
        ({"seed": -1}, "seed"),
        ({"inputs_key": "x"}, "no arrays"),
    ],
)
def test_bad_parameters(kwargs: dict[str, object], fragment: str) -> None:
    raises(UsageError, fragment, source="random:4", **kwargs)


@pytest.mark.parametrize("source", ["random:", "random:0", "ones:3x", "random:axb"])
def test_bad_synthetic_shapes(source: str) -> None:
    raises(UsageError, source=source)


def test_check_labels(tmp_path: Path) -> None:
    x, y = toy(classes=13)
    calib = load_calibration(str(npz(tmp_path, x=x, y=y)), batch_size=4)
    check_labels(calib, 13)
    with pytest.raises(InputError, match=r"labels in .* go up to 12 but the model has 10 outputs") as info:
        check_labels(calib, 10)
    assert info.value.hint
    check_labels(load_calibration("random:4", batch_size=2), 1)  # no labels: nothing to check


# --- real data -------------------------------------------------------------------------------


def test_mnist_per_class(mnist_train: Path) -> None:
    """Real MNIST: the 2,000 digits that ship with prunecli (conftest's `mnist_train`)."""
    calib = load_calibration(str(mnist_train), per_class=10, batch_size=32, seed=0)
    inputs = torch.cat([x for x, _ in calib.batches])
    assert tuple(inputs.shape) == (100, 28, 28) and calib.example_shape == (28, 28)
    assert inputs.dtype == torch.float32 and inputs.min() >= 0 and inputs.max() <= 1
    assert inputs.max() == 1  # pixels of 255 become exactly 1
    assert np.bincount(all_labels(calib), minlength=10).tolist() == [10] * 10
    assert calib.num_classes == 10
    assert calib.record()["examples"] == 100
    assert load_calibration(str(mnist_train), per_class=10, batch_size=32).fingerprint == calib.fingerprint
    with np.load(mnist_train) as data:  # every example is a digit of the file, with its own label
        rows = {x.tobytes(): int(y) for x, y in zip(data["images"], data["labels"], strict=True)}
    pixels = (inputs * 255).round().to(torch.uint8).numpy()
    assert [rows[image.tobytes()] for image in pixels] == all_labels(calib).tolist()
