"""Forward processes x_t = alpha(t) x0 + sigma(t) eps in continuous time, computed in float64.

Every schedule exposes alpha(t), sigma(t), lam(t) = log(alpha/sigma) (half the log-SNR), its inverse
t_of_lam, their time derivatives (for ODE/SDE samplers), the map to the network's time input, and
``add_noise``. Time t runs from the clean end (t = 0: alpha = 1, sigma = 0) to ``t_max``; ``t_min`` is
the smallest time a model is trained on. Families:

* ``VPDiscrete``: a DDPM chain of betas (Ho et al. 2020, arXiv 2006.11239), made continuous as in
  DPM-Solver's NoiseScheduleVP (Lu et al. 2022, arXiv 2206.00927): step n = 0..N-1 sits at
  t_n = (n + 1)/N and log alpha is linear in t between steps; t = 0 is the clean data.
* ``VPLinear``: the continuous VP-SDE with beta(t) = beta_0 + t (beta_1 - beta_0) (Song et al. 2021,
  arXiv 2011.13456): log alpha(t) = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2.
* ``VESchedule``: variance exploding / EDM (Karras et al. 2022, arXiv 2206.00364): alpha = 1, sigma = t.
* ``SubVPSchedule``: the sub-VP SDE (Song et al. 2021, arXiv 2011.13456): alpha as ``VPLinear``, sigma = 1 - alpha^2.
* ``FlowSchedule``: rectified flow / flow matching (Liu et al. 2022, arXiv 2209.03003; Lipman et al.
  2022, arXiv 2210.02747): alpha = 1 - t, sigma = t.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from ._tensor import as_time, per_sample


class Schedule(ABC):
    """A Gaussian forward process in continuous time. Subclasses define log alpha, log sigma and lam^{-1}."""

    kind: str  # "vp", "ve" or "flow"
    t_min: float
    t_max: float

    # --- primitives ------------------------------------------------------------------------------
    @abstractmethod
    def log_alpha(self, t) -> torch.Tensor: ...

    @abstractmethod
    def log_sigma(self, t) -> torch.Tensor: ...

    @abstractmethod
    def d_log_alpha(self, t) -> torch.Tensor:
        """d log alpha / dt."""

    @abstractmethod
    def d_log_sigma(self, t) -> torch.Tensor:
        """d log sigma / dt."""

    @abstractmethod
    def t_of_lam(self, lam) -> torch.Tensor:
        """Inverse of lam(t) = log alpha(t) - log sigma(t) (lam is strictly decreasing in t)."""

    @abstractmethod
    def network_time(self, t) -> torch.Tensor:
        """The scalar a network receives as its time input for schedule time t."""

    @abstractmethod
    def config(self) -> dict:
        """JSON-serialisable constructor arguments, with a "name" key; see ``schedule_from_config``."""

    # --- derived quantities ------------------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def lam(self, t) -> torch.Tensor:
        """Half log-SNR: lam(t) = log alpha(t) - log sigma(t)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def snr(self, t) -> torch.Tensor:
        """SNR(t) = alpha^2 / sigma^2 = exp(2 lam)."""
        return torch.exp(2 * self.lam(t))

    def d_alpha(self, t) -> torch.Tensor:
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t) -> torch.Tensor:
        return self.sigma(t) * self.d_log_sigma(t)

    def d_lam(self, t) -> torch.Tensor:
        return self.d_log_alpha(t) - self.d_log_sigma(t)

    def sigma_tilde(self, t) -> torch.Tensor:
        """The equivalent VE noise level sigma/alpha = exp(-lam) (k-diffusion's sigma)."""
        return torch.exp(-self.lam(t))

    def t_of_sigma_tilde(self, sigma_tilde) -> torch.Tensor:
        return self.t_of_lam(-torch.log(as_time(sigma_tilde)))

    def prior_std(self) -> float:
        """Standard deviation of x_{t_max} when data has unit scale (the sampler's starting noise)."""
        a, s = float(self.alpha(self.t_max)), float(self.sigma(self.t_max))
        return math.sqrt(a * a + s * s)

    def add_noise(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps; t scalar or shape (B,). Returns x0's dtype."""
        t = as_time(t, device=x0.device)
        return per_sample(self.alpha(t), x0) * x0 + per_sample(self.sigma(t), x0) * eps

    def check_time(self, t) -> torch.Tensor:
        """Validate that every t lies in [0, t_max]; returns it as float64."""
        t = as_time(t)
        if bool(((t < 0) | (t > self.t_max * (1 + 1e-12)) | torch.isnan(t)).any()):
            raise ValueError(f"time out of range for {type(self).__name__}: allowed 0 <= t <= {self.t_max}")
        return t

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("name", "betas"))
        return f"{type(self).__name__}({args})"


