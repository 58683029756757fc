"""Per-image quality metrics (PSNR, SSIM) in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def _check_pair(x, ref, min_ndim: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_tensor(x) or not torch.is_tensor(ref):
        raise ValueError(f"x and ref must be tensors {layout}, got {type(x).__name__} and {type(ref).__name__}")
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"x must have shape {layout}, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool or ref.is_complex() or ref.dtype == torch.bool:
        raise ValueError(f"x and ref must be real-valued, got dtypes {x.dtype} and {ref.dtype}")
    dtype = torch.promote_types(x.dtype, ref.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return x.to(dtype), ref.to(dtype)


def _check_range(data_range) -> float:
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not data_range > 0:
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    return float(data_range)


def psnr(x: torch.Tensor, ref: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    ``PSNR_b = 10 log10(data_range^2 / MSE_b)`` with ``MSE_b`` the mean of
    ``(x_b - ref_b)^2`` over all non-batch dimensions; ``+inf`` where ``MSE_b = 0``.
    ``data_range`` is max - min of the value range (2 for data in [-1, 1]).

    Shapes: x, ref (B, ...) with at least 2 dims -> (B,).
    """
    x, ref = _check_pair(x, ref, 2, "(B, ...)")
    r = _check_range(data_range)
    mse = (x - ref).square().flatten(1).mean(1)
    return 10.0 * torch.log10(r * r / mse)


def ssim(
    x: torch.Tensor, ref: torch.Tensor, *, data_range: float = 2.0, win_size: int = 7
) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004, IEEE TIP 13(4)).

    With local statistics from a uniform ``win_size x win_size`` window and the sample
    covariance normalisation ``n/(n-1)``, ``n = win_size^2`` (scikit-image's defaults):
    ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``,
    ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``, ``R = data_range``. The map is averaged over the
    window positions fully inside the image (scikit-image crops (win_size-1)/2 pixels at each
    border, equivalent) and over channels. Matches
    ``skimage.metrics.structural_similarity(x_b, ref_b, data_range=R, channel_axis=...)``.

    Shapes: x, ref (B, C, H, W) -> (B,). ``win_size`` must be odd, >= 3 and <= min(H, W).
    """
    x, ref = _check_pair(x, ref, 4, "(B, C, H, W)")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    r = _check_range(data_range)
    h, w = x.shape[-2:]
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size!r}")
    if win_size > min(h, w):
        raise ValueError(f"win_size={win_size} must be <= the image side min(H, W) = {min(h, w)}")
    b, c = x.shape[:2]
    n = win_size * win_size
    cov_norm = n / (n - 1)
    # stack the five images whose window means are needed, channels folded into the batch
    stack = torch.stack([x, ref, x * x, ref * ref, x * ref], dim=2).reshape(b * c * 5, 1, h, w)
    means = F.avg_pool2d(stack, win_size, stride=1).reshape(b, c, 5, h - win_size + 1, w - win_size + 1)
    ux, uy, uxx, uyy, uxy = means.unbind(2)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * r) ** 2
    c2 = (0.03 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def gradient_excess_kurtosis(x: torch.Tensor) -> float:
    """Excess kurtosis of the horizontal and vertical pixel differences of a batch of images, pooled.

    Natural images have sparse, heavy-tailed derivative statistics (Field 1987, JOSA A 4(12); Simoncelli &
    Olshausen 2001, Annu. Rev. Neurosci. 24): large positive excess kurtosis E[d^4]/E[d^2]^2 - 3 of the
    differences d, whereas any Gaussian image model gives exactly 0. A cheap check that a patch model
    learned more than second-order statistics. x: (B, C, H, W) with H, W >= 2.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or min(x.shape[-2:]) < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, C, H, W) tensor with H, W >= 2, got {shape}")
    x = x.to(torch.float64)
    d = torch.cat([(x[..., 1:, :] - x[..., :-1, :]).flatten(), (x[..., :, 1:] - x[..., :, :-1]).flatten()])
    d = d - d.mean()
    var = d.square().mean()
    if float(var) == 0.0:
        raise ValueError("x has constant pixel differences; kurtosis is undefined")
    return float(d.pow(4).mean() / var.square() - 3.0)
