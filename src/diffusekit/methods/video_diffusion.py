"""Video diffusion (the core of "Video Diffusion Models: A Survey", Melnik et al. 2024, arXiv 2405.03150): the
training loss with joint image-video training and cross-frame noise sharing, class- and first-frame conditioning,
and sampling through the library's samplers (a video net behind a ``NetworkDenoiser``, so every sampler applies).

Clips are x (B, T, C, H, W). The loss of example i is the usual denoising loss averaged over all its frames,

    L_i = w(t_i) mean_{f, pixels} (F(x_t, t_i, c_i)_f - target_f)^2,   x_t = alpha_t x0 + sigma_t eps,

with three video-specific pieces:

* **Cross-frame noise sharing** (the mixed noise model of PYoCo, Ge et al. 2023, arXiv 2305.10474, eq. 4, in the
  form eps_f = sqrt(a) eps_shared + sqrt(1 - a) eps_ind,f): every frame's noise has unit variance, frames are
  correlated by ``a`` = ``shared_noise``. The network learns to predict that correlated noise; sampling starts from
  the same mixture (``mixed_noise``), so training and sampling see one noise law.
* **Joint image-video training** (Ho et al. 2022, "Video Diffusion Models", arXiv 2204.03458, Sec. 3.2): each clip
  is extended by ``images_per_clip`` independent images of the same class (drawn from a separate, larger image set)
  as extra frames, and the temporal attention is masked (``joint_frames_mask``) so those frames only attend to
  themselves. Image frames get independent noise.
* **Conditioning**: the class label (dropped to the null class with probability ``label_dropout`` for classifier-free
  guidance, Ho & Salimans 2022, arXiv 2207.12598) and, for nets built with ``first_frame=True``, the clean first
  frame as extra input channels (dropped to zeros with probability ``first_frame_dropout``).
"""

from __future__ import annotations

import math

import torch

from ..core import noise
from ..core._tensor import per_sample
from ..core.denoiser import Denoiser, NetworkDenoiser
from ..core.grids import make_grid
from ..domains.video.nets import joint_frames_mask
from .thresholding import StaticThresholdDenoiser
from ..samplers import get_sampler
from ..training.losses import DiffusionLoss, class_condition, sample_times

__all__ = ["mixed_noise", "VideoDiffusionLoss", "sample_videos", "train_video_net", "VideoModel", "VideoCFGDenoiser"]


def _check_share(shared_noise: float) -> float:
    if not 0.0 <= float(shared_noise) <= 1.0:
        raise ValueError(f"shared_noise must be in [0, 1], got {shared_noise}")
    return float(shared_noise)


