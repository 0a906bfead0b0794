"""apply's streamed passes: blocks of keys, sampled keys and mapped reads give the exact masks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from prunecli.apply import plan, write
from prunecli.apply.plan import KeySource
from prunecli.io.checkpoints import open_checkpoint
from prunecli.io.safetensors_file import SafetensorsReader, write_arrays
from prunecli.pipelines import apply as pruning
from prunecli.pipelines.apply import ApplyRequest, apply_pruning
from prunecli.scoring.registry import get_method
from prunecli.selection import threshold as selection
from prunecli.selection.spec import SelectionSpec
from tests.test_selection import reference_mask

SHAPES = {"a.weight": (37, 29), "b.weight": (64, 50), "c.weight": (3, 301)}


def _tied_weights(seed: int) -> dict[str, np.ndarray]:
    """Few distinct magnitudes, both signs: many ties, across tensors and across blocks."""
    rng = np.random.default_rng(seed)
    return {n: (rng.integers(-9, 10, s) / 4).astype(np.float32) for n, s in SHAPES.items()}


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 97 keys, segments of 392 (a multiple of 8), and the sampled threshold on from 1,000 keys."""
    for module in (plan, write):  # the write pass takes its block sizes from the plan's
        monkeypatch.setattr(module, "BLOCK", 97)
        monkeypatch.setattr(module, "SEGMENT", 392)
    monkeypatch.setattr(selection, "SAMPLE_MIN_TOTAL", 1000)
    monkeypatch.setattr(selection, "SAMPLE_LIMIT", 256)


