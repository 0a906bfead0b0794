"""Library side of `init`: build, initialise and save a zoo model."""

from __future__ import annotations

from pathlib import Path

from prunecli import __version__


def init_checkpoint(arch: str, out: Path, *, scheme: str = "kaiming-normal", seed: int = 0,
                    force: bool = False) -> int:  # fmt: skip
    """Write the seeded initial weights of zoo model `arch` to `out`; returns the parameter count.

    Example:
        >>> init_checkpoint("lenet-300-100", Path("init.safetensors"), seed=0)
        266610
    """
    from prunecli.checkpoints import save_state_dict
    from prunecli.models.init import initialize
    from prunecli.models.zoo import build_model, input_shape

    model = initialize(build_model(arch), scheme, seed)
    metadata = {
        "format": "prunecli.init",
        "arch": arch,
        "init": scheme,
        "seed": str(seed),
        "input_shape": "x".join(str(d) for d in input_shape(arch)),
        "prunecli_version": __version__,
    }
    save_state_dict(model.state_dict(), out, metadata, force=force)
    return sum(p.numel() for p in model.parameters())