def mixed_noise(shape, generator=None, *, shared_noise: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """Cross-frame shared noise for clips of ``shape`` (B, T, ...): eps_f = sqrt(a) eps_shared + sqrt(1 - a) eps_f'
    with eps_shared, eps_f' ~ N(0, I) independent (PYoCo, arXiv 2305.10474, eq. 4; a = ``shared_noise``), so each
    frame is N(0, I) and Corr(eps_f, eps_g) = a for f != g. ``generator``: one generator, one per clip, or None;
    the shared draw comes first, then the per-frame draws."""
    a = _check_share(shared_noise)
    shape = tuple(shape)
    if a == 0.0:
        return noise.randn(shape, generator, dtype=dtype)
    shared = noise.randn((shape[0], 1) + shape[2:], generator, dtype=dtype)
    own = noise.randn(shape, generator, dtype=dtype)
    return math.sqrt(a) * shared + math.sqrt(1.0 - a) * own


class VideoDiffusionLoss(DiffusionLoss):
    """Per-clip denoising loss for video nets (see the module docstring), usable as a ``Trainer`` loss.

    ``batch`` = (clips (B, T, C, H, W), labels (B,)) or (clips,). Options beyond ``DiffusionLoss``'s:
    ``shared_noise`` a in [0, 1]; ``images`` (M, C, H, W) with ``image_labels`` (M,) and ``images_per_clip`` k > 0
    for joint image-video training (k same-class images appended as masked frames); ``first_frame_dropout`` p (nets
    with ``first_frame=True`` get the clip's clean frame 0 with probability 1 - p, else zeros; with joint training
    the appended image frames see that channel too, as extra context they learn to ignore). ``generator``: one CPU
    generator (the trainer's default ``loss_noise="per_rank"``).
    """

    def __init__(self, schedule, prediction: str = "eps", *, shared_noise: float = 0.0,
                 images: torch.Tensor | None = None, image_labels: torch.Tensor | None = None,
                 images_per_clip: int = 0, first_frame_dropout: float = 0.5, **kwargs):
        super().__init__(schedule, prediction, **kwargs)
        self.shared_noise = _check_share(shared_noise)
        if images_per_clip < 0 or (images_per_clip > 0 and images is None):
            raise ValueError("images_per_clip > 0 needs an image set (images (M, C, H, W))")
        if not 0.0 <= first_frame_dropout <= 1.0:
            raise ValueError(f"first_frame_dropout must be in [0, 1], got {first_frame_dropout}")
        self.images_per_clip = int(images_per_clip)
        self.first_frame_dropout = float(first_frame_dropout)
        self.images = images
        self.image_labels = image_labels
        if images is not None and image_labels is not None:
            self._by_class = {int(c): torch.nonzero(image_labels == c).flatten() for c in image_labels.unique()}

    def config(self) -> dict:
        return {**super().config(), "shared_noise": self.shared_noise, "images_per_clip": self.images_per_clip,
                "first_frame_dropout": self.first_frame_dropout}

    def _append_images(self, clips: torch.Tensor, labels: torch.Tensor | None, generator) -> torch.Tensor:
        """clips (B, T, ...) -> (B, T + k, ...) with k random images (of each clip's class when labelled)."""
        k = self.images_per_clip
        picks = []
        for i in range(clips.shape[0]):
            pool = self._by_class[int(labels[i])] if labels is not None and self.image_labels is not None \
                else torch.arange(self.images.shape[0])
            picks.append(pool[torch.randint(pool.numel(), (k,), generator=generator)])
        return torch.cat([clips, self.images[torch.stack(picks)].to(clips)], dim=1)

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(generator, (list, tuple)):
            raise ValueError("VideoDiffusionLoss draws from one generator per batch (TrainConfig loss_noise="
                             "'per_rank'); per-example generators are not supported")
        clips = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        b, frames = clips.shape[:2]
        t = sample_times(self.schedule, b, generator, method=self.time_sampling).to(clips.device)
        eps = mixed_noise(clips.shape, generator, shared_noise=self.shared_noise, dtype=clips.dtype)
        x0, frame_mask = clips, None
        if self.images_per_clip:
            x0 = self._append_images(clips, labels, generator)
            image_eps = noise.randn((b, self.images_per_clip) + tuple(clips.shape[2:]), generator, dtype=clips.dtype)
            eps = torch.cat([eps, image_eps], dim=1)
            frame_mask = joint_frames_mask(x0.shape[1], frames)
        cond = class_condition(net, labels, self.label_dropout, generator)
        if (getattr(getattr(net, "module", net), "config", None) or {}).get("first_frame"):
            keep = torch.rand(b, generator=generator) >= self.first_frame_dropout
            cond["first_frame"] = clips[:, 0] * per_sample(keep.to(clips.dtype), clips[:, 0])
        if frame_mask is not None:
            cond["frame_mask"] = frame_mask
        return self.loss_given_condition(net, x0, t, eps.to(x0.device), cond)


class VideoCFGDenoiser(Denoiser):
    """Classifier-free guidance on the class of a video denoiser (Ho & Salimans 2022, arXiv 2207.12598, eq. 6):
    x0_hat = x0_u + w (x0_c - x0_u), both passes in one batched call; the null pass swaps the class for the null
    class and keeps the other conditions (the first frame, duplicated with the batch; the frame mask)."""

    def __init__(self, denoiser: NetworkDenoiser, scale: float):
        super().__init__(denoiser.schedule)
        self.inner, self.scale = denoiser, float(scale)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *, class_labels: torch.Tensor, first_frame=None,
                **cond) -> torch.Tensor:
        null = torch.full_like(class_labels, self.inner.null_class)
        if first_frame is not None:
            cond["first_frame"] = torch.cat([first_frame, first_frame])
        both = self.inner.denoise(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([class_labels, null]),
                                  **cond)
        x0_c, x0_u = both.chunk(2)
        return x0_u + self.scale * (x0_c - x0_u)


