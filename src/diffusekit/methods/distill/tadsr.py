"""TAD-SR: one-step diffusion super-resolution by time-aware distillation (He et al. 2024, arXiv 2408.07476),
distilled from our pixel-space ResShift teacher (:mod:`diffusekit.methods.resshift`).

Teacher: a ResShift x0-predicting net f(x_t, y, t) on the chain x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) n,
sampled in T posterior steps from x_T = y + kappa sqrt(eta_T) eps. Student: a copy of the teacher's network
(initialised from its weights), evaluated once at the last index T - 1 on the same prior draw,

    x0_S = f_S(x_T, y, T - 1),                                                          (1 NFE)

trained with three terms (the official code's ``training_losses_distill`` / ``training_losses_D``):

1. distillation: L_dist = ||x0_S - x0_T||^2, x0_T the teacher's full T-step DDIM chain from the same x_T
   (deterministic, so the target is a function of x_T; the official code's ``ddim_sample_loop``);
2. high-frequency-enhanced score distillation (HSD, Sec. 3.2): t' ~ U{0 .. K-1} (small, K = 3 in the paper),
   one shared noise n, x^S = q(x0_S, y, t', n), x^T = q(x0_T, y, t', n); with the teacher's implied noise
   eps_hat(x, t') = (x - f(x, y, t') - eta_t' (y - f(x, y, t'))) / (kappa sqrt(eta_t')),

       g = SG[eps_hat(x^S, t') - eps_hat(x^T, t')],     L_hsd = mean_j g_j x0_S,j      (dL/dx0_S = g / D).

   Since x^S - x^T = (1 - eta)(x0_S - x0_T) with the same noise, g is the teacher's denoising residual on the
   student/teacher difference: for a Gaussian prior the teacher is a Wiener filter W at noise level
   s = kappa sqrt(eta)/(1 - eta), and g = (1 - eta)/(kappa sqrt(eta)) (1 - W)(x0_S - x0_T), which keeps the
   frequencies whose prior power is below s^2 -- the high frequencies at small t'. Unlike SDS (g = eps_hat - n)
   the noise cancels and the teacher's residual at its own output x0_T is subtracted, which removes SDS's bias
   (g = 0 when x0_S = x0_T). (The official code draws n from a uniform distribution, probably a slip; we use
   N(0, I).) Measured figures: ``diffusekit bench tadsr``.
3. time-aware adversarial term (Sec. 3.3): a discriminator D(x_td, y, t_d) sees real (HR data) or fake (student)
   images noised to a random index t_d, with t_d embedded and fed to the heads (a projection head here; the paper
   puts its t-conditioned heads on frozen teacher-UNet features); hinge losses
   L_D = relu(1 - D(real)) + relu(1 + D(fake)),  L_G = -D(fake) (weight 0.02 in the paper).

``tadsr_distill`` runs the loop (two AdamW optimisers: student and discriminator, so not the one-loss
``Trainer``); ``tadsr_sample`` is the one-step sampler. Evaluated by ``diffusekit bench tadsr``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.noise import randn_like
from ...nets.embedding import timestep_embedding
from ..resshift import ResShift

__all__ = ["TimeAwareDiscriminator", "TADSRResult", "OneStepSR", "teacher_chain", "implied_noise", "hsd_gradient",
           "hsd_loss", "discriminator_hinge_loss", "tadsr_distill", "tadsr_sample"]


@torch.no_grad()
def teacher_chain(rs: ResShift, net: nn.Module, x_T: torch.Tensor, y: torch.Tensor, generator=None, *,
                  stochastic: bool = False, clip: bool = True) -> torch.Tensor:
    """ResShift's T-step reverse chain (Yue et al. 2023, arXiv 2307.12348) from a given prior draw x_T, with
    x0_hat = f(x_t, y, t) for t = T-1 .. 0 (0-based), the last step returning x0_hat. ``stochastic=False``: the
    deterministic DDIM form used as TAD-SR's (and SinSR's) teacher,

        x_{t-1} = x0_hat + eta_{t-1} (y - x0_hat) + kappa sqrt(eta_{t-1}) eps_hat,   eps_hat = implied noise at t,

    so the teacher's output is a function of x_T; ``stochastic=True``: ResShift's posterior sampling
    x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) (:meth:`ResShift.sample`, which draws x_T itself). T NFE; (B, C, H, W)."""
    x = x_T
    for t in range(rs.num_steps - 1, -1, -1):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        x0 = rs.predict_x0(net, x, y, tt)
        if clip:
            x0 = x0.clamp(-1, 1)
        if t == 0:
            x = x0
        elif stochastic:
            mean, std = rs.posterior(x, x0, t)
            x = mean + std * randn_like(x, generator)
        else:
            x = rs.q_sample(x0, y, tt - 1, implied_noise(rs, x, x0, y, tt))
    return x


def tadsr_sample(rs: ResShift, net: nn.Module, y: torch.Tensor, generator=None, *, x_T: torch.Tensor | None = None,
                 clip: bool = True) -> torch.Tensor:
    """One-step SR (TAD-SR, He et al. 2024, arXiv 2408.07476): x_T = y + kappa sqrt(eta_T) eps, then
    x0 = f(x_T, y, T - 1), clamped to [-1, 1]. 1 NFE. With the teacher's net this is "the teacher at one step".
    y: the upsampled LR image (B, C, H, W). Runs with whatever grad mode the caller chose."""
    if x_T is None:
        x_T = rs.prior_sample(y, generator)
    x0 = rs.predict_x0(net, x_T, y, torch.full((y.shape[0],), rs.num_steps - 1, dtype=torch.long))
    return x0.clamp(-1, 1) if clip else x0


def implied_noise(rs: ResShift, x_t: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
    """The noise that puts x0_hat at x_t on ResShift's chain: eps_hat = (x_t - x0_hat - eta_t (y - x0_hat)) /
    (kappa sqrt(eta_t)); t: 0-based index, scalar or (B,)."""
    eta = rs._eta(t, x_t)
    return (x_t - x0_hat - eta * (y - x0_hat)) / (rs.kappa * eta.sqrt())


@torch.no_grad()
def hsd_gradient(rs: ResShift, teacher_x0, x0_student: torch.Tensor, x0_teacher: torch.Tensor, y: torch.Tensor,
                 t, noise: torch.Tensor) -> torch.Tensor:
    """TAD-SR's HSD gradient (arXiv 2408.07476, Sec. 3.2), g = eps_hat(x^S, t) - eps_hat(x^T, t) with
    x^S = x0_S + eta_t (y - x0_S) + kappa sqrt(eta_t) n and x^T likewise from x0_T (shared n);
    ``teacher_x0(x_t, y, t) -> x0_hat`` (a callable or an x0-predicting ResShift net). NaNs are zeroed as in the
    official code. Returns (B, ...) without grad."""
    if isinstance(teacher_x0, nn.Module):
        net = teacher_x0
        teacher_x0 = lambda x, yy, tt: rs.predict_x0(net, x, yy, tt)  # noqa: E731
    t = torch.as_tensor(t, dtype=torch.long).reshape(-1).expand(x0_student.shape[0])
    x0_student = x0_student.detach()
    x_s = rs.q_sample(x0_student, y, t, noise)
    x_t = rs.q_sample(x0_teacher, y, t, noise)
    g = implied_noise(rs, x_s, teacher_x0(x_s, y, t), y, t) - implied_noise(rs, x_t, teacher_x0(x_t, y, t), y, t)
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def hsd_loss(rs: ResShift, teacher_x0, x0_student: torch.Tensor, x0_teacher: torch.Tensor, y: torch.Tensor, t,
             noise: torch.Tensor) -> torch.Tensor:
    """Per-example HSD surrogate L = mean_j SG[g]_j x0_S,j (arXiv 2408.07476, Sec. 3.2): its gradient with respect
    to the student output is g / D, g from :func:`hsd_gradient`. Returns (B,)."""
    g = hsd_gradient(rs, teacher_x0, x0_student, x0_teacher, y, t, noise)
    return (g * x0_student).flatten(1).mean(1)


class TimeAwareDiscriminator(nn.Module):
    """A small time-aware discriminator D(x_t, y, t) -> logits (B,) (TAD-SR, arXiv 2408.07476, Sec. 3.3):
    a conv encoder on cat[x_t, y] (stride-2 levels, GroupNorm, SiLU, global average pool) gives h; the noise
    index t is embedded (sinusoidal, MLP) to e(t) and the projection head gives D = w^T h + <h, P e(t)>,
    so the same image is judged differently at different noise levels. t: 0-based chain index (B,) long."""

    def __init__(self, channels: int = 1, cond_channels: int = 1, *, base_channels: int = 32, levels: int = 2,
                 time_dim: int = 64, num_steps: int = 4):
        super().__init__()
        if levels < 1 or base_channels < 4 or time_dim < 2 or num_steps < 1:
            raise ValueError("need levels >= 1, base_channels >= 4, time_dim >= 2, num_steps >= 1")
        layers, cin = [], channels + cond_channels
        for k in range(levels):
            cout = base_channels * 2 ** k
            layers += [nn.Conv2d(cin, cout, 3, stride=1 if k == 0 else 2, padding=1),
                       nn.GroupNorm(min(8, cout // 4), cout), nn.SiLU()]
            cin = cout
        self.encoder = nn.Sequential(*layers)
        self.time_dim = int(time_dim)
        self.num_steps = int(num_steps)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, cin))
        self.head = nn.Linear(cin, 1)
        self.config = {"channels": channels, "cond_channels": cond_channels, "base_channels": base_channels,
                       "levels": levels, "time_dim": time_dim, "num_steps": num_steps}

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        h = self.encoder(torch.cat([x_t, y], dim=1)).mean(dim=(2, 3))                    # (B, C)
        e = self.time_mlp(timestep_embedding(t.float() * (1000.0 / self.num_steps), self.time_dim))
        return self.head(h).squeeze(1) + (h * e).sum(1)


def discriminator_hinge_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator (Lim & Ye 2017; TAD-SR's ``training_losses_D``), per example:
    relu(1 - D(real)) + relu(1 + D(fake))."""
    return torch.relu(1.0 - d_real) + torch.relu(1.0 + d_fake)


