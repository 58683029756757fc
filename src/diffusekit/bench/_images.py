"""Image sets shared by the restoration benches (inverse, resshift, obc)."""

from __future__ import annotations

import torch

from ..data import load_dataset

# Natural-patch test crops keep only those with pixel std >= 0.1 on the [-1, 1] scale (about half of them):
# flat backgrounds make every restoration method look alike.
TEXTURED_MIN_STD = 0.1
SR_TRAIN_PATCHES = 20_000
SR_TRAIN_PATCHES_QUICK = 1_000


def textured_test_patches(n: int) -> torch.Tensor:
    """n textured 16 x 16 crops of the held-out ``patches`` test images (fixed seed)."""
    return load_dataset("patches", "test", n=n, seed=0, min_std=TEXTURED_MIN_STD).x


def sr_images(name: str, *, n_test: int | None, n_train_patches: int = SR_TRAIN_PATCHES):
    """(train HR, test HR) for the SR benches: the digits splits (``n_test`` None: the whole test split), or
    ``n_train_patches`` crops of the patches train images and ``n_test`` textured test crops."""
    if name == "digits":
        x_test = load_dataset("digits", "test").x
        return load_dataset("digits", "train").x, x_test if n_test is None else x_test[:n_test]
    if name == "patches":
        return (load_dataset("patches", "train", n=n_train_patches, seed=0).x,
                textured_test_patches(256 if n_test is None else n_test))
    raise ValueError(f"unknown SR image set {name!r}; allowed: digits, patches")
