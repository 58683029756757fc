"""Smooth Diffusion (Guo, Xu, Liu, Yang, Shi et al., CVPR 2024, arXiv 2312.04410): a smooth latent space by a
step-wise variation regulariser, and the inversion / interpolation evaluation that measures it.

**Step-wise variation regularisation** (paper Sec. 3; reference ``train_smooth_diffusion.py``, ``step_regularize``
and ``de_noise``). With the training noise eps made a leaf that requires grad,

    x_t    = alpha_t x0 + sigma_t eps,
    x0_hat = (x_t - sigma_t eps_theta(x_t, t)) / alpha_t          (any prediction type, via x0_from_prediction)
    y      ~ N(0, I) * sigma_t / sqrt(D)                           (D = pixels per example)
    g      = d (x0_hat . y) / d eps = J^T y,   J = d x0_hat / d eps  (one backward with create_graph)
    v      = ||g||_2                                               (per example, shape (B,))
    a_bar <- a_bar + decay (mean(v) - a_bar),  decay = 0.01       (running mean, kept by the loss)
    L_reg  = mean (v - a_bar)^2
    L      = L_simple + lambda_reg L_reg                           (lambda_reg = 1 in the paper)

This is StyleGAN2's path-length regulariser (Karras et al. 2020, arXiv 1912.04958, Sec. 3.2) applied to the map
from the noise to the one-step x0 prediction: it asks a small change of the noise to move the prediction by a
distance that does not depend on where or in which direction one moves, which the paper ties to a smooth
DDIM-inverted latent space (even interpolation steps, faithful inversion). As in the reference, the penalty uses
the already-updated running mean (the gradient sees its decay * mean(v) part), and the stored mean is detached.

Deviations, all switchable: ``init_mean="first_batch"`` (our default) starts a_bar at the first regularised batch's
mean(v) instead of 0 -- the reference's zero start is a warm-up of a few hundred steps in its 30k-step run, but
it would span most of a few-hundred-step fine-tune here and mostly shrink v towards 0; ``init_mean="zero"``
reproduces the reference. Lazy regularisation as in StyleGAN2 (Sec. 3.1): ``reg_every = k`` evaluates the
regulariser on every k-th call only, on the first ``reg_batch`` examples of the batch, and weights it by
k * B / reg_batch so that its expected gradient is unchanged (``reg_every=1, reg_batch=None`` is the reference:
every step, whole batch). The regularised sub-batch goes through the network in its own forward pass, so the
double backward only costs for those examples (the network must treat examples independently, as the UNet,
GroupNorm and attention here do). The running mean is per process (no all-reduce under DDP).

**Fine-tuning** (:func:`finetune_smooth`): the paper trains LoRA rank 8 on SD 1.5 (constant lr 1e-4, 30k steps);
here the zoo digits UNet is fine-tuned with :func:`add_lora` (rank 8, frozen base) or fully.

**Evaluation** (the paper's interpolation and inversion experiments): DDIM inversion
(``cyclediffusion.ddim_invert``: the eta = 0 DDIM update run from t = 0 to T) of two images, spherical interpolation
of the inverted x_T (:func:`slerp`) over 16 frames with the class fixed, each frame decoded by DDIM on the same
grid. Smoothness (:func:`smoothness_stats`): per pair the std (the paper's ISTD uses LPIPS; here pixel L2 and
digits-classifier features) and max of the 15 consecutive-frame distances, averaged over pairs; reconstruction: the
MSE of decode(invert(x)) against x (:func:`inversion_mse`).

Measured (``diffusekit bench smooth``: digits_unet + LoRA 8, 400 steps, batch 64, lr 1e-3, same seed per arm; 20
same-class test pairs, DDIM 20 steps; digits-FD of 500 samples at guidance 1): lambda_reg = 0 / 0.1 / 1 give a std
of consecutive-frame pixel distances 0.278 / 0.224 / 0.200 (std/mean 0.601 / 0.562 / 0.523), inversion MSE
0.0089 / 0.0084 / 0.0074, and digits-FD 10.5 / 10.2 / 12.9 (accuracy 0.992 / 0.984 / 0.968): smoother and more
faithful, at a quality cost for lambda_reg = 1.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core import noise
from ..core._tensor import per_sample
from ..core.denoiser import Denoiser, NetworkDenoiser
from ..core.predictions import x0_from_prediction
from ..samplers import sample_ddim
from ..training.losses import DiffusionLoss, class_condition, loss_weight, prediction_from_x0_eps, sample_times
from .cyclediffusion import ddim_invert
from .quant.efficientdm import LoRADelta

__all__ = ["step_variation", "variation_probe", "SmoothDiffusionLoss", "add_lora", "lora_parameters",
           "variation_stats", "finetune_smooth", "slerp", "slerp_frames", "ddim_invert", "interpolation_frames",
           "consecutive_distances", "smoothness_stats", "inversion_mse", "evaluate_smoothness", "INIT_MEANS"]

INIT_MEANS = ("first_batch", "zero")


# ---------------------------------------------------------------- the regulariser

def variation_probe(shape, sigma: torch.Tensor, generator=None, *, dtype=torch.float32) -> torch.Tensor:
    """y = z * sigma_t / sqrt(D), z ~ N(0, I) of ``shape`` (B, ...), D = prod(shape[1:]); ``sigma`` (B,).
    The random direction of the step-wise variation (reference ``step_regularize``)."""
    z = noise.randn(shape, generator, dtype=dtype)
    return z * per_sample(sigma, z).to(dtype) / math.sqrt(math.prod(shape[1:]))


def step_variation(x0_hat: torch.Tensor, eps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """v_i = || d (x0_hat . y) / d eps_i ||_2 = || J_i^T y_i ||_2 (Smooth Diffusion, arXiv 2312.04410),
    with J_i = d x0_hat_i / d eps_i. ``eps`` is the leaf x0_hat was computed from; the graph is kept
    (create_graph) so that v can be penalised. Shapes: x0_hat, eps, y (B, ...) -> v (B,). Needs a network that
    treats the examples of a batch independently (then the batch sum separates into per-example products)."""
    if not eps.requires_grad:
        raise ValueError("eps must require grad (make it a leaf with requires_grad_(True) before computing x_t)")
    (g,) = torch.autograd.grad((x0_hat * y).sum(), eps, create_graph=True)
    return g.flatten(1).norm(dim=1)


def _slice_cond(cond: dict, sl: slice) -> dict:
    return {k: v[sl] if torch.is_tensor(v) else v for k, v in cond.items()}


class SmoothDiffusionLoss(DiffusionLoss):
    """L_i = L_simple_i + lambda_reg * k * (B / b) * (v_i - a_bar)^2 for the b regularised examples of a
    regularised call (every k = ``reg_every``-th call; the first b = ``reg_batch`` examples, default all), and
    L_simple_i otherwise: the batch mean is L_simple + lambda_reg * L_reg of Smooth Diffusion (arXiv 2312.04410)
    with StyleGAN2's lazy weighting; see the module docstring for v, a_bar and the deviations.

    A ``Trainer`` loss: ``loss(net, batch, generator) -> Tensor[B]``. Draws come in DiffusionLoss's order
    (t, eps, label dropout), then the probe y on regularised calls, whatever lambda_reg, so runs that differ
    only in lambda_reg see the same t, eps and labels; lambda_reg = 0 returns exactly DiffusionLoss's value.
    State: ``mean_variation`` (a_bar, a 0-d float tensor; None before the first regularised call with
    ``init_mean="first_batch"``), ``calls``, and ``last`` (dict of the last regularised call's mean v and L_reg);
    ``state_dict()`` / ``load_state_dict()`` carry a_bar and the call count across a resume.
    """

    def __init__(self, schedule, prediction: str = "eps", *, lambda_reg: float = 1.0, decay: float = 0.01,
                 reg_every: int = 1, reg_batch: int | None = None, init_mean: str = "first_batch", **loss_options):
        super().__init__(schedule, prediction, **loss_options)
        if not (math.isfinite(lambda_reg) and lambda_reg >= 0):
            raise ValueError(f"lambda_reg must be a finite number >= 0; got {lambda_reg!r}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1]; got {decay!r}")
        if isinstance(reg_every, bool) or not isinstance(reg_every, int) or reg_every < 1:
            raise ValueError(f"reg_every must be an integer >= 1; got {reg_every!r}")
        if reg_batch is not None and (isinstance(reg_batch, bool) or not isinstance(reg_batch, int) or reg_batch < 1):
            raise ValueError(f"reg_batch must be None (the whole batch) or an integer >= 1; got {reg_batch!r}")
        if init_mean not in INIT_MEANS:
            raise ValueError(f"init_mean must be one of {', '.join(INIT_MEANS)}; got {init_mean!r}")
        self.lambda_reg = float(lambda_reg)
        self.decay = float(decay)
        self.reg_every = reg_every
        self.reg_batch = reg_batch
        self.init_mean = init_mean
        self.mean_variation: torch.Tensor | None = torch.zeros(()) if init_mean == "zero" else None
        self.calls = 0
        self.last: dict = {}

    def config(self) -> dict:
        return {**super().config(), "lambda_reg": self.lambda_reg, "decay": self.decay, "reg_every": self.reg_every,
                "reg_batch": self.reg_batch, "init_mean": self.init_mean}

    def state_dict(self) -> dict:
        mean = None if self.mean_variation is None else float(self.mean_variation)
        return {"mean_variation": mean, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        mean = state["mean_variation"]
        self.mean_variation = None if mean is None else torch.tensor(float(mean))
        self.calls = int(state["calls"])

    def update_mean(self, v: torch.Tensor) -> torch.Tensor:
        """a_bar_new = a_bar + decay (mean(v) - a_bar) (differentiable in v); stores a_bar_new detached and
        returns it (with ``init_mean="first_batch"`` the first call starts a_bar at mean(v))."""
        old = v.mean().detach() if self.mean_variation is None else self.mean_variation.to(v)
        new = old + self.decay * (v.mean() - old)
        self.mean_variation = new.detach().cpu()
        return new

    def __call__(self, net: torch.nn.Module, batch, generator=None) -> torch.Tensor:
        x0 = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        b = x0.shape[0]
        t = sample_times(self.schedule, b, generator, method=self.time_sampling).to(x0.device)
        eps = noise.randn(x0.shape, generator, dtype=x0.dtype).to(x0.device)
        cond = class_condition(net, labels, self.label_dropout, generator)
        regularise = self.calls % self.reg_every == 0
        self.calls += 1
        n = b if self.reg_batch is None else min(self.reg_batch, b)
        if regularise:
            sub = generator[:n] if isinstance(generator, (list, tuple)) else generator
            y = variation_probe((n, *x0.shape[1:]), self.schedule.sigma(t[:n]), sub, dtype=x0.dtype).to(x0.device)
        den = self.denoiser(net)
        target = prediction_from_x0_eps(x0, eps, t, self.schedule, self.prediction, sigma_data=self.sigma_data)
        weight = loss_weight(t, self.schedule, self.prediction, self.weighting, min_snr_gamma=self.min_snr_gamma,
                             sigma_data=self.sigma_data)
        if not regularise or self.lambda_reg == 0:
            out = den.raw(self.schedule.add_noise(x0, t, eps), t, **cond)
            simple = ((out - target) ** 2).flatten(1).mean(1)
            return simple * per_sample(weight, simple)
        eps_reg = eps[:n].detach().requires_grad_(True)
        x_t_reg = self.schedule.add_noise(x0[:n], t[:n], eps_reg)
        out = den.raw(x_t_reg, t[:n], **_slice_cond(cond, slice(0, n)))
        x0_hat = x0_from_prediction(out, x_t_reg, t[:n], self.schedule, self.prediction, sigma_data=self.sigma_data)
        v = step_variation(x0_hat, eps_reg, y)
        mean = self.update_mean(v)
        penalty = (v - mean) ** 2
        if n < b:
            rest = den.raw(self.schedule.add_noise(x0[n:], t[n:], eps[n:]), t[n:], **_slice_cond(cond, slice(n, b)))
            out = torch.cat([out, rest])
        simple = ((out - target) ** 2).flatten(1).mean(1)
        losses = simple * per_sample(weight, simple)
        self.last = {"mean_v": float(v.mean().detach()), "L_reg": float(penalty.mean().detach()),
                     "mean_variation": float(mean.detach())}
        scale = self.lambda_reg * self.reg_every * b / n
        return torch.cat([losses[:n] + scale * penalty, losses[n:]])


def variation_stats(denoiser: NetworkDenoiser, x0: torch.Tensor, *, cond: dict | None = None,
                    generator: torch.Generator | None = None) -> dict:
    """The step-wise variation v (:func:`step_variation`) of a trained model on images x0 (B, ...) at training-
    distributed t with fresh eps and probes y from ``generator``: mean, std and std / mean of v over the batch.
    L_reg is the mean squared deviation of v from its running mean, so a regularised model should show a smaller
    spread. Needs gradients (do not call under torch.no_grad); the network's parameters get no gradient."""
    sched = denoiser.schedule
    b = x0.shape[0]
    t = sample_times(sched, b, generator)
    eps = noise.randn(x0.shape, generator, dtype=x0.dtype).requires_grad_(True)
    y = variation_probe(x0.shape, sched.sigma(t), generator, dtype=x0.dtype)
    with torch.enable_grad():
        x_t = sched.add_noise(x0, t, eps)
        x0_hat = x0_from_prediction(denoiser.raw(x_t, t, **(cond or {})), x_t, t, sched, denoiser.prediction,
                                    sigma_data=denoiser.sigma_data)
        (g,) = torch.autograd.grad((x0_hat * y).sum(), eps)
    v = g.flatten(1).norm(dim=1).double()
    return {"mean": float(v.mean()), "std": float(v.std()), "std_over_mean": float(v.std() / v.mean())}


# ---------------------------------------------------------------- LoRA and fine-tuning

def add_lora(net: nn.Module, rank: int = 8, *, skip: tuple[str, ...] = (), seed: int = 0) -> list[str]:
    """In place: freeze ``net`` and re-parametrize the weight of every Conv2d / Linear (except modules named in
    ``skip``) as W + B A (LoRA, Hu et al. 2021, arXiv 2106.09685; A (r, fan_in) Kaiming-uniform, B zero, so the
    output is unchanged at the start), reusing ``quant.efficientdm.LoRADelta`` through torch's parametrize (the
    layers keep their type and ``.weight``). Smooth Diffusion trains LoRA rank 8. Returns the re-parametrized
    module names; only A and B are trainable."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1; got {rank!r}")
    g = torch.Generator().manual_seed(int(seed))
    net.requires_grad_(False)
    wrapped = []
    for name, module in net.named_modules():
        if name in skip or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"layer {name} already has a weight parametrization (LoRA added twice?)")
        w = module.weight.detach()
        parametrize.register_parametrization(module, "weight", LoRADelta(w, min(rank, w.shape[0], w[0].numel()), g))
        wrapped.append(name)
    if not wrapped:
        raise ValueError("the network has no Conv2d or Linear layer to give a LoRA branch")
    return wrapped


def lora_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA factors (A and B of every branch) of a network prepared by :func:`add_lora`."""
    return [p for m in net.modules() if parametrize.is_parametrized(m, "weight")
            for d in m.parametrizations.weight if isinstance(d, LoRADelta) for p in (d.A, d.B)]


def finetune_smooth(denoiser: NetworkDenoiser, x: torch.Tensor, labels: torch.Tensor | None = None, *,
                    lambda_reg: float = 1.0, steps: int = 300, batch_size: int = 64, lr: float = 1e-3,
                    lora_rank: int | None = 8, reg_every: int = 1, reg_batch: int | None = None,
                    init_mean: str = "first_batch", label_dropout: float = 0.1, seed: int = 0,
                    progress: bool = False) -> tuple[NetworkDenoiser, dict]:
    """Fine-tune a copy of ``denoiser``'s network with :class:`SmoothDiffusionLoss` (``lambda_reg = 0``: plain
    L_simple, the control) through the generic ``Trainer`` (AdamW, constant lr, grad clip 1, no EMA), LoRA of
    ``lora_rank`` (None: all weights). Data x (N, C, H, W), labels (N,) or None. Returns (a NetworkDenoiser of the
    fine-tuned copy in eval mode, info: loss config, final a_bar, the last regularised call's mean v and L_reg,
    ``final_loss`` (mean training loss of the last 20 steps, penalty included), seconds, trainable parameters)."""
    from ..training.trainer import TrainConfig, Trainer

    net = copy.deepcopy(denoiser.net).train()
    if lora_rank is not None:
        add_lora(net, lora_rank)
    else:
        net.requires_grad_(True)
    loss = SmoothDiffusionLoss(denoiser.schedule, denoiser.prediction, lambda_reg=lambda_reg, reg_every=reg_every,
                               reg_batch=reg_batch, init_mean=init_mean, label_dropout=label_dropout,
                               scale_input=denoiser.scale_input, sigma_data=denoiser.sigma_data)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=0, ema_decay=None, seed=seed,
                         log_every=max(1, steps), progress=progress)
    data = (x,) if labels is None else (x, labels)
    history = Trainer(net, loss, data, config).fit()
    net.eval()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    losses = history["loss"]
    tail = losses[-min(len(losses), 20):]
    info = {"loss": loss.config(), "mean_variation": loss.state_dict()["mean_variation"], "last_reg": loss.last,
            "final_loss": sum(tail) / len(tail), "seconds": history["seconds"], "steps": steps,
            "trainable": trainable}
    return NetworkDenoiser(net, denoiser.schedule, denoiser.prediction, scale_input=denoiser.scale_input,
                           sigma_data=denoiser.sigma_data), info


