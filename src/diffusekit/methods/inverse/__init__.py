"""Linear inverse problems with a frozen diffusion prior: SVD operators and DPS / DDRM / RED-Diff solvers."""

from .operators import (OPERATORS, LinearOperator, MaskOperator, SeparableOperator, block_average_matrix, denoising,
                        gaussian_blur, gaussian_blur_matrix, inpaint_box, inpaint_random, make_operator,
                        super_resolution)
from .solvers import NFE_PER_STEP, SOLVERS, reddiff_weight, solve_ddrm, solve_dps, solve_pinv, solve_reddiff

__all__ = [
    "OPERATORS", "LinearOperator", "MaskOperator", "SeparableOperator", "block_average_matrix", "denoising",
    "gaussian_blur", "gaussian_blur_matrix", "inpaint_box", "inpaint_random", "make_operator", "super_resolution",
    "NFE_PER_STEP", "SOLVERS", "reddiff_weight", "solve_ddrm", "solve_dps", "solve_pinv", "solve_reddiff",
]