class OneStepSR:
    """A TAD-SR student ready to sample: ``OneStepSR(net, rs)(y, generator)`` = :func:`tadsr_sample`.
    Not a core ``Denoiser`` (ResShift's chain is not a Gaussian schedule); rebuilt from the net and
    ``to_config()`` by ``from_config(net, None, cfg)``. Native sampling: 1 step at index T - 1."""

    native_sampling = {"sampler": "tadsr_one_step", "steps": 1, "ts": None}

    def __init__(self, net: nn.Module, rs: ResShift):
        self.net = net
        self.rs = rs

    def __call__(self, y: torch.Tensor, generator=None) -> torch.Tensor:
        return tadsr_sample(self.rs, self.net, y, generator)

    def to_config(self) -> dict:
        return {"kind": "tadsr_one_step", "resshift": dict(self.rs.config)}

    @classmethod
    def from_config(cls, net: nn.Module, schedule, cfg: dict) -> "OneStepSR":
        if cfg.get("kind") != "tadsr_one_step" or "resshift" not in cfg:
            raise ValueError(f"not a TAD-SR student config: {cfg!r}")
        return cls(net, ResShift(**cfg["resshift"]))


@dataclass
class TADSRResult:
    """The distilled one-step student (eval mode), its discriminator, and per-step loss history."""

    student: OneStepSR
    discriminator: nn.Module | None
    history: dict = field(default_factory=dict)