# ---------------------------------------------------------------- evaluation

def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation per example over the flattened non-batch dims (Shoemake 1985), as Smooth
    Diffusion interpolates DDIM-inverted latents:

        slerp(z0, z1; a) = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1,
        theta = arccos(<z0, z1> / (|z0| |z1|)),

    falling back to linear interpolation where sin(theta) < 1e-6 (parallel latents). Shapes (B, ...) -> (B, ...);
    a = 0 gives z0, a = 1 gives z1, and for |z0| = |z1| the norm stays |z0| along the path."""
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    safe = sin > 1e-6
    denom = torch.where(safe, sin, 1.0)
    w0 = torch.where(safe, torch.sin((1 - alpha) * theta) / denom, torch.full_like(sin, 1 - alpha))
    w1 = torch.where(safe, torch.sin(alpha * theta) / denom, torch.full_like(sin, alpha))
    return (w0[:, None] * a + w1[:, None] * b).reshape(z0.shape).to(z0.dtype)


def slerp_frames(z0: torch.Tensor, z1: torch.Tensor, frames: int = 16) -> torch.Tensor:
    """``frames`` slerp points at a = 0, 1/(F-1), ..., 1: (B, ...) -> (B, F, ...)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2; got {frames!r}")
    return torch.stack([slerp(z0, z1, k / (frames - 1)) for k in range(frames)], dim=1)


