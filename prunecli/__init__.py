"""prunecli: prune neural-network checkpoints from the command line or from Python.

The package imports nothing heavy at import time; torch is loaded only by the functions
that need a live model.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
