"""The contract every quantization method of issue 9 follows, and the denoiser that samples a quantized net.

A method is a function

    quantize_<method>(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj: Trajectories,
                      seed: int = 0, quick: bool = False, progress=None) -> QuantResult

that takes a full-precision ``NetworkDenoiser`` (left untouched: the method works on a deep copy of its net),
calibration trajectories recorded from it (``calibration.record_trajectories``), and returns a
``QuantResult`` whose ``denoiser`` samples with the fake-quantized network. ``quick`` selects tiny
reconstruction/fine-tuning budgets (the same code path); ``progress`` is ``None`` or a callable
``progress(desc: str, total: int) -> bar`` returning an object with ``update(n)`` and ``close()`` (e.g. tqdm).

Per-sampling-step activation parameters (TFMQ-DM's finite-set calibration, EfficientDM's temporal LSQ) are
indexed by the calibration grid ``step_times``: ``QuantDenoiser`` selects, at each network call, the set of
the calibrated time nearest to the call's t (all samples of one call share one t on every sampler we ship;
the median is used otherwise), so any sampler and grid can run the quantized model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core.denoiser import NetworkDenoiser
from .modules import set_quant_step

__all__ = ["QuantResult", "QuantDenoiser", "nearest_step"]


def nearest_step(step_times: torch.Tensor, t: torch.Tensor) -> int:
    """Index of the calibrated time nearest to the call's time (median over the batch)."""
    t0 = t.detach().reshape(-1).to(torch.float64).median()
    return int(torch.argmin((step_times.to(torch.float64) - t0).abs()))


class QuantDenoiser(NetworkDenoiser):
    """A ``NetworkDenoiser`` over a quantized network; with ``step_times`` it switches the per-step
    activation sets to the calibrated time nearest each call's t before the network runs."""

    def __init__(self, net: torch.nn.Module, like: NetworkDenoiser, *, step_times: torch.Tensor | None = None):
        super().__init__(net, like.schedule, like.prediction, scale_input=like.scale_input,
                         sigma_data=like.sigma_data)
        self.step_times = None if step_times is None else torch.as_tensor(step_times, dtype=torch.float64)

    def raw(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if self.step_times is not None:
            set_quant_step(self.net, nearest_step(self.step_times, t))
        return super().raw(x, t, **cond)


@dataclass
class QuantResult:
    """What a quantization method returns: the quantized denoiser, its network, and the time it took."""

    denoiser: NetworkDenoiser
    method: str
    wbits: int
    abits: int
    calib_seconds: float = 0.0
    finetune_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def net(self) -> torch.nn.Module:
        return self.denoiser.net
