"""ResShift: diffusion for image restoration by residual shifting (Yue et al., NeurIPS 2023, arXiv 2307.12348),
in pixel space, plus a conditional DDPM super-resolution baseline (SR3-style, LR concatenated).

Markov chain between the clean image x0 and the degraded input y (upsampled to x0's size):

    q(x_t | x0, y)       = N(x0 + eta_t (y - x0), kappa^2 eta_t I),               t = 1 .. T
    prior  x_T           = y + kappa sqrt(eta_T) eps                              (eta_T ~ 1)
    q(x_{t-1} | x_t, x0) = N(eta_{t-1}/eta_t x_t + alpha_t/eta_t x0, kappa^2 eta_{t-1}/eta_t alpha_t I),
                           alpha_t = eta_t - eta_{t-1}, eta_0 = 0.

Schedule (the paper's "exponential" schedule): sqrt(eta_1) = min(p/kappa, p) with p = min_noise_level,
sqrt(eta_T) = 0.99 (``sqrt_eta_max``), sqrt(eta_t) = sqrt(eta_1) b^{beta_t}, b = (sqrt(eta_T)/sqrt(eta_1))^{1/(T-1)},
beta_t = ((t-1)/(T-1))^power (T-1). With T = 4, p = 0.2, kappa = 2, power = 0.3:
eta = 0.01, 0.27, 0.58, 0.98.

The network predicts x0 from (x_t / sqrt(kappa^2 eta_t + 1), y) concatenated along channels at network
time ``t_index * 1000 / T``; loss = per-example mean squared error ||f(x_t, y, t) - x0||^2 (the paper's
pixel loss, weight 1). Sampling: x_T from the prior, then T posterior steps with x0_hat clamped to
[-1, 1]; the last step (t = 1, eta_0 = 0) returns x0_hat with no noise. NFE = T.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core import Denoiser, VPDiscrete, grid_uniform, prior_sample
from ..core.noise import randn, randn_like
from ..nets import UNet
from ..samplers import sample_ddim, sample_ddpm
from ..training import TrainConfig, Trainer

__all__ = ["eta_schedule", "ResShift", "SRDenoiser", "make_sr_net", "ddpm_sr_loss", "train_resshift",
           "train_ddpm_sr", "sample_ddpm_sr", "sr_pairs"]


def eta_schedule(num_steps: int = 4, *, kappa: float = 2.0, min_noise_level: float = 0.2, power: float = 0.3,
                 sqrt_eta_max: float = 0.99) -> torch.Tensor:
    """eta_1 .. eta_T (float64, shape (T,)) of ResShift's exponential schedule (see the module docstring)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    if kappa <= 0 or min_noise_level <= 0 or power <= 0:
        raise ValueError("kappa, min_noise_level and power must be > 0")
    sqrt_eta_1 = min(min_noise_level / kappa, min_noise_level)
    if not sqrt_eta_1 < sqrt_eta_max <= 1:
        raise ValueError(f"need sqrt(eta_1) = {sqrt_eta_1} < sqrt_eta_max = {sqrt_eta_max} <= 1")
    if num_steps == 1:
        return torch.tensor([sqrt_eta_max ** 2], dtype=torch.float64)
    steps = torch.arange(num_steps, dtype=torch.float64)
    beta = (steps / (num_steps - 1)) ** power * (num_steps - 1)
    base = (sqrt_eta_max / sqrt_eta_1) ** (1.0 / (num_steps - 1))
    return (sqrt_eta_1 * base ** beta) ** 2


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).to(x.device).reshape(-1, *([1] * (x.dim() - 1)))


