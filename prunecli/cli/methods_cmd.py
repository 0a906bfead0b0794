"""`prunecli methods`: the registered methods, their data needs and papers."""

from __future__ import annotations

from rich.table import Table

from prunecli.cli import options as opt
from prunecli.cli.output import emit_json, flags, stderr_console


def methods(json_out: opt.Json = False) -> None:
    """List the scoring methods (higher score = keep for every one of them).

    Example:

      prunecli methods --json
    """
    from prunecli.scoring import all_methods

    rows = [  # the library names parameters in backticks; here they are flags
        {"name": m.name, "summary": flags(m.summary), "needs": flags(m.needs), "paper": m.paper}
        for m in all_methods()
    ]
    if json_out:
        emit_json(rows)
        return
    table = Table(title="scoring methods (higher score = keep)", title_justify="left")
    for header in ("method", "what it scores", "needs", "paper"):
        table.add_column(header)
    for row in rows:
        table.add_row(row["name"], row["summary"], row["needs"], row["paper"])
    stderr_console().print(table)
