"""CLI habits: choices in --help, shell completion, "did you mean", whole names off a terminal,
a spinner while a model loads, one meaning per flag, and the library options wired through."""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from prunecli.cli.app import app
from prunecli.cli.output import RichProgress
from prunecli.cli.values import byte_size
from prunecli.errors import UsageError
from tests.conftest import save_f32
from tests.test_imports import PROBE

COMMANDS = [c.name for c in app.registered_commands]
OPTION = re.compile(r"^[│\s*]*(--[a-z][a-z0-9-]*)")  # the flag that starts a row of the options panel


def help_rows(cli, monkeypatch: pytest.MonkeyPatch, command: str | None) -> dict[str, str]:
    """`prunecli [COMMAND] --help`, wide enough for one line per option: flag -> its line."""
    monkeypatch.setenv("COLUMNS", "400")
    r = cli(*([command] if command else []), "--help")
    assert r.code == 0
    return {m[1]: line for line in r.out.splitlines() if (m := OPTION.match(line))}


def probe(*args: str, env: dict[str, str] | None = None, shell: bool = False) -> tuple[int, str, str]:
    """Run the CLI in a fresh interpreter (under bash when `shell`): exit code, stdout, and the
    heavy modules it imported."""
    command = [sys.executable, "-c", PROBE, *args]
    if shell:  # `; exit $?` keeps bash as the parent (no exec), as in an interactive shell
        command = ["bash", "-c", '"$@"; exit $?', "bash", *command]
    environ = {**os.environ, "SHELL": "/bin/bash", **(env or {})}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environ)
    heavy = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")][-1].removeprefix("HEAVY=")
    return proc.returncode, proc.stdout, heavy


# 1. Choices are listed in --help ------------------------------------------------------------

LISTED = [
    ("apply", "--scope", "global|layer|row"),
    ("prune", "--scope", "global|layer|row"),
    ("prune", "--allocation", "uniform|erk"),
    ("prune", "--structure", "filter|channel"),
    ("prune", "--aggregate", "l1|l2|mean|max"),
    ("score", "--dtype", "float32|float64|bfloat16|float16"),
    ("prune", "--dtype", "float32|float64|bfloat16|float16"),
    ("score", "--loss", "ce|pseudo|uniform|nll|lm"),
    ("score", "--schedule", "exp|linear"),
    ("score", "--bn-mode", "eval|train"),
    ("score", "--hessian", "exact|hutchinson|fisher"),
    ("score", "--device", "auto|cpu|cuda|cuda:N"),
    ("prune", "--device", "auto|cpu|cuda|cuda:N"),
    ("init", "--init", "kaiming-normal|xavier-normal|xavier-uniform|orthogonal"),
    ("export", "--onnx-dtype", "float32|float16"),
]


@pytest.mark.parametrize(("command", "name", "values"), LISTED)
def test_help_lists_the_values_of_a_choice(
    cli, monkeypatch: pytest.MonkeyPatch, command: str, name: str, values: str
) -> None:
    line = help_rows(cli, monkeypatch, command)[name]
    assert re.search(rf"[<\[]{re.escape(values)}[>\]]", line), line


def test_the_compute_dtypes_are_the_librarys() -> None:
    from prunecli.cli.choices import ScoreDtype
    from prunecli.pipelines.score import COMPUTE_DTYPES

    assert tuple(member.value for member in ScoreDtype) == COMPUTE_DTYPES


def test_score_takes_the_four_compute_dtypes(cli, tmp_path: Path) -> None:
    r = cli(
        "score",
        tmp_path / "m.safetensors",
        "-m",
        "snip",
        "--dtype",
        "float8",
        "-o",
        tmp_path / "s.safetensors",
    )
    assert (r.code, r.out) == (2, "")
    assert r.err.endswith(
        "'float8' is not one of 'float32', 'float64', 'bfloat16', 'float16' (see 'prunecli score --help')\n"
    )
    assert r.err.count("\n") == 1


# 2. Shell completion --------------------------------------------------------------------------