class ResShift:
    """The residual-shifting chain. Time indices ``t`` are 0-based: index i is the paper's t = i + 1."""

    def __init__(self, num_steps: int = 4, *, kappa: float = 2.0, min_noise_level: float = 0.2,
                 power: float = 0.3, sqrt_eta_max: float = 0.99):
        self.num_steps = int(num_steps)
        self.kappa = float(kappa)
        self.etas = eta_schedule(num_steps, kappa=kappa, min_noise_level=min_noise_level, power=power,
                                 sqrt_eta_max=sqrt_eta_max)
        self.config = {"num_steps": self.num_steps, "kappa": self.kappa, "min_noise_level": min_noise_level,
                       "power": power, "sqrt_eta_max": sqrt_eta_max}

    # --- forward process -------------------------------------------------------------------------------
    def _eta(self, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        return _col(self.etas[t], x)

    def marginal_std(self, t) -> torch.Tensor:
        return self.kappa * self.etas[torch.as_tensor(t, dtype=torch.long)].sqrt()

    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise."""
        eta = self._eta(t, x0)
        return x0 + eta * (y - x0) + self.kappa * eta.sqrt() * noise

    def prior_sample(self, y: torch.Tensor, generator=None) -> torch.Tensor:
        """x_T = y + kappa sqrt(eta_T) eps."""
        return y + self.kappa * float(self.etas[-1]) ** 0.5 * randn(y.shape, generator, dtype=y.dtype,
                                                                     device=y.device)

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
        """Mean and std of q(x_{t-1} | x_t, x0) for the 0-based index t (t = 0 gives (x0, 0))."""
        if t == 0:
            return x0, 0.0
        eta_t, eta_s = float(self.etas[t]), float(self.etas[t - 1])
        alpha = eta_t - eta_s
        mean = (eta_s / eta_t) * x_t + (alpha / eta_t) * x0
        return mean, self.kappa * math.sqrt(eta_s / eta_t * alpha)

    # --- network interface -----------------------------------------------------------------------------
    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float32) * (1000.0 / self.num_steps)

    def predict_x0(self, net: torch.nn.Module, x_t: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
        """Raw network x0 prediction from (x_t / sqrt(kappa^2 eta_t + 1), y) at network time."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).expand(x_t.shape[0]) if torch.as_tensor(t).dim() == 0 \
            else torch.as_tensor(t, dtype=torch.long)
        eta = self._eta(t, x_t)
        x_in = x_t / torch.sqrt(self.kappa ** 2 * eta + 1)
        return net(torch.cat([x_in, y], dim=1), self.net_time(t).to(x_t.device))

    def loss(self, net: torch.nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        """Per-example ResShift loss, batch = (x0, y): mean over pixels of (f(x_t, y, t) - x0)^2."""
        x0, y = batch[0], batch[1]
        b = x0.shape[0]
        t = torch.randint(0, self.num_steps, (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        x_t = self.q_sample(x0, y, t, noise)
        pred = self.predict_x0(net, x_t, y, t)
        return (pred - x0).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def sample(self, x0_fn: Callable | torch.nn.Module, y: torch.Tensor, generator=None, *,
               clip: bool = True, callback=None) -> torch.Tensor:
        """Reverse chain in T steps (T NFE). ``x0_fn`` is a net (x0-predicting, input as in
        :meth:`predict_x0`) or a callable ``x0_fn(x_t, y, t_index) -> x0_hat``."""
        if isinstance(x0_fn, torch.nn.Module):
            net = x0_fn
            x0_fn = lambda x, yy, t: self.predict_x0(net, x, yy, t)  # noqa: E731
        x = self.prior_sample(y, generator)
        for t in range(self.num_steps - 1, -1, -1):
            x0 = x0_fn(x, y, torch.full((x.shape[0],), t, dtype=torch.long))
            if clip:
                x0 = x0.clamp(-1, 1)
            mean, std = self.posterior(x, x0, t)
            x = mean + std * randn_like(x, generator) if std > 0 else mean
            if callback is not None:
                callback({"t": t, "x": x, "x0_hat": x0})
        return x


# --- conditional DDPM SR baseline ----------------------------------------------------------------------

class SRDenoiser(Denoiser):
    """An eps-predicting conditional net ``net(cat[x_t, lr_up], t_net)`` under the Denoiser contract;
    call with ``lr=<upsampled LR image>`` as conditioning."""

    def __init__(self, net: torch.nn.Module, schedule):
        super().__init__(schedule)
        self.net = net

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *, lr: torch.Tensor, **cond) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        a, s = _col(self.schedule.alpha(t), x), _col(self.schedule.sigma(t), x)
        eps = self.net(torch.cat([x.to(torch.float32), lr.to(torch.float32)], dim=1),
                       self.schedule.network_time(t).to(torch.float32)).to(x.dtype)
        return (x - s * eps) / a


def ddpm_sr_loss(schedule: VPDiscrete) -> Callable:
    """Per-example eps-MSE loss for a conditional SR net, batch = (x0, lr_up); discrete timesteps uniform."""
    n_train = schedule.num_train_timesteps if hasattr(schedule, "num_train_timesteps") else 1000

    def loss(net, batch, generator):
        x0, lr = batch[0], batch[1]
        b = x0.shape[0]
        n = torch.randint(0, n_train, (b,), generator=generator)
        t = ((n + 1).to(torch.float64) / n_train)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        a, s = _col(schedule.alpha(t), x0), _col(schedule.sigma(t), x0)
        pred = net(torch.cat([a * x0 + s * eps, lr], dim=1), schedule.network_time(t).to(torch.float32))
        return (pred - eps).pow(2).flatten(1).mean(1)

    return loss


def make_sr_net(base_channels: int = 32, *, image_size: int = 8, channels: int = 1) -> UNet:
    """The small conditional UNet used for both ResShift and the DDPM baseline (LR concatenated)."""
    return UNet(in_channels=2 * channels, out_channels=channels, base_channels=base_channels, channel_mult=(1, 2),
                num_res_blocks=1, attention_resolutions=[], image_size=image_size)


def _train(net, loss_fn, data, *, steps, max_seconds, seed, batch_size, lr):
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=None,
                      seed=seed, max_seconds=max_seconds, progress=False, log_every=10 ** 9)
    trainer = Trainer(net, loss_fn, data, cfg)
    hist = trainer.fit()
    net.eval()
    return net, {"steps": int(hist.get("step", steps)), "seconds": float(hist.get("seconds", float("nan")))}


def train_resshift(rs: ResShift, x0: torch.Tensor, y: torch.Tensor, *, steps: int = 100000,
                   max_seconds: float | None = 60.0, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                   base_channels: int = 32):
    """Train a fresh x0-predicting net on pairs (x0, y); returns (net, info)."""
    torch.manual_seed(seed)
    net = make_sr_net(base_channels, image_size=x0.shape[-1], channels=x0.shape[1])
    return _train(net, rs.loss, (x0, y), steps=steps, max_seconds=max_seconds, seed=seed,
                  batch_size=batch_size, lr=lr)


def train_ddpm_sr(schedule: VPDiscrete, x0: torch.Tensor, y: torch.Tensor, *, steps: int = 100000,
                  max_seconds: float | None = 60.0, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                  base_channels: int = 32):
    """Train a fresh eps-predicting conditional net; returns (SRDenoiser, info)."""
    torch.manual_seed(seed)
    net = make_sr_net(base_channels, image_size=x0.shape[-1], channels=x0.shape[1])
    net, info = _train(net, ddpm_sr_loss(schedule), (x0, y), steps=steps, max_seconds=max_seconds, seed=seed,
                       batch_size=batch_size, lr=lr)
    return SRDenoiser(net, schedule), info


@torch.no_grad()
def sample_ddpm_sr(den: SRDenoiser, y: torch.Tensor, steps: int, generator=None, *, method: str = "ddpm",
                   eta: float = 0.0) -> torch.Tensor:
    """Sample the baseline from N(0, I) in ``steps`` uniform steps (DDPM ancestral or DDIM), clipped to [-1, 1]."""
    ts = grid_uniform(den.schedule, steps, t_end=0.0)
    x = prior_sample(den.schedule, y.shape, generator)
    if method == "ddpm":
        out = sample_ddpm(den, x, ts, cond={"lr": y}, generator=generator)
    elif method == "ddim":
        out = sample_ddim(den, x, ts, eta=eta, cond={"lr": y}, generator=generator)
    else:
        raise ValueError(f"method must be 'ddpm' or 'ddim'; got {method!r}")
    return out.clamp(-1, 1)


def sr_pairs(x: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y_up): y_up = pinv(block average of x) (= nearest-neighbour upsampling of the LR image)."""
    from .inverse import super_resolution

    op = super_resolution(tuple(x.shape[1:]), factor)
    return x, op.pinv(op.apply(x)).to(x.dtype)
