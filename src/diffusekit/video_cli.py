"""``diffusekit video``: moving-digit video generation and frame interpolation.

    diffusekit video sample [--model zoo:moving_digits_video] [--digit 3] [--num 4] --out x.gif
    diffusekit video interpolate --first a.png --last b.png [--model zoo:moving_digits_cbb] --out x.gif

The sub-commands live in ``domains.video.cli_*`` (each with HELP, add_arguments and run); each writes its GIF
atomically and never overwrites without ``--overwrite``.
"""

from __future__ import annotations

HELP = "sample moving-digit videos and interpolate frames (video diffusion, Consecutive Brownian Bridge)"
SUBCOMMANDS = {"sample": "diffusekit.domains.video.cli_sample",
               "interpolate": "diffusekit.domains.video.cli_interpolate"}


def add_arguments(parser) -> None:
    from .cli_groups import add_subcommands

    add_subcommands(parser, "video_command", SUBCOMMANDS)


def run(args) -> int:
    from .cli_groups import run_subcommand

    return run_subcommand(args, "video_command", SUBCOMMANDS)
