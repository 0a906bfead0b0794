"""Methods declare what they are; the registry refuses declarations that contradict the callables,
and the score pipeline picks its path from the declarations, never from a method's name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from prunecli.errors import UsageError
from prunecli.scoring import all_methods, get_method, registry
from prunecli.scoring.options import MethodOptions, build_options
from prunecli.scoring.registry import Method, register_method

MLP = {"arch": "mlp", "arch_args": {"hidden": [8]}, "data": "random:784", "batch_size": 4, "device": "cpu"}

# What a default run of each model-based method records as its `params` (the scores metadata,
# and the manifest's method.params), as recorded before methods declared their options.
RECORDED = {
    "snip": '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float32", '
    '"loss": "pseudo"}',
    "grasp": '{"arch_args": {"hidden": [8]}, "bn_mode": "train", "device": "cpu", "dtype": "float32", '
    '"loss": "pseudo", "temperature": 200.0}',
    "synflow": '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float64", '
    '"iterations": 100, "schedule": "exp", "sparsity": 0.9}',
    "force": '{"arch_args": {"hidden": [8]}, "bn_mode": "train", "device": "cpu", "dtype": "float32", '
    '"iterations": 10, "loss": "pseudo", "schedule": "exp", "sparsity": 0.9}',
    "iter-snip": '{"arch_args": {"hidden": [8]}, "bn_mode": "train", "device": "cpu", "dtype": "float32", '
    '"iterations": 10, "loss": "pseudo", "schedule": "exp", "sparsity": 0.9}',
    "snip-it": '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float32", '
    '"iterations": 5, "loss": "pseudo", "schedule": "snip-it", "sparsity": 0.9}',
    "obd": '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float32", '
    '"hessian": "exact", "loss": "pseudo", "obd_first_order": false}',
    "exact": '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float32", '
    '"loss": "pseudo"}',
    "taylor": '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float32", '
    '"fisher": false, "loss": "pseudo"}',
    "wanda": '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float32"}',
}
# The keys every model-based run records besides the method's own options.
RUN_KEYS = {"arch_args", "bn_mode", "device", "dtype", "loss", "sparsity"}
# Options recorded under another key, or not at all (they change no score): mapped in one place,
# the field's `option(key=..., recorded=...)` declaration.
NOT_RECORDED = {
    "obd": {"max_params", "chunk_size", "hutchinson_samples"},  # samples: with --hessian hutchinson only
    "exact": {"max_params", "chunk_size"},
    "taylor": {"chunk_size"},
}
RENAMED = {"obd": {"first_order": "obd_first_order"}}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunecli.models.initialize import init_checkpoint

    path = tmp_path_factory.mktemp("init") / "mlp.safetensors"
    init_checkpoint("mlp", path, seed=0, arch_args={"hidden": [8]})
    return path


# Every registered method is consistent --------------------------------------------------------


@pytest.mark.parametrize("method", all_methods(), ids=lambda m: m.name)
def test_declarations_are_consistent(method: Method) -> None:
    assert registry.inconsistency(method) is None
    layerwise_only = method.returns == "weights"  # SparseGPT: a block pruner, no model scorer
    assert (
        method.needs_model == (method.model_scorer is not None or layerwise_only) == (method.scorer is None)
    )
    assert method.iterative == (method.returns == "masks")
    if method.iterative:
        assert isinstance(method.default_iterations, int) and method.default_iterations >= 1
    else:
        assert method.default_iterations is None
    assert dataclasses.is_dataclass(method.options) and issubclass(method.options, MethodOptions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.options().anything = 1  # type: ignore[attr-defined]
    if not method.needs_model:
        assert dataclasses.asdict(method.options()) == {} and method.data == "none"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_options_are_what_a_run_records(name: str) -> None:
    options = get_method(name).options()
    recorded = {k: v for k, v in json.loads(RECORDED[name]).items() if k not in RUN_KEYS}
    assert options.params() == recorded
    natural = dataclasses.asdict(options)
    for field in NOT_RECORDED.get(name, ()):
        natural.pop(field)
    for field, key in RENAMED.get(name, {}).items():
        natural[key] = natural.pop(field)
    assert natural == recorded  # asdict is the record, but for the mappings declared on the fields


def test_obd_records_its_samples_with_the_hutchinson_estimate_only() -> None:
    from prunecli.scoring.obd import ObdOptions

    assert ObdOptions(hessian="hutchinson", hutchinson_samples=7).params() == {
        "hessian": "hutchinson", "hutchinson_samples": 7, "obd_first_order": False
    }  # fmt: skip


# Runs kept short (few steps, a sampled Hessian), with what they recorded before the change.
FAST = {
    "synflow": (
        {"iterations": 7},
        '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float64", '
        '"iterations": 7, "schedule": "exp", "sparsity": 0.9}',
    ),
    "obd": (
        {"options": {"hessian": "hutchinson", "hutchinson_samples": 7}, "seed": 2},
        '{"arch_args": {"hidden": [8]}, "bn_mode": "eval", "device": "cpu", "dtype": "float32", '
        '"hessian": "hutchinson", "hutchinson_samples": 7, "loss": "pseudo", "obd_first_order": false}',
    ),
    "exact": ({"options": {"max_params": 10_000}}, RECORDED["exact"]),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_a_run_records_the_same_params_as_before(mlp: Path, tmp_path: Path, name: str) -> None:
    from prunecli.pipelines.score import score

    settings, expected = FAST.get(name, ({}, RECORDED[name]))
    sparsity = 0.9 if get_method(name).iterative else None
    written = score(mlp, name, tmp_path / "s.safetensors", sparsity=sparsity, **MLP, **settings)
    assert written.metadata["params"] == expected
    assert ("sparsity" in written.metadata) == get_method(name).iterative


# The pipeline reads declarations, not names ----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["magnitude", "snip", "grasp", "synflow", "force", "snip-it", "obd", "wanda"]
)
def test_a_renamed_copy_scores_identically(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.pipelines.score import score

    copy = dataclasses.replace(get_method(name), name="renamed-copy")
    monkeypatch.setitem(registry._METHODS, copy.name, copy)
    sparsity = 0.9 if copy.iterative else None
    settings = {**MLP, **FAST.get(name, ({}, ""))[0]} if copy.needs_model else {}
    original = score(mlp, name, tmp_path / "a.safetensors", sparsity=sparsity, **settings)
    renamed = score(mlp, copy.name, tmp_path / "b.safetensors", sparsity=sparsity, **settings)
    assert {**original.metadata, "method": "renamed-copy"} == renamed.metadata
    with open_checkpoint(tmp_path / "a.safetensors") as a, open_checkpoint(tmp_path / "b.safetensors") as b:
        assert {**a.metadata, "method": "renamed-copy"} == b.metadata
        assert list(a.tensors) == list(b.tensors) and len(a.tensors) > 0
        assert all(a.read(n).tobytes() == b.read(n).tobytes() for n in a.tensors)


def test_advice_comes_from_the_declarations() -> None:
    wanda = get_method("wanda")
    assert wanda.default_scope == "row" and wanda.needs.endswith("; compare per row")
    assert dataclasses.replace(wanda, default_scope=None).needs == (
        "`arch` and `data` (no labels, no backward pass)"
    )
    assert dataclasses.replace(get_method("snip"), name="x", default_scope="layer").needs == (
        "`arch` and `data` (labels optional); compare per layer"
    )


# Options are typed, converted once, and refused where a method does not take them ---------------


@pytest.mark.parametrize(
    ("name", "given", "message"),
    [
        ("snip", {"fisher": True}, "`fisher` applies to taylor, not snip"),
        ("taylor", {"hessian": "hutchinson"}, "`hessian` applies to obd, not taylor"),
        ("snip", {"max_params": 3}, "`max_params` applies to obd and exact, not snip"),
        ("magnitude", {"obd_first_order": True}, "`obd_first_order` applies to obd, not magnitude"),
        ("snip", {"colour": "red"}, "unknown method option 'colour'"),
    ],
)
def test_options_a_method_does_not_take_are_refused(name: str, given: dict, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        build_options(get_method(name), given, {}, all_methods())
    assert caught.value.message == message
    if "applies to" in message:
        flag = message.split()[0]
        assert caught.value.hint == f"drop {flag}"


def test_options_are_converted_to_the_declared_dataclass() -> None:
    from prunecli.scoring.grasp import GraspOptions
    from prunecli.scoring.obd import ObdOptions
    from prunecli.scoring.snip_it import SnipItOptions
    from prunecli.scoring.synflow import SynflowOptions

    common = {"iterations": None, "schedule": "linear", "temperature": 50.0}
    obd = build_options(get_method("obd"), {"obd_first_order": True, "max_params": 9}, common, all_methods())
    assert obd == ObdOptions(first_order=True, max_params=9)
    assert build_options(get_method("grasp"), {}, common, all_methods()) == GraspOptions(temperature=50.0)
    synflow = build_options(get_method("synflow"), {}, common, all_methods())
    assert synflow == SynflowOptions(iterations=100, schedule="linear")
    snip_it = build_options(get_method("snip-it"), {}, {**common, "iterations": 3}, all_methods())
    assert snip_it == SnipItOptions(iterations=3) and snip_it.schedule == "snip-it"  # its own schedule
    with pytest.raises(UsageError, match="unknown `hessian` 'sideways'"):
        build_options(get_method("obd"), {"hessian": "sideways"}, {}, all_methods())
    with pytest.raises(UsageError, match="`hutchinson_samples` 0 must be at least 1"):
        build_options(get_method("obd"), {"hutchinson_samples": 0}, {}, all_methods())


# Registration refuses declarations that contradict the callables -------------------------------


def _snip(**changes: object) -> Method:
    return dataclasses.replace(get_method("snip"), name="bad", **changes)


def _magnitude(**changes: object) -> Method:
    return dataclasses.replace(get_method("magnitude"), name="bad", **changes)


@pytest.mark.parametrize(
    ("method", "problem"),
    [
        (_snip(needs_model=False), "needs_model must go with a model_scorer"),
        (_magnitude(needs_model=True), "needs_model must go with a model_scorer"),
        (_snip(scorer=get_method("magnitude").scorer), "a method has a per-tensor scorer or a model_scorer"),
        (_magnitude(keys=None, scorer=None), "a method has a per-tensor scorer or a model_scorer"),
        (_snip(iterative=True), "iterative methods, and only they, return masks"),
        (_snip(returns="masks"), "iterative methods, and only they, return masks"),
        (_snip(iterative=True, returns="masks"), "an iterative method declares its default iterations"),
        (_magnitude(options=get_method("obd").options), "a per-tensor method takes no options"),
        (_magnitude(data="batches"), "a per-tensor method reads the checkpoint only"),
        (_snip(data="input-shape"), "only methods on batches use labels"),
        (_snip(data="video"), "data is one of"),
        (_snip(returns="logits"), "returns is one of"),
        (_snip(default_scope="diagonal"), "default_scope is None or one of"),
        (_snip(options=dict), "options is a frozen MethodOptions dataclass"),
    ],
)
def test_inconsistent_methods_are_refused(method: Method, problem: str) -> None:
    with pytest.raises(ValueError, match=f"method 'bad' is inconsistent: {problem}"):
        register_method(method)
    assert "bad" not in registry._METHODS


def test_a_consistent_method_registers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register_method(_snip())
    assert get_method("bad").model_scorer is get_method("snip").model_scorer
    with pytest.raises(ValueError, match="registered twice"):
        register_method(_snip())


def test_apply_pruning_refuses_a_model_based_method(mlp: Path, tmp_path: Path) -> None:
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.pipelines.apply import ApplyRequest, apply_pruning
    from prunecli.selection.spec import SelectionSpec

    with open_checkpoint(mlp) as ckpt:
        request = ApplyRequest(
            ckpt, ["0.weight"], SelectionSpec(density=0.5), tmp_path / "out", method=get_method("snip")
        )
        with pytest.raises(UsageError) as caught:
            apply_pruning(request)
    assert caught.value.message == "apply_pruning scores tensor by tensor, but snip needs a model"
    assert not (tmp_path / "out").exists()
