"""``digits``: scikit-learn's bundled 8 x 8 handwritten digits (UCI optical recognition data set).

1,797 grey images with integer intensities 0..16, ten classes (about 180 each). They ship with
scikit-learn, so nothing is downloaded.

* ``x``: float32, shape ``(N, 1, 8, 8)``, scaled to [-1, 1] by ``x / 8 - 1`` (so 0 -> -1, 16 -> 1,
  and every value is a multiple of 1/8).
* ``y``: int64 digit labels 0..9.
* split: a fixed stratified 80 / 20 split (``random_state`` :data:`DIGITS_SPLIT_SEED`), the same
  whatever ``seed`` is: 1,437 train and 360 test images. Each split is stored in a fixed shuffled
  order and ``n`` takes its first ``n`` images; ``seed`` has no effect.
* info: ``num_classes`` = 10, ``value_range`` = (-1.0, 1.0), ``indices`` (int64 positions of the
  images in ``sklearn.datasets.load_digits()``), ``raw_scale`` = "x / 8 - 1".
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ._common import SPLITS, DatasetSplit, check_n_available

#: random_state of the fixed stratified train/test split.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(images in [-1, 1] (1797, 1, 8, 8) float32, labels int64, {split: shuffled indices}); cached."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 8.0 - 1.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        shuffle=True,
        random_state=DIGITS_SPLIT_SEED,
    )
    for arr in (images, labels, train_idx, test_idx):
        arr.flags.writeable = False  # the cache must not be mutated
    return images, labels, {"train": train_idx, "test": test_idx}


def load_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The whole ``split`` ("train" or "test") as ``(x, y)``: float32 (N, 1, 8, 8) in [-1, 1], int64 (N,)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for dataset 'digits'; allowed: {', '.join(SPLITS)}")
    d = load_digits(split, None, 0)
    return d.x, d.y


def load_digits(split: str, n: int | None, seed: int) -> DatasetSplit:
    """Registry loader for ``digits`` (``seed`` is accepted for uniformity and ignored)."""
    del seed  # the split and its order are fixed
    images, labels, splits = _digits_arrays()
    idx = splits[split]
    n = check_n_available(n, len(idx), f"digits/{split}")
    idx = idx[:n]
    info = {
        "value_range": (-1.0, 1.0),
        "num_classes": 10,
        "indices": torch.from_numpy(idx.astype(np.int64)),
        "raw_scale": "x / 8 - 1",
        "image_shape": (1, 8, 8),
    }
    x = torch.from_numpy(images[idx])  # fancy indexing copies, so x owns its memory
    y = torch.from_numpy(labels[idx])
    return DatasetSplit("digits", x, y, info)
