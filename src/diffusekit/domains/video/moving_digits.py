"""Moving digits: short grey clips of one or two scikit-learn digits moving, bouncing and rotating on a canvas.

The video data of the video-diffusion, frame-interpolation and talking-head work (issue 17), in the spirit of
Moving MNIST (Srivastava et al., 2015) at our scale. Every clip is a deterministic function of ``(seed, index)``:

* each digit is an 8 x 8 scikit-learn digit scaled to ``digit_size`` pixels and placed at a sub-pixel position
  ``p_t = p_0 + t v`` reflected off the canvas walls (a bounce), rotated by ``theta_t = theta_0 + t omega``;
* rendering is bilinear sampling of the digit through the inverse affine map (``torch.nn.functional.grid_sample``),
  so motion is smooth rather than jumping by whole pixels; two digits combine by a pixel-wise maximum;
* pixel values are in [-1, 1] (background -1), clips are ``[N, T, 1, H, W]``.

Labels: the digit identities ``[N, K]``, the compass heading of each digit's initial velocity (``DIRECTIONS``, index of
one of 8 headings, y pointing *up* the image; a bounce reflects it later), its speed in pixels per frame and its
rotation rate in degrees per frame. Train clips draw digits from the digits train split and test clips from the
test split, so held-out digit images never appear in training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIRECTIONS = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")  # index k: heading angle 45 k degrees, counter-clockwise
SPLITS = ("train", "test")


@dataclass(frozen=True)
class MovingDigitsConfig:
    """Geometry of the clips. ``speeds`` (pixels / frame) and ``rotations`` (degrees / frame) are the values drawn
    from uniformly; ``num_digits`` is 1 or 2."""

    frames: int = 8
    canvas: int = 24
    digit_size: int = 12
    num_digits: int = 1
    speeds: tuple[float, ...] = (1.0, 2.0)
    rotations: tuple[float, ...] = (0.0,)
    classes: tuple[int, ...] = tuple(range(10))

    def __post_init__(self):
        if not 2 <= self.frames <= 64:
            raise ValueError(f"frames must be in [2, 64], got {self.frames}")
        if not 8 <= self.canvas <= 64:
            raise ValueError(f"canvas must be in [8, 64] pixels, got {self.canvas}")
        if not 4 <= self.digit_size <= self.canvas:
            raise ValueError(f"digit_size must be in [4, canvas={self.canvas}], got {self.digit_size}")
        if self.num_digits not in (1, 2):
            raise ValueError(f"num_digits must be 1 or 2, got {self.num_digits}")
        if not self.speeds or min(self.speeds) < 0:
            raise ValueError(f"speeds must be non-negative pixels per frame, got {self.speeds}")
        if not self.rotations:
            raise ValueError("rotations must list at least one rate (degrees per frame)")
        if not self.classes or not set(self.classes) <= set(range(10)):
            raise ValueError(f"classes must be a non-empty subset of 0-9, got {self.classes}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class MovingDigits:
    """A batch of clips and their labels (see the module docstring)."""

    videos: torch.Tensor  # [N, T, 1, H, W] in [-1, 1]
    digits: torch.Tensor  # [N, K] long, identities
    direction: torch.Tensor  # [N, K] long, index into DIRECTIONS
    speed: torch.Tensor  # [N, K] float, pixels per frame
    rotation: torch.Tensor  # [N, K] float, degrees per frame
    positions: torch.Tensor  # [N, T, K, 2] float, digit centres (x right, y down) in pixels
    config: MovingDigitsConfig

    def __len__(self) -> int:
        return self.videos.shape[0]

    @property
    def labels(self) -> torch.Tensor:
        """The first digit's identity, [N] (the class label of single-digit clips)."""
        return self.digits[:, 0]


