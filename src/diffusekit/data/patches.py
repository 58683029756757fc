"""``patches``: random square crops from natural images bundled with scikit-image.

Only images that ship inside the scikit-image wheel are used (``skimage.data.camera()`` and
friends); the ones scikit-image fetches with pooch (``brain``, ``eagle``, ``lily``, ``kidney``, ...)
are never touched, so nothing is downloaded. Synthetic or binary images (``checkerboard``,
``binary_blobs``, ``horse``, ``shepp_logan_phantom``, ``colorwheel``, ``logo``) are left out, as are
``cat`` (the same picture as ``chelsea``), ``microaneurysms`` (102 x 102) and ``retina`` /
``hubble_deep_field`` (mostly flat black backgrounds that would give many constant patches).

The train and test images are disjoint fixed lists:

=========== ==================================================== ==================================
            grey mode (``grey=True``, 1 channel)                 colour mode (``grey=False``, RGB)
=========== ==================================================== ==================================
train       camera, brick, grass, coins, moon, page, plus the    astronaut, coffee, rocket,
            colour train images converted to grey                immunohistochemistry
test        gravel, clock, text, cell, plus the colour test      chelsea, stereo_motorcycle (left
            images converted to grey                             view)
=========== ==================================================== ==================================

Grey images cannot give colour patches, so colour mode uses only the colour images. In grey mode
colour images are converted with the ITU-R BT.709 luma weights (0.2125 R + 0.7154 G + 0.0721 B,
as ``skimage.color.rgb2gray``).

Sampling (deterministic from ``seed`` and the split): each patch picks its source image uniformly
from the split's list, then a top-left corner uniformly among all positions where the
``size x size`` crop fits. Pixel values ``v`` in 0..255 become ``v / 127.5 - 1``.

* ``x``: float32, shape ``(n, C, size, size)`` with C = 1 (grey) or 3 (colour), values in [-1, 1].
* ``y``: None.
* options: ``size`` (patch side, int in [2, 128], default 16), ``grey`` (default True), ``min_std``
  (default 0: every crop; > 0: keep only crops whose pixel standard deviation on the [-1, 1] scale is at least
  ``min_std``, by rejection in draw order; e.g. 0.1 keeps the textured half of the test crops, since flat
  backgrounds make every restoration method look alike).
* n: default 5,000 (train) and 1,000 (test).
* info: ``images`` (names of the split's source images, in order), ``source`` (int64 (n,), index
  into ``images`` of each patch), ``corner`` (int64 (n, 2), row and column of each crop),
  ``value_range`` = (-1.0, 1.0), ``channels``, ``size``, ``grey``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ._common import DatasetSplit, check_bool, check_int, numpy_generator

PATCHES_DEFAULT_N = {"train": 5_000, "test": 1_000}
MAX_PATCH_SIZE = 128

GREY_IMAGES = {
    "train": ("camera", "brick", "grass", "coins", "moon", "page"),
    "test": ("gravel", "clock", "text", "cell"),
}
COLOUR_IMAGES = {
    "train": ("astronaut", "coffee", "rocket", "immunohistochemistry"),
    "test": ("chelsea", "stereo_motorcycle"),
}

_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)


def patch_image_names(split: str, grey: bool = True) -> tuple[str, ...]:
    """Names of the ``skimage.data`` images used for ``split`` ("train"/"test") in the given mode."""
    if grey:
        return GREY_IMAGES[split] + COLOUR_IMAGES[split]
    return COLOUR_IMAGES[split]


@functools.lru_cache(maxsize=None)
def _load_image(name: str, grey: bool) -> np.ndarray:
    """Image ``name`` as a read-only float32 array (C, H, W) in [0, 1]; C = 1 if ``grey`` else 3."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    if img.dtype != np.uint8:
        raise RuntimeError(f"skimage.data.{name}() returned {img.dtype}; patches expects uint8 images")
    img = img.astype(np.float64) / 255.0
    if img.ndim == 2:
        if not grey:
            raise RuntimeError(f"skimage.data.{name}() is a grey image and cannot give colour patches")
        out = img[None]
    else:
        rgb = img[..., :3]
        out = (rgb @ _LUMA)[None] if grey else np.moveaxis(rgb, -1, 0)
    out = np.ascontiguousarray(out, dtype=np.float32)
    out.flags.writeable = False
    return out


def _crop(images, rng, n: int, size: int):
    """n random crops: (source (n,), corner (n, 2), patches (n, C, size, size) float32 in [0, 1])."""
    source = rng.integers(0, len(images), size=n)
    corner = np.empty((n, 2), dtype=np.int64)
    out = np.empty((n, images[0].shape[0], size, size), dtype=np.float32)
    for k, img in enumerate(images):
        where = np.flatnonzero(source == k)
        if where.size == 0:
            continue
        _, h, w = img.shape
        rows = rng.integers(0, h - size + 1, size=where.size)
        cols = rng.integers(0, w - size + 1, size=where.size)
        windows = np.lib.stride_tricks.sliding_window_view(img, (size, size), axis=(1, 2))  # (C, h', w', s, s)
        out[where] = np.moveaxis(windows[:, rows, cols], 0, 1)
        corner[where, 0], corner[where, 1] = rows, cols
    return source, corner, out


MAX_REJECTION_ROUNDS = 50


def load_patches(split: str, n: int, seed: int, size: int = 16, grey: bool = True,
                 min_std: float = 0.0) -> DatasetSplit:
    """Registry loader for ``patches`` (see the module docstring)."""
    size = check_int("patches option size", size, 2, MAX_PATCH_SIZE)
    grey = check_bool("patches option grey", grey)
    if isinstance(min_std, bool) or not isinstance(min_std, (int, float)) or not 0.0 <= min_std < 1.0:
        raise ValueError(f"patches option min_std must be a number in [0, 1), got {min_std!r}")
    names = patch_image_names(split, grey)
    images = [_load_image(name, grey) for name in names]
    channels = images[0].shape[0]

    rng = numpy_generator(seed, "patches", split)
    if min_std == 0.0:
        source, corner, out = _crop(images, rng, n, size)
    else:  # rejection sampling: keep crops whose pixel std on the [-1, 1] scale is >= min_std, in draw order
        kept, have = [], 0
        for _ in range(MAX_REJECTION_ROUNDS):
            src, cor, pat = _crop(images, rng, 2 * (n - have) + 64, size)
            keep = (2.0 * pat.reshape(len(pat), -1)).std(axis=1) >= min_std
            kept.append((src[keep], cor[keep], pat[keep]))
            have += int(keep.sum())
            if have >= n:
                break
        else:
            raise ValueError(f"patches option min_std={min_std} is too high: only {have} of {n} crops of the "
                             f"{split} images reached it in {MAX_REJECTION_ROUNDS} rounds; lower min_std")
        source, corner, out = (np.concatenate(parts)[:n] for parts in zip(*kept))

    x = torch.from_numpy(out * 2.0 - 1.0).clamp_(-1.0, 1.0)
    info = {
        "value_range": (-1.0, 1.0),
        "num_classes": None,
        "images": list(names),
        "source": torch.from_numpy(source.astype(np.int64)),
        "corner": torch.from_numpy(corner),
        "channels": channels,
        "size": size,
        "grey": grey,
        "min_std": float(min_std),
    }
    return DatasetSplit("patches", x, None, info)
