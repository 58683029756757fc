"""Placeholder until ``diffusekit personalize`` lands (this session)."""

from __future__ import annotations

from .errors import UserError

HELP = "(not built yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise UserError("personalize is not built yet")
