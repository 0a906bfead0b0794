"""Architecture specs: the extended zoo, module/file factories, .pt2 archives, and load_weights."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from prunecli.errors import EXIT_BAD_INPUT, CheckpointError, InputError, PruneError, UsageError
from prunecli.models import (
    ZOO,
    default_input_shape,
    load_weights,
    parse_arch_args,
    resolve_model,
)
from prunecli.models.lenet import MLP


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def _raises(kind: type[PruneError], *fragments: str) -> Iterator[pytest.ExceptionInfo[PruneError]]:
    """pytest.raises for a PruneError (exit code 2) whose one-line text holds every fragment."""
    with pytest.raises(kind) as info:
        yield info
    line = info.value.one_line()
    for fragment in fragments:
        assert fragment in line, line
    assert info.value.exit_code == EXIT_BAD_INPUT


# --- the zoo -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ZOO))
def test_every_zoo_model_runs_with_num_classes(arch: str) -> None:
    model = resolve_model(arch, {"num_classes": 7}).eval()
    shape = default_input_shape(arch)
    assert shape == ZOO[arch].input_shape
    with torch.no_grad():
        out = model(torch.zeros(1, *shape))
    assert out.shape == (1, 7)


@pytest.mark.parametrize(
    ("arch", "classes"),
    [("vgg11", 10), ("vgg19", 10), ("resnet32", 10), ("mlp", 10), ("resnet18", 1000), ("resnet50", 1000)],
)
def test_default_class_counts(arch: str, classes: int) -> None:
    last = [m for m in resolve_model(arch).modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == classes


def test_parameter_counts_match_the_known_figures() -> None:
    counts = {arch: _count(resolve_model(arch)) for arch in ZOO}
    assert counts["resnet18"] == 11_689_512  # torchvision's resnet18
    assert counts["resnet50"] == 25_557_032  # torchvision's resnet50
    assert counts["vgg11"] == 9_231_114  # CIFAR VGG-11-BN, one 512→10 classifier
    assert counts["vgg16"] == 14_728_266
    assert counts["vgg19"] == 20_040_522
    assert counts["resnet32"] == 466_906  # 0.46M (+1x1 projection shortcuts)
    assert counts["resnet20"] == 272_474
    assert counts["mlp"] == counts["lenet-300-100"] == 266_610


def test_imagenet_resnets_use_torchvision_keys() -> None:
    r18 = resolve_model("resnet18").state_dict()
    r50 = resolve_model("resnet50").state_dict()
    assert len(r18) == 122 and len(r50) == 320  # torchvision's counts, num_batches_tracked included
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "layer4.1.bn2.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in r18
    assert "layer1.0.downsample.0.weight" not in r18  # 64 → 64, stride 1: identity shortcut
    assert r18["conv1.weight"].shape == (64, 3, 7, 7)
    assert r50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3×3 (v1.5)
    assert r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert r50["fc.weight"].shape == (1000, 2048)


def test_existing_zoo_keys_are_unchanged() -> None:
    vgg = resolve_model("vgg16").state_dict()
    assert list(vgg)[:3] == ["features.0.weight", "features.0.bias", "features.1.weight"]
    assert vgg["classifier.weight"].shape == (10, 512)
    resnet = resolve_model("resnet20").state_dict()
    assert resnet["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)
    assert next(iter(resolve_model("lenet-5").state_dict())) == "conv1.weight"


def test_resnet32_has_five_blocks_a_stage() -> None:
    model = resolve_model("resnet32")
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [5, 5, 5]


def test_mlp_is_configurable() -> None:
    model = resolve_model("mlp", {"in_features": 12, "hidden": [8, 6, 4], "num_classes": 3, "bias": False})
    assert list(model.state_dict()) == ["fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight"]
    assert model(torch.zeros(2, 3, 2, 2)).shape == (2, 3)  # flattens (3, 2, 2) → 12
    assert default_input_shape("mlp", {"in_features": 12}) == (12,)
    assert default_input_shape("mlp", {"in_features": "x"}) == (784,)  # resolve_model reports it
    assert resolve_model("mlp", {"hidden": 5}).fc1.out_features == 5
    assert list(resolve_model("mlp", {"hidden": []}).state_dict()) == ["fc1.weight", "fc1.bias"]


def test_default_mlp_loads_lenet_300_100_weights() -> None:
    lenet = resolve_model("lenet-300-100")
    mlp = resolve_model("mlp")
    load_weights(mlp, lenet.state_dict(), "lenet.safetensors")
    x = torch.randn(3, 784)
    assert torch.equal(mlp(x), lenet(x))


def test_mlp_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive integers"):
        MLP(hidden=(10, 0))
    with _raises(InputError, "mlp raised ValueError", "positive integers", "check `arch_args`"):
        resolve_model("mlp", {"hidden": [1.5]})


def test_zoo_names_ignore_case() -> None:
    assert isinstance(resolve_model(" VGG11 "), nn.Module)


# --- --arch-args --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("", {}),
        ("  ", {}),
        ('{"num_classes": 100}', {"num_classes": 100}),
        ('{"hidden": [512, 256], "bias": false}', {"hidden": [512, 256], "bias": False}),
    ],
)
def test_parse_arch_args(text: str | None, expected: dict) -> None:
    assert parse_arch_args(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{num_classes: 100}", "is not valid JSON (Expecting property name"),
        ('{"a": 1', "is not valid JSON"),
        ("[1, 2]", "not an array"),
        ('"vgg"', "not a string"),
        ("3", "not a number"),
        ("true", "not a boolean"),
        ("null", "not null"),
    ],
)
def test_parse_arch_args_errors(text: str, fragment: str) -> None:
    with _raises(UsageError, "`arch_args`", fragment, '{"num_classes": 100}'):
        parse_arch_args(text)


def test_arch_args_the_factory_does_not_take() -> None:
    with _raises(UsageError, "`arch_args` do not fit vgg16", "'hidden'", "vgg16 takes: num_classes=10"):
        resolve_model("vgg16", {"hidden": [3]})


# --- module:factory and file.py:factory ----------------------------------------------------------

FACTORY_SOURCE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=4, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(6, width)
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    @classmethod
    def small(cls):
        return cls(width=2)

def make(width=4, num_classes=10):
    return Net(width, num_classes)

def broken(**kwargs):
    raise RuntimeError("no GPU here\\nsecond line")

def not_a_model():
    return {"fc1.weight": torch.zeros(1)}

def the_class():
    return Net

needs_args = lambda depth: Net(depth)
NOT_CALLABLE = 3
"""


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module on sys.path (a fresh name per test, so imports are not cached across tests)."""
    name = f"archmod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_module_factory_with_arch_args(factory_module: str) -> None:
    model = resolve_model(f"{factory_module}:make", {"width": 5, "num_classes": 3})
    assert model.fc1.out_features == 5 and model(torch.zeros(2, 6)).shape == (2, 3)
    assert resolve_model(f"{factory_module}:Net").fc1.out_features == 4  # a class is a factory too
    assert resolve_model(f"{factory_module}:Net.small").fc1.out_features == 2  # dotted attribute


def test_package_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / f"archpkg_{tmp_path.name.replace('-', '_')}"
    (package / "nets").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets" / "__init__.py").write_text("")
    (package / "nets" / "small.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = resolve_model(f"{package.name}.nets.small:make", {"num_classes": 2})
    assert model(torch.zeros(1, 6)).shape == (1, 2)


def test_file_factory_absolute_and_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text(FACTORY_SOURCE)
    absolute = resolve_model(f"{tmp_path / 'models' / 'net.py'}:make", {"width": 7})
    assert absolute.fc1.out_features == 7
    monkeypatch.chdir(tmp_path)
    relative = resolve_model("models/net.py:make", {"num_classes": 4})
    assert relative(torch.zeros(1, 6)).shape == (1, 4)
    assert str(tmp_path / "models") not in sys.path  # the folder is on sys.path only while loading


def test_file_factory_imports_its_siblings(tmp_path: Path) -> None:
    (tmp_path / "blocks_for_specs_test.py").write_text("from torch import nn\nWIDTH = 9\n")
    (tmp_path / "model.py").write_text(
        "import blocks_for_specs_test as b\nfrom torch import nn\n"
        "def make():\n    return nn.Linear(2, b.WIDTH)\n"
    )
    try:
        assert resolve_model(f"{tmp_path / 'model.py'}:make").out_features == 9
    finally:
        sys.modules.pop("blocks_for_specs_test", None)


def test_two_files_with_the_same_name_do_not_clash(tmp_path: Path) -> None:
    for width in (2, 3):
        folder = tmp_path / f"v{width}"
        folder.mkdir()
        (folder / "model.py").write_text(
            f"from torch import nn\ndef make():\n    return nn.Linear(1, {width})\n"
        )
    assert resolve_model(f"{tmp_path / 'v2' / 'model.py'}:make").out_features == 2
    assert resolve_model(f"{tmp_path / 'v3' / 'model.py'}:make").out_features == 3


# --- resolve_model's errors ------------------------------------------------------------------------


def test_unknown_zoo_name_lists_the_known_ones() -> None:
    with _raises(
        UsageError,
        "unknown architecture 'vgg61'",
        "did you mean vgg19?",
        "resnet50",
        "mlp",
        "package.module:factory",
    ):
        resolve_model("vgg61")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("init.safetensors", "`arch` takes an architecture, not a checkpoint"),
        ("model.pt", "not a checkpoint"),
        ("net.py", "name the factory in the file too: net.py:make_model"),
    ],
)
def test_files_given_as_zoo_names(spec: str, fragment: str) -> None:
    with _raises(UsageError, fragment):
        resolve_model(spec)


@pytest.mark.parametrize("spec", [":make", "some.module:", "mod:1x", "mod:a-b"])
def test_malformed_factory_specs(spec: str) -> None:
    with _raises(UsageError, "does not end in :factory", "package.module:factory"):
        resolve_model(spec)


def test_target_neither_module_nor_file() -> None:
    with _raises(UsageError, "is neither a module name nor a .py file"):
        resolve_model("my-models:make")


def test_module_not_importable() -> None:
    with _raises(
        UsageError,
        "cannot import module 'no_such_pkg_xyz.nets'",
        "no module named 'no_such_pkg_xyz'",
        "PYTHONPATH",
        "path/to/file.py:factory",
    ):
        resolve_model("no_such_pkg_xyz.nets:make")


def test_module_whose_dependency_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_dep_specs_test.py").write_text("import not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with _raises(InputError, "importing 'needs_dep_specs_test' failed", "install 'not_installed_dep_xyz'"):
        resolve_model("needs_dep_specs_test:make")


def test_module_raising_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "raises_specs_test.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with _raises(
        InputError, "importing 'raises_specs_test' failed: ValueError: bad config", "PRUNECLI_DEBUG=1"
    ):
        resolve_model("raises_specs_test:make")


def test_factory_missing_lists_what_the_module_defines(factory_module: str) -> None:
    with _raises(UsageError, f"module {factory_module} has no 'mkae'", "it defines: Net, make, broken"):
        resolve_model(f"{factory_module}:mkae")


def test_factory_not_callable(factory_module: str) -> None:
    with _raises(UsageError, "'NOT_CALLABLE'", "is not callable (its type is int)"):
        resolve_model(f"{factory_module}:NOT_CALLABLE")


def test_factory_needing_arguments(factory_module: str) -> None:
    with _raises(
        UsageError, "`arch_args` do not fit", "missing a required argument: 'depth'", "takes: depth"
    ):
        resolve_model(f"{factory_module}:needs_args")


def test_factory_raising(factory_module: str) -> None:
    with _raises(
        InputError, f"{factory_module}:broken raised RuntimeError: no GPU here", "PRUNECLI_DEBUG=1"
    ) as info:
        resolve_model(f"{factory_module}:broken", {"x": 1})
    assert "second line" not in info.value.message
    assert isinstance(info.value.__cause__, RuntimeError)  # the traceback stays reachable


@pytest.mark.parametrize(
    ("factory", "what"), [("not_a_model", "returned a dict"), ("the_class", "the class Net")]
)
def test_factory_not_returning_a_module(factory_module: str, factory: str, what: str) -> None:
    with _raises(InputError, what, "not a torch.nn.Module instance", "return the built model"):
        resolve_model(f"{factory_module}:{factory}")


def test_file_errors(tmp_path: Path) -> None:
    with _raises(InputError, "does not exist", "check the path"):
        resolve_model(f"{tmp_path / 'missing.py'}:make")
    with _raises(InputError, "is a folder"):
        resolve_model(f"{tmp_path}/:make")
    (tmp_path / "net.txt").write_text("x = 1\n")
    with _raises(UsageError, "is not a .py file"):
        resolve_model(f"{tmp_path / 'net.txt'}:make")
    (tmp_path / "syntax.py").write_text("def make(:\n")
    with _raises(InputError, "syntax.py failed to load: SyntaxError"):
        resolve_model(f"{tmp_path / 'syntax.py'}:make")
    assert not [m for m in sys.modules if m.startswith("_prunecli_arch_") and m.endswith("_syntax")]
    (tmp_path / "empty.py").write_text("")
    with _raises(UsageError, "empty.py has no 'make'", "define make(**arch_args) there"):
        resolve_model(f"{tmp_path / 'empty.py'}:make")


# --- .pt2 archives --------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)
        self.head = nn.Linear(3, 3)
        self.tail = nn.Linear(3, 3)
        self.tail.weight = self.head.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.fc1(x.flatten(1))))  # (N, 5)
        return self.tail(self.head(self.fc2(x)))


def _trained_tiny(seed: int) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():  # non-trivial BN statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .pt2 of Tiny in eval mode with a dynamic batch dimension; sample input (4, 2, 3)."""
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(_trained_tiny(0), (torch.zeros(4, 2, 3),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def test_pt2_round_trip(archive: Path) -> None:
    module = resolve_model(str(archive))
    x = torch.randn(7, 2, 3)
    assert torch.allclose(module(x), _trained_tiny(0)(x))  # the archive's own weights
    other = _trained_tiny(1)
    load_weights(module, other.state_dict(), "other.safetensors")
    assert torch.allclose(module(x), other(x), atol=1e-6)
    assert default_input_shape(str(archive)) == (2, 3)


def test_pt2_load_weights_fills_tied_keys(archive: Path) -> None:
    module = resolve_model(str(archive))
    other = _trained_tiny(2)
    tensors = {k: v for k, v in other.state_dict().items() if k != "tail.weight"}  # safetensors drops ties
    load_weights(module, tensors, "tied.safetensors")
    x = torch.randn(2, 2, 3)
    assert torch.allclose(module(x), other(x), atol=1e-6)


def test_pt2_module_accepts_train_and_eval(archive: Path) -> None:
    module = resolve_model(str(archive))
    assert module.train() is module and module.training
    assert module.eval() is module and not module.training
    x = torch.randn(3, 2, 3)
    assert torch.allclose(module.train()(x), module.eval()(x))  # the exported (eval) graph either way


def test_pt2_refuses_arch_args(archive: Path) -> None:
    with _raises(UsageError, "`arch_args` do not apply to the torch.export archive", "drop `arch_args`"):
        resolve_model(str(archive), {"num_classes": 3})
    assert isinstance(resolve_model(str(archive), {}), nn.Module)  # empty is fine


def test_pt2_missing(tmp_path: Path) -> None:
    with _raises(InputError, "does not exist"):
        resolve_model(str(tmp_path / "nope.pt2"))
    assert default_input_shape(str(tmp_path / "nope.pt2")) is None


def test_pt2_not_an_archive(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip at all")
    with _raises(InputError, "is not a readable torch.export archive (BadZipFile", "torch.export.save"):
        resolve_model(str(garbage))
    state_dict = tmp_path / "weights.pt2"
    torch.save({"w": torch.ones(2)}, state_dict)
    with _raises(InputError, "is not a torch.export archive (a torch.save file?)"):
        resolve_model(str(state_dict))
    assert capfd.readouterr().err == ""  # torch's own logged traceback is kept off stderr


def _rewrite(source: Path, target: Path, member_suffix: str, data: bytes) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename.endswith(member_suffix) else src.read(info.filename))
    return target


class _Payload:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (os.mkdir, (str(self.folder),))


def test_pt2_with_pickled_code_is_refused_not_run(archive: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    buffer = io.BytesIO()
    torch.save(((torch.zeros(4, 2, 3),), {"x": _Payload(marker)}), buffer)
    evil = _rewrite(archive, tmp_path / "evil.pt2", "sample_inputs/model.pt", buffer.getvalue())
    with _raises(CheckpointError, "holds pickled objects that are not plain tensors", "GLOBAL", "refused"):
        resolve_model(str(evil))
    with _raises(CheckpointError, "holds pickled objects that are not plain tensors"):
        default_input_shape(str(evil))  # the refusal, not a silent "no shape"
    assert not marker.exists()


def test_pt2_with_a_corrupt_graph(archive: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    broken = _rewrite(archive, tmp_path / "broken.pt2", "models/model.json", b"{}")
    with _raises(InputError, "is not a loadable torch.export archive", "re-export it"):
        resolve_model(str(broken))
    assert "Traceback" not in capfd.readouterr().err


# --- default_input_shape ------------------------------------------------------------------------------


def test_default_input_shape() -> None:
    assert default_input_shape("resnet50") == (3, 224, 224)
    assert default_input_shape("vgg19") == (3, 32, 32)
    assert default_input_shape("lenet-5") == (1, 28, 28)
    assert default_input_shape("mlp") == (784,)
    assert default_input_shape("pkg.mod:make") is None
    assert default_input_shape("no-such-arch") is None


# --- load_weights ---------------------------------------------------------------------------------------


def test_load_weights_names_the_first_mismatches() -> None:
    model = resolve_model("lenet-300-100")
    tensors = dict(resolve_model("mlp", {"hidden": [100, 100, 100]}).state_dict())
    tensors.pop("fc3.weight")
    with _raises(
        InputError,
        "checkpoint init.safetensors does not match the architecture: "
        "missing fc3.weight; unexpected fc4.weight; "
        "fc1.weight is [100, 784] in the checkpoint but [300, 784] in the model; "
        "unexpected fc4.bias (and 3 more)",
        "check `arch` / `arch_args`",
    ):
        load_weights(model, tensors, "init.safetensors")


def test_load_weights_short_message_without_more() -> None:
    model = resolve_model("lenet-300-100")
    tensors = dict(model.state_dict())
    tensors.pop("fc3.bias")
    with _raises(InputError, "does not match the architecture: missing fc3.bias. check") as info:
        load_weights(model, tensors, "a.pt")
    assert "more" not in info.value.message


def test_load_weights_float_where_the_model_holds_integers() -> None:
    model = resolve_model("resnet20")
    tensors = dict(model.state_dict())
    tensors["bn1.num_batches_tracked"] = torch.tensor(0.0)
    with _raises(InputError, "bn1.num_batches_tracked is float32 in the checkpoint but int64 in the model"):
        load_weights(model, tensors, "a.pt")


def test_load_weights_casts_floating_dtypes() -> None:
    source = resolve_model("lenet-5")
    target = resolve_model("lenet-5")
    half = {k: v.to(torch.bfloat16) for k, v in source.state_dict().items()}
    load_weights(target, half, "half.safetensors")
    assert target.fc1.weight.dtype == torch.float32
    assert torch.equal(target.fc1.weight, half["fc1.weight"].float())
    ints = dict(resolve_model("resnet20").state_dict())
    ints["bn1.num_batches_tracked"] = torch.tensor(5, dtype=torch.int32)
    model = resolve_model("resnet20")
    load_weights(model, ints, "ints.pt")
    assert model.bn1.num_batches_tracked.dtype == torch.int64 and int(model.bn1.num_batches_tracked) == 5


def test_load_weights_exact_round_trip() -> None:
    source = resolve_model("resnet20").eval()
    target = resolve_model("resnet20").eval()
    load_weights(target, source.state_dict(), "r.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(target(x), source(x))


def test_load_weights_hints_at_a_key_prefix() -> None:
    model = resolve_model("lenet-5")
    wrapped = {f"model.{k}": v for k, v in model.state_dict().items()}
    with _raises(
        InputError,
        "missing conv1.weight",
        "unexpected model.conv1.weight",
        "the checkpoint's keys start with 'model.'",
    ):
        load_weights(model, wrapped, "lightning.ckpt")


# --- import discipline ----------------------------------------------------------------------------


def test_the_cli_does_not_import_models_at_top_level() -> None:
    code = textwrap.dedent("""
        import sys
        import prunecli.cli.app
        print(sorted(m for m in sys.modules if m.startswith("prunecli.models") or m == "torch"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
