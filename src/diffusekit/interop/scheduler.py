"""diffusekit -> diffusers: ``DiffuseKitScheduler`` runs any of our fixed-grid samplers inside a diffusers pipeline.

A diffusers pipeline drives a scheduler in the loop

    for t in scheduler.timesteps:  eps = model(scheduler.scale_model_input(x, t), t);  x = scheduler.step(eps, t, x)

while our samplers are plain functions ``sample(denoiser, x_T, ts)`` that call the denoiser whenever their
update needs an evaluation (once per step for multistep methods, several times inside a step for Heun or
singlestep DPM-Solver). The scheduler turns one into the other without re-expressing any solver: the sampler
runs as a coroutine in a worker thread whose denoiser hands each evaluation point (x_k, t_k) to the pipeline
and blocks until the pipeline's model output for it comes back through ``step``. So

* ``timesteps`` are the network times of the sampler's evaluation points t_k on its grid (found by a dry run
  with a zero denoiser; they depend only on the grid), one per network evaluation: NFE entries;
* ``step(model_output, t_k, x_k)`` converts the output to x0_hat (eps, v, x0 or velocity, see
  ``core.predictions``), resumes the solver, and returns as ``prev_sample`` the next point x_{k+1} at which the
  solver wants the model, or the finished sample after the last evaluation.

The solver therefore runs exactly as ``sample(denoiser, x_T, ts)`` would on the same model (bit for bit,
``tests/test_interop_diffusers.py``). Every registered sampler with a fixed grid works (multistep, Heun,
singlestep DPM-Solver, PLMS/PNDM, the stochastic ones with the pipeline's ``generator``); the adaptive
DPM-Solver chooses its steps from the sample and is refused. Extra ``step`` keywords of a pipeline (DDIM's
``eta``) are ignored: the sampler's options are fixed at construction.
"""

from __future__ import annotations

import queue
import threading
import types
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..core._tensor import per_sample
from ..core.denoiser import Denoiser
from ..core.grids import check_grid, make_grid
from ..core.predictions import x0_from_prediction
from ..errors import UserError
from ..samplers.defaults import DEFAULT, fallback_timesteps, grid_schedule
from ..samplers.registry import SAMPLERS, get_sampler
from .diffusers import PREDICTION_NAMES, is_flow_config, schedule_from_diffusers_config

SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "prediction_type", "rescale_betas_zero_snr")


def supported_samplers() -> list[str]:
    """Registered samplers that run inside ``DiffuseKitScheduler`` (all but the adaptive and student-only ones)."""
    return sorted(n for n, info in SAMPLERS.items() if not info.adaptive and not info.students_only)


class _Cancelled(Exception):
    """Raised inside the worker thread when the scheduler is reset before the solver finished."""


@dataclass
class _Request:
    x: torch.Tensor
    t: torch.Tensor  # float64 0-d schedule time


