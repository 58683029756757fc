"""diffusers -> diffusekit: a local diffusers-format folder as a Denoiser with the exactly matching schedule.

A diffusers scheduler config fixes the forward process x_t = alpha_n x0 + sigma_n eps on integer train steps
n = 0..N-1 (alpha_n^2 = abar_n = prod_{i<=n} (1 - beta_i), sigma_n^2 = 1 - abar_n; Ho et al. 2020, arXiv
2006.11239) or, for the flow-matching schedulers, x_sigma = (1 - sigma) x0 + sigma eps with network time
1000 sigma (Lipman et al. 2022, arXiv 2210.02747; Esser et al. 2024, arXiv 2403.03206). We rebuild it as our
``VPDiscrete`` (step n at t = (n + 1)/N, network time tN - 1 = n) or ``FlowSchedule`` (t = sigma):

* betas with diffusers' own formulas and defaults (beta_start 1e-4, beta_end 0.02): ``linear``,
  ``scaled_linear`` (linspace of square roots, squared), ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021,
  arXiv 2102.09672, eq. 17, capped at 0.999), ``sigmoid`` (GeoDiff), or the config's ``trained_betas``;
* ``rescale_betas_zero_snr`` (Lin et al. 2023, arXiv 2305.08891, Alg. 1): abar_{N-1} = 0 exactly, as
  diffusers' DDIM/DDPM use it. diffusers' DPMSolverMultistep, UniPC, Euler and Euler ancestral replace that
  0 by 2^-24 (so their first sigma is finite); ``schedule_from_diffusers_config`` follows the config's
  scheduler class, so each loaded model matches the scheduler it ships with;
* ``prediction_type`` names: epsilon -> eps, v_prediction -> v, sample -> x0, flow_prediction (and the
  flow-matching schedulers' implicit velocity v = eps - x0) -> velocity.

Time grids (``timestep_spacing``, ``final_sigmas_type``, Karras/exponential/beta sigmas, shifted flow
sigmas) belong to the sampler, not the denoiser: ``diffusers_grid`` asks the diffusers scheduler itself for
its timesteps/sigmas and maps them to our schedule time, and says whether diffusers rounds the network time
to integers there (DPM-Solver, UniPC and DEIS do on sigma grids), which ``DiffusersNet(round_time=True)``
reproduces.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.denoiser import NetworkDenoiser
from ..core.schedules import FlowSchedule, Schedule, VPDiscrete, betas_for
from ..errors import UserError

PREDICTION_NAMES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}
# diffusers' schedulers that replace abar_{N-1} = 0 of a zero-terminal-SNR schedule by 2^-24
TINY_TERMINAL_ABAR = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler",
                      "EulerAncestralDiscreteScheduler")
# diffusers' schedulers that round the network time to an integer on their sigma grids (Karras, ...)
ROUNDS_TIME = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
               "DEISMultistepScheduler")
MODEL_FOLDERS = ("unet", "transformer")


def diffusers_betas(config: dict) -> torch.Tensor:
    """The betas (float64, (N,)) of a diffusers scheduler config, with diffusers' formulas and defaults."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.as_tensor(config["trained_betas"], dtype=torch.float64).flatten()
    name = config.get("beta_schedule", "linear")
    b0, b1 = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if name in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        return betas_for(name, n, beta_start=b0, beta_end=b1)
    if name == "sigmoid":  # GeoDiff (Xu et al. 2022, arXiv 2203.02923)
        return torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float64)) * (b1 - b0) + b0
    raise UserError(f"unsupported diffusers beta_schedule {name!r}; allowed: linear, scaled_linear, "
                    "squaredcos_cap_v2, sigmoid, or trained_betas")


def prediction_from_diffusers(config: dict) -> str:
    """Our prediction-type name for a diffusers scheduler config (flow-matching schedulers: velocity)."""
    if is_flow_config(config):
        return "velocity"
    name = config.get("prediction_type", "epsilon")
    if name not in PREDICTION_NAMES:
        raise UserError(f"unsupported diffusers prediction_type {name!r}; allowed: {', '.join(PREDICTION_NAMES)}")
    return PREDICTION_NAMES[name]


def is_flow_config(config: dict) -> bool:
    """Whether a diffusers scheduler config describes flow matching (x = (1 - sigma) x0 + sigma eps)."""
    return str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas")) \
        or config.get("prediction_type") == "flow_prediction"