# ------------------------------------------------------------------------------------------------
# Discrete VP (DDPM betas)
# ------------------------------------------------------------------------------------------------
def betas_for(name: str, num_train_timesteps: int = 1000, *, beta_start: float | None = None,
              beta_end: float | None = None) -> torch.Tensor:
    """Named beta schedules (float64, shape (N,)), with diffusers' names and defaults.

    * ``linear``: linspace(beta_start, beta_end, N), defaults 1e-4, 0.02 (Ho et al. 2020).
    * ``scaled_linear``: linspace(sqrt(beta_start), sqrt(beta_end), N)^2, with diffusers' defaults 1e-4, 0.02
      (as DDPMScheduler/DDIMScheduler); Stable Diffusion's values 0.00085, 0.012 must be passed explicitly,
      as its scheduler config does.
    * ``cosine`` / ``squaredcos_cap_v2``: beta_n = min(1 - abar((n+1)/N)/abar(n/N), 0.999) with
      abar(s) = cos^2((s + 0.008)/1.008 * pi/2) (Nichol & Dhariwal 2021, arXiv 2102.09672, eq. 17).
    """
    n = int(num_train_timesteps)
    if n < 2:
        raise ValueError(f"num_train_timesteps must be >= 2; got {n}")
    if name == "linear":
        b0 = 1e-4 if beta_start is None else beta_start
        b1 = 0.02 if beta_end is None else beta_end
        return torch.linspace(b0, b1, n, dtype=torch.float64)
    if name == "scaled_linear":
        b0 = 1e-4 if beta_start is None else beta_start
        b1 = 0.02 if beta_end is None else beta_end
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    if name in ("cosine", "squaredcos_cap_v2"):
        s = torch.arange(n + 1, dtype=torch.float64) / n
        abar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.clamp(1 - abar[1:] / abar[:-1], max=0.999)
    raise ValueError(f"unknown beta schedule {name!r}; allowed: linear, scaled_linear, cosine, squaredcos_cap_v2")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last step has SNR exactly 0 (Lin et al. 2023, arXiv 2305.08891, Alg. 1).

    sqrt(abar) is shifted so its last value is 0 and scaled so its first value is unchanged.
    """
    sqrt_abar = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation with increasing knots xp, linear extrapolation at both ends."""
    idx = torch.clamp(torch.searchsorted(xp, x.contiguous()), 1, len(xp) - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class VPDiscrete(Schedule):
    """Variance-preserving schedule from a discrete chain of betas.

    abar_n = prod_{i<=n} (1 - beta_i), alpha = sqrt(abar), sigma = sqrt(1 - abar). Step n is at
    t = (n + 1)/N; log alpha is piecewise linear in t on the knots {0, 1/N, ..., 1} with log alpha(0) = 0,
    so the schedule is continuous, reaches clean data at t = 0 and its integer steps are exact.

    Zero terminal SNR (abar_{N-1} = 0 exactly, alpha(1) = 0): log alpha has no finite last knot, so on the
    last interval [(N - 1)/N, 1] alpha itself is linear in t, alpha = alpha_{N-2} N (1 - t), which keeps the
    integer steps exact, alpha continuous and decreasing, and lam = -inf only at t = 1.

    Args:
        betas: (N,) betas, or use ``VPDiscrete.named("linear", 1000)``.
        zero_terminal_snr: apply ``rescale_zero_terminal_snr`` first (Lin et al. 2023): abar_{N-1} = 0
            exactly, so t = 1 is pure noise (alpha = 0, lam = -inf); the samplers step from it exactly.
    """

    kind = "vp"

    def __init__(self, betas, *, zero_terminal_snr: bool = False, beta_schedule: str | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or bool(((betas <= 0) | (betas >= 1)).any()):
            raise ValueError("betas must hold at least 2 values, each strictly between 0 and 1")
        self.beta_schedule = beta_schedule
        self.zero_terminal_snr = bool(zero_terminal_snr)
        self._source_betas = betas
        if self.zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        abar = torch.cumprod(1 - betas, 0)
        if self.zero_terminal_snr:
            abar[-1] = 0.0  # exactly (beta_{N-1} = 1 after the rescale; guard against rounding)
        self.alphas_cumprod = abar
        self.num_train_timesteps = n = betas.numel()
        self._t_knots = torch.arange(n + 1, dtype=torch.float64) / n
        self._log_alpha_knots = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(abar)])
        self._zero_end = self.zero_terminal_snr
        if self._zero_end:  # a finite stand-in for the -inf knot, overridden on the last interval
            self._log_alpha_knots[-1] = 2 * self._log_alpha_knots[-2] - self._log_alpha_knots[-3]
            self._t_last = float(self._t_knots[-2])
            self._log_alpha_last = float(self._log_alpha_knots[-2])
        self.t_min = 1.0 / n
        self.t_max = 1.0

    @classmethod
    def named(cls, name: str = "linear", num_train_timesteps: int = 1000, *, zero_terminal_snr: bool = False,
              beta_start: float | None = None, beta_end: float | None = None) -> "VPDiscrete":
        betas = betas_for(name, num_train_timesteps, beta_start=beta_start, beta_end=beta_end)
        return cls(betas, zero_terminal_snr=zero_terminal_snr, beta_schedule=name)

    def config(self) -> dict:
        return {"name": "vp_discrete", "beta_schedule": self.beta_schedule, "zero_terminal_snr": self.zero_terminal_snr,
                "num_train_timesteps": self.num_train_timesteps, "betas": self._source_betas.tolist()}

    # integer timesteps n = 0..N-1 <-> t = (n + 1)/N
    @property
    def timesteps(self) -> torch.Tensor:
        return torch.arange(self.num_train_timesteps)

    def t_of_timestep(self, n) -> torch.Tensor:
        return (as_time(n) + 1) / self.num_train_timesteps

    def timestep_of_t(self, t) -> torch.Tensor:
        return as_time(t) * self.num_train_timesteps - 1

    def network_time(self, t) -> torch.Tensor:
        """The (fractional) integer timestep n = t N - 1 that DDPM networks are trained on."""
        return self.timestep_of_t(t)

    def _on_last(self, t: torch.Tensor) -> torch.Tensor:
        """Mask of times on the last interval when alpha is linear there (zero terminal SNR)."""
        return t > self._t_last if self._zero_end else torch.zeros_like(t, dtype=torch.bool)

    def log_alpha(self, t) -> torch.Tensor:
        t = as_time(t)
        out = _interp(t.reshape(-1), self._t_knots, self._log_alpha_knots).reshape(t.shape)
        if self._zero_end:
            frac = torch.clamp((1 - t) * self.num_train_timesteps, min=0)  # alpha / alpha_{N-2} on the last interval
            out = torch.where(self._on_last(t), self._log_alpha_last + torch.log(frac), out)
        return out

    def log_sigma(self, t) -> torch.Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def d_log_alpha(self, t) -> torch.Tensor:
        t = as_time(t)
        idx = torch.clamp(torch.searchsorted(self._t_knots, t.reshape(-1).contiguous()), 1, self.num_train_timesteps)
        slope = ((self._log_alpha_knots[idx] - self._log_alpha_knots[idx - 1]) * self.num_train_timesteps)
        slope = slope.reshape(t.shape)
        if self._zero_end:
            slope = torch.where(self._on_last(t), -1.0 / (1 - t), slope)
        return slope

    def d_alpha(self, t) -> torch.Tensor:
        t = as_time(t)
        out = self.alpha(t) * self.d_log_alpha(t)
        if self._zero_end:  # finite at alpha = 0, where alpha * d log alpha is 0 * inf
            out = torch.where(self._on_last(t), -math.exp(self._log_alpha_last) * self.num_train_timesteps, out)
        return out

    def d_log_sigma(self, t) -> torch.Tensor:
        a2 = torch.exp(2 * self.log_alpha(t))
        out = -a2 / (1 - a2) * self.d_log_alpha(t)
        if self._zero_end:  # -alpha alpha' / sigma^2, which is 0 at alpha = 0
            out = torch.where(a2 == 0, torch.zeros_like(out), out)
        return out

    def t_of_lam(self, lam) -> torch.Tensor:
        lam = as_time(lam)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2 * lam)
        # log alpha decreases along the knots; interpolate t as a function of it (exact inverse).
        flat = _interp(log_alpha.reshape(-1), self._log_alpha_knots.flip(0), self._t_knots.flip(0))
        out = flat.reshape(lam.shape)
        if self._zero_end:
            last = 1 - torch.exp(log_alpha - self._log_alpha_last) / self.num_train_timesteps
            out = torch.where(log_alpha < self._log_alpha_last, last, out)
        return out


