"""`prunecli init`: a zoo model's initial weights, seeded, as safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli import options as opt
from prunecli.cli.choices import InitScheme
from prunecli.cli.output import note


def init(
    arch: Annotated[
        str,
        typer.Option(
            "--arch",
            help="lenet-300-100, lenet-5, mlp, vgg11/16/19, resnet20/32/18/50, or module:factory.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.safetensors).")],
    arch_args: opt.ArchArgs = None,
    init_scheme: Annotated[InitScheme, typer.Option("--init", help="Initialisation scheme.")] = (
        InitScheme.KAIMING_NORMAL
    ),
    seed: opt.Seed = opt.DEFAULT_SEED,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
) -> None:
    """Build a zoo model, initialise it with a named scheme, and save its weights.

    The scheme, seed and architecture are recorded in the file's metadata.

    Examples:

      prunecli init --arch lenet-300-100 --seed 0 -o init.safetensors

      prunecli init --arch resnet20 --init orthogonal -o resnet20.safetensors

      prunecli init --arch vgg19 --arch-args '{"num_classes": 100}' -o vgg19-c100.safetensors
    """
    from prunecli.io.outputs import guard_output_file, require_suffix
    from prunecli.models import parse_arch_args
    from prunecli.models.initialize import init_checkpoint

    require_suffix(output, ".safetensors", "initial weights")
    guard_output_file(output, force)
    scheme = init_scheme.value
    count = init_checkpoint(
        arch, output, scheme=scheme, seed=seed, force=force, arch_args=parse_arch_args(arch_args)
    )
    note(f"wrote {output} ({arch}, {count:,} parameters, {scheme}, seed {seed})", quiet)