def _digit_pool(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ...data import load_dataset

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = load_dataset("digits", split)
    return data.x.float(), data.y.long()


def _bounce(p0: np.ndarray, v: np.ndarray, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions ``p0 + t v`` reflected into [lo, hi] (a perfectly elastic bounce off the walls)."""
    span = hi - lo
    if span <= 0:
        return np.full((t.size,) + p0.shape, lo)
    raw = p0[None] - lo + t[:, None] * v[None]
    folded = np.mod(raw, 2 * span)
    return lo + np.where(folded > span, 2 * span - folded, folded)


def render_digit(image: torch.Tensor, centres: torch.Tensor, angles_deg: torch.Tensor, *, canvas: int,
                 digit_size: int) -> torch.Tensor:
    """Draw one 8 x 8 digit (values in [-1, 1]) at ``centres`` [T, 2] (pixels, x right / y down) rotated by
    ``angles_deg`` [T] on a ``canvas`` x ``canvas`` frame: [T, canvas, canvas] in [-1, 1].

    Canvas pixel u maps back to digit coordinates by the inverse of rotate-then-translate, and the digit is read by
    bilinear interpolation with background -1 outside it.
    """
    t = centres.shape[0]
    ys, xs = torch.meshgrid(torch.arange(canvas, dtype=torch.float32) + 0.5,
                            torch.arange(canvas, dtype=torch.float32) + 0.5, indexing="ij")
    dx = xs[None] - centres[:, 0, None, None]
    dy = ys[None] - centres[:, 1, None, None]
    a = torch.deg2rad(angles_deg.float())[:, None, None]
    # rotate canvas offsets by -angle, then scale to the digit's [-1, 1] normalised coordinates
    u = (torch.cos(a) * dx + torch.sin(a) * dy) / (digit_size / 2)
    v = (-torch.sin(a) * dx + torch.cos(a) * dy) / (digit_size / 2)
    grid = torch.stack([u, v], dim=-1)  # [T, H, W, 2]
    src = (image.reshape(1, 1, 8, 8).float() + 1).expand(t, 1, 8, 8)  # background 0 after the shift
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0] - 1


def moving_digits(count: int, *, seed: int = 0, split: str = "train",
                  config: MovingDigitsConfig = MovingDigitsConfig()) -> MovingDigits:
    """``count`` clips; clip i depends only on ``(seed, split, i)`` and the config (prefixes agree)."""
    if count < 1:
        raise ValueError(f"count must be a positive integer, got {count}")
    pool_x, pool_y = _digit_pool(split)
    allowed = torch.tensor(sorted(set(config.classes)))
    pool_index = torch.nonzero(torch.isin(pool_y, allowed)).flatten().numpy()
    cfg = config
    half = cfg.digit_size / 2
    lo, hi = half, cfg.canvas - half
    steps = np.arange(cfg.frames, dtype=np.float64)
    videos = torch.empty(count, cfg.frames, 1, cfg.canvas, cfg.canvas)
    digits = torch.empty(count, cfg.num_digits, dtype=torch.long)
    direction = torch.empty_like(digits)
    speed = torch.empty(count, cfg.num_digits)
    rotation = torch.empty(count, cfg.num_digits)
    positions = torch.empty(count, cfg.frames, cfg.num_digits, 2)
    split_offset = SPLITS.index(split)
    for i in range(count):
        rng = np.random.default_rng([int(seed), split_offset, i])
        frame = torch.full((cfg.frames, cfg.canvas, cfg.canvas), -1.0)
        for k in range(cfg.num_digits):
            j = int(pool_index[rng.integers(pool_index.size)])
            heading = int(rng.integers(len(DIRECTIONS)))
            rate = float(cfg.speeds[rng.integers(len(cfg.speeds))])
            spin = float(cfg.rotations[rng.integers(len(cfg.rotations))])
            angle = math.radians(45.0 * heading)
            v = np.array([rate * math.cos(angle), -rate * math.sin(angle)])  # y down in pixels
            p0 = rng.uniform(lo, hi, size=2) if hi > lo else np.array([lo, lo])
            path = torch.from_numpy(_bounce(p0, v, steps, lo, hi)).float()
            theta = float(rng.uniform(-15, 15)) + spin * torch.from_numpy(steps).float()
            frame = torch.maximum(frame, render_digit(pool_x[j], path, theta, canvas=cfg.canvas,
                                                      digit_size=cfg.digit_size))
            digits[i, k], direction[i, k], speed[i, k], rotation[i, k] = int(pool_y[j]), heading, rate, spin
            positions[i, :, k] = path
        videos[i, :, 0] = frame.clamp(-1, 1)
    return MovingDigits(videos, digits, direction, speed, rotation, positions, cfg)


__all__ = ["DIRECTIONS", "MovingDigits", "MovingDigitsConfig", "moving_digits", "render_digit"]
