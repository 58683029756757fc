"""The Brownian-bridge process type (BBDM: Li et al. 2023, arXiv 2205.07680; used by the Consecutive Brownian Bridge of
Lyu et al. 2024, arXiv 2405.05953), a process of its own: it pins *both* ends to data, so it does not fit the Gaussian
``Schedule``/``Denoiser`` contract and adds no branch to the Gaussian samplers.

Forward marginal between a clean image x (t = 0) and a neighbour y (t = T), discrete t in {0, 1, ..., T}:

    q(x_t | x, y) = N((1 - m_t) x + m_t y, delta_t I),      m_t = t / T,      delta_t = 2 max_var (m_t - m_t^2).

So x_0 = x and x_T = y exactly (delta_0 = delta_T = 0) and the variance peaks at max_var / 2 in the middle.
The reference code (ZonglinL/ConsecutiveBrownianBridge, ``register_schedule``) stores m on its 0-based index k as
linspace(0.001, 0.999, T), i.e. m = (k + 1) / T clipped at 0.999 to avoid delta = 0; we keep the exact ends instead
and handle delta_t = 0 in the step (below).

Markov transition (BBDM eq. 6): for s < t, x_t = a_{t|s} x_s + (m_t - a_{t|s} m_s) y + sqrt(delta_{t|s}) eps with
a_{t|s} = (1 - m_t) / (1 - m_s) and delta_{t|s} = delta_t - a_{t|s}^2 delta_s. The posterior q(x_s | x_t, x) has
variance delta_{t|s} delta_s / delta_t = delta_s (1 - m_s (1 - m_t) / (m_t (1 - m_s))) (the stable form used here).

Reverse step (BBDM's skip-step sampler with eta, their eq. 13-14, ``p_sample`` in the reference): with x0_hat the
prediction of x and eps_hat = (x_t - (1 - m_t) x0_hat - m_t y) / sqrt(delta_t) (taken as 0 where delta_t = 0, at
t = T, where x_T = y carries no noise),

    sigma_s^2 = eta^2 delta_s (1 - m_s (1 - m_t) / (m_t (1 - m_s))),
    x_s = (1 - m_s) x0_hat + m_s y + sqrt(delta_s - sigma_s^2) eps_hat + sigma_s z.

eta = 1 is the true posterior q(x_s | x_t, x = x0_hat); any eta keeps the marginal at s when x0_hat is exact.
A step to s = 0 returns x0_hat exactly.
"""

from __future__ import annotations

import torch

from ...core.noise import GeneratorArg, randn_like

__all__ = ["BrownianBridge", "grid_bridge"]


def grid_bridge(num_steps: int, num_timesteps: int = 1000) -> torch.Tensor:
    """Sampling grid (long, shape (num_steps + 1,)): ``num_steps`` uniform skips from t = T down to t = 0 inclusive,
    rounded to integers (distinct as long as num_steps <= T). One step = one x0 prediction per bridge."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an integer in [1, {num_timesteps}]; got {num_steps!r}")
    grid = torch.linspace(float(num_timesteps), 0.0, num_steps + 1, dtype=torch.float64).round().long()
    return grid


class BrownianBridge:
    """Brownian bridge between x (t = 0) and y (t = T); see the module docstring for the equations.

    Time indices are integers (tensors of shape (B,) or python ints); coefficient tables are float64, cast to the
    data's dtype at use. Data shapes: x, y, noise (B, ...).
    """

    def __init__(self, num_timesteps: int = 1000, *, max_var: float = 1.0):
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1; got {num_timesteps!r}")
        if not max_var > 0:
            raise ValueError(f"max_var must be > 0; got {max_var!r}")
        self.num_timesteps = num_timesteps
        self.max_var = float(max_var)
        self.m = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        self.delta = 2.0 * self.max_var * (self.m - self.m ** 2)
        self.delta[0] = self.delta[-1] = 0.0  # exact ends (m^2 rounding aside)
        self.config = {"num_timesteps": num_timesteps, "max_var": self.max_var, "m": "t / T"}

    # --- coefficients -----------------------------------------------------------------------------------
    def _coef(self, table: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        if t.min() < 0 or t.max() > self.num_timesteps:
            raise ValueError(f"time indices must be in [0, {self.num_timesteps}]; got {t.tolist()}")
        c = table[t].to(x.dtype).to(x.device)
        return c.reshape(-1, *([1] * (x.dim() - 1))) if c.dim() == 1 else c

    def marginal_mean(self, x: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
        """E[x_t | x, y] = (1 - m_t) x + m_t y."""
        m = self._coef(self.m, t, x)
        return (1 - m) * x + m * y

    def marginal_std(self, t, like: torch.Tensor) -> torch.Tensor:
        """sqrt(delta_t), broadcast against ``like``."""
        return self._coef(self.delta, t, like).sqrt()

    def q_sample(self, x: torch.Tensor, y: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - m_t) x + m_t y + sqrt(delta_t) noise (BBDM eq. 3)."""
        return self.marginal_mean(x, y, t) + self.marginal_std(t, x) * noise

    def loss_weight(self, t, like: torch.Tensor, *, max_weight: float = 5.0) -> torch.Tensor:
        """min(1 / sqrt(delta_t), max_weight) (the reference's ``snr.clamp_(max=5)``); max_weight where delta_t = 0."""
        std = self.marginal_std(t, like)
        return torch.where(std > 0, 1.0 / std.clamp_min(1e-12), torch.full_like(std, max_weight)).clamp(max=max_weight)

    def posterior_variance(self, t: int, s: int) -> float:
        """Var of q(x_s | x_t, x), s < t: delta_s (1 - m_s (1 - m_t) / (m_t (1 - m_s))) (0 at s = 0)."""
        t, s = int(t), int(s)
        if not 0 <= s < t <= self.num_timesteps:
            raise ValueError(f"need 0 <= s < t <= {self.num_timesteps}; got s={s}, t={t}")
        m_t, m_s, d_s = float(self.m[t]), float(self.m[s]), float(self.delta[s])
        if s == 0:
            return 0.0
        return max(d_s * (1.0 - m_s * (1.0 - m_t) / (m_t * (1.0 - m_s))), 0.0)

    # --- reverse step -----------------------------------------------------------------------------------
    def step(self, x_t: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor, t: int, s: int, *, eta: float = 1.0,
             noise: torch.Tensor | None = None, generator: GeneratorArg = None) -> torch.Tensor:
        """One reverse step t -> s < t (module docstring): x_s = mu_s(x0_hat) + sqrt(delta_s - sigma^2) eps_hat
        + sigma z, sigma^2 = eta^2 Var q(x_s | x_t, x). ``noise`` (z, same shape as x_t) overrides ``generator``
        (the consecutive bridge passes one draw to both bridges). Shapes (B, ...) -> (B, ...)."""
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1]; got {eta!r}")
        t, s = int(t), int(s)
        var_post = self.posterior_variance(t, s)
        d_t, d_s = float(self.delta[t]), float(self.delta[s])
        sigma2 = eta * eta * var_post
        mean = self.marginal_mean(x0_hat, y, s)
        if d_t > 0 and d_s - sigma2 > 0:
            eps_hat = (x_t - self.marginal_mean(x0_hat, y, t)) / d_t ** 0.5
            mean = mean + (d_s - sigma2) ** 0.5 * eps_hat
        if sigma2 <= 0:
            return mean
        if noise is None:
            noise = randn_like(x_t, generator)
        return mean + sigma2 ** 0.5 * noise
