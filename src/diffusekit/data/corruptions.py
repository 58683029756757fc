"""Image corruptions in the style of ImageNet-C, at 5 severities, deterministic from a seed.

Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
(arXiv 1903.12261) define 15 corruptions at 5 severities for 224-pixel photos. Our images are 8 x 8 digits and
small RGB canvases, so the *kinds* and the *per-pixel* parameters follow the paper (noise levels, JPEG qualities,
contrast factors are theirs), while the spatial ones (blur radius, motion length, pixelation, elastic warp) are
set in pixels of an 8-pixel image and scaled with the image side, so that the source classifier's error rises
steadily over the 5 levels (tested) rather than jumping from nothing to everything.

Every corruption maps images (N, C, H, W) in [-1, 1] to the same shape and range; internally it works on
[0, 1] intensities like the paper. Randomness comes only from ``seed`` (one generator per call, shared by the
five severities): the same images, corruption, severity and seed give identical outputs, and the global RNG is
never touched.

>>> x = load_dataset("digits", "test").x
>>> corrupt(x, "gaussian_noise", severity=3, seed=0).shape
torch.Size([360, 1, 8, 8])
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "available_corruptions"]

SEVERITIES = (1, 2, 3, 4, 5)


def _generator(seed: int, name: str) -> torch.Generator:
    """One generator per (seed, corruption), the same at every severity: the severities of a seed share their
    random draws (common random numbers), so a higher severity is the same noise pattern, streak angle or warp
    field, only stronger -- severity is monotone per image, not only on average."""
    key = sum((i + 1) * ord(ch) for i, ch in enumerate(name))  # stable across processes (unlike hash())
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + key * 17)


def _scale(x: torch.Tensor) -> float:
    """Pixels of an 8-pixel image -> pixels of this image (spatial parameters scale with the side)."""
    return x.shape[-1] / 8.0


def _gaussian_noise(x, level, gen):
    """x + N(0, c^2), c = 0.08, 0.12, 0.18, 0.26, 0.38 (ImageNet-C)."""
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[level - 1]
    return x + c * torch.randn(x.shape, generator=gen)


def _shot_noise(x, level, gen):
    """Poisson photon noise Poisson(x c) / c, c = 60, 25, 12, 5, 3 (ImageNet-C)."""
    c = (60.0, 25.0, 12.0, 5.0, 3.0)[level - 1]
    return torch.poisson(x.clamp(0, 1) * c, generator=gen) / c


def _impulse_noise(x, level, gen):
    """Salt-and-pepper noise on a fraction a = 0.03, 0.06, 0.09, 0.17, 0.27 of the values (ImageNet-C)."""
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[level - 1]
    u = torch.rand(x.shape, generator=gen)
    salt = torch.rand(x.shape, generator=gen) < 0.5
    hit = u < amount
    return torch.where(hit, salt.to(x.dtype), x)


def _filter(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each image with its own (k, k) kernel (N, k, k) or one shared kernel (k, k), reflect padding."""
    n, c, h, w = x.shape
    if kernels.ndim == 2:
        kernels = kernels.expand(n, *kernels.shape)
    k = kernels.shape[-1]
    pad = k // 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "replicate")
    weight = kernels[:, None].repeat_interleave(c, dim=0)  # (N*C, 1, k, k)
    out = F.conv2d(xp.reshape(1, n * c, h + 2 * pad, w + 2 * pad), weight.to(x.dtype), groups=n * c)
    return out.reshape(n, c, h, w)


def _disk(radius: float, oversample: int = 8) -> torch.Tensor:
    """Anti-aliased disk kernel of the given radius in pixels (area fraction of each pixel inside), sum 1."""
    half = int(math.ceil(radius))
    size = 2 * half + 1
    sub = (torch.arange(size * oversample, dtype=torch.float64) + 0.5) / oversample - half - 0.5
    yy, xx = torch.meshgrid(sub, sub, indexing="ij")
    inside = ((yy**2 + xx**2) <= radius**2).double()
    kernel = inside.reshape(size, oversample, size, oversample).mean(dim=(1, 3))
    return (kernel / kernel.sum()).float()


def _defocus_blur(x, level, gen):
    """Convolution with a disk of radius 0.5, 0.7, 0.9, 1.1, 1.3 pixels (of an 8-pixel image)."""
    return _filter(x, _disk((0.5, 0.7, 0.9, 1.1, 1.3)[level - 1] * _scale(x)))