class VPLinear(Schedule):
    """Continuous VP-SDE with linear beta(t) (Song et al. 2021): log alpha = -(b1 - b0) t^2/4 - b0 t/2.

    Network time input is 1000 t. ``t_min`` defaults to 1e-3 as in DPM-Solver's continuous models.
    """

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max; got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = float(beta_min), float(beta_max), float(t_min), 1.0

    def config(self) -> dict:
        return {"name": "vp_linear", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def network_time(self, t) -> torch.Tensor:
        return 1000.0 * as_time(t)

    def log_alpha(self, t) -> torch.Tensor:
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def log_sigma(self, t) -> torch.Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def d_log_alpha(self, t) -> torch.Tensor:
        return -0.5 * (as_time(t) * (self.beta_max - self.beta_min) + self.beta_min)

    def d_log_sigma(self, t) -> torch.Tensor:
        a2 = torch.exp(2 * self.log_alpha(t))
        return -a2 / (1 - a2) * self.d_log_alpha(t)

    def t_of_lam(self, lam) -> torch.Tensor:
        # Solve (b1 - b0) t^2/2 + b0 t = log(1 + e^{-2 lam}) for t >= 0 (DPM-Solver, Appendix).
        lam = as_time(lam)
        rhs = 2.0 * (self.beta_max - self.beta_min) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        disc = self.beta_min**2 + rhs
        return rhs / (torch.sqrt(disc) + self.beta_min) / (self.beta_max - self.beta_min)


class VESchedule(Schedule):
    """Variance exploding / EDM: alpha = 1, sigma = t on [0, sigma_max] (Karras et al. 2022).

    Network time input is EDM's c_noise = log(sigma)/4, scaled by 1000: 250 log(t).
    """

    kind = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def config(self) -> dict:
        return {"name": "ve", "sigma_min": self.t_min, "sigma_max": self.t_max}

    def network_time(self, t) -> torch.Tensor:
        return 250.0 * torch.log(as_time(t))

    def log_alpha(self, t) -> torch.Tensor:
        return torch.zeros_like(as_time(t))

    def log_sigma(self, t) -> torch.Tensor:
        return torch.log(as_time(t))

    def d_log_alpha(self, t) -> torch.Tensor:
        return torch.zeros_like(as_time(t))

    def d_log_sigma(self, t) -> torch.Tensor:
        return 1.0 / as_time(t)

    def d_alpha(self, t) -> torch.Tensor:
        return torch.zeros_like(as_time(t))

    def d_sigma(self, t) -> torch.Tensor:
        return torch.ones_like(as_time(t))

    def t_of_lam(self, lam) -> torch.Tensor:
        return torch.exp(-as_time(lam))


class FlowSchedule(Schedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t on [0, 1]; network time input 1000 t.

    lam = log((1 - t)/t), so t_of_lam = sigmoid(-lam). At t = 1 the data coefficient is 0: convert
    predictions there with velocity or eps-free forms (see ``predictions``).
    """

    kind = "flow"

    def __init__(self, *, t_min: float = 1e-3, t_max: float = 1.0):
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1; got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def config(self) -> dict:
        return {"name": "flow", "t_min": self.t_min, "t_max": self.t_max}

    def network_time(self, t) -> torch.Tensor:
        return 1000.0 * as_time(t)

    def log_alpha(self, t) -> torch.Tensor:
        return torch.log1p(-as_time(t))

    def log_sigma(self, t) -> torch.Tensor:
        return torch.log(as_time(t))

    def alpha(self, t) -> torch.Tensor:
        return 1 - as_time(t)

    def sigma(self, t) -> torch.Tensor:
        return as_time(t).clone()

    def d_log_alpha(self, t) -> torch.Tensor:
        return -1.0 / (1 - as_time(t))

    def d_log_sigma(self, t) -> torch.Tensor:
        return 1.0 / as_time(t)

    def d_alpha(self, t) -> torch.Tensor:
        return -torch.ones_like(as_time(t))

    def d_sigma(self, t) -> torch.Tensor:
        return torch.ones_like(as_time(t))

    def t_of_lam(self, lam) -> torch.Tensor:
        return torch.sigmoid(-as_time(lam))


class SubVPSchedule(Schedule):
    """The sub-VP SDE of Song et al. 2021 (arXiv 2011.13456, eq. 17), with beta(t) = beta_0 + t (beta_1 - beta_0):

        dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dW,
        B(t) = int_0^t beta = beta_0 t + (beta_1 - beta_0) t^2/2,

    whose perturbation kernel (eq. 29) is N(alpha x0, sigma^2 I) with alpha = exp(-B/2) (as the VP SDE) and
    sigma = 1 - alpha^2 = -expm1(-B), so its variance (1 - e^{-B})^2 stays below the VP SDE's 1 - e^{-B}.
    lam = log alpha - log(1 - alpha^2) inverts in closed form: alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam})),
    then B = -2 log alpha and t solves the quadratic in B. Network time input 1000 t (as ``VPLinear``); t_min 1e-3.
    """

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max; got {beta_min}, {beta_max}")
        if not 0 < t_min < 1:
            raise ValueError(f"need 0 < t_min < 1; got {t_min}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = float(beta_min), float(beta_max), float(t_min), 1.0

    def config(self) -> dict:
        return {"name": "sub_vp", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def network_time(self, t) -> torch.Tensor:
        return 1000.0 * as_time(t)

    def beta(self, t) -> torch.Tensor:
        """beta(t) = beta_0 + t (beta_1 - beta_0)."""
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t) -> torch.Tensor:
        """B(t) = int_0^t beta(u) du = beta_0 t + (beta_1 - beta_0) t^2 / 2."""
        t = as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def diffusion_squared(self, t) -> torch.Tensor:
        """g(t)^2 = beta(t) (1 - exp(-2 B(t))), the sub-VP SDE's diffusion coefficient squared (eq. 17)."""
        return self.beta(t) * -torch.expm1(-2 * self.integral_beta(t))

    def log_alpha(self, t) -> torch.Tensor:
        return -0.5 * self.integral_beta(t)

    def log_sigma(self, t) -> torch.Tensor:
        return torch.log(-torch.expm1(-self.integral_beta(t)))

    def d_log_alpha(self, t) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def d_log_sigma(self, t) -> torch.Tensor:
        """d log(1 - e^{-B}) / dt = beta e^{-B} / (1 - e^{-B}) = beta / expm1(B)."""
        return self.beta(t) / torch.expm1(self.integral_beta(t))

    def t_of_lam(self, lam) -> torch.Tensor:
        lam = as_time(lam)
        half_log_root = 0.5 * torch.logaddexp(torch.zeros_like(lam), math.log(4.0) + 2 * lam)  # log sqrt(1 + 4e^2lam)
        log_alpha = math.log(2.0) + lam - torch.logaddexp(torch.zeros_like(lam), half_log_root)
        big_b = -2 * log_alpha
        slope = self.beta_max - self.beta_min
        return 2 * big_b / (torch.sqrt(self.beta_min**2 + 2 * slope * big_b) + self.beta_min)


