"""PSO: pairwise sample optimization for fine-tuning a timestep-distilled diffusion model (Miao et al. 2024,
ICLR 2025, arXiv 2410.03190), and naive diffusion-loss fine-tuning as the baseline.

A few-step student (a ``NetworkDenoiser`` sampled by deterministic DDIM on its own grid ``ts`` of K steps, e.g.
from :func:`~diffusekit.methods.distill.progressive_distill`) is tuned toward a target set (one style, a subset
of classes). Naive fine-tuning with the diffusion loss on the target images retrains the network toward the
posterior mean of the target distribution and loses the distilled few-step behaviour (blurry samples). PSO
instead adds, for every target image x^w, a reference image x^l sampled from the current student with its own
K-step sampler, and raises the likelihood margin of x^w over x^l relative to a frozen copy of the initial
student (the Diffusion-DPO form, Wallace et al. 2023, arXiv 2311.12908, which PSO generalises):

    e_m(x, t, eps) = mean_j (x0_m(alpha_t x + sigma_t eps, t) - x)_j^2,         m in {theta, ref}
    Delta          = [e_theta(x^w) - e_ref(x^w)] - [e_theta(x^l) - e_ref(x^l)]
    L_PSO          = -log sigmoid(-beta Delta)

with one t and one eps shared by the pair and t drawn from the student's own sampling times ts[0 .. K-1] (the
distilled timesteps), so the model is trained only where it is used. ``online=True`` samples x^l from the current
model at every update (PSO's online variant); ``online=False`` uses references drawn once from the initial
student (the offline variant). The model in the margin's "ref" terms is the frozen initial student
(``reference="initial"``, Diffusion-DPO) or the current model under stop-gradient (``reference="current"``):
then Delta = 0 in value and the gradient is beta/2 grad(e_theta(x^w) - e_theta(x^l)), which vanishes in
expectation once the student's own samples are distributed like the targets -- the fixed point is the target
distribution under the student's sampler, not the posterior mean that naive fine-tuning fits (with Adam, beta
then only scales a gradient Adam normalises). Measured on the 2-step ring student of tests/test_distill_pso.py
(target: 2 of 8 modes, 100 updates): online PSO against the frozen initial model drifts off the modes (its fresh
samples are always better explained by the moving model than by the frozen one; at lr 1e-3 the loss grows from
log 2 to ~19), and offline PSO with beta 100 barely moves (target share 0.25 -> 0.27 at lr 2e-4); online PSO
against the current model moves the 2-step samples onto the target modes (0.25 -> 0.996). Which reference the
paper's online variant uses is not verified (no public code exists), so both are here and ``reference="current"``
is the default.

The error is measured on the distilled model's own output, its clean-sample estimate x0_hat (``space="x0"``, the
default): Diffusion-DPO's eps error equals SNR(t) times it, which gives no weight at a distilled grid's first time
t_max (SNR ~ 0, x_t ~ eps for target and reference alike), the very step where a few-step model decides which mode
a sample goes to; ``space="eps"`` is the DPO form. With the shared eps at t_max the x0 margin is
-2 (x0_theta - x0_ref) . (x^w - x^l): it pulls the model's output toward the target and away from its own sample.

Baseline: ``naive_finetune`` minimises the eps-MSE diffusion loss on the target set, t ~ U(t_min, t_max) (the
standard objective) or on the student's times.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core.denoiser import NetworkDenoiser
from ...core.grids import check_grid
from ...core.noise import prior_sample
from ...samplers import sample_ddim
from ...training.trainer import TrainConfig, Trainer

__all__ = ["PSOResult", "PairwiseSampleOptimizationLoss", "NaiveFinetuneLoss", "denoising_error", "pso_margin",
           "pso_finetune", "naive_finetune", "student_sample"]

TIMES = ("student", "uniform")


def _copy_denoiser(d: NetworkDenoiser, net: torch.nn.Module) -> NetworkDenoiser:
    return NetworkDenoiser(net, d.schedule, d.prediction, scale_input=d.scale_input, sigma_data=d.sigma_data)


def _cond(label: int | None, b: int, device) -> dict:
    return {} if label is None else {"class_labels": torch.full((b,), int(label), dtype=torch.long, device=device)}


SPACES = ("x0", "eps")
REFERENCES = ("initial", "current")


def denoising_error(den: NetworkDenoiser, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, *,
                    space: str = "x0", **cond) -> torch.Tensor:
    """Per-example denoising error at x_t = alpha_t x0 + sigma_t eps, (B,):
    ``space="x0"``: mean_j (x0_hat(x_t, t) - x0)_j^2;  ``space="eps"``: mean_j (eps_hat(x_t, t) - eps)_j^2
    (= SNR(t) times the x0 error; the diffusion loss of Ho et al. 2020, arXiv 2006.11239)."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}; got {space!r}")
    x_t = den.schedule.add_noise(x0, t, eps)
    if space == "eps":
        return (den.eps(x_t, t, **cond) - eps).pow(2).flatten(1).mean(1)
    return (den(x_t, t, **cond) - x0).pow(2).flatten(1).mean(1)


