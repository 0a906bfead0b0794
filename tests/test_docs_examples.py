"""The Python examples in the docs run against the current code, and the API tables are true.

Every ```python block of README.md and docs/*.md runs in a fresh temporary folder that holds the
inputs its page prepares with `prunecli` commands (the MNIST digits that ship with prunecli stand
in for `mnist.npz` and `train.npz`). A page's blocks run in order in one namespace, as a reader
would paste them. A block whose first line is `# doc-test: skip (REASON)` is not run; such
skips are listed in SKIPPED_BLOCKS, so a new one cannot slip in unnoticed. Where the inputs are
the ones the text uses, PROMISES checks what the text says of the result: the printed output
equals the ```text block after the example, a file has the same bytes as the CLI's, the
page's next command succeeds on what the example wrote.

The API tables of the guide's "Python API" section are checked too: every name in their first
column imports, and its documented parameters match the real signature.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from prunecli.cli.app import run
from prunecli.pipelines.demo import demo_data_path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKER = re.compile(r"#\s*doc-test:\s*skip\s*\((?P<reason>[^)]+)\)")
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the reason given in a `# doc-test: skip (...)` first line

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse_blocks(text: str, page: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order, with its language and line."""
    blocks = []
    for m in FENCE.finditer(text):
        indent = m["indent"]  # a fence inside a list item: its lines carry the item's indent
        code = "".join(
            line[len(indent) :] if line.startswith(indent) else line.lstrip(" \t")
            for line in m["body"].splitlines(keepends=True)
        )
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        skip = SKIP_MARKER.match(first)
        line = text.count("\n", 0, m.start()) + 1
        blocks.append(Block(page, line, m["lang"], code, skip["reason"] if skip else None))
    return blocks


def fenced_blocks(path: Path) -> list[Block]:
    return parse_blocks(path.read_text(), path.relative_to(ROOT).as_posix())


def python_blocks(path: Path) -> list[Block]:
    return [b for b in fenced_blocks(path) if b.lang == "python"]


def documented_output(path: Path, block: Block) -> str:
    """The ```text block that follows `block` (only prose may come between them)."""
    blocks = fenced_blocks(path)
    after = blocks[blocks.index(block) + 1]
    assert after.lang == "text", f"{block.where}: no ```text block after it"
    return after.code


# ---- inputs each page's examples expect, made with the page's own commands ----


def prunecli(command: str) -> None:
    """Run one `prunecli ...` line in-process; it must succeed."""
    code = run(shlex.split(command))
    assert code == 0, f"prunecli {command} exited {code}"


def digits(name: str) -> None:
    """The MNIST digits that ship with prunecli, as the page's data file."""
    shutil.copy(demo_data_path(), name)


def setup_compare() -> None:
    digits("train.npz")  # the page uses 22,699 digits: its numbers differ with these 2,000
    prunecli("init --arch lenet-300-100 -o init.safetensors -q")
    snip = "-m snip --arch lenet-300-100 --data train.npz --batch-size 100"
    prunecli(f"prune init.safetensors {snip} -s 0.95 -o snip/ -q")
    prunecli("prune init.safetensors -m synflow --arch lenet-300-100 -s 0.95 -o synflow/ -q")


def setup_data() -> None:
    digits("mnist.npz")


def setup_export() -> None:
    prunecli("init --arch lenet-5 --seed 0 -o init.safetensors -q")
    prunecli("apply init.safetensors --method magnitude --sparsity 0.9 -o out/ -q")
    prunecli("export out/ --arch lenet-5 -o lenet5.onnx --verify -q")


def setup_guide() -> None:
    digits("mnist.npz")  # the worked example copies exactly these digits
    prunecli("init --arch lenet-300-100 --seed 0 -o init.safetensors -q")
    # the quickstart
    prunecli("score init.safetensors --method magnitude -o scores.safetensors -q")
    prunecli("apply init.safetensors --scores scores.safetensors --sparsity 0.9 -o out/ -q")
    # the worked example
    prunecli("score init.safetensors -m snip --arch lenet-300-100 --data mnist.npz -o snip.safetensors -q")
    prunecli("apply init.safetensors --scores snip.safetensors --sparsity 0.95 -o snip-95/ -q")