@pytest.mark.parametrize("dtype", ["F32", "F16", "F64"])  # F64: no fast keys (scores, then keys)
@pytest.mark.parametrize("invert", [False, True])
def test_key_jobs_and_samples_equal_the_whole_keys(
    tmp_path: Path, small_blocks: None, dtype: str, invert: bool
) -> None:
    weights = _tied_weights(0)
    np_dtype = {"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype]
    path = tmp_path / "w.safetensors"
    write_arrays(path, {n: (dtype, w.astype(np_dtype)) for n, w in weights.items()}, {})
    with open_checkpoint(path) as ckpt:
        source = KeySource(ckpt, list(SHAPES), method=get_method("magnitude"), invert=invert)
        for name in SHAPES:
            whole = source.keys(name).reshape(-1).copy()
            blocks = []
            for item in source.key_jobs(name):
                blocks += (
                    [b.copy() for b in item(np.empty(97, np.uint32))] if callable(item) else [item.copy()]
                )
            assert dtype == "F64" or max(b.size for b in blocks) <= 97
            np.testing.assert_array_equal(np.concatenate(blocks), whole)
            np.testing.assert_array_equal(source.sample_keys(name, 7), whole[::7])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("density", [0.013, 0.5, 0.9])
def test_global_magnitude_masks_match_a_stable_sort(
    tmp_path: Path, small_blocks: None, seed: int, density: float
) -> None:
    weights = _tied_weights(seed)
    path = tmp_path / "w.safetensors"
    write_arrays(path, {n: ("F32", w) for n, w in weights.items()}, {})
    flat = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    k = selection.keep_count(flat.size, density)
    with open_checkpoint(path) as ckpt:
        request = ApplyRequest(
            ckpt, list(SHAPES), SelectionSpec(density), tmp_path / "out", method=get_method("magnitude")
        )
        manifest = apply_pruning(request)
    assert manifest["totals"]["kept"] == k
    expected = np.split(reference_mask(flat, k), np.cumsum([w.size for w in weights.values()])[:-1])
    reader = SafetensorsReader(tmp_path / "out" / "model.safetensors")
    for (name, source), keep in zip(weights.items(), expected, strict=True):
        got = reader.read(name).view(np.float32).ravel()
        np.testing.assert_array_equal(got, np.where(keep, source.ravel(), 0.0))
    reader.close()


def test_view_is_a_read_only_copy_free_read(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    weights = _tied_weights(1)
    write_arrays(path, {n: ("F32", w) for n, w in weights.items()}, {})
    reader = SafetensorsReader(path)
    for name in SHAPES:
        view = reader.view(name)
        np.testing.assert_array_equal(view, reader.read(name))
        assert view.shape == SHAPES[name] and not view.flags.writeable
    view = reader.view("a.weight")
    reader.close()
    np.testing.assert_array_equal(view, weights["a.weight"])  # the mapping outlives close


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", ["0.9", "0.0", "1.0"])  # 0 and 1: no selection pass runs
def test_non_finite_weights_are_refused_on_every_path(
    cli, tmp_path: Path, small_blocks: None, bad: float, scope: str, sparsity: str
) -> None:
    """Keys are checked once per tensor: a value the strided sample skips is still caught."""
    weights = _tied_weights(2)
    weights["b.weight"].reshape(-1)[1001] = bad  # not a multiple of any stride used here
    path = tmp_path / "w.safetensors"
    write_arrays(path, {n: ("F32", w) for n, w in weights.items()}, {})
    r = cli("apply", path, "-m", "magnitude", "-s", sparsity, "--scope", scope, "-o", tmp_path / "out")
    assert r.code == 3 and "b.weight" in r.err and "NaN or infinite" in r.err
    assert not (tmp_path / "out").exists()


def _apply_files(path: Path, out: Path, spec: SelectionSpec, names: list[str]) -> dict[str, bytes]:
    with open_checkpoint(path) as ckpt:
        apply_pruning(ApplyRequest(ckpt, names, spec, out, method=get_method("magnitude")))
    return {f: (out / f).read_bytes() for f in ("model.safetensors", "masks.safetensors")}


@pytest.mark.parametrize(
    "spec",
    [
        SelectionSpec(0.3),  # global threshold, blockwise on the fast path
        SelectionSpec(0.3, min_density=0.2),  # floors: whole masks for some tensors
        SelectionSpec(0.3, scope="layer"),  # per-tensor top-k
        SelectionSpec(1.0),  # keep all: nothing counted before the write pass
    ],
    ids=["global", "floors", "layer", "keep-all"],
)
@pytest.mark.parametrize("extra", ["BF16", "F64"])  # F64 has no fast keys: selection runs inline
def test_threaded_segments_write_what_one_thread_writes(
    tmp_path: Path, small_blocks: None, monkeypatch: pytest.MonkeyPatch, spec: SelectionSpec, extra: str
) -> None:
    """Select and mask on 3 threads: identical files, and masks that match the weights."""
    weights = _tied_weights(3)
    halved = (weights["a.weight"].view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    weights["d.weight"] = halved if extra == "BF16" else weights["a.weight"].astype(np.float64)
    path = tmp_path / "w.safetensors"
    write_arrays(path, {n: (extra if n == "d.weight" else "F32", w) for n, w in weights.items()}, {})
    names = list(weights)
    counted_on: set[str] = set()
    count_item = selection._count_item

    def spy(*args: object) -> object:
        counted_on.add(threading.current_thread().name)
        return count_item(*args)

    monkeypatch.setattr(selection, "_count_item", spy)
    monkeypatch.setattr(pruning, "worker_count", lambda: 0)
    inline = _apply_files(path, tmp_path / "inline", spec, names)
    monkeypatch.setattr(pruning, "worker_count", lambda: 3)
    counted_on.clear()
    assert _apply_files(path, tmp_path / "threads", spec, names) == inline
    if spec.scope == "global" and spec.density < 1:  # the count ran on workers unless a key was whole
        threaded = extra == "BF16" or spec.min_density > 0
        assert (counted_on != {threading.main_thread().name}) == threaded
    model = SafetensorsReader(tmp_path / "threads" / "model.safetensors")
    masks = SafetensorsReader(tmp_path / "threads" / "masks.safetensors")
    for name, source in weights.items():
        keep = np.unpackbits(masks.read(name))[: source.size].astype(bool)
        got = model.read(name).ravel()
        np.testing.assert_array_equal(got, np.where(keep, source.ravel(), 0))
        assert 0 < keep.sum() <= keep.size
    model.close()
    masks.close()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("density", [0.013, 0.5, 0.9])
def test_layer_magnitude_masks_match_a_stable_sort_per_tensor(
    tmp_path: Path, small_blocks: None, monkeypatch: pytest.MonkeyPatch, seed: int, density: float
) -> None:
    """Layer scope's per-tensor thresholds (sampled, on 3 threads) keep each tensor's exact top-k."""
    monkeypatch.setattr(pruning, "worker_count", lambda: 3)
    weights = _tied_weights(seed)
    path = tmp_path / "w.safetensors"
    write_arrays(path, {n: ("F32", w) for n, w in weights.items()}, {})
    with open_checkpoint(path) as ckpt:
        spec = SelectionSpec(density, scope="layer")
        apply_pruning(
            ApplyRequest(ckpt, list(SHAPES), spec, tmp_path / "out", method=get_method("magnitude"))
        )
    reader = SafetensorsReader(tmp_path / "out" / "model.safetensors")
    for name, source in weights.items():
        keep = reference_mask(np.abs(source).ravel(), selection.keep_count(source.size, density))
        np.testing.assert_array_equal(reader.read(name).ravel(), np.where(keep, source.ravel(), 0.0))
    reader.close()
