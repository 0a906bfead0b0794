"""Library side of `init`: build, initialise and save a model from its architecture spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunecli import __version__
from prunecli.errors import UsageError


def init_checkpoint(
    arch: str,
    out: Path,
    *,
    scheme: str = "kaiming-normal",
    seed: int = 0,
    force: bool = False,
    arch_args: dict[str, Any] | None = None,
) -> int:
    """Write the seeded initial weights of model `arch` to `out`; returns the parameter count.

    Example:
        >>> init_checkpoint("lenet-300-100", Path("init.safetensors"), seed=0)
        266610
    """
    from prunecli.io.checkpoints import save_state_dict
    from prunecli.io.outputs import require_suffix
    from prunecli.models import default_input_shape, resolve_model
    from prunecli.models.init import initialize

    require_suffix(out, ".safetensors", "initial weights")
    if arch.endswith(".pt2"):
        raise UsageError(
            "init builds a fresh model, but a .pt2 archive carries its own weights",
            "use a zoo name or package.module:factory, or give the .pt2 to score/prune directly",
        )
    model = initialize(resolve_model(arch, arch_args), scheme, seed)
    shape = default_input_shape(arch, arch_args)
    metadata = {
        "format": "prunecli.init",
        "arch": arch,
        "init": scheme,
        "seed": str(seed),
        "prunecli_version": __version__,
    }
    if shape:
        metadata["input_shape"] = "x".join(str(d) for d in shape)
    if arch_args:
        metadata["arch_args"] = json.dumps(arch_args, sort_keys=True)
    save_state_dict(model.state_dict(), out, metadata, force=force)
    return sum(p.numel() for p in model.parameters())
