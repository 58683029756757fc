"""The ``diffusekit export`` subcommand: a trained checkpoint on a diffusers backbone -> a diffusers folder.

The lead's ``cli.py`` wires it: ``p = sub.add_parser("export", help=...)``, ``add_export_arguments(p)``,
``p.set_defaults(func=run_export)``.
"""

from __future__ import annotations

EXPORT_HELP = "write a model trained with --net diffusers_unet2d as a diffusers pipeline folder"


def add_export_arguments(p) -> None:
    """Arguments of ``diffusekit export``."""
    p.add_argument("--model", required=True, help="training output folder of `diffusekit train --net diffusers_unet2d`")
    p.add_argument("--out", required=True, help="diffusers folder to write (model_index.json, unet/, scheduler/)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run_export(args) -> int:
    """Run ``diffusekit export``; prints where the folder went and how to load it."""
    from .export import export_diffusers

    out = export_diffusers(args.model, args.out, overwrite=args.overwrite)
    print(f"wrote a diffusers pipeline folder to {out} (load with DDIMPipeline.from_pretrained or "
          f"`diffusekit sample --model diffusers:{out}`)")
    return 0
