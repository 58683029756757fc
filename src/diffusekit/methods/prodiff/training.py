"""ProDiff's two training stages (Huang et al. 2022, arXiv 2207.06389, Sec. 3.3 and Alg. 1-2) as ``Trainer`` losses.

Teacher: an x0-parameterised diffusion TTS model trained with

    L_teacher = mean_mask |x0_theta(x_t, t, c) - x0| + lambda_d mean_phonemes (logd_hat - log(1 + d))^2,

x_t = alpha_t x0 + sigma_t eps, t drawn from the teacher's N-step grid (ProDiff trains its teacher on N = 4 discrete
steps; ``time_sampling="continuous"`` draws t ~ U(t_min, 1) instead, the many-step DDPM reference), c the
length-regulated encoder output with ground-truth durations (FastSpeech 2's teacher forcing). With
``prediction="eps"`` the network predicts eps and the first term is mean_mask |eps_theta - eps| (DiffSpeech's
parameterisation, the baseline ProDiff Sec. 3.1 argues needs many steps).

Student (knowledge distillation, ProDiff Alg. 1): initialised from the teacher, encoder frozen, trained on the
two-teacher-DDIM-step target of progressive distillation (Salimans & Ho 2022, arXiv 2202.00512, Alg. 2),
``methods.distill.progressive.progressive_target``:

    x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t),   L = mean_mask |x0_S - x~|,

for a student step t -> t'' spanning teacher steps t -> t' -> t'' of the same grid (4 -> 2; again 2 -> 1).
Training windows: a random crop of ``window`` frames per utterance (the WaveNet is local; the encoder still sees
the whole phoneme sequence), padded frames masked out of every loss.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...core.denoiser import NetworkDenoiser
from ...core.grids import check_grid
from ...training.trainer import TrainConfig, Trainer
from ..distill.progressive import progressive_target
from .model import ProDiffTTS

__all__ = ["PREDICTIONS", "TIME_SAMPLING", "crop_frames", "masked_l1", "ProDiffTeacherLoss", "ProDiffDistillationLoss",
           "train_teacher", "distill_student", "prodiff_denoiser", "DistilledTTS"]

TIME_SAMPLING = ("grid", "continuous")
PREDICTIONS = ("x0", "eps")


def prodiff_denoiser(model: ProDiffTTS, schedule, prediction: str = "x0") -> NetworkDenoiser:
    """The model as a core Denoiser (x0 prediction unless told, no input scaling); pass ``condition=`` and
    ``mask=``."""
    return NetworkDenoiser(model, schedule, prediction, scale_input=False)


def crop_frames(mel: torch.Tensor, frames: torch.Tensor, window: int, generator: torch.Generator | None):
    """A random window of ``window`` frames per utterance: offset o ~ U{0..max(F_b - window, 0)};
    returns (frame_ids (B, W), mel window (B, n_mels, W), padded with -1 beyond the utterance)."""
    b = mel.shape[0]
    span = torch.clamp(frames - window, min=0) + 1
    offset = (torch.rand(b, generator=generator, dtype=torch.float64) * span.double()).long().clamp(max=span - 1)
    frame_ids = offset[:, None] + torch.arange(window)[None, :]
    inside = frame_ids < frames[:, None]
    src = frame_ids.clamp(max=mel.shape[-1] - 1)
    crop = mel.gather(2, src[:, None, :].expand(-1, mel.shape[1], -1))
    return frame_ids, torch.where(inside[:, None, :], crop, torch.full_like(crop, -1.0))


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean |a - b| over real frames and mel bins: a, b (B, M, W), mask (B, 1, W) -> (B,)."""
    err = ((a - b).abs() * mask).flatten(1).sum(1)
    return err / (mask.flatten(1).sum(1).clamp(min=1) * a.shape[1])


