"""Architecture specs: the built-in zoo of the papers' networks (imports torch)."""

from prunecli.models.zoo import ZOO, build_model

__all__ = ["ZOO", "build_model"]