def interpolation_frames(denoiser: Denoiser, x_a: torch.Tensor, x_b: torch.Tensor, ts, *, cond: dict | None = None,
                         frames: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM-invert x_a and x_b (B, ...) on the grid ``ts`` (``ddim_invert``), slerp the inverted x_T over
    ``frames`` frames and decode every frame with DDIM (eta = 0) on the same grid, the condition fixed.
    Returns (frames (B, F, ...), inverted latents (2, B, ...)). 2n + F n network calls per batch row for n steps;
    call under torch.no_grad."""
    cond = cond or {}
    both = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in cond.items()}
    z = ddim_invert(denoiser, torch.cat([x_a, x_b]), ts, cond=both).chunk(2)
    zs = slerp_frames(z[0], z[1], frames)  # (B, F, ...)
    b = x_a.shape[0]
    flat_cond = {k: v.repeat_interleave(frames, 0) if torch.is_tensor(v) else v for k, v in cond.items()}
    out = sample_ddim(denoiser, zs.flatten(0, 1), ts, cond=flat_cond)
    return out.reshape(b, frames, *x_a.shape[1:]), torch.stack(z)


def consecutive_distances(frames: torch.Tensor, features=None) -> torch.Tensor:
    """d_{i,k} = || phi(f_{i,k+1}) - phi(f_{i,k}) ||_2 for frames (B, F, ...) -> (B, F - 1); phi = identity
    (pixel L2) or ``features``: (N, ...) -> (N, E) (e.g. the digits classifier's penultimate features)."""
    b, f = frames.shape[:2]
    flat = frames.flatten(0, 1)
    emb = (flat if features is None else features(flat)).reshape(b, f, -1)
    return (emb[:, 1:] - emb[:, :-1]).norm(dim=-1)


def smoothness_stats(distances: torch.Tensor) -> dict:
    """Per interpolation path (row of ``distances`` (B, F - 1)) the std (Smooth Diffusion's ISTD, with the paper's
    LPIPS replaced by the given distance), max and mean of the consecutive-frame distances, and std / mean, each
    averaged over paths. A smooth latent space gives even steps: small std and max relative to the mean."""
    d = distances.double()
    std, mean, mx = d.std(dim=1), d.mean(dim=1), d.max(dim=1).values
    return {"std": float(std.mean()), "max": float(mx.mean()), "mean": float(mean.mean()),
            "std_over_mean": float((std / mean.clamp_min(1e-12)).mean())}


def inversion_mse(denoiser: Denoiser, x: torch.Tensor, ts, *, cond: dict | None = None) -> float:
    """mean ||DDIM(DDIM-inversion(x)) - x||^2 / D over the images x (B, ...), on the grid ``ts`` (eta = 0):
    the reconstruction error of the paper's inversion experiment. Call under torch.no_grad."""
    rec = sample_ddim(denoiser, ddim_invert(denoiser, x, ts, cond=cond), ts, cond=cond)
    return float(((rec - x) ** 2).flatten(1).mean(1).mean())


def evaluate_smoothness(denoiser: Denoiser, x_a: torch.Tensor, x_b: torch.Tensor, ts, *, cond: dict | None = None,
                        frames: int = 16, features=None) -> tuple[dict, torch.Tensor]:
    """Interpolate the pairs (x_a[i], x_b[i]) (:func:`interpolation_frames`, frames clipped to [-1, 1]) and
    measure: ``pixel`` and (with ``features``) ``feature`` smoothness stats, and ``inversion_mse``, the
    reconstruction error of the endpoints (frame 0 and F-1 are decode(invert(x))). Returns (metrics, frames)."""
    with torch.no_grad():
        out, _ = interpolation_frames(denoiser, x_a, x_b, ts, cond=cond, frames=frames)
        out = out.clamp(-1, 1)
        metrics = {"pixel": smoothness_stats(consecutive_distances(out))}
        if features is not None:
            metrics["feature"] = smoothness_stats(consecutive_distances(out, features))
        ends = torch.cat([out[:, 0], out[:, -1]])
        metrics["inversion_mse"] = float(((ends - torch.cat([x_a, x_b])) ** 2).flatten(1).mean(1).mean())
    return metrics, out
