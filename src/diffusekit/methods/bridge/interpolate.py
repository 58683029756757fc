"""Frame interpolation with a trained Consecutive Brownian Bridge (arXiv 2405.05953): the middle frame between two
frames, K - 1 in-between frames by recursive midpoints, doubling a clip's frame rate, and the evaluation used by
``bench cbb`` (PSNR / SSIM to the true middle frame, across-seed pixel std).

Metrics: ``diffusekit.metrics.psnr`` and ``ssim`` (our torch implementations; ``ssim`` matches
``skimage.metrics.structural_similarity`` with a 7 x 7 uniform window), data range 2 for images in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...metrics import psnr, ssim
from .consecutive import ConsecutiveBrownianBridge

__all__ = ["CBBInterpolator", "linear_blend", "interpolation_scores", "ALLOWED_FRAME_COUNTS"]

ALLOWED_FRAME_COUNTS = (1, 2, 4, 8, 16)


def linear_blend(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The no-model baseline (y + z) / 2."""
    return (y + z) / 2


class CBBInterpolator:
    """A trained CBB network with its process: ``midpoint(y, z)`` and ``insert_frames(first, last, K)``.

    Frames are (B, C, H, W) in [-1, 1] with the (C, H, W) the net was trained on (``frame_shape``)."""

    def __init__(self, net: torch.nn.Module, cbb: ConsecutiveBrownianBridge, *, frame_shape: tuple[int, int, int],
                 default_steps: int = 10, eta: float = 1.0):
        self.net = net.eval()
        self.cbb = cbb
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.default_steps = int(default_steps)
        self.eta = float(eta)

    @torch.no_grad()
    def midpoint(self, y: torch.Tensor, z: torch.Tensor, *, steps: int | None = None, generator=None) -> torch.Tensor:
        """The middle frame between y and z by joint stepping of both bridges (``ConsecutiveBrownianBridge.sample``)."""
        if tuple(y.shape[1:]) != self.frame_shape or y.shape != z.shape:
            raise ValueError(f"frames must be (B, {', '.join(map(str, self.frame_shape))}) and of one shape; "
                             f"got {tuple(y.shape)} and {tuple(z.shape)}")
        return self.cbb.sample(self.net, y, z, steps or self.default_steps, eta=self.eta, generator=generator)

    @torch.no_grad()
    def insert_frames(self, first: torch.Tensor, last: torch.Tensor, frames: int, *, steps: int | None = None,
                      generator=None, progress: Callable | None = None) -> list[torch.Tensor]:
        """[first, ..., last] with ``frames - 1`` frames in between, by recursive midpoints: the middle frame first,
        then the middles of both halves, ... (``frames`` must be a power of two, one of ALLOWED_FRAME_COUNTS).
        Each level's midpoints are computed in one batch. ``progress(n)`` is called after each level with the
        number of frames it made (segments x batch)."""
        if frames not in ALLOWED_FRAME_COUNTS:
            raise ValueError(f"frames must be one of {ALLOWED_FRAME_COUNTS}; got {frames}")
        seq = [first, last]
        while len(seq) - 1 < frames:
            left, right = torch.cat(seq[:-1]), torch.cat(seq[1:])
            mids = self.midpoint(left, right, steps=steps, generator=generator).split(first.shape[0])
            merged = [seq[0]]
            for mid, nxt in zip(mids, seq[1:]):
                merged += [mid, nxt]
            seq = merged
            if progress is not None:
                progress(left.shape[0])
        return seq

    @torch.no_grad()
    def double_frame_rate(self, clip: torch.Tensor, *, steps: int | None = None, generator=None) -> torch.Tensor:
        """A clip (T, C, H, W) -> (2T - 1, C, H, W) with the midpoint inserted between each consecutive pair."""
        if clip.shape[0] < 2:
            raise ValueError("a clip needs at least 2 frames")
        mids = self.midpoint(clip[:-1], clip[1:], steps=steps, generator=generator)
        out = torch.empty(2 * clip.shape[0] - 1, *clip.shape[1:], dtype=clip.dtype)
        out[0::2], out[1::2] = clip, mids
        return out


@torch.no_grad()
def interpolation_scores(sample_fn: Callable[[torch.Generator], torch.Tensor], truth: torch.Tensor, *,
                         seeds=range(8)) -> dict:
    """PSNR / SSIM of each seed's sample to ``truth`` (means over images and seeds) and the across-seed pixel std
    (std over seeds per pixel, population form, averaged over pixels and images). ``sample_fn(generator)`` returns
    (B, C, H, W) in [-1, 1]."""
    samples = torch.stack([sample_fn(torch.Generator().manual_seed(int(s))) for s in seeds])  # (S, B, C, H, W)
    flat_truth = truth.expand_as(samples).reshape(-1, *truth.shape[1:])
    flat = samples.reshape(-1, *truth.shape[1:])
    return {"psnr": float(psnr(flat, flat_truth).mean()), "ssim": float(ssim(flat, flat_truth).mean()),
            "seed_std": float(samples.std(dim=0, unbiased=False).mean()), "num_seeds": len(samples)}
