"""Gaussian mixtures with the exact denoiser E[x0 | x_t] under any Gaussian forward process.

For data x0 ~ sum_k pi_k N(mu_k, Sigma_k) and x_t = alpha_t x0 + sigma_t eps, eps ~ N(0, I):

    p(x_t)          = sum_k pi_k N(x_t; alpha mu_k, C_k),   C_k = alpha^2 Sigma_k + sigma^2 I
    r_k(x_t)        = pi_k N(x_t; alpha mu_k, C_k) / p(x_t)                    (responsibilities)
    E[x0 | x_t, k]  = mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)
    E[x0 | x_t]     = sum_k r_k(x_t) E[x0 | x_t, k]

With the eigendecomposition Sigma_k = U_k diag(s_k) U_k^T, C_k shares the eigenvectors, so every
quantity above costs one projection per component. This is the ground truth that solver tests and
benchmarks use: no training error hides solver error (Karras et al. 2022, arXiv 2206.00364, use the
same device; the posterior-mean formula is standard Gaussian conditioning).
"""

from __future__ import annotations

import math

import torch

from ._tensor import as_time, per_sample
from .denoiser import Denoiser
from .schedules import Schedule


class GaussianMixture:
    """A mixture of full-covariance Gaussians in D dimensions, held in float64.

    Args:
        means: (K, D) component means.
        covs: (K, D, D) symmetric positive-definite covariances.
        weights: (K,) non-negative mixture weights (normalised here).
    """

    def __init__(self, means: torch.Tensor, covs: torch.Tensor, weights: torch.Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D); got {tuple(means.shape)}")
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}) to match means; got {tuple(covs.shape)}")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        if not torch.allclose(covs, covs.transpose(-1, -2), atol=1e-10):
            raise ValueError("covs must be symmetric")
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if bool((eigvals <= 0).any()):
            raise ValueError("covs must be positive definite (all eigenvalues > 0)")
        self.means = means
        self.covs = covs
        self.weights = weights / weights.sum()
        self.eigvals = eigvals  # (K, D)
        self.eigvecs = eigvecs  # (K, D, D), columns are eigenvectors
        self._chol = torch.linalg.cholesky(covs)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, *, return_labels: bool = False):
        """Draw n samples (float64, shape (n, D)); optionally also the component index of each."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self._chol[labels], z)
        return (x, labels) if return_labels else x

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Total covariance: sum_k pi_k (Sigma_k + mu_k mu_k^T) - mu mu^T."""
        mu = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - mu[:, None] * mu[None, :]

    def _component_terms(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Per-component log N(x; alpha mu_k, C_k) and posterior means, shapes (B, K) and (B, K, D)."""
        x = x.to(torch.float64)
        a = alpha.reshape(-1, 1, 1)  # (B or 1, 1, 1)
        s2 = (sigma**2).reshape(-1, 1, 1)
        var = a**2 * self.eigvals[None] + s2  # (B, K, D): eigenvalues of C_k
        centred = x[:, None, :] - a * self.means[None]  # (B, K, D)
        z = torch.einsum("kji,bkj->bki", self.eigvecs, centred)  # U_k^T (x - alpha mu_k)
        log_norm = -0.5 * ((z**2) / var).sum(-1) - 0.5 * torch.log(2 * math.pi * var).sum(-1)
        gain = a * self.eigvals[None] / var  # alpha s / (alpha^2 s + sigma^2)
        post = self.means[None] + torch.einsum("kij,bkj->bki", self.eigvecs, gain * z)
        return log_norm, post

    def marginal_log_prob(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """log p_t(x) for x_t = alpha x0 + sigma eps; alpha, sigma scalars or shape (B,). Returns (B,)."""
        alpha, sigma = as_time(alpha), as_time(sigma)
        log_norm, _ = self._component_terms(x, alpha, sigma)
        return torch.logsumexp(log_norm + torch.log(self.weights)[None], dim=-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact data log-density log p(x0), shape (B,)."""
        return self.marginal_log_prob(x, 1.0, 0.0)

    def posterior_mean(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[x0 | x_t = x] in float64, shape (B, D). alpha, sigma: scalars or shape (B,)."""
        alpha, sigma = as_time(alpha), as_time(sigma)
        log_norm, post = self._component_terms(x, alpha, sigma)
        resp = torch.softmax(log_norm + torch.log(self.weights)[None], dim=-1)  # (B, K)
        return (resp[:, :, None] * post).sum(1)

    def denoiser(self, schedule: Schedule) -> "GMMDenoiser":
        return GMMDenoiser(self, schedule)


class GMMDenoiser(Denoiser):
    """The exact Denoiser x0_hat(x, t) = E[x0 | x_t = x] of a GaussianMixture under ``schedule``.

    At sigma_t = 0 (the clean end of the process) it returns x / alpha_t.
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__(schedule)
        self.mixture = mixture

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.mixture.dim:
            raise ValueError(f"GMM denoiser expects x of shape (B, {self.mixture.dim}); got {tuple(x.shape)}")
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        clean = sigma == 0
        x0 = self.mixture.posterior_mean(x, alpha, torch.where(clean, torch.ones_like(sigma), sigma))
        if bool(clean.any()):
            x0 = torch.where(clean.reshape(-1, 1), x.to(torch.float64) / per_sample(alpha, x0), x0)
        return x0.to(x.dtype)
