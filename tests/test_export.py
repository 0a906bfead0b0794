"""`prunecli export`: sparse ONNX files that onnxruntime loads and that agree with torch."""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import prunecli.cli.app as app_module  # noqa: E402
import prunecli.export.sparse as onnx_sparse  # noqa: E402
import prunecli.export.to_onnx as export_module  # noqa: E402
from prunecli import __version__  # noqa: E402
from prunecli.cli.app import run  # noqa: E402
from prunecli.cli.export_cmd import export  # noqa: E402
from prunecli.export.to_onnx import ExportRequest, export_onnx, runtime_max_ir_version  # noqa: E402

MODELS = {"lenet-5": (1, 28, 28), "vgg16": (3, 32, 32), "resnet20": (3, 32, 32)}


@pytest.fixture(autouse=True)
def export_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until app.py registers `export`, run the CLI through a copy of the app that has it."""
    if "export" not in {c.name for c in app_module.app.registered_commands}:
        extended = copy.copy(app_module.app)
        extended.registered_commands = list(app_module.app.registered_commands)
        extended.command("export")(export)
        monkeypatch.setattr(app_module, "app", extended)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`apply` output folders of zoo models pruned at 90% by magnitude, built once per module."""
    root = tmp_path_factory.mktemp("pruned")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            init, out = root / f"{arch}.safetensors", root / arch
            assert run(["init", "--arch", arch, "--seed", "0", "-o", str(init), "-q"]) == 0
            args = ["apply", str(init), "--method", "magnitude", "--sparsity", "0.9", "-o", str(out), "-q"]
            assert run(args) == 0
            built[arch] = out
        return built[arch]

    return get


def torch_outputs(arch: str, folder: Path, x: np.ndarray) -> np.ndarray:
    import torch

    from prunecli.io.checkpoints import load_state_dict
    from prunecli.models import load_weights, resolve_model

    model = resolve_model(arch)
    load_weights(model, load_state_dict(folder / "model.safetensors"), "test")
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def dense_from_sparse(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values, indices = numpy_helper.to_array(sparse.values), numpy_helper.to_array(sparse.indices)
    assert indices.dtype == np.int64 and indices.ndim == 1 and np.all(np.diff(indices) > 0)
    dense = np.zeros(int(np.prod(sparse.dims)), values.dtype)
    dense[indices] = values
    return dense.reshape(tuple(sparse.dims))


@pytest.mark.parametrize("arch", list(MODELS))
def test_export_verifies_and_shrinks(cli, pruned, arch: str, tmp_path: Path) -> None:
    folder, onnx_path, dense_path = pruned(arch), tmp_path / "m.onnx", tmp_path / "dense.onnx"
    r = cli("export", folder, "--arch", arch, "-o", onnx_path, "--verify", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)  # stdout holds only the JSON report
    check = report["verification"]
    assert check["passed"] and check["max_abs_error"] <= 1e-4 and check["batch"] == 2
    assert report["sparse_bytes"] == onnx_path.stat().st_size
    assert report["dense_bytes"] / report["sparse_bytes"] >= 2.5
    assert report["batch"] == "dynamic" and report["input_shape"] == list(MODELS[arch])
    # the dense size is what a dense export of the same weights really takes
    assert cli("export", folder, "--arch", arch, "-o", dense_path, "--sparse-threshold", "0", "-q").code == 0
    assert dense_path.stat().st_size == report["dense_bytes"]

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert model.ir_version <= min(onnx.IR_VERSION, runtime_max_ir_version())
    meta = {p.key: p.value for p in model.metadata_props}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert meta["prunecli_version"] == __version__ and meta["prunecli_method"] == "magnitude"
    assert meta["prunecli_source_sha256"] == manifest["source"]["sha256"]
    assert float(meta["prunecli_sparsity"]) == pytest.approx(0.9, abs=1e-3)
    assert meta == report["metadata"]

    # sparse tensors hold exactly the checkpoint's values
    weights = load_file(folder / "model.safetensors")
    stored = {t["name"]: t["stored"] for t in report["tensors"]}
    assert model.graph.sparse_initializer and {s.values.name for s in model.graph.sparse_initializer} == {
        n for n, how in stored.items() if how == "sparse"
    }
    for sparse in model.graph.sparse_initializer:
        np.testing.assert_array_equal(dense_from_sparse(sparse), weights[sparse.values.name])

    # the batch dimension is dynamic
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *MODELS[arch]), dtype=np.float32)
        np.testing.assert_allclose(run_ort(onnx_path, x), torch_outputs(arch, folder, x), atol=1e-4, rtol=0)


def test_table_on_stderr(cli, pruned, tmp_path: Path) -> None:
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / "m.onnx", "--verify")
    assert r.code == 0 and r.out == ""
    assert "fc1.weight" in r.err and "sparse" in r.err and "× smaller" in r.err
    assert "verify passed" in r.err and "wrote" in r.err
    assert cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / "q.onnx", "-q").err == ""


