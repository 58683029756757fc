"""``diffusekit translate``: unpaired translation between two diffusion models (CycleDiffusion).

Placeholder wiring; the CycleDiffusion work fills it in.
"""

from __future__ import annotations

from .errors import UserError


def add_translate_arguments(p) -> None:
    p.add_argument("--source", required=False, help="source-domain model")


def run_translate(args) -> int:
    raise UserError("diffusekit translate is not available yet")
