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

__all__ = ["QuantResult", "QuantDenoiser", "nearest_step", "CALIB_SAMPLER", "METHODS", "get_method",
           "available_methods", "sample_shape", "calibration_trajectories", "standard_structure", "quantize_minmax"]


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


# ------------------------------------------------------------------------------------------------
# the fixed calibration/evaluation sampler, the method registry and the naive min/max baseline
# ------------------------------------------------------------------------------------------------
#: One sampler and NFE for every quantization method and every bench row (issue 9): deterministic DDIM
#: (eta = 0) on the uniform-t grid from t_max to 0, 20 steps. Calibration trajectories are recorded with it.
CALIB_SAMPLER = {"sampler": "ddim", "grid": "uniform", "steps": 20}

#: CLI method name -> (module, function) of its ``quantize_<method>``; imported lazily, so a method whose
#: module has not landed yet is reported as unavailable instead of breaking the others.
METHODS: dict[str, tuple[str, str]] = {
    "minmax": ("diffusekit.methods.quant.pipeline", "quantize_minmax"),
    "ptq4dm": ("diffusekit.methods.quant.ptq", "quantize_ptq4dm"),
    "qdiffusion": ("diffusekit.methods.quant.ptq", "quantize_qdiffusion"),
    "tfmq": ("diffusekit.methods.quant.tfmq", "quantize_tfmq"),
    "edadm": ("diffusekit.methods.quant.edadm", "quantize_edadm"),
    "efficientdm": ("diffusekit.methods.quant.efficientdm", "quantize_efficientdm"),
}


def get_method(name: str):
    """The ``quantize_<name>`` function registered under ``name`` (ValueError if unknown or not available)."""
    import importlib

    if name not in METHODS:
        raise ValueError(f"unknown quantization method {name!r}; choose one of {', '.join(METHODS)}")
    module, fn = METHODS[name]
    try:
        return getattr(importlib.import_module(module), fn)
    except ModuleNotFoundError as err:
        if err.name != module:  # the method's module exists but one of its own imports is missing: a bug
            raise
        raise ValueError(f"quantization method {name!r} is not available in this build ({module} is missing); "
                         f"available: {', '.join(available_methods())}") from None
    except AttributeError:
        raise ValueError(f"quantization method {name!r} is not available in this build ({module} has no {fn}); "
                         f"available: {', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    """The registered method names whose function can be imported now."""
    import importlib

    out = []
    for name, (module, fn) in METHODS.items():
        try:
            if hasattr(importlib.import_module(module), fn):
                out.append(name)
        except ModuleNotFoundError:
            pass
    return out


def sample_shape(denoiser: NetworkDenoiser) -> tuple[int, ...]:
    """(C, H, W) of one sample of an image network (read from its ``config``: in_channels, image_size), or (dim,)
    of an MLP."""
    cfg = getattr(denoiser.net, "config", None) or {}
    if cfg.get("name") == "mlp":
        return (int(cfg["dim"]),)
    if "image_size" not in cfg:
        raise ValueError("the network's config does not record its image_size; cannot draw calibration samples")
    size = int(cfg["image_size"])
    return (int(cfg.get("in_channels", 1)), size, size) if cfg.get("dims", 2) == 2 else \
        (int(cfg.get("in_channels", 1)), size)


def calibration_trajectories(denoiser, n: int, *, seed: int = 0, shape=None, num_classes: int | None = None,
                             batch_size: int = 256):
    """The full-precision model's trajectories every method calibrates on: ``n`` prior draws (seed ``seed``)
    through ``CALIB_SAMPLER`` (DDIM, uniform grid, 20 steps); class-conditional models get the labels
    0, 1, ..., C-1 in turn. ``denoiser`` may be any Denoiser (e.g. one that advances a progress bar);
    ``shape`` / ``num_classes`` default to the network's own. Returns ``calibration.Trajectories``."""
    from .calibration import record_trajectories

    if shape is None:
        shape = sample_shape(denoiser)
    if num_classes is None:
        num_classes = getattr(denoiser, "num_classes", None)
    cond = None if num_classes is None else {"class_labels": torch.arange(n) % int(num_classes)}
    return record_trajectories(denoiser, n, shape, steps=CALIB_SAMPLER["steps"], grid=CALIB_SAMPLER["grid"],
                               sampler=CALIB_SAMPLER["sampler"], cond=cond, seed=seed, batch_size=batch_size)


def standard_structure(**quantize_model_kwargs) -> dict:
    """``info["structure"]`` of a net built as ``quantize_model(net, wbits, abits, **kwargs)`` alone."""
    return {"split": [], "quantize_model": dict(quantize_model_kwargs), "attention": None, "temporal_cache": False}


class _Bar:
    """A progress bar that does nothing (for ``progress=None``)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def open_bar(progress, desc: str, total: int):
    """``progress(desc, total)`` when a progress callable is given, else a silent bar."""
    return _Bar() if progress is None else progress(desc, total)


def quantize_minmax(denoiser: NetworkDenoiser, wbits: int, abits: int, *, traj, seed: int = 0, quick: bool = False,
                    progress=None) -> QuantResult:
    """Naive min/max post-training quantization, the baseline every diffusion PTQ paper starts from
    (PTQ4DM, Shang et al. 2023, arXiv 2211.15736, Sec. 4 "baseline"; Q-Diffusion, Li et al. 2023,
    arXiv 2302.04304, "linear quantization" rows).

    Every ``nn.Linear`` / ``nn.Conv2d`` (first and last layers included, no 8-bit exception) is fake-quantized,

        Q(x) = Delta (clamp(round(x / Delta) + z, 0, 2^b - 1) - z),  Delta = (max - min) / (2^b - 1),
        z = round(-min / Delta),

    with per-output-channel (min, max) of the weights (b = ``wbits``) and one per-tensor (min, max) of each
    layer's input activation (b = ``abits``) observed on the calibration set: one (x_t, t) per recorded
    trajectory at a uniformly random step of the full-precision model's own sampler (``traj``, see
    ``calibration.uniform_calibration``; the contract hands a method the trajectories, not the training data,
    so forward-noised training data - ``calibration.naive_calibration`` - is not used). No reconstruction, no
    per-step sets; ``quick`` changes nothing (there is nothing to shorten). The input denoiser is untouched.
    """
    import copy
    import time

    from .calibration import uniform_calibration
    from .modules import calibrate, quantize_model

    t0 = time.perf_counter()
    net = copy.deepcopy(denoiser.net).eval()
    quantize_model(net, wbits, abits)
    qden = QuantDenoiser(net, denoiser)
    calib = uniform_calibration(traj, seed=seed)
    batch_size = 256
    bar = open_bar(progress, f"calibrate minmax W{wbits}A{abits}", -(-len(calib) // batch_size))

    def run(model, batch):
        x, t, cond = batch
        model(*qden.net_inputs(x, t), **cond)
        bar.update(1)

    try:
        calibrate(net, lambda: calib.batches(batch_size), "minmax", run=run)
    finally:
        bar.close()
    info = {"structure": standard_structure(),
            "calibration": f"uniform random step of each of {len(calib)} fp DDIM trajectories, min/max"}
    return QuantResult(qden, "minmax", wbits, abits, calib_seconds=time.perf_counter() - t0, finetune_seconds=0.0,
                       info=info)
