"""Sample-based distances between distributions (all computed in float64, returned as floats)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

__all__ = [
    "sliced_wasserstein",
    "mmd_rbf",
    "mode_coverage",
    "gmm_nll",
    "frechet_distance",
    "gaussian_frechet_distance",
]


def _as_samples(name: str, x, dim: int | None = None, min_count: int = 1) -> torch.Tensor:
    """Convert array-like to a float64 CPU tensor of shape (N, D) and validate it."""
    try:
        t = x.detach().cpu() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array-like of shape (N, D), got {type(x).__name__}") from exc
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    if t.shape[0] < min_count:
        raise ValueError(f"{name} needs at least {min_count} samples, got {t.shape[0]}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns to match the other input, got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _w2_1d_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact 1-D W2 between empirical measures, column-wise.

    a: (N, P) and b: (M, P) sorted along dim 0. Computes, per column,
    ``sqrt( int_0^1 (F_a^{-1}(u) - F_b^{-1}(u))^2 du )`` with the empirical quantile
    functions ``F_a^{-1}(u) = a_(ceil(u N))``. The integrand is piecewise constant between
    the merged breakpoints {i/N} U {j/M}, so the integral is an exact finite sum.
    Returns (P,).
    """
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return (a - b).square().mean(0).sqrt()
    # breakpoints as exact integers on the common grid 1/(N*M)
    bp = torch.unique(torch.cat([torch.arange(0, n + 1) * m, torch.arange(0, m + 1) * n]))  # sorted
    left, right = bp[:-1], bp[1:]
    weight = (right - left).to(torch.float64) / (n * m)
    ia = torch.div(left, m, rounding_mode="floor")  # index of a's quantile on [left, right)
    ib = torch.div(left, n, rounding_mode="floor")
    diff = a[ia] - b[ib]
    return (weight[:, None] * diff.square()).sum(0).sqrt()