def test_show_completion_prints_the_bash_script_without_torch() -> None:
    code, out, heavy = probe("--show-completion", shell=True)
    assert (code, heavy) == (0, "")
    assert "_PRUNECLI_COMPLETE=complete_bash" in out
    assert out.rstrip().endswith("complete -o default -F _prunecli_completion prunecli")


def test_the_root_help_offers_completion(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = help_rows(cli, monkeypatch, None)
    assert {"--install-completion", "--show-completion"} <= set(rows)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("prunecli apply x --scope ", ["global", "layer", "row"]),
        ("prunecli score x --dtype bf", ["bfloat16"]),
        ("prunecli score x -m sn", ["snip", "snip-it"]),
        ("prunecli apply x -m ", ["magnitude", "random", "lamp"]),  # apply scores without a model
        ("prunecli pr", ["prune"]),
    ],
)
def test_bash_completion_completes(
    cli, monkeypatch: pytest.MonkeyPatch, words: str, expected: list[str]
) -> None:
    monkeypatch.setenv("_PRUNECLI_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split(" ")) - 1))
    r = cli()
    assert (r.code, r.out.split(), r.err) == (0, expected, "")


def test_completing_a_method_imports_no_torch() -> None:
    env = {"_PRUNECLI_COMPLETE": "complete_bash", "COMP_WORDS": "prunecli prune x -m syn", "COMP_CWORD": "4"}
    assert probe(env=env) == (0, "synflow\n", "")


# 3. "did you mean" for a mistyped method or command ------------------------------------------


def _known_methods() -> str:
    from prunecli.scoring import all_methods

    return ", ".join(m.name for m in all_methods())


@pytest.mark.parametrize(
    ("args", "typo", "meant"),
    [
        (["score", "{ckpt}", "-o", "{tmp}/s.safetensors"], "snpi", "snip"),
        (["prune", "{ckpt}", "-s", "0.5", "-o", "{tmp}/out"], "snpi", "snip"),
        (["prune", "{ckpt}", "-s", "0.5", "-o", "{tmp}/out"], "synflwo", "synflow"),
        (["apply", "{ckpt}", "-s", "0.5", "-o", "{tmp}/out"], "magnitde", "magnitude"),
    ],
)
def test_a_mistyped_method_is_one_line_naming_the_closest(
    cli, mlp_ckpt: Path, tmp_path: Path, args: list[str], typo: str, meant: str
) -> None:
    given = [a.format(ckpt=mlp_ckpt, tmp=tmp_path) for a in args]
    r = cli(*given, "-m", typo)
    assert (r.code, r.out) == (2, "")
    assert (
        r.err == f"error: unknown method '{typo}'. did you mean {meant}? choose one of: {_known_methods()}.\n"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.safetensors").exists()


def test_a_mistyped_command_names_the_closest(cli) -> None:
    r = cli("scroe", "x.safetensors")
    assert (r.code, r.out) == (2, "")
    assert "'scroe'" in r.err and "Did you mean 'score'?" in r.err and r.err.count("\n") == 1


# 4. Off a terminal, tables keep every tensor name whole --------------------------------------

LONG_NAMES = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.17.block_sparse_moe.experts.5.w3.weight_with_a_name_far_longer_than_any_terminal_is_wide"
    ".and_then_some_more.weight",
]


@pytest.fixture
def long_names(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return save_f32(tmp_path / "llm.safetensors", {name: rng.standard_normal((8, 16)) for name in LONG_NAMES})


def test_inspect_table_keeps_long_names_whole(cli, monkeypatch: pytest.MonkeyPatch, long_names: Path) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # what a narrow terminal would fold the names to
    r = cli("inspect", long_names, "--all")
    assert r.code == 0
    for name in LONG_NAMES:
        [row] = [line for line in r.err.splitlines() if name in line]
        assert re.search(rf"│ {re.escape(name)} +│ 8×16 +│ +128 │", row), row


def test_compare_table_keeps_long_names_whole(
    cli, monkeypatch: pytest.MonkeyPatch, long_names: Path, tmp_path: Path
) -> None:
    for method in ("magnitude", "random"):
        assert cli("apply", long_names, "-m", method, "-s", "0.5", "-o", tmp_path / method).code == 0
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("compare", tmp_path / "magnitude", tmp_path / "random")
    assert r.code == 0
    for name in LONG_NAMES:
        [row] = [line for line in r.err.splitlines() if name in line]
        assert row.startswith(f"│ {name} ") and row.rstrip().endswith("│"), row


# 5. A spinner while the model is built and loaded --------------------------------------------

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's "dots" frames


def test_a_stage_without_a_total_spins_on_a_terminal() -> None:
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=80, color_system=None)
    with RichProgress(quiet=False, console=terminal) as progress:
        progress.stage("building the model", 0)
    frames = buffer.getvalue()
    assert re.search(rf"[{SPINNER}] building the model", frames), repr(frames)
    assert "0/0" not in frames  # no count for a stage of unknown length


def test_a_stage_with_a_total_counts_on_a_terminal() -> None:
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=80, color_system=None)
    with RichProgress(quiet=False, console=terminal) as progress:
        progress.stage("loading the weights", 4)
        progress.advance()
    assert re.search(rf"[{SPINNER}] loading the weights .* 1/4 ", buffer.getvalue())