_SCHEDULES = {"vp_discrete": VPDiscrete, "vp_linear": VPLinear, "ve": VESchedule, "flow": FlowSchedule,
              "sub_vp": SubVPSchedule}


def schedule_from_config(config: dict) -> Schedule:
    """Rebuild a schedule from ``Schedule.config()`` (or a short user config such as
    ``{"name": "vp_discrete", "beta_schedule": "linear", "num_train_timesteps": 1000}``)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(_SCHEDULES)}")
    if name == "vp_discrete":
        betas = config.pop("betas", None)
        beta_schedule = config.pop("beta_schedule", None)
        ztsnr = config.pop("zero_terminal_snr", False)
        n = config.pop("num_train_timesteps", 1000)
        beta_start, beta_end = config.pop("beta_start", None), config.pop("beta_end", None)
        if config:
            raise ValueError(f"unknown vp_discrete options: {', '.join(config)}; allowed: betas, beta_schedule, "
                             "beta_start, beta_end, num_train_timesteps, zero_terminal_snr")
        if betas is None:
            return VPDiscrete.named(beta_schedule or "linear", n, zero_terminal_snr=ztsnr, beta_start=beta_start,
                                    beta_end=beta_end)
        return VPDiscrete(betas, zero_terminal_snr=ztsnr, beta_schedule=beta_schedule)
    try:
        return _SCHEDULES[name](**config)
    except TypeError as err:
        raise ValueError(f"bad options for schedule {name!r}: {err}") from None