def setup_huggingface() -> None:
    from tests.hf_folders import corpus, llama

    llama(Path("llama"))
    Path("corpus.txt").write_text(corpus(), encoding="utf-8")
    prunecli("prune llama/ --method wanda --data corpus.txt --sparsity 0.5 --scope row -o llama-50/ -q")
    prunecli("inspect llama-50/ --expect-sparsity 0.5 --tolerance 0.001 -q")


def setup_lottery() -> None:
    digits("mnist.npz")
    prunecli("init --arch lenet-300-100 --seed 0 -o init.safetensors -q")
    prunecli("apply init.safetensors --method magnitude --sparsity 0.2 -o round-1/ -q")  # a round to train


def setup_signal() -> None:
    digits("train.npz")  # the page uses 22,699 digits: its numbers differ with these 2,000


def setup_training() -> None:
    prunecli("init --arch lenet-300-100 --seed 0 -o init.safetensors -q")
    prunecli("apply init.safetensors --method magnitude --sparsity 0.9 -o out/ -q")


SETUPS: dict[str, Callable[[], None]] = {
    "docs/compare.md": setup_compare,
    "docs/data.md": setup_data,
    "docs/export.md": setup_export,
    "docs/guide.md": setup_guide,
    "docs/huggingface.md": setup_huggingface,
    "docs/lottery.md": setup_lottery,
    "docs/signal-propagation.md": setup_signal,
    "docs/training-with-masks.md": setup_training,
}


def imported_from(page: Path, name: str) -> list[str]:
    """The modules that the page's Python examples import `name` from."""
    modules = []
    for block in python_blocks(page):
        for node in ast.walk(ast.parse(block.code)):
            if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
                modules.append(node.module)
    return modules


def fewer_isometry_steps(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """signal-propagation.md runs 2,000 steps of approximate isometry: over a minute on two
    cores. The example runs as written, but each call does at most 20 steps.
    """
    modules = imported_from(page, "approximate_isometry")
    assert modules, f"{page.name} no longer imports approximate_isometry: drop this speed-up"
    for name in modules:
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "approximate_isometry", capped_steps(module.approximate_isometry, 20))


def capped_steps(function: Callable[..., object], most: int) -> Callable[..., object]:
    def capped(weights: object, masks: object, steps: int, *args: object, **kwargs: object) -> object:
        return function(weights, masks, min(steps, most), *args, **kwargs)

    return capped


SPEED_UPS: dict[str, Callable[[Path, pytest.MonkeyPatch], None]] = {
    "docs/signal-propagation.md": fewer_isometry_steps,
}

# Pages whose example is a script run with arguments: its `sys.argv` (lottery fills in a round's).
ARGV: dict[str, list[str]] = {
    "docs/lottery.md": [
        "train.py",
        "round-1/model.safetensors",
        "round-1/manifest.json",
        "trained.safetensors",
    ],
}

# Blocks not run, by "page:line" -> reason. Keep this short: each is a doc example nobody checks.
SKIPPED_BLOCKS: dict[str, str] = {}


Promise = Callable[[Block, str], None]  # gets the block and what it printed, in its folder


def last_line(expected: str) -> Promise:
    def check(block: Block, out: str) -> None:
        assert out.splitlines()[-1] == expected

    return check


def first_line(expected: str) -> Promise:
    def check(block: Block, out: str) -> None:
        assert out.splitlines()[0] == expected

    return check


def same_as_text_block(block: Block, out: str) -> None:
    assert out == documented_output(ROOT / block.page, block), f"{block.where}: not the documented output"


def then(command: str) -> Promise:
    """The page's next command, which uses what the example made, succeeds."""

    def check(block: Block, out: str) -> None:
        prunecli(command)

    return check


def saved_as(name: str) -> Promise:
    """The example is a file's contents ("With `mynet.py`: ..."): save it for the next commands."""

    def check(block: Block, out: str) -> None:
        Path(name).write_text(block.code)

    return check


