"""`diffusekit distill` (placeholder wiring; the real command is being written)."""

from .errors import UserError


def add_distill_arguments(p) -> None:
    pass


def run_distill(args) -> int:
    raise UserError("diffusekit distill is not available yet")
