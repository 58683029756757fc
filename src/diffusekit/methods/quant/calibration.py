"""Calibration sets for post-training quantization of diffusion models (issue 9): PTQ4DM, Q-Diffusion and a
naive baseline, plus Q-Diffusion's split quantization of the decoder's skip concatenations.

Everything here starts from the full-precision model's own sampling trajectories (``record_trajectories``):
a recording Denoiser wrapper logs the network input (x_t, t, cond) at every evaluation of any registered
sampler (DDIM on a uniform-t grid by default, or the project default ``samplers.DEFAULT`` on
``default_timesteps``), in schedule time on the model's own schedule.

Time convention (all methods): t is the *true* schedule time of the stored x_t, i.e. the noise level x_t
actually has (t = 0 clean data, t = T = ``schedule.t_max`` pure noise), and it is the label the network is
given for that x_t. PTQ4DM's released script keeps the sample of loop iteration ``now_rt`` (which has noise
level T - 2 - now_rt) but labels it ``now_rt``: label and noise level are mirrored about T/2 there. We do
not reproduce that: the time drawn around 0.4 T is the true noise level of the kept sample (the paper's
stated intent: skew calibration toward the less-noisy half).

* ``ptq4dm_calibration`` (Shang et al., CVPR 2023, "NDTC"): per trajectory i one pair (x_t, t) with
  t_i ~ N(mu T, (sigma T)^2), mu = 0.4, sigma = 0.4, clamped to the recorded time range (as the reference
  clamps int(N(mu T, sigma T)) to [0, T - 1]) and snapped to the nearest recorded step. The normal's mean
  sits in the less-noisy half (mu < 1/2); clamping piles the tails (about Phi(-1) = 16 % of the draws at
  the least-noisy step, 7 % at T) but leaves the median mu T and the quartiles mu T -+ 0.674 sigma T.
* ``qdiffusion_calibration`` (Li et al., ICCV 2023): time-step-aware calibration, ``num_steps`` evenly
  spaced steps over the whole trajectory (first to last recorded step), the same ``per_step`` trajectories
  at each of them (the reference: 20 of 100 DDIM steps x 256 samples).
* ``naive_calibration``: the conventional PTQ baseline PTQ4DM ablates against: training data forward-noised
  to a uniform random t, x_t = alpha_t x0 + sigma_t eps (no sampler involved).
* ``single_step_calibration``: every trajectory at one step (Q-Diffusion's single-time-step ablation).
* ``uniform_calibration``: the trajectory at a uniform random step per trajectory (PTQ4DM's "uniform t"
  ablation).
* ``calibrate_denoiser``: feeds a ``CalibrationSet`` through the shared ``calibrate`` (min/max, percentile
  or MSE ranges) of a ``NetworkDenoiser`` whose network went through ``quantize_model``.
* ``split_concat_convs`` / ``SplitConv2d``: Q-Diffusion's split shortcut quantization. Our UNet concatenates
  (h_deep, skip) inside ``UNet.forward``; every decoder ResBlock's 1x1 shortcut conv (``res.skip``) consumes
  that concatenation unchanged. ``SplitConv2d`` replaces such a conv by two convs over the input-channel
  slices [0, C_deep) and [C_deep, C_in) (conv is linear in its input channels, so the sum is the same
  layer); ``quantize_model`` then gives each part its own weight and activation quantizer. Apply it before
  ``quantize_model``. (The ResBlock's conv1 sees the concatenation only after GroupNorm + SiLU; it can be
  split too with ``layers=("skip", "conv1")``.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.denoiser import Denoiser
from ...core.grids import make_grid
from ...core.noise import prior_sample
from .modules import calibrate, quant_layers

__all__ = ["CalibrationSet", "Trajectories", "record_trajectories", "ptq4dm_calibration", "ptq4dm_times",
           "qdiffusion_calibration", "single_step_calibration", "naive_calibration", "uniform_calibration",
           "calibrate_denoiser",
           "SplitConv2d", "split_concat_convs", "unet_concat_splits"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@dataclass
class CalibrationSet:
    """Network inputs for calibration: x (M, ...) at schedule times t (M,) float64, with per-sample
    conditioning ``cond`` (e.g. {"class_labels": (M,) long}). ``method`` names how it was built."""

    x: torch.Tensor
    t: torch.Tensor
    cond: dict = field(default_factory=dict)
    method: str = ""

    def __post_init__(self):
        if self.x.shape[0] != self.t.shape[0] or any(v.shape[0] != self.x.shape[0] for v in self.cond.values()):
            raise ValueError("x, t and every cond tensor must hold the same number of samples")
        if self.x.shape[0] == 0:
            raise ValueError("a calibration set needs at least one sample")

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """(x, t, cond) chunks of at most ``batch_size`` samples, in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield (self.x[i:i + batch_size], self.t[i:i + batch_size],
                   {k: v[i:i + batch_size] for k, v in self.cond.items()})