@torch.no_grad()
def sample_videos(denoiser: NetworkDenoiser, labels: torch.Tensor | None, *, frames: int, num: int | None = None,
                  first_frame: torch.Tensor | None = None, steps: int = 25, sampler: str = "ddim",
                  grid: str = "uniform", guidance: float = 1.0, shared_noise: float = 0.0, seed: int = 0,
                  frame_mask: torch.Tensor | None = None, clip_x0: bool = True) -> torch.Tensor:
    """Clips (N, T, C, H, W) from a video ``NetworkDenoiser``: x_T = mixed_noise(..., a) (the noise law the net was
    trained with, a = ``shared_noise``) integrated by any registered ``sampler`` on ``make_grid(grid, steps)``;
    ``guidance`` w != 1 wraps the denoiser in ``VideoCFGDenoiser`` (x0_u + w (x0_c - x0_u), arXiv 2207.12598).
    Clip i draws all its noise from its own generator seeded ``seed + i``, so a clip does not depend on the batch.
    ``first_frame`` (N, C, H, W) conditions first-frame nets; ``frame_mask`` (T, T) masks temporal attention
    (``independent_frames_mask`` samples every frame on its own). ``clip_x0``: static thresholding of x0_hat to
    [-1, 1] inside every step (``methods.thresholding``; Ho et al. 2020's clip_denoised). Output clamped to [-1, 1]."""
    cfg = denoiser.net.config
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        num = labels.shape[0]
    if num is None or num < 1:
        raise ValueError("give labels (N,) or num >= 1 clips")
    shape = (num, frames, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    generators = noise.generators_from_seeds(seed, num)
    schedule = denoiser.schedule
    t_max = schedule.t_max
    scale = float(schedule.alpha(t_max) ** 2 + schedule.sigma(t_max) ** 2) ** 0.5
    x_T = mixed_noise(shape, generators, shared_noise=shared_noise) * scale
    cond = {}
    if labels is not None:
        cond["class_labels"] = labels
    if first_frame is not None:
        cond["first_frame"] = first_frame
    if frame_mask is not None:
        cond["frame_mask"] = frame_mask
    den = denoiser
    if guidance != 1.0:
        if labels is None:
            raise ValueError("classifier-free guidance needs class labels")
        den = VideoCFGDenoiser(denoiser, guidance)
    if clip_x0:
        den = StaticThresholdDenoiser(den)
    info = get_sampler(sampler)
    kwargs = {"generator": generators} if info.stochastic else {}
    x = info.fn(den, x_T, make_grid(grid, schedule, steps), cond=cond, **kwargs)
    return x.clamp(-1, 1)


def train_video_net(net: torch.nn.Module, loss: VideoDiffusionLoss, clips: torch.Tensor, labels: torch.Tensor, *,
                    steps: int, batch_size: int = 16, lr: float = 2e-3, seed: int = 0, ema_decay: float | None = None,
                    progress: bool = False) -> tuple[NetworkDenoiser, dict]:
    """Train ``net`` in place with the library ``Trainer`` (AdamW ``lr``, warm-up min(50, steps), grad clip 1) on
    (clips, labels); returns (the ``NetworkDenoiser`` of the EMA weights when ``ema_decay`` is set, else of the
    trained net, in eval mode; {"steps", "seconds", "final_loss"})."""
    import time

    from ..training import TrainConfig, Trainer

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=ema_decay,
                      seed=seed, progress=progress, log_every=10 ** 9)
    t0 = time.perf_counter()
    trainer = Trainer(net, loss, (clips.float(), labels.long()), cfg)
    result = trainer.fit()
    trained = trainer.ema_model if ema_decay is not None else net
    tail = result["loss"][-50:]
    info = {"steps": int(steps), "seconds": time.perf_counter() - t0,
            "final_loss": float(sum(tail) / len(tail)) if tail else float("nan")}
    return loss.denoiser(trained.eval()), info


class VideoModel:
    """A trained video denoiser with its sampling defaults: ``frames`` per clip, the ``shared_noise`` a it was trained
    with (sampling must start from the same mixed-noise law) and the recommended CFG ``guidance``.
    ``sample(labels, ...)`` is ``sample_videos`` with those defaults."""

    def __init__(self, denoiser: NetworkDenoiser, *, frames: int, shared_noise: float = 0.0, guidance: float = 1.0):
        self.denoiser = denoiser
        self.frames = int(frames)
        self.shared_noise = _check_share(shared_noise)
        self.guidance = float(guidance)

    @property
    def net(self) -> torch.nn.Module:
        return self.denoiser.net

    def sample(self, labels: torch.Tensor, *, first_frame: torch.Tensor | None = None, steps: int = 25,
               sampler: str = "ddim", guidance: float | None = None, seed: int = 0) -> torch.Tensor:
        """Clips (N, frames, C, H, W) in [-1, 1] for class ``labels`` (N,) (see ``sample_videos``)."""
        return sample_videos(self.denoiser, labels, frames=self.frames, first_frame=first_frame, steps=steps,
                             sampler=sampler, guidance=self.guidance if guidance is None else guidance,
                             shared_noise=self.shared_noise, seed=seed)
