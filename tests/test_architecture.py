"""The package layout holds: imports go one way (docs/architecture.md), modules stay small, and
the public API of `prunecli/__init__.py` is unchanged."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prunecli"
DOC = ROOT / "docs" / "architecture.md"

_BASE = {"errors", "progress"}
_BELOW_PIPELINES = {
    "apply",
    "scoring",
    "selection",
    "calibration",
    "models",
    "training",
    "io",
    "distributed",
} | _BASE

# Part of the package (a folder, or a top-level module without `.py`) -> the parts it may import.
# A part may always import itself. This mirrors the table in docs/architecture.md (checked below).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "progress": set(),
    "distributed": {"errors"},
    "io": set(_BASE),
    "models": {"io"} | _BASE,
    "selection": {"io"} | _BASE,
    "training": {"io"} | _BASE,
    "calibration": {"models", "io", "distributed"} | _BASE,
    "scoring": {"calibration", "selection", "models", "io", "distributed"} | _BASE,
    "apply": {"selection", "scoring", "training", "io"} | _BASE,
    "analysis": set(_BELOW_PIPELINES),
    "export": set(_BELOW_PIPELINES),
    "pipelines": {"analysis", "export"} | _BELOW_PIPELINES,
    "cli": {"pipelines", "analysis", "export"} | _BELOW_PIPELINES,
    "__init__": {"training"},
    "__main__": {"cli"},
}

# Imports that break the table today, allowed one by one as (file, imported module) so that any
# NEW violation, even between the same two folders, still fails. Remove an entry once it is fixed.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()

# Names any module may import from the root package: it loads nothing at import time.
ROOT_NAMES_ANYONE_MAY_IMPORT = {"__version__"}

HARD_LINE_LIMIT = 500  # the aim is about 400 lines a module; past 500 the test fails

PUBLIC_API = ["__version__", "attach_masks", "detach_masks", "is_masked", "load_masks", "read_masks"]


def modules(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def part_of_file(path: Path, package: Path) -> str:
    """`prunecli/io/manifest.py` -> `io`; `prunecli/errors.py` -> `errors`."""
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of_module(name: str) -> str:
    """`prunecli.io.manifest` -> `io`; `prunecli` itself -> `__init__`."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] else "__init__"


def resolve_relative(node: ast.ImportFrom, path: Path, package: Path) -> str:
    here = module_name(path, package).split(".")
    if path.name != "__init__.py":
        here.pop()  # the package that holds this module
    base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
    return ".".join([*base, node.module] if node.module else base)


def _literal_prefix(arg: ast.expr) -> str | None:
    """The fixed text of `"a.b"` or the text before the first `{}` of `f"a.{b}"`."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return None


def imported(path: Path, package: Path) -> list[tuple[int, str, str]]:
    """Every `prunecli` import in a file, anywhere in it: (line, module, part it lands in)."""
    top = package.name
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = resolve_relative(node, path, package) if node.level else (node.module or "")
            if name == top:  # `from prunecli import x`: a submodule, or a name of the root
                for alias in node.names:
                    is_sub = (package / alias.name).is_dir() or (package / f"{alias.name}.py").is_file()
                    if is_sub:
                        found.append((node.lineno, f"{top}.{alias.name}"))
                    elif alias.name not in ROOT_NAMES_ANYONE_MAY_IMPORT:
                        found.append((node.lineno, top))
            else:
                found.append((node.lineno, name))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in {"import_module", "__import__"}:
                prefix = _literal_prefix(node.args[0])
                if prefix is not None:
                    found.append((node.lineno, prefix.rstrip(".")))
    return [
        (line, name, part_of_module(name))
        for line, name in found
        if name == top or name.startswith(top + ".")
    ]


def violations(package: Path, allowed: dict[str, set[str]], known: set[tuple[str, str]]) -> list[str]:
    bad = []
    for path in modules(package):
        src = part_of_file(path, package)
        rel = path.relative_to(package.parent).as_posix()
        for line, name, dst in imported(path, package):
            if dst == src or dst in allowed.get(src, set()) or (rel, name) in known:
                continue
            bad.append(f"{rel}:{line}: {src} imports {name} ({dst} is not allowed for {src})")
    return bad


def doc_table(text: str) -> dict[str, set[str]]:
    """The 'Folders and what they may import' table of docs/architecture.md, as ALLOWED."""
    section = text.split("## Folders and what they may import", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue

        def part(token: str) -> str:
            return token.rstrip("/").removesuffix(".py")

        folder = part(re.findall(r"`([^`]+)`", cells[0])[0])
        table[folder] = {part(t) for t in re.findall(r"`([^`]+)`", cells[2])}
    return table


def test_every_import_follows_the_layering() -> None:
    assert violations(PACKAGE, ALLOWED, KNOWN_EXCEPTIONS) == []


def test_every_part_of_the_package_is_in_the_table() -> None:
    parts = {part_of_file(p, PACKAGE) for p in modules(PACKAGE)}
    assert parts == set(ALLOWED), "add the new folder to ALLOWED here and to docs/architecture.md"


def test_doc_table_matches_the_test() -> None:
    assert doc_table(DOC.read_text()) == ALLOWED


def test_known_exceptions_are_still_needed_and_documented() -> None:
    text = DOC.read_text()
    for rel, name in sorted(KNOWN_EXCEPTIONS):
        names = [n for _, n, _ in imported(ROOT / rel, PACKAGE)] if (ROOT / rel).exists() else []
        assert name in names, f"{rel} no longer imports {name}: remove it from KNOWN_EXCEPTIONS"
        assert f"`{rel}` imports `{name}`" in text, f"list {rel} -> {name} in docs/architecture.md"


def test_checker_catches_a_new_lazy_violation(tmp_path: Path) -> None:
    pkg = tmp_path / "prunecli"
    (pkg / "io").mkdir(parents=True)
    (pkg / "cli").mkdir()
    for init in (pkg / "__init__.py", pkg / "io" / "__init__.py", pkg / "cli" / "__init__.py"):
        init.write_text("")
    (pkg / "cli" / "app.py").write_text("app = None\n")
    (pkg / "io" / "manifest.py").write_text(
        "from prunecli import __version__\n\n\ndef f():\n    from prunecli.cli import app\n\n"
        "    from ..cli import app as again\n\n    return app, again\n"
    )
    assert violations(pkg, ALLOWED, KNOWN_EXCEPTIONS) == [
        "prunecli/io/manifest.py:5: io imports prunecli.cli (cli is not allowed for io)",
        "prunecli/io/manifest.py:7: io imports prunecli.cli (cli is not allowed for io)",
    ]


@pytest.mark.parametrize("path", modules(PACKAGE), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_is_too_long(path: Path) -> None:
    # The aim is about 400 lines; 500 is the hard limit. Split a module by job before then.
    assert len(path.read_text().splitlines()) <= HARD_LINE_LIMIT


def test_public_api_is_unchanged() -> None:
    import prunecli

    assert prunecli.__all__ == PUBLIC_API
    assert isinstance(prunecli.__version__, str)
    for name in PUBLIC_API[1:]:
        assert callable(getattr(prunecli, name)), name
