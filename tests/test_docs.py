"""The docs stay true: every command has help with examples, the schema block is current."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from prunecli.cli.app import app
from prunecli.io.manifest import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [c.name for c in app.registered_commands]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(cli, command: str) -> None:
    r = cli(command, "--help")
    assert r.code == 0
    assert "Example" in r.out and "prunecli " + command in r.out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_in_the_guide(command: str) -> None:
    assert f"prunecli {command}" in (ROOT / "docs" / "guide.md").read_text()


def test_manifest_schema_in_docs_is_current() -> None:
    text = (ROOT / "docs" / "manifest.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    schemas = [json.loads(b) for b in blocks if '"$schema"' in b]
    assert schemas == [SCHEMA]


def test_exit_codes_are_documented() -> None:
    from prunecli.errors import EXIT_CODES

    text = (ROOT / "docs" / "exit-codes.md").read_text()
    for code in EXIT_CODES:
        assert f"`{code}`" in text or f"| {code} " in text
