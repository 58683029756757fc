"""Bundled offline datasets behind one call: :func:`load_dataset`.

Everything here is either generated on the fly or read from files that ship inside installed
packages (scikit-learn, scikit-image, statsmodels); nothing is downloaded.

>>> from diffusekit.data import load_dataset, available_datasets
>>> d = load_dataset("moons", "train", n=1000, seed=3)
>>> d.x.shape, d.x.dtype, d.y.dtype
(torch.Size([1000, 2]), torch.float32, torch.int64)

=============== ==================== ============== ====================== ======================
name            x shape              values         default n train/test   options (default)
=============== ==================== ============== ====================== ======================
gmm_ring8       (n, 2)               unbounded      10,000 / 2,000         --
gmm_aniso8d     (n, 8)               unbounded      10,000 / 2,000         --
moons           (n, 2)               unbounded      10,000 / 2,000         noise (0.1)
rings           (n, 2)               unbounded      10,000 / 2,000         noise (0.05)
checkerboard    (n, 2)               [-2, 2]        10,000 / 2,000         --
swissroll       (n, 2)               unbounded      10,000 / 2,000         noise (0.05)
digits          (n, 1, 8, 8)         [-1, 1]        all: 1,437 / 360       --
patches         (n, C, size, size)   [-1, 1]        5,000 / 1,000          size (16), grey (True)
co2             (n, 1, window)       standardised   all windows            window (64), stride (1)
sunspots        (n, 1, window)       standardised   all windows            window (32), stride (1)
=============== ==================== ============== ====================== ======================

Details live in :mod:`.toys`, :mod:`.digits`, :mod:`.patches` and :mod:`.series`.

Your own data: ``folder:PATH`` (PNG/JPEG images, optional class subfolders), ``npz:PATH`` (arrays ``x``
and optional ``y``) and ``csv:PATH`` (series windows) load through the same call; see :mod:`.user`.

Determinism: the same ``(name, split, n, seed, options)`` always gives identical tensors, and no
loader reads or advances the global RNG. Random datasets draw from a generator seeded by
``(seed, name, split)``, so "train" and "test" are different draws. ``digits``, ``co2`` and
``sunspots`` have fixed splits and ignore ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ._common import SPLITS, DatasetSplit, check_int
from .digits import load_digits, load_digits_split
from .patches import PATCHES_DEFAULT_N, load_patches, patch_image_names
from .series import SERIES_DEFAULT_WINDOW, load_co2, load_sunspots
from .toys import (
    TOY_DEFAULT_N,
    aniso8d_mixture,
    aniso8d_parameters,
    load_checkerboard,
    load_gmm_aniso8d,
    load_gmm_ring8,
    load_moons,
    load_rings,
    load_swissroll,
    ring8_mixture,
    ring8_parameters,
)

__all__ = [
    "DatasetSplit",
    "SPLITS",
    "load_dataset",
    "available_datasets",
    "dataset_options",
    "ring8_mixture",
    "aniso8d_mixture",
    "ring8_parameters",
    "aniso8d_parameters",
    "load_digits_split",
    "patch_image_names",
]


@dataclass(frozen=True)
class _Entry:
    """A registry entry.

    ``loader(split, n, seed, **options)`` builds the split; ``default_n`` maps each split to the
    n used when the caller passes ``None`` (``None`` there means "all examples"); ``options`` holds
    the accepted keyword options and their defaults.
    """

    loader: Callable[..., DatasetSplit]
    default_n: Mapping[str, int | None]
    options: Mapping[str, Any]
    description: str


_ALL = MappingProxyType({"train": None, "test": None})

_REGISTRY: dict[str, _Entry] = {
    "gmm_ring8": _Entry(load_gmm_ring8, TOY_DEFAULT_N, {}, "8 Gaussians on a circle of radius 2 (2-D)"),
    "gmm_aniso8d": _Entry(load_gmm_aniso8d, TOY_DEFAULT_N, {}, "4 anisotropic full-covariance Gaussians (8-D)"),
    "moons": _Entry(load_moons, TOY_DEFAULT_N, {"noise": 0.1}, "two interleaving half circles (2-D)"),
    "rings": _Entry(load_rings, TOY_DEFAULT_N, {"noise": 0.05}, "two concentric circles (2-D)"),
    "checkerboard": _Entry(load_checkerboard, TOY_DEFAULT_N, {}, "uniform on 8 squares of a 4x4 board (2-D)"),
    "swissroll": _Entry(load_swissroll, TOY_DEFAULT_N, {"noise": 0.05}, "2-D swiss-roll spiral"),
    "digits": _Entry(load_digits, _ALL, {}, "scikit-learn 8x8 digits in [-1, 1], (N, 1, 8, 8)"),
    "patches": _Entry(
        load_patches, PATCHES_DEFAULT_N, {"size": 16, "grey": True, "min_std": 0.0},
        "natural-image crops from skimage.data"
    ),
    "co2": _Entry(
        load_co2, _ALL, {"window": SERIES_DEFAULT_WINDOW["co2"], "stride": 1}, "weekly Mauna Loa CO2 windows"
    ),
    "sunspots": _Entry(
        load_sunspots, _ALL, {"window": SERIES_DEFAULT_WINDOW["sunspots"], "stride": 1}, "yearly sunspot windows"
    ),
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def _entry(name: Any) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return _REGISTRY[name]


def dataset_options(name: str) -> dict[str, Any]:
    """The keyword options dataset ``name`` accepts, with their defaults (empty if none)."""
    from .user import USER_OPTIONS, is_user_spec

    if is_user_spec(name):
        return dict(USER_OPTIONS[name.partition(":")[0]])
    return dict(_entry(name).options)


def load_dataset(name: str, split: str = "train", *, n: int | None = None, seed: int = 0, **options) -> DatasetSplit:
    """Load one split of a bundled dataset.

    Args:
        name: one of :func:`available_datasets` (see the table in the module docstring).
        split: "train" or "test".
        n: number of examples; ``None`` gives the dataset's default (all examples for the
            fixed datasets ``digits``, ``co2`` and ``sunspots``, where ``n`` takes the first n and
            may not exceed the number available).
        seed: non-negative int controlling the random draws (ignored by fixed datasets).
        **options: dataset-specific options, see :func:`dataset_options`.

    Returns:
        A :class:`DatasetSplit`; ``info`` always holds ``split``, ``seed``, ``options`` (the
        resolved options), ``value_range`` and ``num_classes``.

    Raises:
        ValueError: unknown name, split or option, or an invalid value.
    """
    from .user import is_user_spec

    if is_user_spec(name):  # folder:PATH, npz:PATH, csv:PATH
        from .user import load_user_dataset

        return load_user_dataset(name, split, n=n, seed=seed, **options)
    entry = _entry(name)
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}; allowed: {', '.join(SPLITS)}")
    if n is not None:
        n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) if entry.options else "none (it takes no options)"
        raise ValueError(f"unknown option {unknown[0]!r} for dataset {name!r}; allowed: {allowed}")
    resolved = {**entry.options, **options}
    if n is None:
        n = entry.default_n[split]
    data = entry.loader(split, n, seed, **resolved)
    data.info.update({"split": split, "seed": seed, "options": resolved})
    data.info.setdefault("description", entry.description)
    return data
