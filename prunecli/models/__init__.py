"""Architecture specs: the built-in zoo, import paths and `.pt2` archives (imports torch).

Only commands that need a live model import this package; `prunecli.cli` never does at module top.
"""

from prunecli.models.specs import (
    check_weights,
    default_input_shape,
    load_weights,
    parse_arch_args,
    resolve_model,
)
from prunecli.models.zoo import ZOO, build_model, input_shape

__all__ = [
    "ZOO",
    "build_model",
    "check_weights",
    "default_input_shape",
    "input_shape",
    "load_weights",
    "parse_arch_args",
    "resolve_model",
]