@pytest.mark.parametrize("terminal", [False, True], ids=["not-a-terminal", "quiet-on-a-terminal"])
def test_no_progress_is_drawn_off_a_terminal_or_when_quiet(terminal: bool) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=80)
    with RichProgress(quiet=terminal, console=console) as progress:
        progress.stage("building the model", 0)
        progress.advance()
        progress.stage("loading the weights", 2)
        progress.advance()
    assert buffer.getvalue() == ""


def test_model_based_score_off_a_terminal_prints_only_notes(cli, tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    assert cli("init", "--arch", "mlp", "-o", init, "-q").code == 0
    out = tmp_path / "snip.safetensors"
    r = cli("score", init, "-m", "snip", "--arch", "mlp", "--data", "random:784", "-o", out)
    assert (r.code, r.out) == (0, "")
    assert (
        r.err.replace(str(tmp_path), "<tmp>")
        == "note: wrote <tmp>/snip.safetensors (3 tensors, method snip)\n"
    )


# 6. --dtype has one meaning: the compute precision of score, prune and eval ------------------


def test_only_score_prune_and_eval_show_dtype(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    showing = {command for command in COMMANDS if "--dtype" in help_rows(cli, monkeypatch, command)}
    assert showing == {"score", "prune", "eval"}
    for command in ("score", "prune"):
        assert (
            "Precision of the forward and backward passes" in help_rows(cli, monkeypatch, command)["--dtype"]
        )
    assert "Precision of the forward passes" in help_rows(cli, monkeypatch, "eval")["--dtype"]


def test_export_dtype_is_a_deprecated_alias_of_onnx_dtype(cli, tmp_path: Path) -> None:
    base = ["export", tmp_path / "nope.safetensors", "--arch", "lenet-5", "-o", tmp_path / "m.onnx"]
    r = cli(*base, "--dtype", "float16")
    assert r.code == 2 and r.out == ""
    assert r.err.splitlines()[0] == (
        "warning: export --dtype is deprecated (score and prune use --dtype for compute precision); "
        "use --onnx-dtype"
    )
    r = cli(*base, "--dtype", "float16", "--onnx-dtype", "float16")
    assert (r.code, r.out, r.err) == (
        2,
        "",
        "error: --dtype and --onnx-dtype were both given. give only --onnx-dtype.\n",
    )


# 7. prune takes every apply flag ------------------------------------------------------------


def test_prune_takes_every_flag_of_apply(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_flags, prune_flags = (set(help_rows(cli, monkeypatch, c)) for c in ("apply", "prune"))
    only_apply = {"--scores", "--masks"}  # prune scores the model itself, and takes no mask set (yet)
    assert apply_flags - only_apply <= prune_flags, apply_flags - prune_flags


# 8. The library options, wired through --------------------------------------------------------


def _recording(monkeypatch: pytest.MonkeyPatch, module: str, name: str, result: Any) -> dict[str, Any]:
    """Replace `module.name` by a stand-in that checks the call against the real signature and
    records the keyword arguments."""
    import importlib

    target = importlib.import_module(module)
    real = getattr(target, name)
    calls: dict[str, Any] = {}

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        inspect.signature(real).bind(*args, **kwargs)  # a keyword the library lacks fails here
        calls.update(kwargs)
        return result

    monkeypatch.setattr(target, name, stand_in)
    return calls


APPLIED = SimpleNamespace(
    notes=[], warnings=[], manifest={"totals": {"kept": 1, "prunable": 2, "sparsity": 0.5}}
)


def test_score_passes_the_token_and_remote_code_options(
    cli, monkeypatch, mlp_ckpt: Path, tmp_path: Path
) -> None:
    written = SimpleNamespace(notes=[], names=["fc1.weight"], metadata={"method": "snip"})
    calls = _recording(monkeypatch, "prunecli.pipelines.score", "score", written)
    base = ["score", mlp_ckpt, "-m", "snip", "--arch", "hf:model", "-o", tmp_path / "s.safetensors"]
    assert cli(*base).code == 0
    assert {k: calls[k] for k in ("trust_remote_code", "seq_len", "num_samples", "batch_size", "dtype")} == {
        "trust_remote_code": False, "seq_len": None, "num_samples": None, "batch_size": None, "dtype": None,
    }  # fmt: skip
    given = ["--trust-remote-code", "--seq-len", "512", "--num-samples", "16", "--batch-size", "4"]
    assert cli(*base, *given, "--dtype", "bfloat16").code == 0
    assert {k: calls[k] for k in ("trust_remote_code", "seq_len", "num_samples", "batch_size", "dtype")} == {
        "trust_remote_code": True, "seq_len": 512, "num_samples": 16, "batch_size": 4, "dtype": "bfloat16",
    }  # fmt: skip


def test_prune_passes_scoring_and_writing_options(cli, monkeypatch, mlp_ckpt: Path, tmp_path: Path) -> None:
    from prunecli.pipelines.prune import SCORING_ARGUMENTS

    calls = _recording(monkeypatch, "prunecli.pipelines.prune", "prune", APPLIED)
    base = ["prune", mlp_ckpt, "-m", "snip", "--arch", "mlp", "-s", "0.5", "-o", tmp_path / "out"]
    assert cli(*base).code == 0
    assert (calls["max_shard_size"], calls["isometry"], calls["batch_size"]) == (None, None, None)
    extra = ["--trust-remote-code", "--seq-len", "128", "--num-samples", "8", "--max-shard-size", "2GB"]
    assert cli(*base, *extra, "--isometry-steps", "5").code == 0
    scoring = {
        k: v
        for k, v in calls.items()
        if k not in ("seed", "force", "progress", "max_shard_size", "isometry", "sequential", "offload_dir")
    }
    assert set(scoring) <= set(SCORING_ARGUMENTS)
    assert (calls["trust_remote_code"], calls["seq_len"], calls["num_samples"]) == (True, 128, 8)
    assert (calls["max_shard_size"], calls["isometry"]) == (2_000_000_000, (5, 0.1))


def test_apply_passes_the_shard_size(cli, monkeypatch, mlp_ckpt: Path, tmp_path: Path) -> None:
    calls = _recording(monkeypatch, "prunecli.pipelines.apply", "apply", APPLIED)
    base = ["apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "out"]
    assert cli(*base).code == 0 and calls["max_shard_size"] is None
    assert cli(*base, "--max-shard-size", "1GiB").code == 0 and calls["max_shard_size"] == 2**30


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500 * 10**6), ("2GB", 2 * 10**9), ("1GiB", 2**30), ("64 KiB", 65536), ("123", 123),
     ("1.5GB", 1_500_000_000), ("2gb", 2 * 10**9), ("10B", 10), ("1TB", 10**12)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert byte_size(text, "--max-shard-size") == size


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("5XB", "--max-shard-size '5XB' is not a size. write it like 500MB, 2GB, 1GiB or a number of bytes."),
        (
            "-1GB",
            "--max-shard-size '-1GB' is not a size. write it like 500MB, 2GB, 1GiB or a number of bytes.",
        ),
        ("GB", "--max-shard-size 'GB' is not a size. write it like 500MB, 2GB, 1GiB or a number of bytes."),
        ("1e9", "--max-shard-size '1e9' is not a size. write it like 500MB, 2GB, 1GiB or a number of bytes."),
        ("0", "--max-shard-size '0' is less than one byte. give e.g. 2GB."),
        ("0.5B", "--max-shard-size '0.5B' is less than one byte. give e.g. 2GB."),
    ],
)
def test_a_bad_shard_size_is_one_line_and_exit_2(
    cli, mlp_ckpt: Path, tmp_path: Path, text: str, line: str
) -> None:
    for command, extra in (("apply", ["-m", "magnitude"]), ("prune", ["-m", "magnitude"])):
        r = cli(command, mlp_ckpt, *extra, "-s", "0.5", "--max-shard-size", text, "-o", tmp_path / "out")
        assert (r.code, r.out, r.err) == (2, "", f"error: {line}\n"), command
        assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError):
        byte_size(text, "--max-shard-size")


