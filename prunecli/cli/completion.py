"""Shell completion of option values (`prunecli --install-completion` sets it up).

Choices declared as Enums complete by themselves; these functions complete what is known only
at run time. They run in the completion request, never on the `--help` path.
"""

from __future__ import annotations


def methods(incomplete: str) -> list[str]:
    """`--method`: the registered names that start with what was typed."""
    from prunecli.scoring import all_methods

    return [m.name for m in all_methods() if m.name.startswith(incomplete)]


def data_free_methods(incomplete: str) -> list[str]:
    """`apply --method`: the methods that score without a model."""
    from prunecli.scoring import all_methods

    return [m.name for m in all_methods() if not m.needs_model and m.name.startswith(incomplete)]