def sliced_wasserstein(a, b, *, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein distance: mean over random unit directions of the 1-D W2 distance.

    ``SW(a, b) = (1/P) sum_p W2(<a, theta_p>, <b, theta_p>)`` with ``theta_p`` uniform on the
    unit sphere (normalised Gaussian draws from ``generator``). Each 1-D W2 between the
    projected empirical measures is computed exactly from their quantile functions, so the
    two sample counts may differ. Note: this averages W2 (not W2^2) over directions.
    Reference: Rabin et al. 2011; Bonneel et al. 2015, "Sliced and Radon Wasserstein barycenters".

    Args:
        a: (N, D) samples; b: (M, D) samples.
        n_projections: number of random directions P (>= 1).
        generator: torch.Generator for the directions (CPU); None uses the global RNG.
    """
    a = _as_samples("a", a)
    b = _as_samples("b", b, dim=a.shape[1])
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections!r}")
    theta = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True).clamp_min(1e-300)
    pa = torch.sort(a @ theta, dim=0).values
    pb = torch.sort(b @ theta, dim=0).values
    return float(_w2_1d_sorted(pa, pb).mean())


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2.0 * x @ y.T
    return d.clamp_min_(0.0)


def _kernel_sum(x: torch.Tensor, y: torch.Tensor, gamma: float, max_entries: int = 4_000_000) -> float:
    """sum_{i,j} exp(-gamma ||x_i - y_j||^2), computed in row chunks of <= max_entries kernel values."""
    total = 0.0
    chunk = max(1, max_entries // max(1, y.shape[0]))
    for s in range(0, x.shape[0], chunk):
        total += float(torch.exp(-gamma * _sq_dists(x[s : s + chunk], y)).sum())
    return total


def _median_bandwidth(x: torch.Tensor, max_points: int = 2000) -> float:
    """Median of pairwise Euclidean distances (i < j) among at most ``max_points`` evenly
    strided points of ``x`` (deterministic subsample)."""
    if x.shape[0] > max_points:
        idx = torch.linspace(0, x.shape[0] - 1, max_points).round().long()
        x = x[idx]
    d = _sq_dists(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    med = float(d[iu[0], iu[1]].median().sqrt())
    return med


def mmd_rbf(a, b, *, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with an RBF kernel.

    ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` and
    ``MMD^2_u = 1/(n(n-1)) sum_{i != j} k(a_i, a_j) + 1/(m(m-1)) sum_{i != j} k(b_i, b_j)
    - 2/(nm) sum_{i,j} k(a_i, b_j)`` (Gretton et al. 2012, JMLR, Eq. 3). Unbiased, so it can
    be slightly negative when the distributions match.

    Args:
        a: (n, D) samples, n >= 2; b: (m, D) samples, m >= 2.
        bandwidth: sigma > 0; None -> median heuristic, sigma = median pairwise Euclidean
            distance of the pooled samples (on a deterministic subsample of <= 2000 points).
    """
    a = _as_samples("a", a, min_count=2)
    b = _as_samples("b", b, dim=a.shape[1], min_count=2)
    if bandwidth is None:
        sigma = _median_bandwidth(torch.cat([a, b]))
        if sigma <= 0.0:
            sigma = 1.0
    else:
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
            raise ValueError(f"bandwidth must be a positive number or None, got {bandwidth!r}")
        sigma = float(bandwidth)
    gamma = 1.0 / (2.0 * sigma * sigma)
    n, m = a.shape[0], b.shape[0]
    kaa = (_kernel_sum(a, a, gamma) - n) / (n * (n - 1))  # the diagonal terms are exactly 1
    kbb = (_kernel_sum(b, b, gamma) - m) / (m * (m - 1))
    kab = _kernel_sum(a, b, gamma) / (n * m)
    return float(kaa + kbb - 2.0 * kab)


def mode_coverage(samples, means, *, radius: float, min_count: int = 1) -> float:
    """Fraction of modes ``mu_k`` with at least ``min_count`` samples inside the ball
    ``||x - mu_k|| <= radius``. A sample inside several balls counts for each of them.

    Args:
        samples: (N, D); means: (K, D) mode centres; radius > 0; min_count >= 1.
    """
    x = _as_samples("samples", samples, min_count=0)
    mu = _as_samples("means", means, dim=x.shape[1])
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise ValueError(f"radius must be a positive number, got {radius!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    counts = torch.zeros(mu.shape[0], dtype=torch.long)
    chunk = max(1, 4_000_000 // max(1, mu.shape[0]))
    for s in range(0, x.shape[0], chunk):
        counts += (_sq_dists(x[s : s + chunk], mu) <= radius * radius).sum(0)
    return float((counts >= min_count).double().mean())


def gmm_nll(samples, mixture) -> float:
    """Negative mean log-likelihood ``-(1/N) sum_i log p(x_i)`` of samples under ``mixture``.

    ``mixture`` is any object with ``log_prob(x) -> Tensor[N]`` (e.g.
    ``diffusekit.core.gmm.GaussianMixture``); ``samples`` is a tensor (N, D) passed to it as is.
    """
    if not callable(getattr(mixture, "log_prob", None)):
        raise ValueError(f"mixture must have a callable log_prob(x) method, got {type(mixture).__name__}")
    if not torch.is_tensor(samples):
        samples = torch.as_tensor(np.asarray(samples))
    if samples.ndim != 2 or samples.shape[0] < 1:
        raise ValueError(f"samples must have shape (N, D) with N >= 1, got shape {tuple(samples.shape)}")
    lp = torch.as_tensor(mixture.log_prob(samples))
    if lp.shape != (samples.shape[0],):
        raise ValueError(f"mixture.log_prob must return shape ({samples.shape[0]},), got {tuple(lp.shape)}")
    return float(-lp.double().mean())


def _as_vector(name: str, v) -> np.ndarray:
    arr = np.asarray(v.detach().cpu().double() if torch.is_tensor(v) else v, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    return arr


def _as_matrix(name: str, c, d: int) -> np.ndarray:
    arr = np.asarray(c.detach().cpu().double() if torch.is_tensor(c) else c, dtype=np.float64)
    if arr.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}), got shape {arr.shape}")
    return arr


def gaussian_frechet_distance(mu1, cov1, mu2, cov2, *, eps: float = 1e-6) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

    ``d^2 = ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})`` in float64
    (Dowson & Landau 1982; the FID formula of Heusel et al. 2017). The matrix square root
    uses ``scipy.linalg.sqrtm``; if it is not finite, ``eps * I`` is added to both
    covariances; imaginary parts from round-off are dropped (a warning is issued if they
    are not tiny).

    Args: mu1, mu2 (D,); cov1, cov2 (D, D) symmetric positive semi-definite.
    """
    m1 = _as_vector("mu1", mu1)
    m2 = _as_vector("mu2", mu2)
    if m1.shape != m2.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape, got {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    c1 = _as_matrix("cov1", cov1, d)
    c2 = _as_matrix("cov2", cov2, d)
    for name, arr in (("mu1", m1), ("mu2", m2), ("cov1", c1), ("cov2", c2)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    if not np.all(np.isfinite(covmean)):
        offset = eps * np.eye(d)
        covmean = scipy.linalg.sqrtm((c1 + offset) @ (c2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag)) if covmean.size else 0.0
        scale = max(1.0, float(np.max(np.abs(covmean.real))) if covmean.size else 1.0)
        if imag > 1e-6 * scale:
            warnings.warn(f"frechet distance: sqrtm has a non-negligible imaginary part ({imag:.3g}); dropped",
                          stacklevel=2)
        covmean = covmean.real
    diff = m1 - m2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    Fits ``mu = mean``, ``Sigma = sample covariance (ddof=1)`` to each (N, D) set in float64
    and returns ``||mu_a - mu_b||^2 + Tr(Sigma_a + Sigma_b - 2 (Sigma_a Sigma_b)^{1/2})``
    (see :func:`gaussian_frechet_distance`). Heusel et al. 2017 (FID) with custom features.

    Args: feats_a (N, D), feats_b (M, D), N, M >= 2.
    """
    a = _as_samples("feats_a", feats_a, min_count=2).numpy()
    b = _as_samples("feats_b", feats_b, dim=a.shape[1], min_count=2).numpy()
    return gaussian_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], a.shape[1]),
        b.mean(0), np.cov(b, rowvar=False, ddof=1).reshape(b.shape[1], b.shape[1]),
    )