def same_bytes(a: str, b: str) -> Promise:
    def check(block: Block, out: str) -> None:
        assert Path(a).read_bytes() == Path(b).read_bytes(), f"{a} differs from {b}"

    return check


def same_scores(a: str, b: str) -> Promise:
    def check(block: Block, out: str) -> None:
        from safetensors.numpy import load_file

        x, y = load_file(a), load_file(b)
        assert list(x) == list(y)
        for name in x:
            assert (x[name] == y[name]).all(), f"{a} and {b} differ in {name}"

    return check


# What each example's text promises, where this test's inputs are the ones the text uses; by
# page and the block's index among the page's python blocks.
PROMISES: dict[tuple[str, int], list[Promise]] = {
    ("docs/compare.md", 0): [last_line("0.4")],  # the first line depends on the 22,699 digits
    ("docs/data.md", 1): [first_line("True")],
    ("docs/export.md", 0): [same_as_text_block],
    ("docs/export.md", 1): [same_as_text_block],
    ("docs/guide.md", 0): [
        saved_as("mynet.py"),
        then("""init --arch mynet.py:make_net --arch-args '{"width": 128}' -o mynet.safetensors -q"""),
    ],
    # "This gives the same scores as `--arch lenet-300-100`"
    ("docs/guide.md", 1): [
        then("score init.safetensors -m snip --arch lenet.pt2 --data mnist.npz -o snip-pt2.safetensors -q"),
        same_scores("snip-pt2.safetensors", "snip.safetensors"),
    ],
    # "The last line of `python train.py` is ...", and inspect then passes
    ("docs/guide.md", 3): [
        last_line("True {'fc1.weight': 7967, 'fc2.weight': 4792, 'fc3.weight': 551}"),
        then("inspect trained.safetensors --expect-sparsity 0.95 -q"),
    ],
    ("docs/guide.md", 4): [same_bytes("api-snip.safetensors", "snip.safetensors")],  # "the same bytes"
    ("docs/guide.md", 6): [same_as_text_block],
    ("docs/huggingface.md", 0): [same_as_text_block],
    ("docs/training-with-masks.md", 0): [then("inspect trained.safetensors --expect-sparsity 0.9 -q")],
    # the script trains a round with its masks; lottery runs it (with this Python) for the page's rounds
    ("docs/lottery.md", 0): [
        saved_as("train.py"),
        then("inspect trained.safetensors --expect-sparsity 0.2 -q"),
        then(
            f"lottery init.safetensors --train '{sys.executable} train.py {{weights}} {{masks}} {{out}}' "
            "--rounds 3 -o imp/ -q"
        ),
        then(f"inspect imp/round-3/ --expect-sparsity {1 - 136_294 / 266_200} --tolerance 0 -q"),
    ],
}

PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def test_blocks_are_found() -> None:
    """Guard the parser: these pages have Python examples, and each one's inputs are prepared.

    A page that gains or loses a block changes this count: check SETUPS, and PROMISES, whose
    keys are the blocks' positions on their page.
    """
    found = {p.relative_to(ROOT).as_posix(): len(python_blocks(p)) for p in PAGES_WITH_CODE}
    assert found == {
        "docs/compare.md": 1,
        "docs/data.md": 2,
        "docs/export.md": 2,
        "docs/guide.md": 7,
        "docs/huggingface.md": 1,
        "docs/lottery.md": 1,
        "docs/signal-propagation.md": 1,
        "docs/training-with-masks.md": 1,
    }
    assert set(SETUPS) == set(found)
    assert {page for page, _ in PROMISES} <= set(found)


def test_skip_markers_are_listed() -> None:
    skipped = {b.where: b.skip for p in PAGES for b in python_blocks(p) if b.skip}
    assert skipped == SKIPPED_BLOCKS