def test_same_inputs_give_the_same_bytes(cli, pruned, tmp_path: Path) -> None:
    for name in ("a.onnx", "b.onnx"):
        assert cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / name).code == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_static_batch(cli, pruned, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    r = cli(
        "export",
        pruned("lenet-5"),
        "--arch",
        "lenet-5",
        "--static-batch",
        "4",
        "-o",
        path,
        "--verify",
        "--json",
    )
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["batch"] == 4 and report["verification"]["batch"] == 4
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 1, 28, 28]
    assert run_ort(path, np.zeros((4, 1, 28, 28), np.float32)).shape == (4, 10)
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        run_ort(path, np.zeros((3, 1, 28, 28), np.float32))


def test_threshold_zero_stores_everything_dense(cli, pruned, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "--sparse-threshold", "0", "-o", path, "--json")
    report = json.loads(r.out)
    model = onnx.load(str(path))
    assert len(model.graph.sparse_initializer) == 0 and len(model.graph.initializer) == 8
    assert report["dense_bytes"] == report["sparse_bytes"] == path.stat().st_size
    assert report["ratio"] == 1.0 and {t["stored"] for t in report["tensors"]} == {"dense"}


def test_float16(cli, pruned, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    r = cli(
        "export",
        pruned("lenet-5"),
        "--arch",
        "lenet-5",
        "--dtype",
        "float16",
        "-o",
        path,
        "--verify",
        "--json",
    )
    assert r.code == 0, r.err
    check = json.loads(r.out)["verification"]
    assert check["passed"] and (check["atol"], check["rtol"]) == (1e-2, 1e-2)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {s.values.data_type for s in model.graph.sparse_initializer} == {onnx.TensorProto.FLOAT16}


def test_checkpoint_input_shape_from_data_and_opset(cli, pruned, tmp_path: Path) -> None:
    weights = pruned("lenet-5") / "model.safetensors"
    path = tmp_path / "m.onnx"
    r = cli(
        "export",
        weights,
        "--arch",
        "lenet-5",
        "--data",
        "random:1x28x28",
        "--opset",
        "13",
        "-o",
        path,
        "--json",
    )
    assert r.code == 0, r.err
    model = onnx.load(str(path))
    assert json.loads(r.out)["input_shape"] == [1, 28, 28]
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["prunecli_version"] == __version__ and "prunecli_method" not in meta  # no manifest
    assert meta["prunecli_arch"] == "lenet-5" and len(meta["prunecli_weights_sha256"]) == 64


def test_python_api(pruned, tmp_path: Path) -> None:
    request = ExportRequest(pruned("resnet20"), tmp_path / "r.onnx", "resnet20", verify=True, seed=3)
    report = export_onnx(request)
    assert report.verification is not None and report.verification.passed
    assert report.ratio >= 2.5 and report.input_shape == [3, 32, 32]
    assert json.loads(json.dumps(report.to_dict()))["tensors"][0]["name"] == "conv1.weight"
    aliases = [a for t in report.tensors for a in t.aliases]  # tensors merged by the exporter
    assert "layer3.2.bn2.running_mean" in aliases


def test_verify_mismatch_exits_1(cli, pruned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = ort.InferenceSession.run
    monkeypatch.setattr(
        ort.InferenceSession, "run", lambda self, *a, **k: [y + 0.01 for y in real_run(self, *a, **k)]
    )
    path = tmp_path / "m.onnx"
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", path, "--verify", "--json")
    assert r.code == 1
    check = json.loads(r.out)["verification"]
    assert not check["passed"] and check["max_abs_error"] == pytest.approx(0.01, rel=1e-3)
    assert check["mismatched"] == check["values"] == 20
    assert (
        "error: onnxruntime differs from torch: 20 of 20 output values" in r.err
        and "max abs error 0.01" in r.err
    )
    assert path.is_file()  # kept for inspection


def test_ir_version_fits_the_runtime(cli, pruned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    highest = runtime_max_ir_version()
    assert onnx_sparse._probe_ir(highest) is None
    if highest < onnx.IR_VERSION:
        assert "IR version" in onnx_sparse._probe_ir(highest + 1)
    monkeypatch.setattr(export_module, "runtime_max_ir_version", lambda: 8)
    path = tmp_path / "m.onnx"
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", path, "--verify")
    assert r.code == 0 and "IR version lowered from 9 to 8" in r.err
    assert onnx.load(str(path)).ir_version == 8


def assert_nothing_written(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before  # no output, no temporary file


def test_architecture_mismatch(cli, pruned, tmp_path: Path) -> None:
    r = cli("export", pruned("lenet-5"), "--arch", "resnet20", "-o", tmp_path / "m.onnx")
    assert r.code == 2 and "does not match the architecture" in r.err
    assert_nothing_written(tmp_path, set())


def test_missing_source(cli, pruned, tmp_path: Path) -> None:
    r = cli("export", tmp_path / "nope.safetensors", "--arch", "lenet-5", "-o", tmp_path / "m.onnx")
    assert r.code == 2 and "nope.safetensors does not exist" in r.err
    (tmp_path / "empty").mkdir()
    r = cli("export", tmp_path / "empty", "--arch", "lenet-5", "-o", tmp_path / "m.onnx")
    assert r.code == 2 and "is a folder without manifest.json" in r.err
    assert_nothing_written(tmp_path, {"empty"})


def test_input_shape_the_model_rejects(cli, pruned, tmp_path: Path) -> None:
    r = cli(
        "export",
        pruned("lenet-5"),
        "--arch",
        "lenet-5",
        "--input-shape",
        "3x32x32",
        "-o",
        tmp_path / "m.onnx",
    )
    assert r.code == 2 and "lenet-5 rejects input shape 3x32x32" in r.err and "--input-shape" in r.err
    assert_nothing_written(tmp_path, set())


def test_existing_output_needs_force(cli, pruned, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", path)
    assert r.code == 2 and "already exists" in r.err and "--force" in r.err
    assert path.read_bytes() == b"old"
    assert cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", path, "--force").code == 0
    onnx.checker.check_model(onnx.load(str(path)))
    assert_nothing_written(tmp_path, {"m.onnx"})


@pytest.mark.parametrize("target", ["missing/m.onnx", "."])
def test_bad_output_path(cli, pruned, tmp_path: Path, target: str) -> None:
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / target)
    assert r.code == 2 and ("does not exist" in r.err or "is a directory" in r.err)
    assert_nothing_written(tmp_path, set())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder(cli, pruned, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", folder / "m.onnx")
    finally:
        folder.chmod(0o755)
    assert r.code == 2 and "cannot write" in r.err


def test_write_failures_leave_no_file(cli, pruned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(export_module.os, "open", refuse)  # the output's lock and temporary file
        r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / "m.onnx")
    assert r.code == 2 and "cannot write to" in r.err and "Permission denied" in r.err
    with monkeypatch.context() as patch:
        patch.setattr(export_module.os, "replace", refuse)
        r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / "m.onnx")
    assert r.code == 2 and "cannot write" in r.err and "Permission denied" in r.err
    assert_nothing_written(tmp_path, set())


def test_export_failure_keeps_stdout_clean(pruned, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fftnet.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def forward(self, x):\n        return torch.fft.rfft(x).abs()\n"
    )
    ckpt = tmp_path / "empty.safetensors"
    from prunecli.io.safetensors_file import write_arrays

    write_arrays(ckpt, {}, {})
    code = run(["export", str(ckpt), "--arch", f"{tmp_path}/fftnet.py:Net", "--input-shape", "8",
                "-o", str(tmp_path / "m.onnx"), "--json"])  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: torch.onnx.export (TorchScript exporter) failed") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sparse-threshold", "1.5"], "--sparse-threshold 1.5 is outside [0, 1]"),
        (["--dtype", "bfloat16"], "'bfloat16' is not one of 'float32', 'float16'"),
        (["--static-batch", "0"], "--static-batch 0 is not a positive integer"),
        (["--opset", "25"], "--opset 25 is not supported"),
        (["--atol", "-1"], "--atol -1.0 is negative"),
        (["--input-shape", "1x28x28", "--data", "random:1x28x28"], "both given"),
        (["--input-shape", "3by32"], "is not a shape"),
    ],
)
def test_bad_options(cli, pruned, tmp_path: Path, args: list[str], message: str) -> None:
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / "m.onnx", *args)
    assert r.code == 2 and message in r.err
    assert_nothing_written(tmp_path, set())


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_onnx_names_the_extra(cli, pruned, tmp_path: Path, monkeypatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    r = cli("export", pruned("lenet-5"), "--arch", "lenet-5", "-o", tmp_path / "m.onnx")
    assert r.code == 2
    assert f"prunecli export needs {missing}, which is not installed" in r.err
    assert "pip install 'prunecli[onnx]'" in r.err


def test_help_has_examples(cli) -> None:
    r = cli("export", "--help")
    assert r.code == 0 and "Examples" in r.out and "prunecli export out/ --arch vgg16" in r.out


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused(cli, tmp_path: Path, bad: float) -> None:
    from prunecli.io.safetensors_file import SafetensorsReader, write_arrays

    assert cli("init", "--arch", "lenet-300-100", "-o", tmp_path / "i.safetensors", "-q").code == 0
    reader = SafetensorsReader(tmp_path / "i.safetensors")
    arrays = {name: (info.dtype, reader.read(name).copy()) for name, info in reader.tensors.items()}
    reader.close()
    arrays["fc2.weight"][1].reshape(-1)[7] = bad
    write_arrays(tmp_path / "bad.safetensors", arrays, {})
    r = cli("export", tmp_path / "bad.safetensors", "--arch", "lenet-300-100", "-o", tmp_path / "m.onnx")
    assert r.code == 3 and r.err.count("\n") == 1
    assert r.err.startswith("error: weights of fc2.weight contain NaN or infinite values")
    assert_nothing_written(tmp_path, {"i.safetensors", "bad.safetensors"})