class _BridgeDenoiser(Denoiser):
    """The worker side: each evaluation posts (x, t) to the pipeline and waits for x0_hat."""

    def __init__(self, schedule, to_pipeline: queue.Queue, from_pipeline: queue.Queue):
        super().__init__(schedule)
        self.to_pipeline, self.from_pipeline = to_pipeline, from_pipeline

    def denoise(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        self.to_pipeline.put(("eval", _Request(x, t[0])))
        reply = self.from_pipeline.get()
        if reply is None:
            raise _Cancelled
        return reply


def _same_point(sample: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the pipeline's ``sample`` is the solver's evaluation point ``x`` up to the round-off of the
    coarser dtype (a solver may rebuild x_T as alpha (x_T / alpha), a pipeline may cast)."""
    if sample.shape != x.shape:
        return False
    eps = max(torch.finfo(sample.dtype).eps, torch.finfo(x.dtype).eps)
    scale = float(x.abs().max()) if x.numel() else 0.0
    return bool(((sample.to(x.dtype) - x).abs() <= 8 * eps * scale).all())


class DiffuseKitScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler running one of our samplers on one of our grids (see the module docstring).

    The first seven arguments describe the model's forward process exactly as diffusers' schedulers do
    (``schedule_from_diffusers_config``); ``process="flow"`` is flow matching (x = (1 - sigma) x0 + sigma eps,
    velocity output). ``sampler`` names a registered sampler (``supported_samplers()``), ``sampler_options``
    its keyword options; ``grid`` a ``make_grid`` name (uniform, logsnr, quadratic, karras, linspace,
    leading, trailing) or "default" (our default sampler's fixed fallback grid, ``samplers.defaults``), with
    ``grid_options`` (e.g. ``{"t_end": 0.0}``; continuous grids end at t = 0 unless told otherwise).
    ``round_timesteps`` rounds the network times to integers.

    Swap into a pipeline with one line:
    ``pipe.scheduler = DiffuseKitScheduler.from_diffusers(pipe.scheduler, sampler="unipc_bh2_3")``.
    """

    order = 1
    _compatibles: list = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, process: str = "vp", sampler: str = DEFAULT["sampler"],
                 grid: str = "default", sampler_options: dict | None = None, grid_options: dict | None = None,
                 round_timesteps: bool = False):
        if process not in ("vp", "flow"):
            raise UserError(f"process must be 'vp' or 'flow'; got {process!r}")
        if prediction_type not in PREDICTION_NAMES:
            raise UserError(f"unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_NAMES)}")
        if sampler not in supported_samplers():
            raise UserError(f"sampler {sampler!r} cannot run inside a diffusers pipeline; allowed: "
                            f"{', '.join(supported_samplers())}")
        sched_config = {k: v for k, v in zip(SCHEDULE_KEYS, (num_train_timesteps, beta_start, beta_end, beta_schedule,
                                                             trained_betas, prediction_type, rescale_betas_zero_snr))}
        if process == "flow":
            sched_config["_class_name"] = "FlowMatchEulerDiscreteScheduler"
        self.schedule = schedule_from_diffusers_config(sched_config, terminal_abar="zero")
        self.prediction = "velocity" if process == "flow" else PREDICTION_NAMES[prediction_type]
        self.info = get_sampler(sampler)
        self.init_noise_sigma = self.schedule.prior_std()
        self.timesteps = None
        self.num_inference_steps = None
        self.ts = None
        self._worker = None

    # ---- construction from a diffusers scheduler ------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, scheduler, *, sampler: str = DEFAULT["sampler"], grid: str = "default",
                       sampler_options: dict | None = None, grid_options: dict | None = None,
                       round_timesteps: bool = False) -> "DiffuseKitScheduler":
        """The same forward process as a diffusers ``scheduler`` (or its config), solved by our ``sampler``."""
        config = dict(getattr(scheduler, "config", scheduler))
        if not isinstance(scheduler, dict):
            config.setdefault("_class_name", type(scheduler).__name__)
        flow = is_flow_config(config)
        kwargs = {k: config[k] for k in SCHEDULE_KEYS if k in config and config[k] is not None}
        if flow:
            kwargs["prediction_type"] = "flow_prediction"
        return cls(**kwargs, process="flow" if flow else "vp", sampler=sampler, grid=grid,
                   sampler_options=sampler_options, grid_options=grid_options, round_timesteps=round_timesteps)

    # ---- diffusers' interface ---------------------------------------------------------------------------------
    def make_grid(self, num_inference_steps: int) -> torch.Tensor:
        """Our time grid of ``num_inference_steps`` steps (float64 schedule times)."""
        options = dict(self.config.grid_options or {})
        if self.config.grid == "default":
            if options:
                raise UserError("the default grid takes no grid_options")
            view = types.SimpleNamespace(schedule=self.schedule, prediction=self.prediction)
            return fallback_timesteps(grid_schedule(view), num_inference_steps)
        if self.config.grid in ("uniform", "logsnr", "quadratic", "karras"):
            options.setdefault("t_end", 0.0)
        try:
            return make_grid(self.config.grid, self.schedule, num_inference_steps, **options)
        except ValueError as err:
            raise UserError(str(err)) from None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                      **kwargs):
        """Build the grid, find the sampler's evaluation times and reset the solver.

        ``timesteps`` (diffusers' custom-grid argument): descending network times of the grid's points before
        its final t = 0 (e.g. ``schedule.network_time(ts[:-1])`` of a searched grid ``ts``), used instead of
        ``grid``. ``sigmas`` lists are not supported."""
        if sigmas is not None:
            raise UserError("DiffuseKitScheduler takes num_inference_steps or timesteps, not sigmas")
        self.close()
        if timesteps is not None:
            self.ts = self._grid_from_timesteps(timesteps)
            self.num_inference_steps = len(self.ts) - 1
        elif num_inference_steps is None:
            raise UserError("set_timesteps needs num_inference_steps (or timesteps)")
        else:
            self.num_inference_steps = int(num_inference_steps)
            self.ts = self.make_grid(self.num_inference_steps)
        self.eval_ts = self._evaluation_times(self.ts)
        net_t = self.schedule.network_time(self.eval_ts)
        if self.config.round_timesteps:
            net_t = torch.round(net_t)
        if device is not None and torch.device(device).type == "mps":  # no float64 there
            net_t = net_t.float()
        self.timesteps = net_t.to(device) if device is not None else net_t
        self._step_index = 0

    def _grid_from_timesteps(self, timesteps) -> torch.Tensor:
        """Schedule times of descending network times, plus the final t = 0."""
        net_t = torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu()
        if net_t.numel() < 1 or bool((net_t[1:] >= net_t[:-1]).any()):
            raise UserError("timesteps must be a non-empty, strictly decreasing list of network times")
        ts = net_t / 1000.0 if self.config.process == "flow" else self.schedule.t_of_timestep(net_t)
        ts = torch.cat([ts, torch.zeros(1, dtype=torch.float64)])
        try:
            return check_grid(ts, self.schedule)
        except ValueError as err:
            raise UserError(f"timesteps out of range: {err}") from None

    def _evaluation_times(self, ts: torch.Tensor) -> torch.Tensor:
        """The times at which the sampler calls the denoiser on this grid (a dry run with x0_hat = 0)."""
        seen = []

        def record(x, t, **cond):
            seen.append(float(t[0]))
            return torch.zeros_like(x)

        from ..core.denoiser import FunctionDenoiser

        options = dict(self.config.sampler_options or {})
        if self.info.stochastic:
            options["generator"] = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.info.fn(FunctionDenoiser(record, self.schedule), torch.zeros(1, 1, dtype=torch.float64), ts,
                         **options)
        return torch.tensor(seen, dtype=torch.float64)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network sees x itself (VP and flow models take x_t unscaled)."""
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, generator=None,
             return_dict: bool = True, **kwargs):
        """Hand the model output at the current evaluation point to the solver; return the next point.

        ``sample`` must be the ``prev_sample`` of the previous step (or x_T on the first): the solver keeps
        its own state, so a pipeline that edits the sample between steps is refused."""
        if self.timesteps is None:
            raise UserError("call set_timesteps before step")
        if self._step_index >= len(self.eval_ts):
            raise UserError(f"step called {self._step_index + 1} times; this grid has {len(self.eval_ts)} evaluations")
        if self._worker is None:
            self._start(sample, generator)
        request = self._pending
        if not _same_point(sample, request.x):
            raise UserError("the pipeline changed the sample between steps; DiffuseKitScheduler solves from its own "
                            "state and needs step(..., sample=prev_sample) unchanged")
        x0 = x0_from_prediction(model_output.to(request.x.dtype), request.x, request.t, self.schedule,
                                self.prediction)
        self._step_index += 1
        self._from_pipeline.put(x0)
        kind, payload = self._to_pipeline.get()
        if kind == "eval":
            self._pending = payload
            prev = payload.x
        elif kind == "done":
            self._worker = None
            prev = payload
        else:
            self._worker = None
            raise payload
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _start(self, x_T: torch.Tensor, generator) -> None:
        self._to_pipeline, self._from_pipeline = queue.Queue(), queue.Queue()
        bridge = _BridgeDenoiser(self.schedule, self._to_pipeline, self._from_pipeline)
        options = dict(self.config.sampler_options or {})
        if self.info.stochastic and generator is not None:
            options["generator"] = generator
        ts = self.ts.to(x_T.device)
        out = self._to_pipeline

        def run():
            try:
                with torch.no_grad():
                    out.put(("done", self.info.fn(bridge, x_T, ts, **options)))
            except _Cancelled:
                pass
            except Exception as err:  # handed to the pipeline's thread, raised there
                out.put(("error", err))

        self._worker = threading.Thread(target=run, daemon=True, name="diffusekit-scheduler")
        self._worker.start()
        kind, payload = self._to_pipeline.get()
        if kind != "eval":
            self._worker = None
            raise payload if kind == "error" else RuntimeError("the sampler finished without evaluating the model")
        self._pending = payload

    def close(self) -> None:
        """Stop a solver left waiting (a pipeline loop that ended early)."""
        if self._worker is not None:
            self._from_pipeline.put(None)
            self._worker.join(timeout=10)
            self._worker = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = alpha x0 + sigma eps at network times ``timesteps`` (diffusers' training-time noising)."""
        net_t = torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu()
        if self.config.process == "flow":
            t = net_t / 1000.0
        else:
            t = self.schedule.t_of_timestep(net_t)
        t = t.expand(original_samples.shape[0]) if t.numel() == 1 else t
        alpha = per_sample(self.schedule.alpha(t), original_samples).to(original_samples.device)
        sigma = per_sample(self.schedule.sigma(t), original_samples).to(original_samples.device)
        return (alpha * original_samples + sigma * noise).to(original_samples.dtype)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)
