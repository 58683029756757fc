"""Brownian-bridge processes: the bridge process type (``process``, BBDM, arXiv 2205.07680) and the Consecutive
Brownian Bridge for frame interpolation (``consecutive``, ``training``, ``interpolate``; Lyu et al., arXiv 2405.05953).
"""

from .consecutive import ConsecutiveBrownianBridge
from .interpolate import ALLOWED_FRAME_COUNTS, CBBInterpolator, interpolation_scores, linear_blend
from .process import BrownianBridge, grid_bridge
from .training import (CBB_NET, frame_triplets, make_interpolation_net, moving_digit_triplets,
                       sample_conditional_ddpm, train_cbb, train_conditional_ddpm)

__all__ = ["BrownianBridge", "grid_bridge", "ConsecutiveBrownianBridge", "CBBInterpolator", "interpolation_scores",
           "linear_blend", "ALLOWED_FRAME_COUNTS", "CBB_NET", "frame_triplets", "make_interpolation_net",
           "moving_digit_triplets", "sample_conditional_ddpm", "train_cbb", "train_conditional_ddpm"]