def schedule_from_diffusers_config(config: dict, *, terminal_abar: str | None = None) -> Schedule:
    """Our schedule for a diffusers scheduler config (a dict, or a scheduler's ``.config``).

    ``terminal_abar`` for zero-terminal-SNR configs: "zero" (exact abar_{N-1} = 0, DDIM/DDPM) or "tiny"
    (2^-24 as diffusers' DPM-Solver multistep, UniPC and Euler schedulers set it); default: the config's class
    (``_class_name``; a scheduler instance may be passed instead of its config).
    """
    if hasattr(config, "config") and not isinstance(config, dict):
        config = {**dict(config.config), "_class_name": type(config).__name__}
    config = dict(config)
    if is_flow_config(config):
        n = int(config.get("num_train_timesteps", 1000))
        if n != 1000:
            raise UserError(f"flow-matching configs need num_train_timesteps = 1000 (network time 1000 sigma); got {n}")
        return FlowSchedule(t_min=1.0 / n)
    betas = diffusers_betas(config)
    if not config.get("rescale_betas_zero_snr", False):
        return VPDiscrete(betas, beta_schedule=config.get("beta_schedule"))
    zero = VPDiscrete(betas, zero_terminal_snr=True, beta_schedule=config.get("beta_schedule"))
    abar = zero.alphas_cumprod.clone()
    representable = float(abar[-2]) > 2.0**-24  # diffusers' 2^-24 can exceed abar_{N-2} (linear betas)
    if terminal_abar is None:
        terminal_abar = "tiny" if config.get("_class_name") in TINY_TERMINAL_ABAR else "zero"
        if terminal_abar == "tiny" and not representable:
            warnings.warn(f"{config.get('_class_name')} sets abar_(N-1) = 2^-24 above abar_(N-2) = "
                          f"{float(abar[-2]):.3g} (not a monotone schedule); using the exact zero terminal SNR, "
                          "which differs from diffusers at the first step by alpha = 2^-12", stacklevel=2)
            terminal_abar = "zero"
    if terminal_abar == "zero":
        return zero
    if terminal_abar != "tiny":
        raise ValueError(f"terminal_abar must be 'zero' or 'tiny'; got {terminal_abar!r}")
    if not representable:
        raise ValueError(f"abar_(N-1) = 2^-24 exceeds abar_(N-2) = {float(abar[-2]):.3g}: not a monotone schedule")
    abar[-1] = 2.0**-24
    return VPDiscrete(1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]]),
                      beta_schedule=config.get("beta_schedule"))


class DiffusersNet(nn.Module):
    """Our network contract ``forward(x, t, **cond) -> prediction`` around a diffusers model.

    Calls ``model(x, t_in, **cond).sample`` (UNet2DModel, UNet2DConditionModel with
    ``encoder_hidden_states=``, DiT/Transformer2DModel with ``class_labels=``), t of shape (B,); with
    ``round_time`` the network time is rounded to an integer first, as diffusers' DPM-Solver/UniPC/DEIS
    schedulers do on their sigma grids. A model with learned variance (``out_channels = 2 in_channels``,
    DiT) returns only its first half, the mean prediction (the half diffusers' pipelines keep).

    ``config`` gives ``image_size``/``in_channels`` (what ``diffusekit sample`` needs) and the model class.
    """

    def __init__(self, model: nn.Module, *, round_time: bool = False):
        super().__init__()
        self.model = model
        self.round_time = bool(round_time)

    @property
    def config(self) -> dict:
        cfg = getattr(self.model, "config", {})
        size = cfg.get("sample_size")
        return {"name": f"diffusers:{type(self.model).__name__}", "in_channels": cfg.get("in_channels"),
                "image_size": size if isinstance(size, int) else None, "num_classes": None}

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if self.round_time:
            t = torch.round(t)
        out = self.model(x, t, **cond).sample
        if out.shape[1] == 2 * x.shape[1]:  # learned variance: keep the mean prediction
            out = out[:, : x.shape[1]]
        return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def _find_parts(path: Path, scheduler: str | Path | None) -> tuple[Path, Path]:
    """(model folder, scheduler config file) of a pipeline folder or a bare model folder."""
    if not path.is_dir():
        raise UserError(f"diffusers model {path}: not a folder; give a local diffusers pipeline or model folder")
    model_dir = next((path / d for d in MODEL_FOLDERS if (path / d / "config.json").is_file()), None)
    if model_dir is None:
        if not (path / "config.json").is_file():
            raise UserError(f"diffusers model {path}: no config.json, unet/ or transformer/ folder; give a "
                            "diffusers pipeline folder (model_index.json, unet/, scheduler/) or a model folder")
        model_dir = path
    if scheduler is not None:
        sched = Path(scheduler)
        sched = sched / "scheduler_config.json" if sched.is_dir() else sched
    else:
        candidates = [path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json",
                      model_dir / "scheduler_config.json"]
        sched = next((c for c in candidates if c.is_file()), candidates[0])
    if not sched.is_file():
        raise UserError(f"diffusers model {path}: no scheduler config (looked for scheduler/scheduler_config.json "
                        "and scheduler_config.json); pass scheduler=PATH to a scheduler_config.json")
    return model_dir, sched


