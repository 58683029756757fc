"""Placeholder until the sub-command lands (this session)."""

from __future__ import annotations

from ...errors import UserError

HELP = "(not built yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise UserError("this sub-command is not built yet")
