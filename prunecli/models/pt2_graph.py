"""What in a `.pt2` archive's graph could become code, refused before torch loads it.

torch turns strings of the graph JSON into Python: names go into generated source, `expr_str`
into SymPy's `eval`, guards into a compiled function, tree specs into signatures. After loading,
a graph node could also carry a callable that is not an operator. Each check here refuses those.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import torch

from prunecli.errors import CheckpointError

UNSAFE_HINT = (
    "nothing in it was run; if you made the model, re-export it with torch.export.save"
    "(torch.export.export(model, example_inputs), path), and use .pt2 files only from sources you trust"
)

PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]*\Z")  # names in the graph JSON end up in generated Python source
_FREE_TEXT = frozenset(  # strings torch keeps as data (metadata, string constants), never as code
    {"stack_trace", "nn_module_stack", "torch_fn", "source_fn_stack", "custom", "torch_version"}
    | {"as_string", "as_strings"}
)


def unsafe(path: Path, problem: str) -> CheckpointError:
    """The one error for an archive refused on safety grounds."""
    return CheckpointError(f"{path} is not a safe torch.export archive: it {problem}", UNSAFE_HINT)


def shown(text: str) -> str:
    """A string from the archive, quoted and cut short for a one-line message."""
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


def check_graph_json(data: bytes, path: Path, member: str) -> None:
    """Refuse strings that torch would turn into code: names go into generated Python source,
    `expr_str` into SymPy's `eval`, guards into a compiled function, tree specs into signatures."""
    graph = json.loads(data.decode("utf-8"))
    if bad := bad_string(graph, ""):
        raise unsafe(path, f"has {shown(bad)} in {member}, not a plain name or shape expression")


def bad_string(value: Any, key: str) -> str | None:
    """The first string under `value` that is unsafe where it sits, or None."""
    if isinstance(value, dict):
        for k, item in value.items():
            if not PLAIN_NAME.match(k):
                return k
            if (bad := bad_string(item, k)) is not None:
                return bad
        return None
    if isinstance(value, list):
        return next((bad for item in value if (bad := bad_string(item, key)) is not None), None)
    if not isinstance(value, str) or key in _FREE_TEXT or PLAIN_NAME.match(value):
        return None
    if key in ("in_spec", "out_spec"):
        return _bad_tree_spec(value)
    if key == "expr_str":
        return None if _is_sympy_literal(value) else value
    if key == "guards_code":
        return None if _is_shape_guard(value) else value
    return value


def _bad_tree_spec(text: str) -> str | None:
    """Tree specs are JSON whose `context` fields are JSON again; dict keys become source text."""
    try:
        spec = json.loads(text)
    except ValueError:
        return text
    return _bad_context(spec)


def _bad_context(value: Any) -> str | None:
    if isinstance(value, dict):
        for k, item in value.items():
            if not PLAIN_NAME.match(k):
                return k
            if k == "context" and isinstance(item, str) and not PLAIN_NAME.match(item):
                if (bad := _bad_tree_spec(item)) is not None:
                    return bad
            elif (bad := _bad_context(item)) is not None:
                return bad
        return None
    if isinstance(value, list):
        return next((bad for item in value if (bad := _bad_context(item)) is not None), None)
    return value if isinstance(value, str) and not PLAIN_NAME.match(value) else None


# Calls a serialized SymPy expression may make: SymPy's own classes as `srepr` writes them, and
# torch's shape functions (the names torch passes to sympify as locals).
_SYMPY_CALLS = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Max Min Abs floor ceiling Eq Ne Lt Le Gt Ge "
    "StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not "
    "Piecewise ExprCondPair NegativeOne One Zero Half Infinity NegativeInfinity IntInfinity "
    "NegativeIntInfinity BooleanTrue BooleanFalse true false oo "
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift "
    "PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat "
    "TruncToInt RoundToInt RoundDecimal ToFloat Identity".split()
)
_ARITHMETIC = (ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}[0-9]+\Z")  # s0, u3, zuf1: torch's symbol names
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GUARD_NAMES = frozenset({"L", "math", "torch", "max", "min", "abs", "int", "float", "True", "False"})
_GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel", "floor", "ceil", "trunc"})
_GUARD_ATTRIBUTES |= {"sqrt", "isnan", "isinf", "inf", "sym_max", "sym_min", "sym_float", "sym_int"}
_GUARD_ATTRIBUTES |= {"sym_sqrt", "sym_ite", "sym_not", "sym_sum"}


def _is_sympy_literal(text: str) -> bool:
    """True for calls of known SymPy constructors on numbers, symbol names and keyword flags."""
    tree = _parse_expression(text)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS
        elif isinstance(node, ast.Name):
            ok = node.id in _SYMPY_CALLS or bool(_SYMBOL_NAME.match(node.id))
        elif isinstance(node, ast.keyword):
            ok = node.arg is not None and node.arg.isalpha() and node.arg.islower()
        elif isinstance(node, ast.Constant):
            ok = _is_plain_constant(node.value)
        else:
            ok = isinstance(node, _ARITHMETIC)
        if not ok:
            return False
    return True


def _is_shape_guard(text: str) -> bool:
    """True for comparisons of input sizes (`L['x'].size()[0] >= 2`) and arithmetic on them."""
    tree = _parse_expression(text)
    if tree is None:
        return False
    allowed = (*_ARITHMETIC, ast.BoolOp, ast.boolop, ast.Compare, ast.cmpop, ast.Subscript, ast.Call)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            ok = node.id in _GUARD_NAMES
        elif isinstance(node, ast.Attribute):
            ok = node.attr in _GUARD_ATTRIBUTES
        elif isinstance(node, ast.Constant):
            ok = _is_plain_constant(node.value)
        else:
            ok = isinstance(node, allowed)
        if not ok:
            return False
    return True


def _parse_expression(text: str) -> ast.Expression | None:
    if not text.isprintable():  # a line break or carriage return could end a line of generated code
        return None
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return None


def _is_plain_constant(value: object) -> bool:
    """Numbers, booleans, None and identifier-like strings (sympify of such a string only names)."""
    if isinstance(value, str):
        return bool(_IDENTIFIER.match(value))
    return value is None or isinstance(value, (bool, int, float))


def check_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """Graph nodes may take operators as arguments but no other callable (`os.system` through
    `torch.os`): torch's verifier checks node targets only. String inputs go into the source of the
    guard function between quotes, so they must be plain names."""
    operators = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            value = node.meta.get("val")
            if node.op == "placeholder" and isinstance(value, str) and not PLAIN_NAME.match(value):
                raise unsafe(path, f"has the string input {shown(value)}, not a plain name")
            found: list[Any] = []
            torch.fx.node.map_aggregate((node.args, node.kwargs), found.append)
            for value in found:
                if callable(value) and not isinstance(value, operators):
                    text = shown(repr(value))
                    raise unsafe(path, f"passes {text} to the graph node {node.name}: not an operator")
