"""Low-dimensional synthetic ("toy") distributions, sampled on the fly.

Every toy returns float32 points; 2-D unless stated. Samples come from an explicit generator seeded
by :func:`diffusekit.data._common.derive_seed` from ``(seed, dataset name, split)``, so the result
never depends on global RNG state and the train and test splits are independent draws.

=============== ====== ============================================================== ===========
name            dim    distribution                                                   labels ``y``
=============== ====== ============================================================== ===========
``gmm_ring8``   2      8 equal-weight Gaussians on a circle of radius 2, std 0.15     component
``gmm_aniso8d`` 8      4 Gaussians, full anisotropic covariances (eigs 0.01..1)       component
``moons``       2      two interleaving half circles, centred, + Gaussian noise       which moon
``rings``       2      concentric circles of radius 1 and 2 (equal counts) + noise    which ring
``checkerboard`` 2     uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2      none
``swissroll``   2      2-D spiral r = t/5, t in [1.5 pi, 4.5 pi], + Gaussian noise    none
=============== ====== ============================================================== ===========

The two mixture datasets are drawn with :meth:`diffusekit.core.gmm.GaussianMixture.sample` from the
mixtures returned by :func:`ring8_mixture` and :func:`aniso8d_mixture`; that mixture object is put
in ``info["mixture"]`` so exact densities and denoisers are available for the same distribution.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._common import DatasetSplit, check_float, torch_generator

if TYPE_CHECKING:  # imported lazily at run time so `import diffusekit.data` stays light
    from diffusekit.core.gmm import GaussianMixture

#: Default number of samples per split for every toy.
TOY_DEFAULT_N = {"train": 10_000, "test": 2_000}

# ---------------------------------------------------------------------------------------------
# Gaussian mixtures
# ---------------------------------------------------------------------------------------------

RING8_RADIUS = 2.0
RING8_STD = 0.15

#: Seed of the private numpy stream that fixes the gmm_aniso8d parameters (not the sampling seed).
ANISO8D_PARAM_SEED = 20_240_608
ANISO8D_DIM = 8
ANISO8D_MEAN_RADIUS = 3.0
#: Eigenvalues shared (in shuffled order) by every gmm_aniso8d covariance: log-spaced 0.01 .. 1.
ANISO8D_EIGVALS = tuple(float(v) for v in np.logspace(-2.0, 0.0, ANISO8D_DIM))
#: Unequal fixed weights, so a sampler that loses or reweights a mode is visible.
ANISO8D_WEIGHTS = (0.4, 0.3, 0.2, 0.1)


def ring8_parameters() -> dict[str, torch.Tensor]:
    """Means (8, 2), covariances (8, 2, 2) and weights (8,) of ``gmm_ring8``, float64.

    Mode k sits at angle 2 pi k / 8 on the circle of radius 2; every covariance is 0.15^2 I and
    every weight 1/8.
    """
    angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8)
    means = RING8_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    covs = (RING8_STD**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2).clone()
    weights = torch.full((8,), 1.0 / 8, dtype=torch.float64)
    return {"means": means, "covs": covs, "weights": weights}


def aniso8d_parameters() -> dict[str, torch.Tensor]:
    """Means (4, 8), covariances (4, 8, 8) and weights (4,) of ``gmm_aniso8d``, float64.

    The numbers are fixed: they are generated from the constant :data:`ANISO8D_PARAM_SEED`.

    * means: ``3 * q_k`` for the first four columns ``q_k`` of a random orthogonal matrix, so every
      mean has norm 3 and every pair of means is ``3 * sqrt(2) ~ 4.24`` apart (more than 4 standard
      deviations along any direction, since no covariance eigenvalue exceeds 1);
    * covariances: ``U_k diag(perm_k(eigs)) U_k^T`` with a random rotation ``U_k`` per component
      (so the matrices are full, not diagonal) and eigenvalues :data:`ANISO8D_EIGVALS` (0.01 .. 1);
    * weights: :data:`ANISO8D_WEIGHTS` = (0.4, 0.3, 0.2, 0.1).
    """
    rng = np.random.default_rng(ANISO8D_PARAM_SEED)
    k, d = len(ANISO8D_WEIGHTS), ANISO8D_DIM
    means = ANISO8D_MEAN_RADIUS * _random_orthogonal(rng, d)[:, :k].T
    eigs = np.asarray(ANISO8D_EIGVALS)
    covs = np.empty((k, d, d))
    for i in range(k):
        u = _random_orthogonal(rng, d)
        c = (u * rng.permutation(eigs)[None, :]) @ u.T
        covs[i] = 0.5 * (c + c.T)  # exactly symmetric
    return {
        "means": torch.from_numpy(means.copy()),
        "covs": torch.from_numpy(covs),
        "weights": torch.tensor(ANISO8D_WEIGHTS, dtype=torch.float64),
    }


def _random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-random d x d orthogonal matrix (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


def ring8_mixture() -> "GaussianMixture":
    """The :class:`~diffusekit.core.gmm.GaussianMixture` behind ``gmm_ring8`` (see :func:`ring8_parameters`)."""
    from diffusekit.core.gmm import GaussianMixture

    p = ring8_parameters()
    return GaussianMixture(p["means"], p["covs"], p["weights"])


def aniso8d_mixture() -> "GaussianMixture":
    """The :class:`~diffusekit.core.gmm.GaussianMixture` behind ``gmm_aniso8d`` (see :func:`aniso8d_parameters`)."""
    from diffusekit.core.gmm import GaussianMixture

    p = aniso8d_parameters()
    return GaussianMixture(p["means"], p["covs"], p["weights"])


def _mixture_split(name: str, mixture: "GaussianMixture", split: str, n: int, seed: int) -> DatasetSplit:
    g = torch_generator(seed, name, split)
    x, labels = mixture.sample(n, generator=g, return_labels=True)
    info = {
        "value_range": None,
        "num_classes": mixture.num_components,
        "dim": mixture.dim,
        "mixture": mixture,
        "labels": "mixture component of each sample",
    }
    return DatasetSplit(name, x.to(torch.float32), labels.to(torch.int64), info)


def load_gmm_ring8(split: str, n: int, seed: int) -> DatasetSplit:
    """``gmm_ring8``: (n, 2) samples of :func:`ring8_mixture`; y = component index 0..7."""
    return _mixture_split("gmm_ring8", ring8_mixture(), split, n, seed)


def load_gmm_aniso8d(split: str, n: int, seed: int) -> DatasetSplit:
    """``gmm_aniso8d``: (n, 8) samples of :func:`aniso8d_mixture`; y = component index 0..3."""
    return _mixture_split("gmm_aniso8d", aniso8d_mixture(), split, n, seed)


# ---------------------------------------------------------------------------------------------
# classic 2-D shapes
# ---------------------------------------------------------------------------------------------


def _two_class_split(name: str, parts: list[torch.Tensor], g: torch.Generator, info: dict) -> DatasetSplit:
    """Concatenate per-class point sets, shuffle them together and label each point by its part."""
    x = torch.cat(parts)
    y = torch.cat([torch.full((len(p),), i, dtype=torch.int64) for i, p in enumerate(parts)])
    perm = torch.randperm(len(x), generator=g)
    info = {"value_range": None, "num_classes": len(parts), "dim": 2, **info}
    return DatasetSplit(name, x[perm].to(torch.float32), y[perm], info)


def load_moons(split: str, n: int, seed: int, noise: float = 0.1) -> DatasetSplit:
    """``moons``: two interleaving half circles of radius 1, shifted so the point cloud is centred.

    Upper moon: ``(cos t, sin t) - (0.5, 0.25)``; lower moon: ``(1 - cos t, 0.5 - sin t) - (0.5, 0.25)``
    with ``t ~ U(0, pi)``, plus isotropic Gaussian noise of std ``noise`` (default 0.1). Without noise
    the points lie in [-1.5, 1.5] x [-0.75, 0.75]. ``y``: 0 = upper moon, 1 = lower moon (n // 2 and
    n - n // 2 points).
    """
    noise = check_float("moons option noise", noise)
    g = torch_generator(seed, "moons", split)
    n0 = n // 2
    t = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    c, s = torch.cos(t), torch.sin(t)
    upper = torch.stack([c[:n0], s[:n0]], dim=1)
    lower = torch.stack([1.0 - c[n0:], 0.5 - s[n0:]], dim=1)
    shift = torch.tensor([0.5, 0.25], dtype=torch.float64)
    parts = [p - shift + noise * torch.randn(p.shape, generator=g, dtype=torch.float64) for p in (upper, lower)]
    return _two_class_split("moons", parts, g, {"noise": noise})


def load_rings(split: str, n: int, seed: int, noise: float = 0.05) -> DatasetSplit:
    """``rings``: two concentric circles centred at the origin, radius 1 (y=0) and 2 (y=1).

    Angles are uniform, each ring gets half the points (n // 2 inner), and isotropic Gaussian
    noise of std ``noise`` (default 0.05) is added.
    """
    noise = check_float("rings option noise", noise)
    g = torch_generator(seed, "rings", split)
    n0 = n // 2
    theta = 2.0 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    radius = torch.where(torch.arange(n) < n0, 1.0, 2.0).to(torch.float64)
    pts = radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    pts = pts + noise * torch.randn(pts.shape, generator=g, dtype=torch.float64)
    return _two_class_split("rings", [pts[:n0], pts[n0:]], g, {"noise": noise, "radii": (1.0, 2.0)})


def load_checkerboard(split: str, n: int, seed: int) -> DatasetSplit:
    """``checkerboard``: uniform on the 8 "dark" unit squares of a 4 x 4 board covering [-2, 2]^2.

    Square (i, j) (column i, row j, both 0..3) spans [i - 2, i - 1] x [j - 2, j - 1] and is dark
    when i + j is even. Values lie in [-2, 2]. Unlabelled.
    """
    g = torch_generator(seed, "checkerboard", split)
    cell = torch.randint(0, 8, (n,), generator=g)
    i = cell % 4
    j = 2 * (cell // 4) + (i % 2)  # rows of the same parity as the column: i + j even
    corner = torch.stack([i, j], dim=1).to(torch.float64) - 2.0
    x = corner + torch.rand(n, 2, generator=g, dtype=torch.float64)
    info = {"value_range": (-2.0, 2.0), "num_classes": None, "dim": 2}
    return DatasetSplit("checkerboard", x.to(torch.float32), None, info)


def load_swissroll(split: str, n: int, seed: int, noise: float = 0.05) -> DatasetSplit:
    """``swissroll``: the 2-D spiral ``(t cos t, t sin t) / 5`` with ``t ~ U(1.5 pi, 4.5 pi)``.

    Isotropic Gaussian noise of std ``noise`` (default 0.05, in output units) is added. Without
    noise the points lie within radius 4.5 pi / 5 ~ 2.83 of the origin. Unlabelled.
    """
    noise = check_float("swissroll option noise", noise)
    g = torch_generator(seed, "swissroll", split)
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0
    x = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    info = {"value_range": None, "num_classes": None, "dim": 2, "noise": noise}
    return DatasetSplit("swissroll", x.to(torch.float32), None, info)
