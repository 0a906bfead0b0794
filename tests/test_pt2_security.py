"""Hostile `.pt2` archives: refused with one line (exit 2) before any of their code can run.

Each hostile archive starts from a legitimate `torch.export.save` file. Where torch itself would
run the payload, a subprocess proves it (plain `torch.export.load`, and calling the module where
that is the trigger), so a test passing means the archive really was hostile and prunecli refused it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunecli.errors import EXIT_BAD_INPUT, CheckpointError, InputError, PruneError
from prunecli.models.specs import default_input_shape, resolve_model

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
GRAPH = "models/model.json"
Members = list[tuple[str, bytes]]  # (name below the top folder, data), in archive order


class _Payload:
    """Unpickling this creates `folder`: the marker that code from the archive ran."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (os.mkdir, (str(self.folder),))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()


@pytest.fixture(scope="module")
def legit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved by torch.export.save, with a dynamic batch dimension."""
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(_tiny(), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},)), path)
    return path


def _read(path: Path) -> tuple[str, Members]:
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        return root, [(i.filename[len(root) + 1 :], archive.read(i)) for i in archive.infolist()]


def _rebuild(source: Path, target: Path, edit: Callable[[Members], Members]) -> Path:
    """Rewrite `source` as `target` with `edit` applied to its members: names go below the top
    folder as they are, or as given when absolute."""
    root, members = _read(source)
    with warnings.catch_warnings(), zipfile.ZipFile(target, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests write
        for name, data in edit(members):
            archive.writestr(zipfile.ZipInfo(name if name.startswith("/") else f"{root}/{name}"), data)
    return target


def _graph_edit(change: Callable[[str], str]) -> Callable[[Members], Members]:
    return lambda members: [(n, change(d.decode()).encode() if n == GRAPH else d) for n, d in members]


def _weights_config(members: Members) -> dict:
    return json.loads(dict(members)[WEIGHTS_CONFIG])


def _pickled_weight_0(members: Members, marker: Path) -> tuple[Members, bytes]:
    """The members with weight_0 replaced by the payload, and a config marking it as pickled."""
    config = _weights_config(members)
    entry = next(e for e in config["config"].values() if e["path_name"] == "weight_0")
    entry["use_pickle"] = True
    payload = pickle.dumps(_Payload(marker))
    return [(n, payload if n == "data/weights/weight_0" else d) for n, d in members], json.dumps(
        config
    ).encode()


def _duplicated_config(marker: Path) -> Callable[[Members], Members]:
    """The security report's archive: the first config copy says use_pickle, the last does not."""

    def edit(members: Members) -> Members:
        changed, hostile = _pickled_weight_0(members, marker)
        out: Members = []
        for name, data in changed:
            out += [(name, hostile), (name, data)] if name == WEIGHTS_CONFIG else [(name, data)]
        return out

    return edit


def _runs_under_torch(archive: Path, marker: Path, call: bool = False) -> bool:
    """Whether plain torch.export.load (then, with `call`, running the module) runs the payload.

    Runs in a subprocess, so that whatever torch runs stays out of the test process.
    """
    code = f"import torch\nprogram = torch.export.load({str(archive)!r})\n"
    if call:
        code += "program.module()(torch.zeros(2, 4))\n"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300, check=False)
    return marker.exists()


def _refused(archive: Path, *fragments: str, kind: type[PruneError] = CheckpointError) -> str:
    """Load `archive` through prunecli; it must be refused with a one-line exit-2 error."""
    with pytest.raises(kind) as info:
        resolve_model(str(archive))
    line = info.value.one_line()
    assert info.value.exit_code == EXIT_BAD_INPUT and str(archive) in line, line
    for fragment in fragments:
        assert fragment in line, line
    if issubclass(kind, CheckpointError):  # an unsafe archive is refused here too, not skipped
        with pytest.raises(CheckpointError):
            default_input_shape(str(archive))
    else:
        assert default_input_shape(str(archive)) is None
    return line


# --- the reported hole, through every command that takes --arch ---------------------------------


