"""The pipelines from Python, one call each: `score`, `apply` and `prune` on LeNet-300-100 with the
packaged digits; `prune` writes the same bytes as `score` then `apply`, and no scores file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prunecli.errors import UsageError
from prunecli.pipelines.apply import Applied, apply
from prunecli.pipelines.demo import demo_data_path
from prunecli.pipelines.prune import prune
from prunecli.pipelines.score import ScoresWritten, score
from prunecli.selection.spec import SelectionSpec

DATA = {"arch": "lenet-300-100", "data": str(demo_data_path()), "batch_size": 32, "device": "cpu"}
OUTPUT_FILES = ("manifest.json", "masks.safetensors", "model.safetensors")


class Recorder:
    """A Progress that keeps what it was told."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, int]] = []
        self.steps = 0

    def stage(self, description: str, total: int) -> None:
        self.stages.append((description, total))

    def advance(self) -> None:
        self.steps += 1


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunecli.models.initialize import init_checkpoint

    path = tmp_path_factory.mktemp("init") / "lenet.safetensors"
    init_checkpoint("lenet-300-100", path, seed=3)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUT_FILES}


# score ---------------------------------------------------------------------------------------


def test_score_a_per_tensor_method_writes_its_scores(lenet: Path, tmp_path: Path) -> None:
    import numpy as np

    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.scoring import get_method
    from prunecli.selection.prunable import prunable_names

    progress = Recorder()
    written = score(lenet, "lamp", tmp_path / "lamp.safetensors", progress=progress)
    with open_checkpoint(lenet) as ckpt, open_checkpoint(tmp_path / "lamp.safetensors") as scores:
        names = prunable_names(ckpt.tensors)
        assert list(scores.tensors) == names and scores.metadata == written.metadata
        for name in names:
            weights = ckpt.read(name).astype(np.float32)
            assert np.array_equal(scores.read(name), get_method("lamp").scorer(name, weights, 0, None))
    assert written.metadata["method"] == "lamp" and written.metadata["source_sha256"] == ckpt.sha256()
    assert isinstance(written, ScoresWritten) and written.names == names
    assert progress.stages == [("scoring (lamp)", 3)] and progress.steps == 3


