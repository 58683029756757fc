"""Uniform affine fake-quantization with a straight-through estimator (the BRECQ / QDrop lineage shared by
PTQ4DM, Q-Diffusion, TFMQ-DM, EDA-DM and EfficientDM).

Forward (per scale entry; Jacob et al. 2018, arXiv 1712.05877, eq. 1-3):

    x_int = clamp(round(x / Delta) + z, q_min, q_max)
    Q(x)  = (x_int - z) * Delta

asymmetric: q_min = 0, q_max = 2^b - 1, Delta = (hi - lo) / (2^b - 1), z = round(-lo / Delta);
symmetric:  q_min = -2^(b-1), q_max = 2^(b-1) - 1, Delta = max(|lo|, |hi|) / (2^(b-1) - 1), z = 0.
The range [lo, hi] always contains 0 (so zero, e.g. conv padding, is exact). Inside the representable
range [(q_min - z) Delta, (q_max - z) Delta] the error is |x - Q(x)| <= Delta / 2; grid points are exact.

Backward: round is replaced by the identity (straight-through estimator, Bengio et al. 2013,
arXiv 1308.3432), so dQ/dx = 1 inside the representable range and 0 where the clamp is active.

Range initialisation (``init_range``): min/max; a percentile of the data; or an MSE search over clipping
ratios r in [0.2, 1] (the 1 %...80 % range shrink of BRECQ, Li et al. 2021, arXiv 2102.05426):
[lo, hi] = r * [min, max], choosing per scale entry the r minimising sum |x - Q(x)|^p (p = 2 by default;
the reference code uses p = 2.4).

Learned step size (LSQ, Esser et al. 2020, arXiv 1902.08153, eq. 3-5): with ``learnable=True`` Delta is a
parameter trained through the STE; its gradient is dQ/dDelta = -x/Delta + round(x/Delta) inside the range
and q_min - z or q_max - z where clamped, multiplied by g = 1 / sqrt(N * Q_p) with N the number of
elements sharing one Delta per forward and Q_p = q_max (2^b - 1 for asymmetric). z stays fixed.

Per-sampling-step parameters (TFMQ-DM's finite-set calibration, EfficientDM's temporal LSQ): with
``num_steps = S`` the quantizer holds S sets of (Delta, z); the caller selects one with ``set_step(k)``
by an explicit step id, never by a call counter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["UniformQuantizer", "RANGE_METHODS", "qrange", "params_from_range", "fake_quant",
           "range_minmax", "range_percentile", "range_mse", "round_ste"]

RANGE_METHODS = ("minmax", "percentile", "mse")
_EPS = 1e-8
_MAX_SAMPLES = 1 << 22  # torch.quantile refuses inputs above 2^24 elements; stay well below


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bit width must be an integer in 2..16; got {bits!r}")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """(q_min, q_max) of the integer grid."""
    _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x forward, gradient multiplied by g backward (LSQ's gradient scaling)."""
    return x * g + (x - x * g).detach()


def params_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    """(Delta, z) for the range [lo, hi] (widened to contain 0); shapes follow lo/hi."""
    q_min, q_max = qrange(bits, symmetric)
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        scale = (torch.maximum(-lo, hi) / q_max).clamp_min(_EPS)
        return scale, torch.zeros_like(scale)
    scale = ((hi - lo) / (q_max - q_min)).clamp_min(_EPS)
    return scale, torch.round(-lo / scale).clamp(q_min, q_max)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
               symmetric: bool) -> torch.Tensor:
    """Q(x) = (clamp(round_ste(x / Delta) + z, q_min, q_max) - z) * Delta; scale/zero_point broadcast to x."""
    q_min, q_max = qrange(bits, symmetric)
    x_int = torch.clamp(round_ste(x / scale) + zero_point, q_min, q_max)
    return (x_int - zero_point) * scale