def tadsr_distill(rs: ResShift, teacher_net: nn.Module, x0: torch.Tensor, y: torch.Tensor, *, steps: int = 500,
                  batch_size: int = 32, lr: float = 2e-4, d_lr: float = 2e-4, hsd_weight: float = 1.0,
                  hsd_max_t: int = 3, adv_weight: float = 0.02, real: str = "data",
                  discriminator: nn.Module | None = None, stochastic_teacher: bool = False, grad_clip: float = 1.0,
                  seed: int = 0, max_seconds: float | None = None) -> TADSRResult:
    """TAD-SR distillation (He et al. 2024, arXiv 2408.07476, Alg. 1): student f_S <- copy of the teacher; each
    update draws a batch of pairs (x0, y), x_T = y + kappa sqrt(eta_T) eps, the teacher's chain x0_T from x_T
    (:func:`teacher_chain`, DDIM unless ``stochastic_teacher``), the
    student's x0_S = f_S(x_T, y, T - 1), and minimises

        mean_b [ ||x0_S - x0_T||^2 / D + hsd_weight L_hsd(t' ~ U{0..hsd_max_t-1}) ] - adv_weight mean_b D(x^S_td, y, td)

    with td ~ U{0..T-1} fed to the discriminator; then one discriminator update on the hinge loss with real =
    x0 (``real="data"``, the paper) or x0_T (``real="teacher"``) noised with the same td and noise. AdamW for
    both (the paper: lr 5e-5, batch 8, 30k updates; tiny-scale defaults here). ``adv_weight = 0`` or
    ``hsd_weight = 0`` switch a term off (no discriminator is built without the adversarial term).
    x0, y: (N, C, H, W) HR images and upsampled LR inputs in [-1, 1]."""
    if real not in ("data", "teacher"):
        raise ValueError(f"real must be 'data' or 'teacher'; got {real!r}")
    if x0.shape != y.shape or x0.dim() != 4:
        raise ValueError(f"x0 and y must both be (N, C, H, W) of the same shape; got {tuple(x0.shape)}, "
                         f"{tuple(y.shape)}")
    if steps < 1 or batch_size < 1 or not 1 <= hsd_max_t <= rs.num_steps:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and 1 <= hsd_max_t <= T = {rs.num_steps}")
    if hsd_weight < 0 or adv_weight < 0:
        raise ValueError("hsd_weight and adv_weight must be >= 0")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = copy.deepcopy(teacher_net).eval().requires_grad_(False)
    student = copy.deepcopy(teacher_net).train().requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    disc = None
    if adv_weight > 0:
        disc = discriminator if discriminator is not None else TimeAwareDiscriminator(
            x0.shape[1], y.shape[1], num_steps=rs.num_steps)
        disc.train()
        opt_d = torch.optim.AdamW(disc.parameters(), lr=d_lr, betas=(0.5, 0.999))
    last = torch.full((batch_size,), rs.num_steps - 1, dtype=torch.long)
    hist = {"loss_dist": [], "loss_hsd": [], "loss_g": [], "loss_d": []}
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, x0.shape[0], (batch_size,), generator=g)
        xb, yb = x0[idx], y[idx]
        x_T = rs.prior_sample(yb, g)
        x0_tea = teacher_chain(rs, teacher, x_T, yb, g, stochastic=stochastic_teacher)
        x0_stu = rs.predict_x0(student, x_T, yb, last)
        loss = (x0_stu - x0_tea).pow(2).flatten(1).mean(1).mean()
        hist["loss_dist"].append(float(loss.detach()))
        if hsd_weight > 0:
            tp = torch.randint(0, hsd_max_t, (batch_size,), generator=g)
            l_hsd = hsd_loss(rs, teacher, x0_stu, x0_tea, yb, tp, randn_like(xb, g)).mean()
            loss = loss + hsd_weight * l_hsd
            hist["loss_hsd"].append(float(l_hsd.detach()))
        if disc is not None:
            td = torch.randint(0, rs.num_steps, (batch_size,), generator=g)
            n = randn_like(xb, g)
            disc.requires_grad_(False)
            l_g = -disc(rs.q_sample(x0_stu, yb, td, n), yb, td).mean()
            disc.requires_grad_(True)
            loss = loss + adv_weight * l_g
            hist["loss_g"].append(float(l_g.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
        opt.step()
        if disc is not None:
            x_real = xb if real == "data" else x0_tea
            d_loss = discriminator_hinge_loss(disc(rs.q_sample(x_real, yb, td, n), yb, td),
                                              disc(rs.q_sample(x0_stu.detach(), yb, td, n), yb, td)).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            hist["loss_d"].append(float(d_loss.detach()))
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError("TAD-SR distillation diverged (non-finite loss); lower lr or the loss weights")
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    hist["steps"] = len(hist["loss_dist"])
    hist["seconds"] = time.perf_counter() - t0
    student.eval().requires_grad_(False)
    if disc is not None:
        disc.eval()
    return TADSRResult(OneStepSR(student, rs), disc, hist)