def pso_margin(model: NetworkDenoiser, ref: NetworkDenoiser, x_w: torch.Tensor, x_l: torch.Tensor,
               t: torch.Tensor, eps: torch.Tensor, *, space: str = "x0", **cond) -> torch.Tensor:
    """PSO's margin (arXiv 2410.03190; Diffusion-DPO's eq. 14 form), per example (B,):

        Delta = [e_theta(x^w) - e_ref(x^w)] - [e_theta(x^l) - e_ref(x^l)],

    e = :func:`denoising_error` in ``space``, one (t, eps) shared by the pair; the reference model runs without
    gradients. Negative Delta: the model
    explains the target better, relative to the reference, than its own sample."""
    with torch.no_grad():
        ref_w = denoising_error(ref, x_w, t, eps, space=space, **cond)
        ref_l = denoising_error(ref, x_l, t, eps, space=space, **cond)
    both = denoising_error(model, torch.cat([x_w, x_l]), torch.cat([t, t]), torch.cat([eps, eps]), space=space,
                           **{k: torch.cat([v, v]) for k, v in cond.items()})
    e_w, e_l = both.chunk(2)
    return (e_w - ref_w) - (e_l - ref_l)


@torch.no_grad()
def student_sample(student: NetworkDenoiser, ts, n: int, generator=None, *, class_label: int | None = None,
                   x_T: torch.Tensor | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """n samples of the few-step student: deterministic DDIM on its grid ``ts`` from x_T ~ prior (len(ts) - 1
    NFE). ``shape``: one sample's shape (needed when x_T is not given)."""
    if x_T is None:
        if shape is None:
            raise ValueError("give x_T or the sample shape")
        x_T = prior_sample(student.schedule, (n, *shape), generator)
    return sample_ddim(student, x_T, ts, cond=_cond(class_label, x_T.shape[0], x_T.device))


class PairwiseSampleOptimizationLoss:
    """Per-example PSO loss -log sigmoid(-beta Delta) (arXiv 2410.03190), usable as a ``Trainer`` loss.

    ``loss(net, batch, generator)``: batch = (x_w,) online (x^l sampled from ``net`` read as the student, with
    its K-step DDIM, from fresh noise) or (x_w, x_l) offline; t ~ U{ts[0], .., ts[K-1]}; eps ~ N(0, I) shared
    by the pair. ``ref``: the frozen initial student, used in the margin when ``reference="initial"`` (with
    ``"current"`` the margin's reference is ``net`` itself under stop-gradient). ``class_label``: one label for
    every image (e.g. the null label of a CFG-trained net), or None for an unconditional net."""

    def __init__(self, ref: NetworkDenoiser, ts, *, beta: float = 100.0, online: bool = True,
                 class_label: int | None = None, space: str = "x0", reference: str = "current"):
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}; got {reference!r}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}; got {space!r}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0; got {beta}")
        self.ref = ref
        self.ts = check_grid(ts, ref.schedule)
        self.beta = float(beta)
        self.online = bool(online)
        self.class_label = class_label
        self.space = space
        self.reference = reference

    def student(self, net: torch.nn.Module) -> NetworkDenoiser:
        return _copy_denoiser(self.ref, net)

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_w = batch[0]
        b = x_w.shape[0]
        model = self.student(net)
        if self.online:
            x_l = student_sample(model, self.ts, b, generator, class_label=self.class_label, shape=x_w.shape[1:])
        else:
            if len(batch) < 2:
                raise ValueError("offline PSO needs batches (x_target, x_reference)")
            x_l = batch[1]
        k = torch.randint(0, len(self.ts) - 1, (b,), generator=generator)
        t = self.ts[k].to(x_w.device)
        eps = torch.randn(x_w.shape, generator=generator, dtype=x_w.dtype).to(x_w.device)
        ref = model if self.reference == "current" else self.ref
        delta = pso_margin(model, ref, x_w, x_l.to(x_w.dtype), t, eps, space=self.space,
                           **_cond(self.class_label, b, x_w.device))
        return -F.logsigmoid(-self.beta * delta)