@pytest.mark.parametrize("name", ["--seq-len", "--num-samples"])
def test_token_counts_below_one_are_refused(cli, mlp_ckpt: Path, tmp_path: Path, name: str) -> None:
    r = cli("score", mlp_ckpt, "-m", "snip", name, "0", "-o", tmp_path / "s.safetensors")
    assert (r.code, r.out) == (2, "")
    # the parser words the range; the line starts and ends as every usage error does
    assert re.fullmatch(
        rf"error: Invalid value for '{name}': [^\n]*1 \(see 'prunecli score --help'\)\n", r.err
    )


def test_help_of_the_new_options(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    said = {  # option -> how its help line ends (the panel's border aside)
        "--arch": "or hf:DIR (a Hugging Face config folder; default for a checkpoint folder with "
        "config.json).",
        "--trust-remote-code": "Let a Hugging Face model folder run the Python code it ships (auto_map): "
        "only for folders you trust.",
        "--batch-size": "Examples per calibration batch (default: 128, or 8 for token data).",
        "--seq-len": "Token windows cut from text: N tokens (default 2048, capped at the model's maximum).",
        "--num-samples": "Token windows or rows drawn from token data (default 128).",
        "--max-shard-size": "Split the weights into files of at most SIZE (500MB, 2GB, 1GiB or bytes), with "
        "an index (default: shard like the input).",
    }
    for command, names in (
        ("score", ["--arch", "--trust-remote-code", "--batch-size", "--seq-len", "--num-samples"]),
        ("prune", list(said)),
        ("apply", ["--max-shard-size"]),
    ):
        rows = help_rows(cli, monkeypatch, command)
        for name in names:
            assert rows[name].rstrip(" │").endswith(said[name]), (command, rows[name])
    assert "--max-shard-size" not in help_rows(cli, monkeypatch, "score")  # score writes no weights


def test_prune_with_isometry_writes_what_apply_writes(cli, tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    assert cli("init", "--arch", "mlp", "-o", init, "-q").code == 0
    common = ["-s", "0.9", "--isometry-steps", "3", "--isometry-lr", "0.05", "--json", "-q"]
    pruned = cli("prune", init, "-m", "magnitude", *common, "-o", tmp_path / "p")
    applied = cli("apply", init, "-m", "magnitude", *common, "-o", tmp_path / "a")
    assert (pruned.code, applied.code) == (0, 0), pruned.err
    assert json.loads(pruned.out)["isometry"] == json.loads(applied.out)["isometry"]
    model = "model.safetensors"
    assert (tmp_path / "p" / model).read_bytes() == (tmp_path / "a" / model).read_bytes()
