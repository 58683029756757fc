"""`diffusekit quantize` (placeholder wiring; the real command is being written)."""

from .errors import UserError


def add_quantize_arguments(p) -> None:
    pass


def run_quantize(args) -> int:
    raise UserError("diffusekit quantize is not available yet")