def test_score_a_model_based_method(lenet: Path, tmp_path: Path) -> None:
    from prunecli.io.checkpoints import open_checkpoint

    progress = Recorder()
    written = score(lenet, "snip", tmp_path / "snip.safetensors", progress=progress, **DATA)
    with open_checkpoint(tmp_path / "snip.safetensors") as scores:
        assert scores.metadata == written.metadata
        assert list(scores.tensors) == written.names == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert written.metadata["method"] == "snip" and written.notes == []
    assert json.loads(written.metadata["params"]) == {
        "bn_mode": "eval", "device": "cpu", "dtype": "float32", "loss": "ce"
    }  # fmt: skip
    stages = [("building the model", 0), ("loading the weights", 6), ("SNIP: gradients", 1)]
    assert progress.stages == stages and progress.steps == 6 + 1


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("snip", {}, "snip needs a model"),
        ("snip", {"arch": "lenet-300-100"}, "snip needs calibration data"),
        ("synflow", {"arch": "lenet-300-100"}, "synflow is iterative and needs the target at score time"),
        ("snip", {**DATA, "sparsity": 0.5}, "snip takes no `sparsity` at score time"),
        ("magnitude", {"sparsity": 0.5}, "magnitude takes no `sparsity` at score time"),
        ("snip", {**DATA, "options": {"fisher": True}}, "`fisher` applies to taylor, not snip"),
        ("magnitude", {"options": {"max_params": 5}}, "`max_params` applies to obd and exact, not magnitude"),
    ],
)
def test_score_refuses_what_the_method_does_not_take(
    lenet: Path, tmp_path: Path, method: str, settings: dict, message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        score(lenet, method, tmp_path / "s.safetensors", **settings)
    assert caught.value.message == message
    assert not (tmp_path / "s.safetensors").exists()


# apply ---------------------------------------------------------------------------------------


def test_apply_returns_the_manifest_notes_and_warnings(lenet: Path, tmp_path: Path) -> None:
    score(lenet, "synflow", tmp_path / "sf.safetensors", arch="lenet-300-100", sparsity=0.9, iterations=3)
    applied = apply(lenet, tmp_path / "out", SelectionSpec(density=0.2), scores=tmp_path / "sf.safetensors")
    assert isinstance(applied, Applied) and applied.notes == []
    assert applied.manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert applied.manifest["method"]["name"] == "synflow"
    assert applied.warnings == [
        "the synflow scores were computed for sparsity 0.9, applied at 0.8: iterative masks are exact "
        "only at their own"
    ]


def test_apply_a_per_tensor_method_from_python(lenet: Path, tmp_path: Path) -> None:
    progress = Recorder()
    applied = apply(
        lenet, tmp_path / "out", SelectionSpec(density=0.1), method="magnitude", progress=progress
    )
    assert applied.manifest["totals"]["kept"] == 26620  # round(0.1 · 266,200)
    assert applied.manifest["method"]["scores"] is None and applied.warnings == []
    assert progress.stages and progress.steps > 0


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"method": "snip"}, "apply `method` scores without a model, but snip needs one"),
        ({}, "give exactly one of `scores` and `method`"),
        ({"method": "magnitude", "scores": "s.safetensors"}, "give exactly one of `scores` and `method`"),
    ],
)
def test_apply_refuses(lenet: Path, tmp_path: Path, given: dict, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        apply(lenet, tmp_path / "out", SelectionSpec(density=0.5), **given)
    assert caught.value.message == message


# prune = score + apply, in memory -------------------------------------------------------------

CASES = {
    "magnitude": ({}, SelectionSpec(density=0.1)),
    "random": ({}, SelectionSpec(density=0.3, scope="layer")),
    "snip": (DATA, SelectionSpec(density=0.05)),
    "grasp": (DATA, SelectionSpec(density=0.3, scope="row")),
    "synflow": ({"arch": "lenet-300-100", "iterations": 4}, SelectionSpec(density=0.02)),
    "force": ({**DATA, "iterations": 2}, SelectionSpec(density=0.05)),
    "wanda": (DATA, SelectionSpec(density=0.5, scope="row")),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_prune_writes_what_score_then_apply_write(
    lenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    from prunecli.io import safetensors_file

    settings, spec = CASES[method]
    sparsity = 1.0 - spec.density if settings.get("iterations") else None
    score(lenet, method, tmp_path / "scores.safetensors", seed=1, sparsity=sparsity, **settings)
    two_steps = apply(lenet, tmp_path / "two", spec, scores=tmp_path / "scores.safetensors", seed=1)

    folder = tmp_path / "one-call"
    folder.mkdir()
    written: list[str] = []
    writer = safetensors_file.SafetensorsWriter.__init__

    def spy(self: object, path: Path, *args: object, **kwargs: object) -> None:
        written.append(path.name)
        writer(self, path, *args, **kwargs)

    monkeypatch.setattr(safetensors_file.SafetensorsWriter, "__init__", spy)
    seen = _watch(folder)
    one_call = prune(lenet, folder / "out", spec, method, seed=1, **settings)
    names = seen()  # everything that appeared in the output's folder while prune ran
    temporaries = {n for n in names if n.startswith(".out.prunecli-tmp-")}
    assert "out" in names and names - temporaries <= {"out", ".out.prunecli-lock"}
    assert len(temporaries) <= 1  # the output folder's own, renamed into place
    assert sorted(written) == ["masks.safetensors", "model.safetensors"]  # no scores file

    one, two = _files(folder / "out"), _files(tmp_path / "two")
    assert one["model.safetensors"] == two["model.safetensors"]
    assert one["masks.safetensors"] == two["masks.safetensors"]
    label = f"(computed by prune: {method})"
    scores_record = one_call.manifest["method"]["scores"]
    assert scores_record == {"path": label, "sha256": two_steps.manifest["method"]["scores"]["sha256"]}
    assert one["manifest.json"] == two["manifest.json"].replace(
        json.dumps(str(tmp_path / "scores.safetensors")).encode(), json.dumps(label).encode()
    )


def _watch(folder: Path):
    """Record every name that appears in `folder` while the test runs (polled by a thread)."""
    import threading

    names: set[str] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            names.update(entry.name for entry in os.scandir(folder))
            done.wait(0.0005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def stop() -> set[str]:
        done.set()
        thread.join()
        names.update(entry.name for entry in os.scandir(folder))
        return names

    return stop


def test_prune_refuses_a_taken_output_before_scoring(lenet: Path, tmp_path: Path) -> None:
    from prunecli.errors import OutputExistsError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("{}")
    progress = Recorder()
    with pytest.raises(OutputExistsError):
        prune(lenet, tmp_path / "out", SelectionSpec(density=0.1), "snip", progress=progress, **DATA)
    assert progress.stages == []


def test_prune_refuses_unknown_arguments(lenet: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword arguments: sparsity"):
        prune(lenet, tmp_path / "out", SelectionSpec(density=0.1), "magnitude", sparsity=0.9)


def test_prune_prints_each_checkpoint_note_once(tmp_path: Path) -> None:
    import torch

    from prunecli.io.checkpoints import load_state_dict

    state = {f"module.{k}": v for k, v in load_state_dict(_lenet_file(tmp_path)).items()}
    torch.save(state, tmp_path / "ddp.pt")
    applied = prune(tmp_path / "ddp.pt", tmp_path / "out", SelectionSpec(density=0.5), "synflow",
                    arch="lenet-300-100", iterations=2)  # fmt: skip
    assert applied.notes == ["stripped the 'module.' prefix (DataParallel/DDP) from every key"]


def test_scores_of_a_sharded_checkpoint_name_every_shard(tmp_path: Path) -> None:
    from prunecli.io.checkpoints import checkpoint_files, sha256_of_files
    from prunecli.io.safetensors_file import SafetensorsReader, write_arrays

    reader = SafetensorsReader(_lenet_file(tmp_path))
    weight_map = {}
    for i, name in enumerate(reader.tensors):
        shard = f"part-{i}.safetensors"
        write_arrays(tmp_path / shard, {name: (reader.tensors[name].dtype, reader.read(name).copy())}, {})
        weight_map[name] = shard
    reader.close()
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    applied = prune(index, tmp_path / "out", SelectionSpec(density=0.5), "synflow", arch="lenet-300-100",
                    iterations=2)  # fmt: skip
    assert applied.warnings == []  # no "computed on another checkpoint": one fingerprint for both
    assert applied.manifest["source"]["sha256"] == sha256_of_files(checkpoint_files(index))


def _lenet_file(folder: Path) -> Path:
    from prunecli.models.initialize import init_checkpoint

    path = folder / "lenet.safetensors"
    init_checkpoint("lenet-300-100", path, seed=0)
    return path