@dataclass
class Trajectories:
    """Recorded sampler inputs: x (S, N, ...) the N trajectories' states at the S network evaluations,
    t (S,) float64 their schedule times (decreasing: noise to data), cond per trajectory (N,)."""

    x: torch.Tensor
    t: torch.Tensor
    cond: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return self.x.shape[0]

    @property
    def num_samples(self) -> int:
        return self.x.shape[1]

    def take(self, step_idx: torch.Tensor, sample_idx: torch.Tensor, method: str) -> CalibrationSet:
        step_idx, sample_idx = step_idx.long(), sample_idx.long()
        return CalibrationSet(self.x[step_idx, sample_idx].clone(), self.t[step_idx].clone(),
                              {k: v[sample_idx].clone() for k, v in self.cond.items()}, method)


class _Recorder(Denoiser):
    """Denoiser wrapper logging (x, t) at every call (cond is per trajectory and stored once)."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner.schedule)
        self.inner = inner
        self.xs: list[torch.Tensor] = []
        self.ts: list[torch.Tensor] = []

    def denoise(self, x, t, **cond):
        self.xs.append(x.detach().clone())
        self.ts.append(t.detach().clone())
        return self.inner.denoise(x, t, **cond)


def _grid(denoiser, grid, steps: int) -> tuple[torch.Tensor, object, dict]:
    from ...samplers import DEFAULT, default_timesteps, get_sampler

    if isinstance(grid, str) and grid == "default":
        return default_timesteps(denoiser, steps), get_sampler(DEFAULT["sampler"]).fn, dict(DEFAULT["options"])
    if isinstance(grid, str):
        ts = make_grid(grid, denoiser.schedule, steps) if grid in ("linspace", "leading", "trailing") \
            else make_grid(grid, denoiser.schedule, steps, t_end=0.0)
    else:
        ts = torch.as_tensor(grid, dtype=torch.float64)
    return ts, None, {}


@torch.no_grad()
def record_trajectories(denoiser: Denoiser, n: int, shape: Sequence[int], *, steps: int = 50,
                        grid="uniform", sampler: str = "ddim", cond: dict | None = None, seed: int = 0,
                        batch_size: int = 256) -> Trajectories:
    """Run the full-precision ``denoiser``'s sampler from ``n`` prior draws (generator seeded by ``seed``)
    and record the network input at every evaluation.

    grid: a ``make_grid`` name ("uniform" default: uniform in t from t_max to 0), a grid tensor, or
    "default" (the project default sampler and ``default_timesteps(denoiser, steps)``; ``sampler`` is then
    ignored). sampler: a registered deterministic sampler name (default DDIM, eta = 0). cond: per-sample
    conditioning, e.g. {"class_labels": (n,)}. Returns ``Trajectories`` with x (S, n, *shape).
    """
    from ...samplers import get_sampler

    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    ts, fn, options = _grid(denoiser, grid, steps)
    if fn is None:
        info = get_sampler(sampler)
        if info.stochastic:
            raise ValueError(f"calibration trajectories need a deterministic sampler; {sampler!r} is stochastic")
        fn = info.fn
    cond = {k: torch.as_tensor(v) for k, v in (cond or {}).items()}
    x_T = prior_sample(denoiser.schedule, (n, *shape), _gen(seed))
    xs, t_rec = [], None
    for i in range(0, n, batch_size):
        rec = _Recorder(denoiser)
        c = {k: v[i:i + batch_size] for k, v in cond.items()}
        fn(rec, x_T[i:i + batch_size].clone(), ts, cond=c, **options)
        t_steps = torch.stack([t[0] for t in rec.ts])
        if t_rec is not None and not torch.equal(t_rec, t_steps):
            raise RuntimeError("sampler evaluated different times for different batches")
        t_rec = t_steps
        xs.append(torch.stack(rec.xs))
    return Trajectories(torch.cat(xs, dim=1).float(), t_rec.to(torch.float64), cond)


def ptq4dm_times(n: int, t_max: float, *, mu: float = 0.4, sigma: float = 0.4, seed: int = 0) -> torch.Tensor:
    """n draws t ~ N(mu t_max, (sigma t_max)^2) clamped to [0, t_max], float64 (true noise-level times)."""
    if not (0.0 <= mu <= 1.0 and sigma > 0):
        raise ValueError(f"need 0 <= mu <= 1 and sigma > 0; got mu={mu}, sigma={sigma}")
    z = torch.randn(n, generator=_gen(seed), dtype=torch.float64)
    return ((mu + sigma * z) * t_max).clamp(0.0, t_max)


def _nearest_step(traj_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (t[:, None] - traj_t[None, :]).abs().argmin(dim=1)


def ptq4dm_calibration(traj: Trajectories, n: int | None = None, *, mu: float = 0.4, sigma: float = 0.4,
                       seed: int = 0) -> CalibrationSet:
    """PTQ4DM's NDTC: for each of the first ``n`` trajectories (default all) one (x_t, t) at the recorded step
    nearest to t_i ~ N(mu T, (sigma T)^2), T = the first recorded (largest) time, clamped to the recorded
    range. t is the true time of x_t (see the module docstring on the mirrored index of the reference)."""
    n = traj.num_samples if n is None else int(n)
    if not 1 <= n <= traj.num_samples:
        raise ValueError(f"n must be in 1..{traj.num_samples} (one sample per trajectory); got {n}")
    t_max = float(traj.t.max())
    times = ptq4dm_times(n, t_max, mu=mu, sigma=sigma, seed=seed)
    return traj.take(_nearest_step(traj.t, times), torch.arange(n), "ptq4dm")


def qdiffusion_calibration(traj: Trajectories, num_steps: int = 20, per_step: int | None = None, *,
                           seed: int = 0) -> CalibrationSet:
    """Q-Diffusion's time-step-aware set: ``num_steps`` steps evenly spaced over the recorded trajectory
    (indices round(linspace(0, S - 1, num_steps)), so the first and last steps are included), with the same
    ``per_step`` trajectories (default all, else a seeded random subset) at every one of them."""
    s = traj.num_steps
    if not 1 <= num_steps <= s:
        raise ValueError(f"num_steps must be in 1..{s} (the recorded steps); got {num_steps}")
    per_step = traj.num_samples if per_step is None else int(per_step)
    if not 1 <= per_step <= traj.num_samples:
        raise ValueError(f"per_step must be in 1..{traj.num_samples}; got {per_step}")
    steps = torch.linspace(0, s - 1, num_steps, dtype=torch.float64).round().long()
    samples = torch.arange(per_step) if per_step == traj.num_samples \
        else torch.randperm(traj.num_samples, generator=_gen(seed))[:per_step].sort().values
    return traj.take(steps.repeat_interleave(per_step), samples.repeat(num_steps), "qdiffusion")


def uniform_calibration(traj: Trajectories, n: int | None = None, *, seed: int = 0) -> CalibrationSet:
    """One (x_t, t) per trajectory at a uniformly random recorded step (PTQ4DM's uniform-t ablation)."""
    n = traj.num_samples if n is None else int(n)
    if not 1 <= n <= traj.num_samples:
        raise ValueError(f"n must be in 1..{traj.num_samples}; got {n}")
    steps = torch.randint(0, traj.num_steps, (n,), generator=_gen(seed))
    return traj.take(steps, torch.arange(n), "uniform")


def single_step_calibration(traj: Trajectories, step: int = -1, n: int | None = None) -> CalibrationSet:
    """All of the first ``n`` trajectories (default all) at one recorded step (default the last, least-noisy
    one): the single-time-step calibration Q-Diffusion ablates against its time-step-aware set."""
    n = traj.num_samples if n is None else int(n)
    if not 1 <= n <= traj.num_samples:
        raise ValueError(f"n must be in 1..{traj.num_samples}; got {n}")
    if not -traj.num_steps <= step < traj.num_steps:
        raise ValueError(f"step must index one of the {traj.num_steps} recorded steps; got {step}")
    return traj.take(torch.full((n,), step % traj.num_steps), torch.arange(n), "single_step")


def naive_calibration(schedule, x0: torch.Tensor, n: int, *, cond: dict | None = None, seed: int = 0,
                      t_range: tuple[float, float] | None = None) -> CalibrationSet:
    """The conventional baseline: n training samples (drawn with replacement from ``x0``, with their
    ``cond`` rows) forward-noised to t ~ U(t_range) (default [schedule.t_min, schedule.t_max]),
    x_t = alpha_t x0 + sigma_t eps."""
    g = _gen(seed)
    lo, hi = (float(schedule.t_min), float(schedule.t_max)) if t_range is None else t_range
    idx = torch.randint(0, x0.shape[0], (n,), generator=g)
    t = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    eps = torch.randn((n, *x0.shape[1:]), generator=g, dtype=torch.float64)
    shape = (n,) + (1,) * (x0.dim() - 1)
    x = schedule.alpha(t).reshape(shape) * x0[idx].to(torch.float64) + schedule.sigma(t).reshape(shape) * eps
    return CalibrationSet(x.to(x0.dtype), t, {k: torch.as_tensor(v)[idx] for k, v in (cond or {}).items()},
                          "naive")


def calibrate_denoiser(qmodel_denoiser, calib_set: CalibrationSet, method: str = "minmax", *,
                       batch_size: int = 256, step: int | None = None, **range_kw):
    """Set the activation ranges of ``qmodel_denoiser.net`` (a ``NetworkDenoiser`` whose network went
    through ``quantize_model``) from ``calib_set`` with the shared ``calibrate`` (``method``: "minmax",
    "percentile" or "mse"; ``step``/``range_kw`` as there). The network sees exactly what it sees while
    sampling: ``net(*denoiser.net_inputs(x, t), **cond)``. Returns the denoiser."""
    den = qmodel_denoiser

    def run(net, batch):
        x, t, cond = batch
        net(*den.net_inputs(x, t), **cond)

    calibrate(den.net, lambda: calib_set.batches(batch_size), method, step=step, run=run, **range_kw)
    return den


# ------------------------------------------------------------------------------------------------
# Q-Diffusion's split shortcut quantization
# ------------------------------------------------------------------------------------------------
class SplitConv2d(nn.Module):
    """A Conv2d over concat(a, b) along channels, as two convs: y = conv_a(x[:, :split]) + conv_b(x[:, split:]).

    Built from an ``nn.Conv2d`` (groups 1): conv_a takes its weight's input channels [0, split) and the bias,
    conv_b the rest, both with the layer's kernel, stride, padding (zeros: per channel, so the split is
    exact), dilation. ``quantize_model`` then wraps each part with its own weight and activation quantizer.
    """

    def __init__(self, conv: nn.Conv2d, split: int):
        super().__init__()
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"SplitConv2d needs an nn.Conv2d; got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError("SplitConv2d needs groups=1")
        if not 0 < split < conv.in_channels:
            raise ValueError(f"split must be in 1..{conv.in_channels - 1}; got {split}")
        self.split = int(split)
        kw = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, padding_mode=conv.padding_mode)
        w = conv.weight.detach()
        self.conv_a = nn.Conv2d(split, conv.out_channels, bias=conv.bias is not None, **kw).to(w)
        self.conv_b = nn.Conv2d(conv.in_channels - split, conv.out_channels, bias=False, **kw).to(w)
        with torch.no_grad():
            self.conv_a.weight.copy_(w[:, :split])
            self.conv_b.weight.copy_(w[:, split:])
            if conv.bias is not None:
                self.conv_a.bias.copy_(conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_a(x[:, :self.split]) + self.conv_b(x[:, self.split:])


def unet_concat_splits(unet: nn.Module) -> dict[str, int]:
    """{decoder ResBlock name (e.g. "up.0.res"): C_deep} for our ``UNet``: the decoder block ``up[i]``
    receives concat(h, skip) with h the previous block's output (``mid2`` for the first), so C_deep is that
    block's output channel count. Read from the module structure; ``unet.py`` is not changed."""
    from ...nets.unet import UNet, _Level

    if not isinstance(unet, UNet):
        raise TypeError(f"expected diffusekit's UNet; got {type(unet).__name__}")
    if quant_layers(unet):
        raise ValueError("split the concatenation convs before quantize_model")
    prev = unet.mid2.conv2.out_channels
    out = {}
    for i, block in enumerate(unet.up):
        if isinstance(block, _Level):
            out[f"up.{i}.res"] = prev
            prev = block.res.conv2.out_channels
        else:
            prev = block.conv.out_channels
    return out


def split_concat_convs(unet: nn.Module, layers: Sequence[str] = ("skip",)) -> list[str]:
    """Replace each decoder ResBlock's ``layers`` (among "skip": the 1x1 shortcut on the raw concatenation,
    and "conv1": the 3x3 conv after GroupNorm + SiLU) by ``SplitConv2d`` at C_deep, in place (the output is
    the same up to float summation order). Returns the replaced names. Call before ``quantize_model``."""
    bad = set(layers) - {"skip", "conv1"}
    if bad:
        raise ValueError(f"unknown layer names {sorted(bad)}; choose among skip, conv1")
    done = []
    for name, split in unet_concat_splits(unet).items():
        res = unet.get_submodule(name)
        for lname in layers:
            conv = getattr(res, lname)
            if type(conv) is not nn.Conv2d:  # identity shortcut (cin == cout) or 1-D net
                continue
            if conv.in_channels != res.conv1.in_channels:
                raise RuntimeError(f"{name}.{lname} does not consume the concatenation")
            setattr(res, lname, SplitConv2d(conv, split))
            done.append(f"{name}.{lname}")
    if not done:
        raise ValueError("this UNet has no decoder conv on a skip concatenation to split")
    return done