def test_blocks_are_parsed() -> None:
    text = (
        "# Page\n\n```sh\nprunecli init\n```\n\n"
        "```python\n# doc-test: skip (needs CUDA)\nimport torch\n```\n\n"
        "1. A list item:\n\n   ```python\n   x = 1\n\n   if x:\n       y = 2\n   ```\n"
    )
    assert parse_blocks(text, "page.md") == [
        Block("page.md", 3, "sh", "prunecli init\n", None),
        Block("page.md", 7, "python", "# doc-test: skip (needs CUDA)\nimport torch\n", "needs CUDA"),
        Block("page.md", 14, "python", "x = 1\n\nif x:\n    y = 2\n", None),
    ]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = page.relative_to(ROOT).as_posix()
    monkeypatch.chdir(tmp_path)
    SETUPS[name]()
    if name in SPEED_UPS:
        SPEED_UPS[name](page, monkeypatch)
    if name in ARGV:
        monkeypatch.setattr(sys, "argv", ARGV[name])
    capsys.readouterr()
    namespace: dict[str, object] = {"__name__": "__main__"}
    for index, block in enumerate(python_blocks(page)):
        if block.skip:
            continue
        # padded so that a traceback names the line of the doc itself
        code = compile("\n" * block.line + block.code, str(page), "exec")
        exec(code, namespace)
        out = capsys.readouterr().out
        for promise in PROMISES.get((name, index), []):
            promise(block, out)


# ---- the Python API tables of docs/guide.md ----

CALL = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)\((?P<args>.*)\)$")


@dataclass(frozen=True)
class Documented:
    row: int  # line in docs/guide.md
    text: str  # the backticked call as written
    name: str  # dotted, with the module of the row's first name filled in
    args: str


def api_entries() -> list[Documented]:
    """Every `name(args)` in the first column of the guide's "Python API" tables.

    A second name in a cell without a module (`save_state_dict(...)` after
    `prunecli.io.checkpoints.load_state_dict(...)`) lives in the first one's module.
    """
    text = (ROOT / "docs" / "guide.md").read_text()
    start = text.index("\n## Python API\n")
    end = text.find("\n## ", start + 1)
    entries = []
    for offset, line in enumerate(text[start:end].splitlines()):
        if not line.startswith("| `"):
            continue
        cell = line.split(" | ")[0]
        module = None
        for span in re.findall(r"`([^`]+)`", cell):
            m = CALL.match(span)
            assert m, f"guide.md: {span!r} in the API table is not written as name(args)"
            name = m["name"]
            if "." not in name:
                assert module, f"guide.md: {span!r} has no module to live in"
                name = f"{module}.{name}"
            module = name.rsplit(".", 1)[0]
            entries.append(Documented(text.count("\n", 0, start) + offset + 2, span, name, m["args"]))
    return entries


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def real_default(obj: object, param: inspect.Parameter) -> object:
    """The default a call gets, with a dataclass field's default_factory called."""
    if dataclasses.is_dataclass(obj):
        field = {f.name: f for f in dataclasses.fields(obj)}.get(param.name)
        if field is not None and field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
    return param.default


NESTED = re.compile(r"(?P<name>[A-Za-z_]\w*)\((?P<args>[^()]*)\)")


def documented_parameters(args: str) -> list[tuple[str, object, inspect._ParameterKind]]:
    """(name, default or `inspect.Parameter.empty`, kind) of `name(ARGS)` as the doc writes it."""
    tree = ast.parse(f"def f({args}): pass").body[0]
    assert isinstance(tree, ast.FunctionDef)
    a = tree.args
    P = inspect.Parameter
    positional = [(arg.arg, P.POSITIONAL_OR_KEYWORD) for arg in a.args]
    defaults = [P.empty] * (len(a.args) - len(a.defaults)) + [ast.literal_eval(d) for d in a.defaults]
    out = [(name, default, kind) for (name, kind), default in zip(positional, defaults, strict=True)]
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append((arg.arg, P.empty if default is None else ast.literal_eval(default), P.KEYWORD_ONLY))
    if a.vararg:
        out.append((a.vararg.arg, P.empty, P.VAR_POSITIONAL))
    if a.kwarg:
        out.append((a.kwarg.arg, P.empty, P.VAR_KEYWORD))
    return out