def load_diffusers_denoiser(path, *, scheduler=None, round_time: bool = False, dtype=None,
                            terminal_abar: str | None = None) -> NetworkDenoiser:
    """A ``NetworkDenoiser`` for a local diffusers folder: a pipeline folder (``unet/`` or ``transformer/`` with
    ``scheduler/``) or a bare model folder with a ``scheduler_config.json`` (or ``scheduler=PATH``).

    The model loads with ``from_pretrained(folder, local_files_only=True)`` (never the network), its class
    named by ``_class_name`` in its config; the schedule and prediction type come from the scheduler config
    (``schedule_from_diffusers_config``, ``prediction_from_diffusers``). Text or class conditioning passes
    through the denoiser's ``**cond`` (``encoder_hidden_states=...``, ``class_labels=...``). The model is put
    in eval mode, in ``dtype`` if given. The returned denoiser keeps ``diffusers_scheduler_config`` for
    ``diffusers_grid``.
    """
    import diffusers

    model_dir, sched_file = _find_parts(Path(path), scheduler)
    config = _read_json(model_dir / "config.json")
    cls_name = config.get("_class_name")
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise UserError(f"diffusers model {model_dir}: unknown model class {cls_name!r}; expected a diffusers model "
                        "such as UNet2DModel, UNet2DConditionModel or DiTTransformer2DModel")
    model = cls.from_pretrained(str(model_dir), local_files_only=True).eval().requires_grad_(False)
    if dtype is not None:
        model = model.to(dtype)
    sched_config = _read_json(sched_file)
    schedule = schedule_from_diffusers_config(sched_config, terminal_abar=terminal_abar)
    den = NetworkDenoiser(DiffusersNet(model, round_time=round_time), schedule, prediction_from_diffusers(sched_config),
                          scale_input=False)
    den.diffusers_scheduler_config = sched_config
    return den


def _dedupe(values: torch.Tensor) -> torch.Tensor:
    """Drop consecutive repeats (Heun/KDPM2 list each interior sigma twice)."""
    keep = torch.ones(values.numel(), dtype=torch.bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def diffusers_grid(scheduler, steps: int, schedule: Schedule) -> tuple[torch.Tensor, bool]:
    """(ts, round_time): the time grid the diffusers ``scheduler`` (an instance, or a config dict with
    ``_class_name``) uses for ``steps`` inference steps, as float64 schedule times of ``schedule``, and whether
    diffusers rounds the network time there.

    Schedulers with ``sigmas`` (DPM-Solver, UniPC, DEIS, Euler, Heun, flow matching): t = the time of each
    sigma (VE level sigma/alpha, or the flow sigma itself), ending at 0 for final sigma 0. DDIM/DDPM/PNDM:
    t = (n + 1)/N for each integer timestep, then 0 (DDIM's set_alpha_to_one, DDPM) or 1/N.
    """
    import diffusers

    if isinstance(scheduler, dict):
        cls = getattr(diffusers, str(scheduler.get("_class_name")), None)
        if cls is None:
            raise UserError(f"unknown diffusers scheduler class {scheduler.get('_class_name')!r}")
        scheduler = cls.from_config(scheduler)
    scheduler.set_timesteps(steps)
    name = type(scheduler).__name__
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > 1:
        sig = _dedupe(torch.as_tensor(sigmas, dtype=torch.float64).cpu())
        if isinstance(schedule, FlowSchedule):
            ts = sig.clone()
        else:
            ts = schedule.t_of_sigma_tilde(sig.clamp_min(1e-300))
            ts[sig == 0] = 0.0
            ts[sig == math.inf] = schedule.t_max
        ts = ts.clamp(0.0, schedule.t_max)
        ts[0] = min(float(ts[0]), schedule.t_max)
        return ts, name in ROUNDS_TIME
    if not isinstance(schedule, VPDiscrete):
        raise ValueError(f"{name} steps on integer timesteps and needs a discrete (VPDiscrete) schedule")
    timesteps = torch.as_tensor(scheduler.timesteps, dtype=torch.float64).cpu()
    ts = schedule.t_of_timestep(timesteps)
    one = getattr(scheduler.config, "set_alpha_to_one", True)
    end = 0.0 if (one or name == "DDPMScheduler") else 1.0 / schedule.num_train_timesteps
    if name == "PNDMScheduler":
        ts = _dedupe(ts)
    return torch.cat([ts, torch.tensor([end], dtype=torch.float64)]), False
