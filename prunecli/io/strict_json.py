"""Strict JSON: what `json.loads` accepts but a safe reader must refuse (repeated keys, lone
surrogates, NaN and Infinity), for safetensors headers and sharded indexes."""

from __future__ import annotations

import json


class StrictJSONError(ValueError):
    """JSON that `json.loads` accepts but a strict reader refuses: a repeated key, a lone
    surrogate, NaN or Infinity."""


def show(value: object, limit: int = 60) -> str:
    """A short one-line rendering of a header value or name (escapes shown), for error messages."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Checked(dict):
    """A parsed JSON object; `problem` says what is wrong in it or anywhere inside it."""

    problem: str | None = None


def is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\\ud800" escape
        return False
    return True


def _problem_in(value: object) -> str | None:
    if isinstance(value, _Checked):
        return value.problem
    if isinstance(value, str) and not is_text(value):
        return f"the string {show(value)} is not Unicode text (a lone surrogate)"
    if isinstance(value, list):
        return next((p for p in map(_problem_in, value) if p), None)
    return None


def _strict_object(pairs: list[tuple[str, object]]) -> _Checked:
    """`object_pairs_hook`: note a key that appears twice, and text that is not valid Unicode.

    The note travels up to the enclosing objects, so the message can say where it is.
    """
    obj = _Checked()
    for key, value in pairs:
        if obj.problem is None:
            if key in obj:
                obj.problem = f"the key {show(key)} appears twice"
            elif not is_text(key):
                obj.problem = f"the key {show(key)} is not Unicode text (a lone surrogate)"
            elif inner := _problem_in(value):
                obj.problem = f"{inner} inside {show(key)}"
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> object:
    raise StrictJSONError(f"{name} is not a JSON value")


def loads_strict_json(text: str) -> object:
    """`json.loads` that refuses what a strict JSON reader refuses, instead of silently accepting it.

    A key repeated in one object (json.loads keeps the last), NaN/Infinity, a string holding a
    lone surrogate (not Unicode text, so it cannot be printed or written as UTF-8), numbers of
    more than 4300 digits and nesting deeper than the recursion limit all raise ValueError; its
    message quotes at most a short key or string of the text, never the text around it.
    """
    try:
        value = json.loads(text, object_pairs_hook=_strict_object, parse_constant=_refuse_constant)
        problem = _problem_in(value)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError:  # int(...) of a number with more digits than Python converts
        raise ValueError("it holds a number with too many digits") from None
    except RecursionError:
        raise ValueError("it nests arrays or objects too deeply") from None
    if problem:
        raise StrictJSONError(problem)
    return value