def signature_problems(entry: Documented, obj: object) -> list[str]:
    """How the documented parameters differ from the real signature (empty when they agree).

    A parameter shown without a default and before any `*` is passed by position: it stands for
    the real parameter at its place, whatever its name, and that one must take a position.
    Every other documented parameter is a real one of that name, in the real order, with the
    documented default (where one is shown), and keyword-only when it follows a `*` and only
    then. Every real parameter without a default is documented; trailing ones with defaults may
    go unmentioned. An argument written as a call (`Expectations(...)`) is checked in turn.
    """
    P = inspect.Parameter
    problems: list[str] = []
    args = entry.args
    for n, m in enumerate(NESTED.finditer(entry.args)):
        inner = Documented(entry.row, m[0], f"{entry.name.rsplit('.', 1)[0]}.{m['name']}", m["args"])
        problems += [f"{inner.text}: {p}" for p in signature_problems(inner, resolve(inner.name))]
        args = args.replace(m[0], f"arg{n}", 1)
    params = list(inspect.signature(obj).parameters.values())
    real = {p.name: p for p in params}
    covered: set[str] = set()
    position = -1
    for index, (name, default, kind) in enumerate(documented_parameters(args)):
        if kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            if not any(p.kind is kind for p in params):
                problems.append(f"takes no {'**' if kind is P.VAR_KEYWORD else '*'}{name}")
            continue
        if kind is P.POSITIONAL_OR_KEYWORD and default is P.empty:  # passed by position
            if index >= len(params) or params[index].kind not in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
                problems.append(f"takes no argument {index + 1} ({name}) by position")
                continue
            param = params[index]
            if name != param.name and name in real:  # e.g. a parameter the doc left out before it
                problems.append(f"argument {index + 1} is {param.name!r}, not {name!r}")
        elif name in real:
            param = real[name]
        else:
            problems.append(f"has no parameter {name!r}")
            continue
        covered.add(param.name)
        if params.index(param) < position:
            problems.append(f"{name!r} comes earlier")
        position = params.index(param)
        if default is not P.empty and param.default is P.empty:
            problems.append(f"{name!r} has no default (the doc says {default!r})")
        elif default is not P.empty and real_default(obj, param) != default:
            problems.append(f"{name!r} defaults to {real_default(obj, param)!r} (the doc says {default!r})")
        if kind is P.POSITIONAL_OR_KEYWORD and param.kind is P.KEYWORD_ONLY:
            problems.append(f"{name!r} is keyword-only (the doc needs a `*` before it)")
        if kind is P.KEYWORD_ONLY and param.kind is not P.KEYWORD_ONLY:
            problems.append(f"{name!r} is not keyword-only")
    for param in params:
        if param.default is P.empty and param.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            if param.name not in covered:
                problems.append(f"required parameter {param.name!r} is not documented")
    return problems


def test_api_tables_are_read() -> None:
    entries = api_entries()
    assert len(entries) == 33
    names = {e.name for e in entries}
    assert "prunecli.io.checkpoints.save_state_dict" in names  # the second name of a cell
    assert "prunecli.scoring.all_methods" in names
    assert "prunecli.analysis.inspect.Expectations" not in names  # an argument, checked with check()


# Rows of the guide's API tables that do not match the code, by name -> the problems found. Fix
# the table row (docs/guide.md) and remove its entry here: the check below then must pass.
KNOWN_WRONG_ROWS: dict[str, list[str]] = {}


@pytest.mark.parametrize("entry", api_entries(), ids=lambda e: e.name)
def test_api_table_entry_matches_the_code(entry: Documented) -> None:
    obj = resolve(entry.name)  # raises when the name is gone
    assert callable(obj), entry.name
    assert signature_problems(entry, obj) == KNOWN_WRONG_ROWS.get(entry.name, []), (
        f"docs/guide.md:{entry.row}: `{entry.text}` does not match {entry.name}{inspect.signature(obj)}"
    )