def _motion_kernels(n: int, length: float, gen: torch.Generator, points: int = 64) -> torch.Tensor:
    """(n, k, k) kernels of a straight motion streak of ``length`` pixels at a random angle, bilinear splats."""
    half = int(math.ceil(length / 2)) + 1
    size = 2 * half + 1
    angles = torch.rand(n, generator=gen, dtype=torch.float64) * math.pi
    s = torch.linspace(-length / 2, length / 2, points, dtype=torch.float64)
    px = half + s[None, :] * torch.cos(angles)[:, None]
    py = half + s[None, :] * torch.sin(angles)[:, None]
    kernels = torch.zeros(n, size, size, dtype=torch.float64)
    x0, y0 = px.floor(), py.floor()
    for dx in (0, 1):
        for dy in (0, 1):
            wx = 1 - (px - x0 - dx).abs()
            wy = 1 - (py - y0 - dy).abs()
            xi, yi = (x0 + dx).long().clamp(0, size - 1), (y0 + dy).long().clamp(0, size - 1)
            kernels.view(n, -1).scatter_add_(1, yi * size + xi, wx * wy)
    return (kernels / kernels.sum(dim=(1, 2), keepdim=True)).float()


def _motion_blur(x, level, gen):
    """A streak of length 1.5, 2, 2.5, 3, 4 pixels (of an 8-pixel image) at a random angle per image."""
    return _filter(x, _motion_kernels(x.shape[0], (1.5, 2.0, 2.5, 3.0, 4.0)[level - 1] * _scale(x), gen))


def _contrast(x, level, gen):
    """(x - mean) c + mean per image, c = 0.4, 0.3, 0.2, 0.1, 0.05 (ImageNet-C)."""
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[level - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def _brightness(x, level, gen):
    """x + c, c = 0.1, 0.2, 0.3, 0.4, 0.5 (ImageNet-C adds c to the HSV value; on our images to every channel)."""
    return x + (0.1, 0.2, 0.3, 0.4, 0.5)[level - 1]


def _pixelate(x, level, gen):
    """Box-downsample to a fraction 7/8, 6/8, 5/8, 3/8, 2/8 of the side, then upsample by pixel repetition (on 8 x 8
    digits 4/8 is skipped: a divisor of the side, it hurts less than 5/8)."""
    h, w = x.shape[-2:]
    f = (0.875, 0.75, 0.625, 0.375, 0.25)[level - 1]
    small = F.adaptive_avg_pool2d(x, (max(1, round(h * f)), max(1, round(w * f))))
    return F.interpolate(small, size=(h, w), mode="nearest")


def _jpeg(x, level, gen):
    """JPEG compression through Pillow at quality 25, 15, 10, 7, 4 (ImageNet-C's 25 ... 7, stretched: on 8 x 8
    images qualities 18 and 15 give the same error)."""
    from PIL import Image

    quality = (25, 15, 10, 7, 4)[level - 1]
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[..., 0], mode="L") if img.shape[-1] == 1 else Image.fromarray(img, mode="RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = dec[..., None] if dec.ndim == 2 else dec
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    half = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def _elastic(x, level, gen):
    """Elastic warp (Simard et al. 2003, as in ImageNet-C): a uniform random displacement field smoothed by a
    Gaussian of sigma 1 pixel, scaled to a typical shift of alpha = 0.25, 0.4, 0.55, 0.7, 0.9 pixels (of an
    8-pixel image); bilinear resampling with border padding."""
    n, c, h, w = x.shape
    alpha = (0.25, 0.4, 0.55, 0.7, 0.9)[level - 1] * _scale(x)
    field = torch.rand(n, 2, h, w, generator=gen) * 2 - 1
    k = _gaussian_kernel1d(1.0 * _scale(x))
    field = _filter(field, k[:, None] * k[None, :])
    field = field / field.flatten(1).std(dim=1).clamp_min(1e-8)[:, None, None, None] * alpha
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    gx = (xs + field[:, 0]) / max(w - 1, 1) * 2 - 1
    gy = (ys + field[:, 1]) / max(h - 1, 1) * 2 - 1
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                         align_corners=True)


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "motion_blur": _motion_blur, "contrast": _contrast, "brightness": _brightness,
    "pixelate": _pixelate, "jpeg": _jpeg, "elastic": _elastic,
}


def available_corruptions() -> list[str]:
    """Names accepted by :func:`corrupt`, in the paper's order (noise, blur, digital, weather-free)."""
    return list(CORRUPTIONS)


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to images (N, C, H, W) in [-1, 1]; returns [-1, 1].

    Raises ValueError for an unknown name, a severity outside 1-5 or images that are not (N, C, H, W) floats.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer 1-5, got {severity!r}")
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W) in [-1, 1], got {shape}")
    gen = _generator(seed, name)
    x01 = (images.detach().float().cpu() + 1) / 2
    out = CORRUPTIONS[name](x01, severity, gen)
    return (out.clamp(0, 1) * 2 - 1).to(images.dtype)
