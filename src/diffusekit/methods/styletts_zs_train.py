"""StyleTTS-ZS (arXiv 2409.10058) training, sampling, one-step distillation, baselines and metrics; the models and
the equations are in ``methods.styletts_zs``, the data in ``methods.styletts_zs_data``.

Every random draw comes from an explicit ``torch.Generator``; budgets are optimizer steps. Loops use AdamW at a
constant learning rate with a short linear warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.grids import grid_karras
from ..core.predictions import prediction_from_x0_eps
from ..metrics.distances import mmd_rbf
from ..samplers.karras import sample_euler_sigma, sample_heun
from ..training.losses import loss_weight, sample_times
from .styletts_zs import (SIGMA_DATA, SIGMA_MAX, ProsodyVQ, StyleDenoiserNet, prompt_guided, style_denoiser,
                          style_schedule)
from .styletts_zs_data import ProsodyData, prompt_partners

__all__ = ["StyleCondition", "train_prosody_vq", "StyleLatents", "style_latents", "edm_style_loss",
           "train_style_diffusion", "sample_style", "decode_style", "teacher_samples", "distill_one_step",
           "OneStepStudent", "train_regression", "prompt_only_contours", "contour_mmd", "speaker_f0_error",
           "SEMITONES_PER_NEPER", "regression_latent"]

SEMITONES_PER_NEPER = 12.0 / math.log(2.0)


def _optimizer(params, lr: float):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _warm_lr(opt, step: int, lr: float, warmup: int) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


def _fit(params, steps: int, lr: float, step_loss, desc: str, progress: bool, warmup: int = 50) -> list[float]:
    """The training loop every model here shares: AdamW (no weight decay) with a linear warm-up over ``warmup``
    steps; ``step_loss(step) -> (loss to minimise, value to log)``. Returns the logged values, one per step."""
    opt = _optimizer(params, lr)
    history = []
    bar = _bar(steps, desc, progress)
    for step in range(steps):
        _warm_lr(opt, step, lr, warmup)
        loss, logged = step_loss(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(logged.item())
        bar.update()
    bar.close()
    return history


@dataclass
class StyleCondition:
    """The condition of a batch: text (B, 64) aligned phoneme ids, prompt (B, 4) standardised global style of another
    utterance of the same speaker, keep (B,) bool (False = prompt dropped), and the prompt's speaker (B,)."""

    text: torch.Tensor
    prompt: torch.Tensor
    keep: torch.Tensor
    speaker: torch.Tensor

    def cond(self) -> dict:
        """The keyword condition the denoiser passes to the network."""
        return {"text": self.text, "prompt": self.prompt, "keep": self.keep}

    def repeat(self, times: int) -> StyleCondition:
        return StyleCondition(self.text.repeat(times, 1), self.prompt.repeat(times, 1), self.keep.repeat(times),
                              self.speaker.repeat(times))

    @staticmethod
    def for_utterances(data: ProsodyData, index, generator: torch.Generator, pool=None,
                       drop: float = 0.0) -> StyleCondition:
        """Condition of utterances ``index``: their text and the global style of a random other utterance of the same
        speaker from ``pool`` (default: the same split as ``index``); each prompt dropped with probability ``drop``."""
        index = torch.as_tensor(list(index), dtype=torch.long)
        partners = prompt_partners(data.speakers, index, index if pool is None else pool, generator)
        keep = torch.rand(len(index), generator=generator) >= drop
        return StyleCondition(data.phonemes[index], data.styles[partners], keep, data.speakers[partners])