class ProDiffTeacherLoss:
    """``Trainer`` loss of the teacher (see the module docstring); batch = TTSTensors.data() rows."""

    def __init__(self, schedule, ts_teacher, *, window: int = 48, duration_weight: float = 1.0,
                 time_sampling: str = "grid", prediction: str = "x0"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        if time_sampling not in TIME_SAMPLING:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; allowed: {', '.join(TIME_SAMPLING)}")
        self.schedule = schedule
        self.ts = check_grid(ts_teacher, schedule)
        self.window = int(window)
        self.duration_weight = float(duration_weight)
        self.time_sampling = time_sampling
        self.prediction = prediction

    def sample_times(self, b: int, generator) -> torch.Tensor:
        if self.time_sampling == "grid":  # the noisy grid points (the last point is the data)
            points = self.ts[:-1] if float(self.ts[-1]) == 0 else self.ts
            return points[torch.randint(0, len(points), (b,), generator=generator)]
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        return self.schedule.t_min + u * (self.schedule.t_max - self.schedule.t_min)

    def __call__(self, net: ProDiffTTS, batch, generator=None) -> torch.Tensor:
        mel, phonemes, durations, frames, style = batch
        frame_ids, x0 = crop_frames(mel, frames, self.window, generator)
        cond, mask, log_d = net.condition(phonemes, style, durations, frame_ids)
        t = self.sample_times(mel.shape[0], generator)
        eps = torch.randn(x0.shape, generator=generator)
        z = self.schedule.add_noise(x0, t, eps)
        if self.prediction == "x0":
            diffusion = masked_l1(prodiff_denoiser(net, self.schedule).denoise(z, t, condition=cond, mask=mask), x0,
                                  mask)
        else:
            eps_hat = prodiff_denoiser(net, self.schedule, "eps").raw(z, t, condition=cond, mask=mask)
            diffusion = masked_l1(eps_hat, eps, mask)
        pmask = phonemes.ne(0).to(log_d.dtype)
        dur = (((log_d - torch.log1p(durations.to(log_d.dtype))) ** 2) * pmask).sum(1) / pmask.sum(1).clamp(min=1)
        return diffusion + self.duration_weight * dur


class ProDiffDistillationLoss:
    """``Trainer`` loss of the student: masked L1 between the student's x0 at (z_t, t) and the two-teacher-DDIM-
    step target x~ over t = ts[2i] -> ts[2i + 1] -> ts[2i + 2], i ~ U{0..N/2 - 1} (2 teacher NFE, no gradient).
    The condition comes from the teacher's (frozen, shared) encoder with ground-truth durations."""

    def __init__(self, teacher: ProDiffTTS, schedule, ts_teacher, *, window: int = 48):
        ts = check_grid(ts_teacher, schedule)
        if (len(ts) - 1) % 2:
            raise ValueError(f"the teacher grid must have an even number of steps; got {len(ts) - 1}")
        self.teacher = teacher
        self.schedule = schedule
        self.ts = ts
        self.window = int(window)

    def __call__(self, net: ProDiffTTS, batch, generator=None) -> torch.Tensor:
        mel, phonemes, durations, frames, style = batch
        frame_ids, x0 = crop_frames(mel, frames, self.window, generator)
        b = mel.shape[0]
        i = torch.randint(0, (len(self.ts) - 1) // 2, (b,), generator=generator)
        t, t_mid, t_next = self.ts[2 * i], self.ts[2 * i + 1], self.ts[2 * i + 2]
        eps = torch.randn(x0.shape, generator=generator)
        z = self.schedule.add_noise(x0, t, eps)
        with torch.no_grad():
            cond, mask, _ = self.teacher.condition(phonemes, style, durations, frame_ids)
            target = progressive_target(prodiff_denoiser(self.teacher, self.schedule), z, t, t_mid, t_next,
                                        condition=cond, mask=mask)
        x0_student = prodiff_denoiser(net, self.schedule).denoise(z, t, condition=cond, mask=mask)
        return masked_l1(x0_student, target, mask)


def train_teacher(model: ProDiffTTS, schedule, ts_teacher, data, config: TrainConfig, *, window: int = 48,
                  time_sampling: str = "grid", duration_weight: float = 1.0, prediction: str = "x0") -> dict:
    """Train ``model`` in place with :class:`ProDiffTeacherLoss` for ``config.steps`` optimizer steps on ``data``
    (``TTSTensors.data()``); returns the trainer history. Use ``config.ema_decay=None`` for short runs."""
    loss = ProDiffTeacherLoss(schedule, ts_teacher, window=window, time_sampling=time_sampling,
                              duration_weight=duration_weight, prediction=prediction)
    model.train()
    history = Trainer(model, loss, tuple(data), config,
                      extra_config={"method": "prodiff_teacher", "time_sampling": time_sampling,
                                    "prediction": prediction}).fit()
    model.eval()
    return history


@dataclass
class DistilledTTS:
    """A distilled student (eval mode), its grid (every other point of its teacher's) and training history."""

    model: ProDiffTTS
    ts: torch.Tensor
    history: dict

    @property
    def steps(self) -> int:
        return len(self.ts) - 1


def distill_student(teacher: ProDiffTTS, schedule, ts_teacher, data, config: TrainConfig, *,
                    window: int = 48) -> DistilledTTS:
    """One ProDiff round N -> N/2 (Huang et al. 2022, Alg. 1): the student is a copy of the teacher with the encoder
    and duration predictor frozen, its denoiser trained by :class:`ProDiffDistillationLoss` for ``config.steps``
    steps against a frozen copy of the teacher. Returns the student on ``ts_teacher[::2]``."""
    ts = check_grid(ts_teacher, schedule)
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    student.encoder.requires_grad_(False)
    student.duration_predictor.requires_grad_(False)
    loss = ProDiffDistillationLoss(frozen, schedule, ts, window=window)
    history = Trainer(student, loss, tuple(data), config,
                      extra_config={"method": "prodiff_distillation", "ts_teacher": ts.tolist()}).fit()
    return DistilledTTS(student.eval(), ts[::2].clone(), history)
