"""Option groups declared once, Enums for every choice, and errors that carry facts.

The library names its parameters (`min_density`); the CLI renders them as flags (`--min-density`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path

import numpy as np
import pytest

from prunecli.cli import choices
from prunecli.cli import options as opt
from prunecli.cli.app import flag
from prunecli.cli.apply_cmd import apply
from prunecli.cli.prune_cmd import prune
from prunecli.cli.score_cmd import score
from prunecli.errors import UsageError
from prunecli.selection.prunable import prunable_names
from prunecli.selection.spec import AGGREGATES, ALLOCATIONS, SCOPES, STRUCTURES, SelectionSpec
from prunecli.selection.threshold import nm_mask
from tests.test_imports import heavy_modules

CLI = Path(opt.__file__).parent
SELECTION_CHOICES = {
    "--scope": ["global", "layer", "row"],
    "--allocation": ["uniform", "erk"],
    "--structure": ["filter", "channel"],
    "--aggregate": ["l1", "l2", "mean", "max"],
}
MODEL_CHOICES = {
    "--loss": ["ce", "pseudo", "uniform", "nll", "lm"],
    "--schedule": ["exp", "linear"],
    "--bn-mode": ["eval", "train"],
    "--dtype": ["float32", "float64", "bfloat16", "float16"],
    "--hessian": ["exact", "hutchinson", "fisher"],
}
CHOICES = {  # command -> choice flag -> the values, in the order --help lists them
    "score": MODEL_CHOICES,
    "prune": {**SELECTION_CHOICES, **MODEL_CHOICES},
    "apply": SELECTION_CHOICES,
    "init": {"--init": ["kaiming-normal", "xavier-normal", "xavier-uniform", "orthogonal"]},
    "export": {"--onnx-dtype": ["float32", "float16"]},
}
REQUIRED = {  # enough for the parser to get to the choice (the command itself never runs)
    "score": ["ckpt.safetensors", "-m", "magnitude", "-o", "s.safetensors"],
    "prune": ["ckpt.safetensors", "-m", "magnitude", "-o", "out"],
    "apply": ["ckpt.safetensors", "-m", "magnitude", "-o", "out"],
    "init": ["--arch", "mlp", "-o", "i.safetensors"],
    "export": ["out", "--arch", "mlp", "-o", "m.onnx"],
}
CASES = [(command, name) for command, flags in CHOICES.items() for name in flags]


# Enums: --help lists the values, the parser refuses others ---------------------------------


@pytest.mark.parametrize("command", list(CHOICES))
def test_help_lists_every_choice(cli, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    r = cli(command, "--help")
    assert r.code == 0
    for name, values in CHOICES[command].items():
        [line] = [line for line in r.out.splitlines() if re.match(rf"[│\s*]*{name}\s", line)]
        assert f"<{'|'.join(values)}>" in line, line


@pytest.mark.parametrize(("command", "name"), CASES)
def test_a_bad_choice_is_one_line_and_exit_2(cli, tmp_path: Path, command: str, name: str) -> None:
    args = [
        str(tmp_path / a) if a.endswith((".safetensors", ".onnx", "out")) else a for a in REQUIRED[command]
    ]
    r = cli(command, *args, name, "bogus")
    listed = ", ".join(f"'{v}'" for v in CHOICES[command][name])
    assert (r.code, r.out) == (2, "")
    assert r.err.startswith(f"error: Invalid value for '{name}': "), r.err  # the parser words the middle
    assert r.err.endswith(f"'bogus' is not one of {listed} (see 'prunecli {command} --help')\n"), r.err
    assert r.err.count("\n") == 1


def test_the_enums_are_the_librarys_choices() -> None:
    from prunecli.calibration.losses import LOSSES
    from prunecli.export.to_onnx import DTYPES
    from prunecli.models.init import SCHEMES
    from prunecli.scoring.obd import HESSIANS

    def values(enum: type[Enum]) -> tuple[str, ...]:
        return tuple(member.value for member in enum)

    assert values(choices.Scope) == SCOPES
    assert values(choices.Allocation) == ALLOCATIONS
    assert values(choices.Structure) == STRUCTURES
    assert values(choices.Aggregate) == AGGREGATES
    assert values(choices.Loss) == LOSSES
    assert values(choices.Hessian) == HESSIANS
    assert values(choices.InitScheme) == tuple(SCHEMES)
    assert values(choices.ExportDtype) == DTYPES


@pytest.mark.parametrize("command", ["score", "prune", "init", "export"])
def test_help_with_enums_imports_no_torch(command: str) -> None:
    assert heavy_modules(command, "--help") == (0, "")


# Option groups: declared once, defaults in one place ---------------------------------------

GROUPS = {
    score: [opt.ModelOptions, opt.MethodOptions],
    prune: [opt.ModelOptions, opt.MethodOptions, opt.SelectionOptions],
    apply: [opt.SelectionOptions],
}


@pytest.mark.parametrize("command", list(GROUPS), ids=lambda c: c.__name__)
def test_commands_take_their_groups_defaults(command: object) -> None:
    """Every field of a command's groups is a parameter, defaulting to the group's own object
    (or to None / False: not given)."""
    parameters = inspect.signature(command).parameters
    for group in GROUPS[command]:
        defaults = group()
        for name in group.__dataclass_fields__:
            default = parameters[name].default
            assert default is None or default is False or default is getattr(defaults, name), (group, name)


def test_the_grasp_temperature_is_written_once() -> None:
    """The CLI passes no temperature of its own (None: GraSP's default), and the package holds the
    default once, in the method's options."""
    from prunecli.scoring.grasp import GraspOptions

    assert inspect.signature(score).parameters["temperature"].default is None
    assert inspect.signature(prune).parameters["temperature"].default is None
    assert opt.MethodOptions.temperature is None and GraspOptions().temperature == 200.0
    package = CLI.parent
    literals = [
        f"{path.relative_to(package)}:{n}"
        for path in sorted(package.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b200\.0\b", line)
    ]
    assert literals == [
        f"scoring/grasp.py:{_line_of('DEFAULT_TEMPERATURE = 200.0', package / 'scoring' / 'grasp.py')}"
    ]


def _line_of(text: str, path: Path = CLI / "options.py") -> int:
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def test_gather_builds_a_group_with_plain_values() -> None:
    given = {name: None for name in opt.SelectionOptions.__dataclass_fields__}
    given |= {"sparsity": 0.5, "scope": choices.Scope.LAYER, "allocation": choices.Allocation.ERK,
              "min_density": 0.0, "aggregate": choices.Aggregate.L1, "shuffle": False, "invert": False,
              "exclude": ["fc*"], "checkpoint": Path("x")}  # fmt: skip
    assert opt.gather(opt.SelectionOptions, given) == opt.SelectionOptions(
        sparsity=0.5, scope="layer", allocation="erk", exclude=("fc*",)
    )
    with pytest.raises(TypeError, match="needs parameters the command lacks: invert"):
        opt.gather(opt.SelectionOptions, {k: v for k, v in given.items() if k != "invert"})


def test_selection_options_build_the_spec() -> None:
    assert opt.SelectionOptions(sparsity=0.9).spec() == SelectionSpec(density=1.0 - 0.9)
    assert opt.SelectionOptions(density=0.25, allocation="erk").spec().scope == "layer"
    assert opt.SelectionOptions(pattern="2:4").spec().pattern == (2, 4)


def test_method_options_pass_only_what_was_given() -> None:
    assert opt.MethodOptions().given() == {}
    given = opt.MethodOptions(hessian="hutchinson", hutchinson_samples=8, fisher=True).given()
    assert given == {"hessian": "hutchinson", "hutchinson_samples": 8, "fisher": True}


# Errors carry facts; the CLI renders the flags ---------------------------------------------


def test_a_library_error_names_the_parameter_not_the_flag() -> None:
    with pytest.raises(UsageError) as info:
        SelectionSpec(density=0.5, min_density=1.5).validate()
    err = info.value
    assert (err.option, err.value, err.bounds) == ("min_density", 1.5, (0.0, 1.0))
    assert str(err) == "`min_density` 1.5 is outside [0, 1]" and err.hint == "use a fraction"
    assert err.one_line() == "`min_density` 1.5 is outside [0, 1]. use a fraction."
    assert err.one_line(parameter=flag) == "--min-density 1.5 is outside [0, 1]. use a fraction."


@pytest.mark.parametrize(
    ("spec", "option", "line"),
    [
        (SelectionSpec(0.5, scope="rows"), "scope", "unknown --scope 'rows'. use global, layer or row."),
        (SelectionSpec(0.5, aggregate="l3"), "aggregate",
         "unknown --aggregate 'l3'. use one of l1, l2, mean, max."),
        (SelectionSpec(0.5, structure="filter", scope="row"), "structure",
         "--structure keeps whole filters or channels. drop --pattern / --scope row."),
        (SelectionSpec(0.5, allocation="erk"), "scope",
         "--allocation erk sets per-layer densities. use it with --scope layer."),
    ],
)  # fmt: skip
def test_spec_errors_carry_facts(spec: SelectionSpec, option: str, line: str) -> None:
    with pytest.raises(UsageError) as info:
        spec.validate()
    assert info.value.option == option
    assert "--" not in info.value.one_line()
    assert info.value.one_line(parameter=flag) == line
    if line.startswith("unknown"):
        assert info.value.allowed == {"scope": SCOPES, "aggregate": AGGREGATES}[option]


def test_prunable_and_nm_errors_name_parameters() -> None:
    from prunecli.io.safetensors_header import TensorInfo

    with pytest.raises(UsageError) as info:
        prunable_names({"fc.weight": TensorInfo("F32", (4, 6))}, include=["nomatch*"])
    assert (info.value.option, info.value.value) == ("include", "nomatch*")
    assert info.value.one_line() == "`include` 'nomatch*' matches no tensor. check the names with inspect."
    with pytest.raises(UsageError) as info:
        nm_mask(np.zeros((4, 6), np.uint32), 2, 4, "fc.weight")
    assert (info.value.option, info.value.value) == ("pattern", (2, 4))
    assert info.value.one_line(parameter=flag) == (
        "--pattern 2:4 needs the input dimension of fc.weight (6) to be a multiple of 4. "
        "exclude it with --exclude 'fc.weight'."
    )


def test_the_cli_line_shows_the_flags(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    base = ["apply", mlp_ckpt, "-m", "magnitude", "-o", tmp_path / "o"]
    for extra, line in (
        (["-s", "0.5", "--min-density", "1.5"],
         "--min-density 1.5 is outside [0, 1]. give --min-density as a fraction, e.g. 0.9."),
        (["-s", "0.5", "--structure", "filter", "--scope", "row"],
         "--structure keeps whole filters or channels. drop --pattern / --scope row."),
        (["-s", "0.5", "--include", "nomatch*"],
         "--include 'nomatch*' matches no tensor. check the names with inspect."),
        (["--pattern", "2:4", "--shuffle"],
         "--shuffle would break the --pattern N:M structure. use one of them."),
        (["--pattern", "2:5"],
         "--pattern 2:5 needs the input dimension of fc1.weight (12) to be a multiple of 5. "
         "exclude it with --exclude 'fc1.weight'."),
    ):  # fmt: skip
        r = cli(*base, *extra)
        assert (r.code, r.out, r.err) == (2, "", f"error: {line}\n"), extra


# Library entry points name parameters; only the CLI line shows flags ------------------------


def test_python_callers_see_parameters_and_the_cli_shows_flags(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    from prunecli.analysis.inspect import Expectations
    from prunecli.models import parse_arch_args
    from prunecli.pipelines.score import score as score_pipeline
    from prunecli.scoring import all_methods, get_method
    from prunecli.scoring.grasp import GraspOptions
    from prunecli.scoring.obd import HESSIANS
    from prunecli.scoring.options import build_options

    def caught(call: Callable[[], object]) -> UsageError:
        with pytest.raises(UsageError) as info:
            call()
        assert "--" not in info.value.one_line(), info.value.one_line()
        return info.value

    out = tmp_path / "s.safetensors"
    err = caught(lambda: score_pipeline(mlp_ckpt, "snip", out))
    assert (err.message, err.hint, err.option) == (
        "snip needs a model",
        "add `arch` (e.g. `arch` lenet-300-100)",
        "arch",
    )
    assert cli("score", mlp_ckpt, "-m", "snip", "-o", out).err == (
        "error: snip needs a model. add --arch (e.g. --arch lenet-300-100).\n"
    )

    err = caught(lambda: build_options(get_method("obd"), {"hessian": "sideways"}, {}, all_methods()))
    assert (err.message, err.option, err.value, err.allowed) == (
        "unknown `hessian` 'sideways'",
        "hessian",
        "sideways",
        HESSIANS,
    )
    err = caught(lambda: build_options(get_method("snip"), {"hessian": "exact"}, {}, all_methods()))
    assert (err.one_line(), err.option) == ("`hessian` applies to obd, not snip. drop `hessian`.", "hessian")
    r = cli("score", mlp_ckpt, "-m", "snip", "--arch", "mlp", "--hessian", "exact", "-o", out)
    assert (r.code, r.err) == (2, "error: --hessian applies to obd, not snip. drop --hessian.\n")

    err = caught(lambda: GraspOptions(temperature=-1))
    assert (err.message, err.option, err.value) == ("`temperature` -1 must be positive", "temperature", -1)
    r = cli(
        "score",
        mlp_ckpt,
        "-m",
        "grasp",
        "--arch",
        "mlp",
        "--data",
        "random:12",
        "--temperature",
        "-1",
        "-o",
        out,
    )
    assert (r.code, r.err) == (2, "error: --temperature -1.0 must be positive. GraSP uses 200.\n")

    err = caught(lambda: parse_arch_args("[1]"))
    assert (err.option, err.value) == ("arch_args", "[1]")
    assert err.message == "`arch_args` must be a JSON object, not an array"
    r = cli("init", "--arch", "mlp", "--arch-args", "[1]", "-o", tmp_path / "i.safetensors")
    assert r.err == (
        "error: --arch-args must be a JSON object, not an array. give a JSON object of keyword "
        "arguments, e.g. --arch-args '{\"num_classes\": 100}'.\n"
    )

    # Expectations.sparsity is inspect's --expect-sparsity: the CLI renames it before rendering
    err = caught(lambda: Expectations(sparsity=2.0).validate())
    assert (err.message, err.option, err.value, err.bounds) == (
        "`sparsity` 2.0 is outside [0, 1]",
        "sparsity",
        2.0,
        (0.0, 1.0),
    )
    r = cli("inspect", mlp_ckpt, "--expect-sparsity", "2")
    assert (r.code, r.err) == (2, "error: --expect-sparsity 2.0 is outside [0, 1]. use a fraction.\n")


def test_methods_text_names_parameters() -> None:
    """`Method.needs` and `summary` name parameters; `prunecli methods` renders them as flags."""
    from prunecli.scoring import all_methods, get_method

    for method in all_methods():
        assert not re.search(r"--[a-z]", method.needs + method.summary), method.name
    assert get_method("snip").needs == "`arch` and `data` (labels optional)"
    assert get_method("obd").needs.endswith("; `hessian` exact|hutchinson|fisher")


# Strings in library code (outside cli/) that may reach a user: every string literal in a function
# body, and every module-level string constant a function uses. Docstrings are not messages.
FLAG_IN_TEXT = re.compile(r"--(?=[a-z])|--$")  # "--min-density", or a flag built as "--" + name
# (file, literal) pairs allowed to spell a flag, each with its reason:
FLAGS_ALLOWED_IN_LIBRARY_TEXT = {
    # The floors warning is written into manifest.json (output bytes: tools/output_hashes.py).
    ("prunecli/pipelines/apply.py", "--min-density "),
}


def _texts_that_reach_users(path: Path) -> Iterator[tuple[int, str]]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    constants = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and node.id in constants:
                node = constants[node.id]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                yield node.lineno, node.value


def test_library_text_names_parameters_not_flags() -> None:
    root = CLI.parents[1]
    found = []
    for path in sorted((root / "prunecli").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("prunecli/cli/"):
            continue
        for line, text in _texts_that_reach_users(path):
            if FLAG_IN_TEXT.search(text) and (rel, text) not in FLAGS_ALLOWED_IN_LIBRARY_TEXT:
                found.append(f"{rel}:{line}: {text!r}")
    assert not found, (
        "write the parameter in backticks (`min_density`); the CLI renders the flag:\n" + "\n".join(found)
    )
    assert len(FLAGS_ALLOWED_IN_LIBRARY_TEXT) == 1  # grow this list only with output bytes