@pytest.fixture
def evil(legit: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The security report's archive and the marker its payload would create."""
    marker = tmp_path / "code_ran"
    return _rebuild(legit, tmp_path / "evil.pt2", _duplicated_config(marker)), marker


def test_duplicated_config_runs_code_under_plain_torch(evil: tuple[Path, Path]) -> None:
    archive, marker = evil
    _refused(archive, "is not a safe torch.export archive", "twice", "nothing in it was run")
    assert not marker.exists()
    assert _runs_under_torch(archive, marker)  # torch reads the first copy: the archive is hostile


@pytest.fixture
def cli_inputs(cli, legit: Path, tmp_path: Path) -> dict[str, Path]:
    """A checkpoint of the tiny model, calibration data, and an `apply` output folder."""
    checkpoint = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny().state_dict().items()}, checkpoint)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, inputs=rng.standard_normal((8, 4)).astype(np.float32), labels=rng.integers(0, 2, 8))
    pruned = tmp_path / "pruned"
    assert cli("apply", checkpoint, "-m", "magnitude", "-s", "0.5", "-o", pruned, "-q").code == 0
    return {"checkpoint": checkpoint, "data": data, "pruned": pruned}


def _command(name: str, inputs: dict[str, Path], arch: Path, out: Path) -> list[str | Path]:
    batches = ["--data", inputs["data"], "--batch-size", "4", "--num-batches", "2"]
    return {
        "score": [
            "score",
            inputs["checkpoint"],
            "-m",
            "snip",
            "--arch",
            arch,
            *batches,
            "-o",
            out / "s.safetensors",
        ],
        "prune": [
            "prune",
            inputs["checkpoint"],
            "-m",
            "snip",
            "--arch",
            arch,
            *batches,
            "-s",
            "0.5",
            "-o",
            out / "p",
        ],
        "export": ["export", inputs["pruned"], "--arch", arch, "-o", out / "m.onnx"],
        "inspect": ["inspect", inputs["pruned"], "--signal", "--arch", arch],
    }[name]


@pytest.mark.parametrize("command", ["score", "prune", "export", "inspect"])
def test_every_command_refuses_the_reported_archive(
    cli, command: str, cli_inputs: dict[str, Path], legit: Path, evil: tuple[Path, Path], tmp_path: Path
) -> None:
    if command == "export":
        pytest.importorskip("onnx")
    (tmp_path / "ok").mkdir()
    ok = cli(*_command(command, cli_inputs, legit, tmp_path / "ok"))
    assert ok.code == 0, ok.err  # the same command line works with the legitimate archive
    archive, marker = evil
    (tmp_path / "bad").mkdir()
    r = cli(*_command(command, cli_inputs, archive, tmp_path / "bad"))
    lines = r.err.strip().splitlines()
    assert r.code == 2 and len(lines) == 1, r.err
    assert str(archive) in lines[0] and "is not a safe torch.export archive" in lines[0]
    assert "Traceback" not in r.err and not marker.exists()


# --- other hostile archives ----------------------------------------------------------------------