def train_prosody_vq(data: ProsodyData, steps: int, *, seed: int = 0, batch: int = 32, lr: float = 2e-3,
                     beta: float = 0.25, latent_dim: int = 8, codebook_size: int = 64, channels: int = 64,
                     progress: bool = False) -> tuple[ProsodyVQ, list[float]]:
    """Train :class:`ProsodyVQ` on the training contours with L_vq (van den Oord et al. 2017, arXiv 1711.00937,
    eq. 3). The first quarter of the steps trains the plain autoencoder; the codebook is then initialised from
    randomly chosen encoder outputs (a data initialisation that avoids dead codes) and VQ training continues.
    Returns (model in eval mode, per-step reconstruction MSE)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter init only
    vq = ProsodyVQ(latent_dim, codebook_size, channels)
    x_all = data.contours[data.train]
    plain_steps = steps // 4

    def step_loss(step: int):
        if step == plain_steps:
            with torch.no_grad():
                z = vq.encode(x_all).transpose(1, 2).reshape(-1, latent_dim)
                vq.codebook.copy_(z[torch.randperm(len(z), generator=g)[:codebook_size]])
        x = x_all[torch.randint(len(x_all), (batch,), generator=g)]
        z_e = vq.encode(x)
        if step < plain_steps:
            rec, loss_extra = vq.decode(z_e), 0.0
        else:
            z_q, _, codebook_loss, commit_loss = vq.quantize(z_e)
            rec, loss_extra = vq.decode(z_q), (codebook_loss + beta * commit_loss).mean()
        rec_loss = (rec - x).pow(2).mean()
        return rec_loss + loss_extra, rec_loss

    history = _fit(vq.parameters(), steps, lr, step_loss, "prosody VQ", progress)
    return vq.eval(), history


@dataclass
class StyleLatents:
    """y = z_e / scale for every utterance (N, D, T), with scale = std(z_e over the training split) / sigma_data."""

    y: torch.Tensor
    scale: float


@torch.no_grad()
def style_latents(vq: ProsodyVQ, data: ProsodyData) -> StyleLatents:
    """The diffusion targets: pre-quantisation latents scaled to std sigma_data = 0.5 on the training split."""
    z = vq.encode(data.contours)
    scale = float(z[data.train].std()) / SIGMA_DATA
    return StyleLatents(z / scale, scale)


def edm_style_loss(net: StyleDenoiserNet, y: torch.Tensor, condition: StyleCondition,
                   generator: torch.Generator) -> torch.Tensor:
    """EDM's loss (Karras et al. 2022, arXiv 2206.00364, eq. 2 and Tab. 1) per example (B,):
    ln sigma ~ N(-1.2, 1.2^2), y_sigma = y + sigma n, L = lambda(sigma) c_out^2 ||F(c_in y_sigma, c_noise) - (y -
    c_skip y_sigma)/c_out||^2 = lambda(sigma) ||D(y_sigma; sigma) - y||^2 (the edm weighting makes it uniform in
    F's space)."""
    schedule = style_schedule()
    t = sample_times(schedule, y.shape[0], generator, method="lognormal")
    eps = torch.randn(y.shape, generator=generator)
    y_t = schedule.add_noise(y, t, eps)
    out = style_denoiser(net).raw(y_t, t, **condition.cond())
    target = prediction_from_x0_eps(y, eps, t, schedule, "edm", sigma_data=SIGMA_DATA)
    weight = loss_weight(t, schedule, "edm", "edm", sigma_data=SIGMA_DATA).to(y.dtype)
    return ((out - target) ** 2).flatten(1).mean(1) * weight


def train_style_diffusion(data: ProsodyData, latents: StyleLatents, steps: int, *, seed: int = 0, batch: int = 32,
                          lr: float = 2e-3, prompt_drop: float = 0.1, channels: int = 64,
                          progress: bool = False) -> tuple[StyleDenoiserNet, list[float]]:
    """Train the style-code denoiser on the training speakers with :func:`edm_style_loss`; each example's prompt
    is the global style of a random other utterance of its speaker, dropped (null prompt) with probability
    ``prompt_drop`` (0.1 as in classifier-free guidance). Returns (net in eval mode, per-step losses)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter init only
    net = StyleDenoiserNet(data.vocab_size, latents.y.shape[1], data.styles.shape[1], channels=channels)
    train = torch.tensor(data.train)

    def step_loss(step: int):
        index = train[torch.randint(len(train), (batch,), generator=g)]
        condition = StyleCondition.for_utterances(data, index, g, pool=data.train, drop=prompt_drop)
        loss = edm_style_loss(net, latents.y[index], condition, g).mean()
        return loss, loss

    history = _fit(net.parameters(), steps, lr, step_loss, "style diffusion", progress)
    return net.eval(), history


def sample_style(denoiser, condition: StyleCondition, steps: int, *, sampler: str = "heun",
                 generator: torch.Generator, shape: tuple[int, int] = (8, 16), rho: float = 7.0) -> torch.Tensor:
    """Style latents (B, D, T) from noise sigma_max n on the Karras grid (rho = 7) of ``steps`` steps ending at
    sigma = 0, integrated by EDM's Heun (2 steps - 1 network calls) or Euler (``steps`` calls) sampler."""
    schedule = denoiser.schedule
    ts = grid_karras(schedule, steps, rho=rho, t_end=0.0)
    x = SIGMA_MAX * torch.randn((condition.text.shape[0], *shape), generator=generator)
    fn = {"heun": sample_heun, "euler": sample_euler_sigma}[sampler]
    with torch.no_grad():
        return fn(denoiser, x, ts, cond=condition.cond())


@torch.no_grad()
def decode_style(vq: ProsodyVQ, latents: StyleLatents | float, y: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Sampled latents -> standardised contours (B, 2, 64): un-scale, snap to the nearest codes, decode."""
    scale = latents.scale if isinstance(latents, StyleLatents) else float(latents)
    z = y * scale
    if quantize:
        z = vq.lookup(vq.code_indices(z))
    return vq.decode(z)


@torch.no_grad()
def teacher_samples(net: StyleDenoiserNet, data: ProsodyData, count: int, *, guidance: float, steps: int,
                    seed: int, batch: int = 256) -> tuple[torch.Tensor, StyleCondition, torch.Tensor]:
    """``count`` (noise n, condition, teacher latent) triples on the training speakers: the teacher's guided Heun
    sampler from x = sigma_max n. Returns (n (count, D, T), condition, y)."""
    g = torch.Generator().manual_seed(seed)
    train = torch.tensor(data.train)
    index = train[torch.randint(len(train), (count,), generator=g)]
    condition = StyleCondition.for_utterances(data, index, g, pool=data.train)
    guided = prompt_guided(net, guidance)
    shape = (net.config["latent_dim"], data.contours.shape[-1] // 4)
    noises, outs = [], []
    for start in range(0, count, batch):
        part = StyleCondition(*(v[start:start + batch] for v in (condition.text, condition.prompt, condition.keep,
                                                                   condition.speaker)))
        n = torch.randn((len(part.text), *shape), generator=g)
        ts = grid_karras(guided.schedule, steps, t_end=0.0)
        outs.append(sample_heun(guided, SIGMA_MAX * n, ts, cond=part.cond()))
        noises.append(n)
    return torch.cat(noises), condition, torch.cat(outs)


class OneStepStudent:
    """The distilled sampler: y = D_S(sigma_max n; sigma_max, text, prompt), ONE network call (no guidance pass: the
    teacher's guidance is distilled into it)."""

    def __init__(self, net: StyleDenoiserNet):
        self.net = net
        self.denoiser = style_denoiser(net)

    def __call__(self, noise: torch.Tensor, condition: StyleCondition) -> torch.Tensor:
        t = torch.full((noise.shape[0],), SIGMA_MAX, dtype=torch.float64)
        return self.denoiser(SIGMA_MAX * noise, t, **condition.cond())


def _perceptual_loss(vq: ProsodyVQ, y_student: torch.Tensor, y_teacher: torch.Tensor, scale: float) -> torch.Tensor:
    """sum_l mean (phi_l(y_s) - phi_l(y_t))^2 + mean (Dec(y_s) - Dec(y_t))^2 through the frozen decoder (B,)."""
    out_s, feats_s = vq.decode(y_student * scale, features=True)
    with torch.no_grad():
        out_t, feats_t = vq.decode(y_teacher * scale, features=True)
    loss = (out_s - out_t).pow(2).flatten(1).mean(1)
    for a, b in zip(feats_s, feats_t):
        loss = loss + (a - b).pow(2).flatten(1).mean(1)
    return loss


def distill_one_step(teacher: StyleDenoiserNet, vq: ProsodyVQ, latents: StyleLatents, noise: torch.Tensor,
                     condition: StyleCondition, targets: torch.Tensor, steps: int, *, seed: int = 0,
                     batch: int = 64, lr: float = 5e-4, progress: bool = False) -> tuple[OneStepStudent, list[float]]:
    """Distill the guided multi-step teacher into one call (StyleTTS-ZS's perceptual-loss distillation on a fixed
    set of teacher samples, arXiv 2409.10058): the student starts from the teacher's weights and minimises
    :func:`_perceptual_loss` between its one-call latent and the teacher's. Returns (student, per-step losses)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(teacher).train()
    for p in vq.parameters():
        p.requires_grad_(False)
    student = OneStepStudent(net)

    def step_loss(step: int):
        i = torch.randint(len(noise), (batch,), generator=g)
        part = StyleCondition(condition.text[i], condition.prompt[i], condition.keep[i], condition.speaker[i])
        loss = _perceptual_loss(vq, student(noise[i], part), targets[i], latents.scale).mean()
        return loss, loss

    history = _fit(net.parameters(), steps, lr, step_loss, "one-step distillation", progress)
    for p in vq.parameters():
        p.requires_grad_(True)
    net.eval()
    return student, history


def train_regression(data: ProsodyData, vq: ProsodyVQ, latents: StyleLatents, steps: int, *, seed: int = 0,
                     batch: int = 32, lr: float = 2e-3, channels: int = 64,
                     progress: bool = False) -> tuple[StyleDenoiserNet, list[float]]:
    """Baseline: a deterministic regression of the contour from text and prompt, the same network evaluated once at a
    fixed input (zero latent, sigma_max) and trained with the MSE of its decoded contour to the real one.
    Returns (net, losses); predict with ``decode_style(vq, latents, style_denoiser(net)(0, sigma_max, ...))``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = StyleDenoiserNet(data.vocab_size, latents.y.shape[1], data.styles.shape[1], channels=channels)
    for p in vq.parameters():
        p.requires_grad_(False)
    denoiser = style_denoiser(net)
    train = torch.tensor(data.train)

    def step_loss(step: int):
        index = train[torch.randint(len(train), (batch,), generator=g)]
        condition = StyleCondition.for_utterances(data, index, g, pool=data.train)
        y = regression_latent(denoiser, condition, latents.y.shape[1:])
        loss = (vq.decode(y * latents.scale) - data.contours[index]).pow(2).mean()
        return loss, loss

    history = _fit(net.parameters(), steps, lr, step_loss, "regression baseline", progress)
    for p in vq.parameters():
        p.requires_grad_(True)
    return net.eval(), history


def regression_latent(denoiser, condition: StyleCondition, shape) -> torch.Tensor:
    """The regression baseline's latent: the network at a fixed zero input and sigma = sigma_max."""
    x = torch.zeros((condition.text.shape[0], *shape))
    return denoiser(x, torch.full((x.shape[0],), SIGMA_MAX, dtype=torch.float64), **condition.cond())


def prompt_only_contours(data: ProsodyData, condition: StyleCondition) -> torch.Tensor:
    """Baseline "global style only": the training split's mean contour shape, standardised per utterance, given the
    prompt's mean and std of logf0 and energy, in standardised contour units (B, 2, 64)."""
    shape = data.raw_contours[data.train]
    shape = ((shape - shape.mean(-1, keepdim=True)) / shape.std(-1, keepdim=True).clamp_min(1e-6)).mean(0)
    shape = shape / shape.std(-1, keepdim=True)
    raw_style = condition.prompt * data.style_std + data.style_mean  # (B, 4) natural units
    means, stds = raw_style[:, [0, 2]], raw_style[:, [1, 3]]
    raw = means[:, :, None] + stds[:, :, None] * shape[None]
    return (raw - data.mean[None, :, None]) / data.std[None, :, None]


def contour_mmd(generated: torch.Tensor, real: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 with an RBF kernel (``metrics.mmd_rbf``) between standardised contours flattened to vectors
    (B, 2 * 64)."""
    return mmd_rbf(generated.flatten(1).double(), real.flatten(1).double(), bandwidth=bandwidth)


def speaker_f0_error(data: ProsodyData, contours: torch.Tensor, speakers: torch.Tensor) -> float:
    """Speaker similarity: mean over samples of |mean logf0 of the sampled contour - the prompt speaker's mean logf0
    (over all its utterances)| in semitones."""
    logf0 = data.unstandardise(contours)[:, 0].mean(-1)
    target = torch.stack([data.raw_contours[data.speakers == s, 0].mean() for s in speakers.tolist()])
    return float((logf0 - target).abs().mean() * SEMITONES_PER_NEPER)
