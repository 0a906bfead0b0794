"""The inspect table, rendered at a fixed width and compared whole."""

from __future__ import annotations

import io

from rich.console import Console

from prunecli.cli.inspect_cmd import render

SUMMARY = {
    "path": "out/manifest.json",
    "kind": "manifest",
    "tensors": [
        {
            "name": "fc1.weight",
            "shape": [300, 784],
            "numel": 235200,
            "kept": 7762,
            "density": 0.033,
            "pruned": True,
        },
        {"name": "fc1.bias", "shape": [300], "numel": 300, "kept": 300, "density": 1.0, "pruned": False},
        {
            "name": "fc2.weight",
            "shape": [100, 300],
            "numel": 30000,
            "kept": 0,
            "density": 0.0,
            "pruned": True,
        },
    ],
    "totals": {"params": 265500, "prunable": 265200, "kept": 7762, "sparsity": 1 - 7762 / 265200},
    "collapsed": ["fc2.weight"],
}

EXPECTED = """\
out/manifest.json (manifest)
┏━━━━━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━┳━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━━━━━┓
┃ tensor           ┃ shape   ┃  params ┃  kept ┃ density ┃              ┃
┡━━━━━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━╇━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━━━━┩
│ fc1.weight       │ 300×784 │ 235,200 │ 7,762 │  0.0330 │ ············ │
│ fc2.weight       │ 100×300 │  30,000 │     0 │  0.0000 │ ············ │
├──────────────────┼─────────┼─────────┼───────┼─────────┼──────────────┤
│ total (prunable) │         │ 265,200 │ 7,762 │  0.0293 │ ············ │
└──────────────────┴─────────┴─────────┴───────┴─────────┴──────────────┘
sparsity 0.9707 over 265,200 prunable parameters (265,500 in all)
collapsed layers (1): fc2.weight
"""


def test_golden_table() -> None:
    buffer = io.StringIO()
    render(SUMMARY, Console(file=buffer, width=100, color_system=None))
    assert "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n" == EXPECTED
