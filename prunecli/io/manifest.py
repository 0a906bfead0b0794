"""The JSON mask manifest: its schema, building, writing and validated reading.

Imports no torch. The manifest has no timestamps, so the same inputs give the same bytes.
A reader refuses a newer `schema_version` with a clear message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prunecli.errors import ManifestError

FORMAT = "prunecli.manifest"
MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"
MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 2  # 2: `weights_updated` (SparseGPT); version 1 is read as weights_updated false

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "dtype", "numel", "kept", "density", "pruned"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "dtype": {"type": "string"},
        "numel": {"type": "integer", "minimum": 0},
        "kept": {"type": "integer", "minimum": 0},
        "density": {"type": "number", "minimum": 0, "maximum": 1},
        "pruned": {"type": "boolean"},
        "groups": {
            "type": "object",
            "required": ["kept", "total"],
            "properties": {
                "kept": {"type": "integer", "minimum": 0},
                "total": {"type": "integer", "minimum": 0},
            },
        },
    },
}
_MASK_SET = {  # a mask set this manifest's masks came from (`lineage.masks`)
    "type": "object",
    "required": ["path", "sha256"],
    "properties": {
        "path": {"type": "string"},
        "sha256": {"type": "string"},
        "method": {"type": ["object", "null"]},
    },
}
_LINEAGE = {  # optional: apply --masks, intersect, lottery rounds
    "type": "object",
    "required": ["kind", "masks"],
    "properties": {
        "kind": {"enum": ["apply", "intersect", "union", "lottery"]},
        "masks": {"type": "array", "items": _MASK_SET},
        "round": {"type": "integer", "minimum": 0},
        "trained": {"type": ["object", "null"]},
    },
}
_WARNING = {
    "type": "object",
    "required": ["kind", "message"],
    "properties": {
        "kind": {"type": "string"},
        "tensor": {"type": ["string", "null"]},
        "message": {"type": "string"},
    },
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "prunecli mask manifest",
    "type": "object",
    "required": [
        "format", "schema_version", "tool", "source", "method",
        "selection", "totals", "tensors", "warnings", "files",
    ],
    "properties": {
        "format": {"const": FORMAT},
        "schema_version": {"type": "integer", "minimum": 1},
        "tool": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        },
        "source": {
            "type": "object",
            "required": ["path", "sha256"],
            "properties": {
                "path": {"type": "string"},
                "sha256": {"type": "string"},
                "arch": {"type": ["string", "null"]},
            },
        },
        "method": {
            "type": "object",
            "required": ["name", "params", "seed"],
            "properties": {
                "name": {"type": "string"},
                "params": {"type": "object"},
                "seed": {"type": "integer"},
                "scores": {"type": ["object", "null"]},
                "data_fingerprint": {"type": ["string", "null"]},
            },
        },
        "selection": {
            "type": "object",
            "required": ["sparsity", "density", "scope", "allocation"],
            "properties": {
                "sparsity": {"type": "number", "minimum": 0, "maximum": 1},
                "density": {"type": "number", "minimum": 0, "maximum": 1},
                "scope": {"enum": ["global", "layer", "row"]},
                "allocation": {"enum": ["uniform", "erk"]},
                "min_density": {"type": "number", "minimum": 0, "maximum": 1},
                "pattern": {"type": ["string", "null"]},
                "structure": {"enum": ["filter", "channel", None]},
                "aggregate": {"enum": ["l1", "l2", "mean", "max", None]},
                "shuffle": {"type": "boolean"},
                "invert": {"type": "boolean"},
                "include": {"type": "array", "items": {"type": "string"}},
                "exclude": {"type": "array", "items": {"type": "string"}},
            },
        },
        "totals": {
            "type": "object",
            "required": ["prunable", "kept", "sparsity"],
            "properties": {
                "params": {"type": "integer", "minimum": 0},
                "prunable": {"type": "integer", "minimum": 0},
                "kept": {"type": "integer", "minimum": 0},
                "sparsity": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "tensors": {"type": "array", "items": _TENSOR},
        "warnings": {"type": "array", "items": _WARNING},
        "weights_updated": {"type": "boolean"},
        "lineage": _LINEAGE,
        "isometry": {
            "type": "object",
            "required": ["steps", "lr", "penalty_before", "penalty_after", "layers"],
        },
        "files": {
            "type": "object",
            "required": ["model", "masks"],
            "properties": {
                "model": {"type": ["string", "null"]}, "masks": {"type": "string"},
                "shards": {"type": "array", "items": {"type": "string"}},
                "copied": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}  # fmt: skip

_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool,
    "integer": int, "number": (int, float), "null": type(None),
}  # fmt: skip


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else expected
    for name in names:
        if name in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, _TYPES[name]):
            return True
    return False


def schema_errors(value: Any, schema: dict[str, Any] = SCHEMA, where: str = "$") -> list[str]:
    """Violations of the subset of JSON Schema that SCHEMA uses (an empty list if valid)."""
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        return [f"{where} must be {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where} must be one of {schema['enum']}"]
    if "type" in schema and not _type_ok(value, schema["type"]):
        return [f"{where} must be of type {schema['type']}"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where} must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where} must be <= {schema['maximum']}")
    if isinstance(value, dict):
        errors += [f"{where}.{key} is missing" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def tensor_record(
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    kept: int,
    pruned: bool,
    groups: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One entry of a manifest's (and of `inspect`'s) `tensors`: what a tensor keeps."""
    numel = math.prod(shape)
    record: dict[str, Any] = {
        "name": name,
        "shape": list(shape),
        "dtype": dtype,
        "numel": numel,
        "kept": kept,
        "density": kept / numel if numel else 1.0,
        "pruned": pruned,
    }
    if groups is not None:
        record["groups"] = {"kept": groups[0], "total": groups[1]}
    return record


def dumps(manifest: dict[str, Any]) -> str:
    """Canonical text: indented, keys in insertion order, newline at the end."""
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Write atomically (temporary file in the same folder, then rename)."""
    from prunecli.io.outputs import write_bytes

    write_bytes(path, dumps(manifest).encode("utf-8"))


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and validate a manifest; refuse a newer schema version."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"{path} is not valid JSON ({exc})", "regenerate it with prunecli apply"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a prunecli manifest", "pass a manifest.json written by apply")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} uses manifest schema {version}, newer than this prunecli reads ({SCHEMA_VERSION})",
            "upgrade prunecli",
        )
    problems = schema_errors(data)
    if problems:
        raise ManifestError(f"{path} is malformed: {problems[0]}", "regenerate it with prunecli apply")
    data.setdefault("weights_updated", False)  # schema 1: the kept weights were never changed
    return data