def test_pickled_weight_is_refused(legit: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"

    def edit(members: Members) -> Members:
        changed, hostile = _pickled_weight_0(members, marker)
        return [(n, hostile if n == WEIGHTS_CONFIG else d) for n, d in changed]

    archive = _rebuild(legit, tmp_path / "pickled.pt2", edit)
    _refused(archive, "stores '0.weight' pickled")
    assert not marker.exists()
    assert _runs_under_torch(archive, marker)


def test_config_copy_differing_in_case_is_refused(legit: Path, tmp_path: Path) -> None:
    """torch's reader finds `DATA/...` when asked for `data/...`; zipfile and our names do not."""
    marker = tmp_path / "code_ran"

    def edit(members: Members) -> Members:
        changed, hostile = _pickled_weight_0(members, marker)
        return [*changed, ("DATA/weights/model_weights_config.json", hostile)]

    archive = _rebuild(legit, tmp_path / "case.pt2", edit)
    _refused(
        archive, "holds the member 'DATA/weights/model_weights_config.json' twice (or twice but for case)"
    )
    assert not marker.exists()
    assert _runs_under_torch(archive, marker)


def test_pickled_member_listed_in_no_config_is_refused(legit: Path, tmp_path: Path) -> None:
    """torch prefers a legacy `data/weights/model.pt` to the config and unpickles it unsafely."""
    marker = tmp_path / "code_ran"
    payload = pickle.dumps(_Payload(marker))
    archive = _rebuild(legit, tmp_path / "legacy.pt2", lambda m: [*m, ("data/weights/model.pt", payload)])
    _refused(archive, "holds 'data/weights/model.pt', which torch.export.save does not write")
    assert not marker.exists()
    assert _runs_under_torch(archive, marker)


def test_placeholder_name_that_is_python_source_is_refused(legit: Path, tmp_path: Path) -> None:
    """Graph input names go into the generated forward(); a default argument runs at load."""
    marker = tmp_path / "code_ran"
    name = json.dumps(f"x=__import__('os').mkdir({str(marker)!r})")

    def rename_input(graph: str) -> str:
        graph = graph.replace('{"as_tensor": {"name": "input"}}', f'{{"as_tensor": {{"name": {name}}}}}')
        return graph.replace('"input": {"dtype"', f'{name}: {{"dtype"')

    archive = _rebuild(legit, tmp_path / "name.pt2", _graph_edit(rename_input))
    _refused(archive, "in models/model.json, not a plain name or shape expression")
    assert not marker.exists()
    assert _runs_under_torch(archive, marker)


def test_sympy_expression_that_runs_code_is_refused(legit: Path, tmp_path: Path) -> None:
    """Symbolic sizes are parsed with sympify, which evaluates the string."""
    marker = tmp_path / "code_ran"
    hook = f"(__import__('os').mkdir({str(marker)!r}) or Symbol)("
    archive = _rebuild(legit, tmp_path / "sympy.pt2", _graph_edit(lambda g: g.replace("Symbol(", hook, 1)))
    assert archive.read_bytes() != legit.read_bytes()
    _refused(archive, "not a plain name or shape expression")
    assert not marker.exists()
    assert _runs_under_torch(archive, marker)


def test_guard_that_runs_code_is_refused(legit: Path, tmp_path: Path) -> None:
    """Guards are compiled into the module by `.module()` and run on every call."""
    marker = tmp_path / "code_ran"
    guard = f"__import__('os').mkdir({str(marker)!r}) is None"

    def add_guard(graph: str) -> str:
        program = json.loads(graph)
        program["guards_code"] = [guard]
        return json.dumps(program)

    archive = _rebuild(legit, tmp_path / "guard.pt2", _graph_edit(add_guard))
    _refused(archive, "not a plain name or shape expression")
    assert not marker.exists()
    assert _runs_under_torch(archive, marker, call=True)


def _local_name_differs(path: Path) -> Path:
    """Rename the graph member in its local header only (the central directory keeps the name)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(GRAPH))
    start = info.header_offset + 30 + len(info.filename) - len("model.json")
    assert data[start : start + 10] == b"model.json"
    data[start : start + 10] = b"xodel.json"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("variant", "fragment"),
    [
        ("dotdot", "holds a member named 'tiny/data/../extra/x', which readers may resolve differently"),
        ("absolute", "holds a member named '/etc/x'"),
        ("backslash", "which readers may resolve differently"),
        ("case", "twice (or twice but for case)"),
        ("aoti", "holds 'data/aotinductor/model/model.so', which torch.export.save does not write"),
        ("unlisted", "holds data/weights/weight_9, which no payload config lists"),
        ("prepended", "has data before the zip"),
        ("prepended zip64", "has a zip64 end record that its locator does not point to"),
        ("comment", "does not end with a plain zip end record"),
        ("local header", "File name in directory"),
        ("lzma", "compressed as torch.export.save never does"),
    ],
)
def test_odd_zips_are_refused(legit: Path, tmp_path: Path, variant: str, fragment: str) -> None:
    target = tmp_path / "odd.pt2"
    hostile = _weights_config(_read(legit)[1])
    hostile["config"]["0.weight"]["use_pickle"] = True
    edits: dict[str, Callable[[Members], Members]] = {
        "dotdot": lambda m: [*m, ("data/../extra/x", b"")],
        "absolute": lambda m: [*m, ("/etc/x", b"")],
        "backslash": lambda m: [*m, ("data\\weights\\weight_0", b"")],
        "case": lambda m: [*m, ("DATA/weights/model_weights_config.json", json.dumps(hostile).encode())],
        "aoti": lambda m: [*m, ("data/aotinductor/model/model.so", b"\x7fELF")],
        "unlisted": lambda m: [*m, ("data/weights/weight_9", b"\0" * 4)],
    }
    if variant in edits:
        _rebuild(legit, target, edits[variant])
    elif variant == "prepended":  # zipfile shifts its offsets, torch's reader would not
        plain = _rebuild(legit, tmp_path / "plain.pt2", lambda m: m)
        target.write_bytes(b"#!/bin/sh\n" * 8 + plain.read_bytes())
    elif variant == "prepended zip64":  # as torch.export.save writes it: zip64 end records
        target.write_bytes(b"#!/bin/sh\n" * 8 + legit.read_bytes())
    elif variant == "comment":
        _rebuild(legit, target, lambda m: m)
        with zipfile.ZipFile(target, "a") as archive:
            archive.comment = b"hello"
    elif variant == "local header":
        _local_name_differs(_rebuild(legit, target, lambda m: m))
    else:
        root, members = _read(legit)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_LZMA) as archive:
            for name, data in members:
                archive.writestr(f"{root}/{name}", data)
    _refused(target, fragment)


def test_legacy_layout_is_refused(tmp_path: Path) -> None:
    """The pre-2.8 layout's state dict is unpickled with weights_only=False when a safe load fails."""
    archive = tmp_path / "old.pt2"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("serialized_exported_program.json", "{}")
        z.writestr("serialized_state_dict.pt", pickle.dumps(_Payload(tmp_path / "code_ran")))
        z.writestr("version", "8.0")
    _refused(archive, "uses the torch.export layout of PyTorch < 2.8", kind=InputError)
    assert not (tmp_path / "code_ran").exists()


# --- legitimate archives ----------------------------------------------------------------------------


def test_legitimate_archive_loads_as_before(legit: Path) -> None:
    module = resolve_model(str(legit))
    x = torch.randn(5, 4)
    assert torch.equal(module(x), torch.export.load(legit).module()(x))
    torch.testing.assert_close(module(x), _tiny()(x))
    assert default_input_shape(str(legit)) == (4,)


def test_zoo_archive_loads_as_before(tmp_path: Path) -> None:
    model = resolve_model("lenet-5").eval()
    path = tmp_path / "lenet-5.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 28, 28),)), path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(resolve_model(str(path))(x), torch.export.load(path).module()(x))
    assert default_input_shape(str(path)) == (1, 28, 28)


def test_archive_with_guards_and_keyword_inputs_loads(tmp_path: Path) -> None:
    """Guards and keyword names pass the checks when they are what torch writes."""

    class Sliced(nn.Module):
        def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
            return x[: scale.shape[0]] * scale

    auto = torch.export.Dim.AUTO
    program = torch.export.export(
        Sliced(),
        (torch.ones(6, 3),),
        {"scale": torch.ones(4, 3)},
        dynamic_shapes={"x": {0: auto, 1: auto}, "scale": {0: auto, 1: auto}},
    )
    assert program._guards_code  # e.g. "L['scale'].size()[0] <= L['x'].size()[0]"
    path = tmp_path / "sliced.pt2"
    torch.export.save(program, path)
    module = resolve_model(str(path))
    assert module(torch.ones(5, 3), scale=torch.full((2, 3), 2.0)).tolist() == [[2.0] * 3] * 2
    with pytest.raises(AssertionError, match="Guard failed"):
        module(torch.ones(2, 3), scale=torch.ones(4, 3))