def _channels_last(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """x as (C, M) with C the channel count along ``axis`` (C = 1 for per-tensor)."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def range_minmax(x2d: torch.Tensor):
    """Per-row (min, max) of a (C, M) tensor."""
    return x2d.amin(dim=1), x2d.amax(dim=1)


def range_percentile(x2d: torch.Tensor, q: float = 0.9999):
    """Per-row (quantile 1 - q, quantile q) of a (C, M) tensor (at most 2^22 samples per row are used)."""
    if not 0.5 < q <= 1.0:
        raise ValueError(f"percentile must be in (0.5, 1]; got {q}")
    if x2d.shape[1] > _MAX_SAMPLES:
        idx = torch.randperm(x2d.shape[1], generator=torch.Generator().manual_seed(0))[:_MAX_SAMPLES]
        x2d = x2d[:, idx.to(x2d.device)]
    x2d = x2d.float()
    return torch.quantile(x2d, 1.0 - q, dim=1), torch.quantile(x2d, q, dim=1)


def range_mse(x2d: torch.Tensor, bits: int, symmetric: bool, *, grid: int = 81, p: float = 2.0):
    """Per-row clipping range r * (min, max), r in linspace(1, 0.2, grid), minimising sum |x - Q(x)|^p."""
    if grid < 2:
        raise ValueError(f"MSE range search needs a grid of at least 2 ratios; got {grid}")
    lo0, hi0 = range_minmax(x2d)
    best_err = torch.full_like(lo0, math.inf)
    best_lo, best_hi = lo0.clone(), hi0.clone()
    for r in torch.linspace(1.0, 0.2, grid).tolist():
        lo, hi = lo0 * r, hi0 * r
        scale, zp = params_from_range(lo, hi, bits, symmetric)
        err = (x2d - fake_quant(x2d, scale[:, None], zp[:, None], bits, symmetric)).abs().pow(p).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    return best_lo, best_hi


class UniformQuantizer(nn.Module):
    """Fake-quantizer Q(x) for a tensor, per-tensor (``channel_axis=None``) or per channel along an axis.

    Args:
        bits: integer bit width b in 2..16.
        symmetric: signed grid with z = 0, else unsigned grid with a zero point.
        channel_axis: axis holding the C channels (weights: 0, the output channel), or None.
        channels: C, required with ``channel_axis``.
        num_steps: if set, S independent (Delta, z) sets selected by ``set_step``.
        learnable: LSQ, Delta is trained through the STE with gradient scale 1/sqrt(N Q_p).

    Shapes: ``scale`` and ``zero_point`` are (S?, C) (C = 1 per tensor). An uninitialised quantizer raises
    in forward; ``observe`` mode passes x through and records it for ``init_from_observed``.
    """

    def __init__(self, bits: int, *, symmetric: bool = False, channel_axis: int | None = None,
                 channels: int | None = None, num_steps: int | None = None, learnable: bool = False):
        super().__init__()
        self.bits = _check_bits(bits)
        self.symmetric = bool(symmetric)
        if channel_axis is not None and (channels is None or channels < 1):
            raise ValueError("per-channel quantization needs the channel count (channels >= 1)")
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be >= 1; got {num_steps}")
        self.channel_axis = channel_axis
        self.channels = 1 if channel_axis is None else int(channels)
        self.num_steps = num_steps
        shape = (self.channels,) if num_steps is None else (num_steps, self.channels)
        self.scale = nn.Parameter(torch.ones(shape), requires_grad=bool(learnable))
        self.register_buffer("zero_point", torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros(shape[:-1] or (1,), dtype=torch.bool))
        self.learnable = bool(learnable)
        self.step: int | None = None
        self.mode = "quant"  # "quant" | "observe" | "off"
        self._observed: list[torch.Tensor] = []

    @property
    def q_min(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def q_max(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    def set_step(self, step: int | None) -> None:
        if step is not None and self.num_steps is not None and not 0 <= step < self.num_steps:
            raise ValueError(f"step id {step} outside 0..{self.num_steps - 1}")
        self.step = step

    def _row(self, step: int | None = None) -> int | None:
        if self.num_steps is None:
            return None
        step = self.step if step is None else step
        if step is None:
            raise RuntimeError("this quantizer has per-step parameters: call set_step(k) first")
        return step

    def _params(self, step: int | None = None):
        row = self._row(step)
        if row is None:
            return self.scale, self.zero_point, bool(self.initialized[0])
        return self.scale[row], self.zero_point[row], bool(self.initialized[row])

    def _broadcast(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return p.reshape(())
        shape = [1] * x.dim()
        shape[self.channel_axis] = self.channels
        return p.reshape(shape)

    def init_range(self, x: torch.Tensor, method: str = "minmax", *, step: int | None = None,
                   percentile: float = 0.9999, grid: int = 81, p: float = 2.0) -> None:
        """Set (Delta, z) from data x (for per-step quantizers: the set of ``step``, default current)."""
        self._init_2d(_channels_last(x.detach(), self.channel_axis), method, step=step,
                      percentile=percentile, grid=grid, p=p)

    def init_from_observed(self, method: str = "minmax", **kw) -> None:
        """Initialise from the tensors recorded in ``observe`` mode, then forget them."""
        if not self._observed:
            raise RuntimeError("nothing observed: run forward passes in observe mode first")
        data = torch.cat(self._observed, dim=1)
        self._observed = []
        self._init_2d(data, method, **kw)

    @torch.no_grad()
    def _init_2d(self, x2d: torch.Tensor, method: str, *, step: int | None = None,
                 percentile: float = 0.9999, grid: int = 81, p: float = 2.0) -> None:
        """x2d: (C, M) samples per channel."""
        if method not in RANGE_METHODS:
            raise ValueError(f"unknown range method {method!r}; choose one of {', '.join(RANGE_METHODS)}")
        if x2d.shape[0] != self.channels:
            raise ValueError(f"expected {self.channels} channels along axis {self.channel_axis}; got {x2d.shape[0]}")
        x2d = x2d.to(self.scale.device)
        if method == "minmax":
            lo, hi = range_minmax(x2d)
        elif method == "percentile":
            lo, hi = range_percentile(x2d, percentile)
        else:
            lo, hi = range_mse(x2d, self.bits, self.symmetric, grid=grid, p=p)
        scale, zp = params_from_range(lo.float(), hi.float(), self.bits, self.symmetric)
        row = self._row(step)
        if row is None:
            self.scale.copy_(scale)
            self.zero_point.copy_(zp)
            self.initialized.fill_(True)
        else:
            self.scale[row] = scale
            self.zero_point[row] = zp
            self.initialized[row] = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            x2d = _channels_last(x.detach(), self.channel_axis).float()
            if x2d.shape[1] > _MAX_SAMPLES // 8:
                idx = torch.randperm(x2d.shape[1], generator=torch.Generator().manual_seed(len(self._observed)))
                x2d = x2d[:, idx[:_MAX_SAMPLES // 8].to(x2d.device)]
            self._observed.append(x2d.cpu())
            return x
        scale, zp, ok = self._params()
        if not ok:
            raise RuntimeError("quantizer range not initialised: calibrate it (init_range / calibrate) first")
        scale = scale.clamp_min(_EPS)
        if self.learnable:
            n = x.numel() // self.channels
            scale = _grad_scale(scale, 1.0 / math.sqrt(n * self.q_max))
        return fake_quant(x, self._broadcast(scale, x).to(x.dtype), self._broadcast(zp, x).to(x.dtype),
                          self.bits, self.symmetric)

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.channel_axis is None else f"per-channel(axis={self.channel_axis})"
        steps = "" if self.num_steps is None else f", steps={self.num_steps}"
        return (f"bits={self.bits}, {'symmetric' if self.symmetric else 'asymmetric'}, {kind}{steps}"
                f"{', LSQ' if self.learnable else ''}")