class NaiveFinetuneLoss:
    """Naive fine-tuning (the baseline of arXiv 2410.03190): the eps-MSE diffusion loss (Ho et al. 2020,
    arXiv 2006.11239) on the target images, e(x0, t, eps) with t ~ U(t_min, t_max) (``times="uniform"``) or
    t ~ U{ts[0..K-1]} (``times="student"``)."""

    def __init__(self, student: NetworkDenoiser, *, times: str = "uniform", ts=None, class_label: int | None = None,
                 space: str = "eps"):
        if space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}; got {space!r}")
        if times not in TIMES:
            raise ValueError(f"times must be one of {', '.join(TIMES)}; got {times!r}")
        if times == "student" and ts is None:
            raise ValueError("times='student' needs the student's grid ts")
        self.proto = student
        self.times = times
        self.ts = None if ts is None else check_grid(ts, student.schedule)
        self.class_label = class_label
        self.space = space

    def __call__(self, net: torch.nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = batch[0]
        b = x0.shape[0]
        sched = self.proto.schedule
        if self.times == "uniform":
            u = torch.rand(b, generator=generator, dtype=torch.float64)
            t = sched.t_min + (sched.t_max - sched.t_min) * u
        else:
            t = self.ts[torch.randint(0, len(self.ts) - 1, (b,), generator=generator)]
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        return denoising_error(_copy_denoiser(self.proto, net), x0, t.to(x0.device), eps.to(x0.device),
                               space=self.space, **_cond(self.class_label, b, x0.device))


@dataclass
class PSOResult:
    """A fine-tuned few-step student (eval mode), its grid and the training history; ``native_sampling`` is the
    distill contract's {"sampler", "steps", "ts"}."""

    student: NetworkDenoiser
    ts: torch.Tensor
    history: dict

    @property
    def native_sampling(self) -> dict:
        return {"sampler": "ddim", "steps": len(self.ts) - 1, "ts": [float(v) for v in self.ts]}


def _fit(student: NetworkDenoiser, loss_fn, data, config: TrainConfig, extra: dict) -> tuple[NetworkDenoiser, dict]:
    net = copy.deepcopy(student.net).train().requires_grad_(True)
    history = Trainer(net, loss_fn, data, config, extra_config=extra).fit()
    return _copy_denoiser(student, net.eval().requires_grad_(False)), history


def pso_finetune(student: NetworkDenoiser, ts, target: torch.Tensor, config: TrainConfig, *, beta: float = 100.0,
                 online: bool = True, references: torch.Tensor | None = None, class_label: int | None = None,
                 space: str = "x0", reference: str = "current") -> PSOResult:
    """PSO fine-tuning (Miao et al. 2024, arXiv 2410.03190) of a few-step student on ``target`` (N, ...) for
    ``config.steps`` updates with :class:`PairwiseSampleOptimizationLoss`; the reference model is a frozen copy
    of ``student``. Offline (``online=False``): ``references`` (N', ...) from the initial student, drawn here
    (N of them, seed ``config.seed``) when not given; each target is paired with a reference by index."""
    if not isinstance(student, NetworkDenoiser):
        raise ValueError(f"the student must be a NetworkDenoiser; got {type(student).__name__}")
    ts = check_grid(ts, student.schedule)
    ref = _copy_denoiser(student, copy.deepcopy(student.net).eval().requires_grad_(False))
    loss_fn = PairwiseSampleOptimizationLoss(ref, ts, beta=beta, online=online, class_label=class_label, space=space,
                                             reference=reference)
    data: tuple = (target,)
    if not online:
        if references is None:
            references = student_sample(ref, ts, target.shape[0], torch.Generator().manual_seed(config.seed),
                                        class_label=class_label, shape=tuple(target.shape[1:]))
        n = min(len(target), len(references))
        data = (target[:n], references[:n].to(target.dtype))
    extra = {"method": "pso", "beta": beta, "online": online, "space": space, "reference": reference,
             "ts": ts.tolist()}
    tuned, history = _fit(student, loss_fn, data, config, extra)
    return PSOResult(tuned, ts, history)


def naive_finetune(student: NetworkDenoiser, ts, target: torch.Tensor, config: TrainConfig, *,
                   times: str = "uniform", class_label: int | None = None, space: str = "eps") -> PSOResult:
    """The baseline: fine-tune the few-step student on ``target`` with the plain diffusion loss
    (:class:`NaiveFinetuneLoss`) for ``config.steps`` updates; sampled afterwards on the same grid ``ts``."""
    if not isinstance(student, NetworkDenoiser):
        raise ValueError(f"the student must be a NetworkDenoiser; got {type(student).__name__}")
    ts = check_grid(ts, student.schedule)
    loss_fn = NaiveFinetuneLoss(student, times=times, ts=ts, class_label=class_label, space=space)
    extra = {"method": "naive_finetune", "times": times, "space": space}
    tuned, history = _fit(student, loss_fn, (target,), config, extra)
    return PSOResult(tuned, ts, history)
