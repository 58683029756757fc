"""Conditional flow matching with minibatch couplings (Tong et al. 2023, "Improving and generalizing flow-based
generative models with minibatch optimal transport", arXiv 2302.00482), in torchcfm's convention.

Convention (torchcfm's, not ours): x0 is the *source* sample (Gaussian noise or a data set), x1 the *target*,
time t runs 0 -> 1 from source to target. A matcher draws a pair (x0, x1) from a coupling q(x0, x1), a time
t ~ U[0, 1] and eps ~ N(0, I), and returns a point x_t of the conditional path and the conditional velocity

    x_t = mu_t(x0, x1) + sigma_t eps,        u_t(x_t | x0, x1) = d x_t / dt;

a network v_theta(x_t, t) regressed on u_t (loss ||v_theta - u_t||^2) learns the marginal field whose ODE
dx/dt = v(x, t) carries the source marginal to the target marginal (the CFM theorem of Tong et al.).

Matchers (names as in torchcfm; equation numbers are the ones torchcfm's docstrings cite):

* ``IndependentCFM`` (I-CFM, eq. 14-15): q = q0 x q1, mu_t = t x1 + (1 - t) x0, sigma_t = sigma, u_t = x1 - x0.
* ``ExactOTCFM`` (OT-CFM, eq. 17): same path; (x0, x1) drawn from the exact minibatch OT plan pi* for the cost
  ||x0 - x1||^2 (``ot.emd``), with uniform marginals, pairs drawn with replacement.
* ``SchrodingerBridgeCFM`` (SB-CFM, eq. 19-21): pairs from the entropic OT plan with reg 2 sigma^2 (``ot.sinkhorn``),
  mu_t = t x1 + (1 - t) x0, sigma_t = sigma sqrt(t (1 - t)) (a Brownian bridge),
  u_t = (1 - 2t) / (2 t (1 - t)) (x_t - mu_t) + x1 - x0.
* ``TargetCFM`` (Lipman et al. 2022, arXiv 2210.02747, eq. 20-21): mu_t = t x1, sigma_t = 1 - (1 - sigma_min) t,
  u_t = (x1 - (1 - sigma_min) x_t) / (1 - (1 - sigma_min) t); the Gaussian source is eps itself (x0 is ignored).
* ``VPCFM`` (trigonometric interpolant, Albergo & Vanden-Eijnden 2022, arXiv 2209.15571):
  mu_t = cos(pi t/2) x0 + sin(pi t/2) x1, sigma_t = sigma, u_t = (pi/2)(cos(pi t/2) x1 - sin(pi t/2) x0).

Random draws: with ``generator=None`` the draws happen exactly as torchcfm 1.0.7 makes them (plan indices from
NumPy's global RNG via ``np.random.choice``, then t = ``torch.rand``, then eps = ``torch.randn_like``), so seeding
both global RNGs reproduces torchcfm elementwise. With a ``torch.Generator`` every draw comes from it; with a list
of B generators (the trainer's ``loss_noise="per_example"``) example k's pair index, t and eps come from generator k.
The OT and SB couplings still depend on the whole (micro-)batch: that is the method.

``CFMLoss`` is a ``Trainer`` loss; ``CFMLoss.denoiser`` views a velocity network trained with a Gaussian source as
a diffusekit ``Denoiser`` on ``FlowSchedule`` (our time s = 1 - t, our x0 = the data), so every sampler applies.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import torch

from ..core import FlowSchedule, NetworkDenoiser
from ..core.noise import GeneratorArg, randn
from ..training.losses import class_condition

__all__ = ["IndependentCFM", "ExactOTCFM", "SchrodingerBridgeCFM", "TargetCFM", "VPCFM", "MATCHERS",
           "make_matcher", "ot_plan", "sample_plan", "CFMLoss", "CFMDenoiser", "integrate_flow", "CFM_KIND",
           "cfm_extra_config", "load_cfm_denoiser"]

PLAN_METHODS = ("exact", "sinkhorn")


def _uniform(n: int, generator: GeneratorArg) -> torch.Tensor:
    """U[0, 1) float32 draws of shape (n,) from the global RNG, one generator, or one generator per draw."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for a batch of {n}; give one per example")
        return torch.cat([torch.rand(1, generator=g) for g in generator])
    return torch.rand(n, generator=generator)


def _pad(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t of shape (B,) -> (B, 1, ..., 1) broadcastable against x of shape (B, ...)."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


# ------------------------------------------------------------------------------------------------
# Minibatch OT plans (POT)

_REPORTED: set[str] = set()  # POT warnings already passed on (catch_warnings defeats Python's own once-only filter)


def _starved(plan: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """True when the plan is not finite or some row or column holds under 10% of its marginal (underflow)."""
    if not np.all(np.isfinite(plan)):
        return True
    return bool((plan.sum(1) < 0.1 * a).any() or (plan.sum(0) < 0.1 * b).any())


def _usable(plan: np.ndarray, method: str, reg: float) -> np.ndarray:
    """The plan, or the uniform plan with a ``RuntimeWarning`` when it is not finite or has (near) zero mass."""
    plan = np.asarray(plan, dtype=np.float64)
    if not np.all(np.isfinite(plan)) or abs(plan.sum()) < 1e-8:
        warnings.warn(f"the {method} OT plan is degenerate (not finite or zero mass, reg={reg}); "
                      "using the uniform plan (independent pairs) for this batch", RuntimeWarning, stacklevel=3)
        plan = np.full(plan.shape, 1.0 / plan.size)
    return plan


def ot_plan(x0: torch.Tensor, x1: torch.Tensor, method: str = "exact", reg: float = 0.05) -> np.ndarray:
    """The minibatch OT plan pi (float64 array (B0, B1), total mass 1) between the empirical measures of x0 and x1
    for the cost C_ij = ||x0_i - x1_j||^2 (samples flattened, computed in float64), uniform marginals a, b:

        exact:    pi* = argmin_{pi in U(a, b)} <pi, C>                  (``ot.emd``; OT-CFM)
        sinkhorn: pi_reg = argmin_{pi in U(a, b)} <pi, C> - reg H(pi)   (``ot.sinkhorn``; SB-CFM: reg = 2 sigma^2)

    Sinkhorn runs as in torchcfm (POT's default solver and iteration cap). Where exp(-C/reg) underflows (a small
    reg against the batch's costs) that solver returns a plan with empty rows or columns; then the plan is solved
    again with log-domain epsilon scaling (``method="sinkhorn_epsilon_scaling"``, Schmitzer 2019, arXiv
    1610.06519), which reaches small regs. A plan that is still not finite or has zero mass is
    replaced by the uniform plan a b^T with a ``RuntimeWarning`` (independent pairs for that batch), where
    torchcfm would fail on NaN probabilities.
    """
    if method not in PLAN_METHODS:
        raise ValueError(f"unknown OT plan method {method!r}; allowed: {', '.join(PLAN_METHODS)}")
    if method == "sinkhorn" and not (math.isfinite(reg) and reg > 0):
        raise ValueError(f"the Sinkhorn plan needs a finite reg > 0; got {reg}")
    a, b = ot.unif(x0.shape[0]), ot.unif(x1.shape[0])
    src = x0.detach().reshape(x0.shape[0], -1).to("cpu", torch.float64)
    tgt = x1.detach().reshape(x1.shape[0], -1).to("cpu", torch.float64)
    cost = (torch.cdist(src, tgt, compute_mode="donot_use_mm_for_euclid_dist") ** 2).numpy()
    if method == "exact":
        return _usable(ot.emd(a, b, cost), method, reg)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        plan = np.asarray(ot.sinkhorn(a, b, cost, reg), dtype=np.float64)
    if _starved(plan, a, b):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", UserWarning)  # the inner solves of the annealing warn by design
            plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_epsilon_scaling")
    else:
        for w in caught:  # POT's own warnings (e.g. "did not converge") for the plan we keep, once per process
            if str(w.message) not in _REPORTED:
                _REPORTED.add(str(w.message))
                warnings.warn(w.message, w.category, stacklevel=2)
    return _usable(plan, method, reg)


def sample_plan(x0: torch.Tensor, x1: torch.Tensor, method: str = "exact", reg: float = 0.05, *,
                generator: GeneratorArg = None, num_pairs: int | None = None,
                plan: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) ~ pi drawn with replacement from the minibatch OT plan (``ot_plan``); returns two
    LongTensors of shape (num_pairs,) (default B0), so (x0[i], x1[j]) is a coupled minibatch.

    ``generator=None`` draws like torchcfm's ``OTPlanSampler.sample_map`` (``np.random.choice`` on the flattened,
    renormalised plan, NumPy's global RNG); a ``torch.Generator`` draws with ``torch.multinomial``, a list of
    generators draws pair k from generator k. ``plan`` skips the solve (a plan from ``ot_plan``).
    """
    pi = ot_plan(x0, x1, method, reg) if plan is None else _usable(plan, "given", reg)
    n = x0.shape[0] if num_pairs is None else int(num_pairs)
    p = pi.reshape(-1) / pi.sum()
    if generator is None:
        flat = torch.from_numpy(np.random.choice(pi.size, p=p, size=n, replace=True))
    else:
        weights = torch.from_numpy(p)
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise ValueError(f"got {len(generator)} generators for {n} pairs; give one per pair")
            flat = torch.cat([torch.multinomial(weights, 1, generator=g) for g in generator])
        else:
            flat = torch.multinomial(weights, n, replacement=True, generator=generator)
    i, j = flat // pi.shape[1], flat % pi.shape[1]
    return i.to(x0.device), j.to(x1.device)


# ------------------------------------------------------------------------------------------------
# Matchers

class IndependentCFM:
    """I-CFM (Tong et al. 2023, arXiv 2302.00482, eq. 14-15): independent pairs, the straight Gaussian path

        x_t = t x1 + (1 - t) x0 + sigma eps,     u_t = x1 - x0.

    Subclasses override ``couple`` (which pairs), ``mu_t``, ``sigma_t`` and ``conditional_flow`` (the path).
    """

    name = "independent"

    def __init__(self, sigma: float = 0.0):
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0; got {sigma}")
        self.sigma = sigma

    def config(self) -> dict:
        """JSON-serialisable constructor arguments, with the ``make_matcher`` name."""
        return {"name": self.name, "sigma": self.sigma}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items() if k != 'name')})"

    # --- the path ---------------------------------------------------------------------------------
    def mu_t(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The path's mean mu_t(x0, x1) (B, ...) at times t (B,)."""
        t = _pad(t, x0)
        return t * x1 + (1 - t) * x0

    def sigma_t(self, t: torch.Tensor) -> torch.Tensor:
        """The path's standard deviation sigma_t (B,) at times t (B,)."""
        return torch.full_like(t, self.sigma)

    def conditional_flow(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """u_t(x_t | x0, x1) = d x_t / dt with (x0, x1, eps) held fixed, shaped like x0."""
        return x1 - x0

    def sample_xt(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = mu_t + sigma_t eps."""
        return self.mu_t(x0, x1, t) + _pad(self.sigma_t(t), x0) * eps

    # --- the coupling -----------------------------------------------------------------------------
    def couple(self, x0: torch.Tensor, x1: torch.Tensor, generator: GeneratorArg = None):
        """Index pairs (i, j) of the coupling, or None for the pairs as given (independent)."""
        return None

    # --- the draw ---------------------------------------------------------------------------------
    def _draw(self, x0: torch.Tensor, x1: torch.Tensor, t, generator):
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(f"x0 and x1 need the same batch size; got {x0.shape[0]} and {x1.shape[0]}")
        if t is None:
            t = _uniform(x0.shape[0], generator).type_as(x0)
        elif t.shape != (x0.shape[0],):
            raise ValueError(f"t must have shape ({x0.shape[0]},) (one time per sample); got {tuple(t.shape)}")
        if generator is None:
            eps = torch.randn_like(x0)
        else:
            eps = randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
        xt = self.sample_xt(x0, x1, t, eps)
        return t, xt, self.conditional_flow(x0, x1, t, xt), eps

    def sample_location_and_conditional_flow(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | None = None,
                                             *, generator: GeneratorArg = None, return_noise: bool = False):
        """Couple (x0, x1), draw t ~ U[0, 1) (unless given, shape (B,)) and eps ~ N(0, I); return (t, x_t, u_t)
        or (t, x_t, u_t, eps), with x_t, u_t, eps shaped like x0 (B, ...). Draw order: pairs, t, eps."""
        pairs = self.couple(x0, x1, generator)
        if pairs is not None:
            x0, x1 = x0[pairs[0]], x1[pairs[1]]
        t, xt, ut, eps = self._draw(x0, x1, t, generator)
        return (t, xt, ut, eps) if return_noise else (t, xt, ut)

    def guided_sample_location_and_conditional_flow(self, x0: torch.Tensor, x1: torch.Tensor, y0=None, y1=None,
                                                    t: torch.Tensor | None = None, *,
                                                    generator: GeneratorArg = None,
                                                    return_noise: bool = False):
        """As ``sample_location_and_conditional_flow``, carrying labels y0 (of x0) and y1 (of x1) through the
        coupling: returns (t, x_t, u_t, y0, y1) or (t, x_t, u_t, y0, y1, eps)."""
        pairs = self.couple(x0, x1, generator)
        if pairs is not None:
            x0, x1 = x0[pairs[0]], x1[pairs[1]]
            y0 = None if y0 is None else y0[pairs[0]]
            y1 = None if y1 is None else y1[pairs[1]]
        t, xt, ut, eps = self._draw(x0, x1, t, generator)
        return (t, xt, ut, y0, y1, eps) if return_noise else (t, xt, ut, y0, y1)


class ExactOTCFM(IndependentCFM):
    """OT-CFM (Tong et al. 2023, arXiv 2302.00482, eq. 17): I-CFM's path with pairs (i, j) ~ pi*, the
    exact minibatch OT plan for the squared Euclidean cost (``ot.emd``). Pairs are drawn with replacement."""

    name = "ot"

    def couple(self, x0, x1, generator=None):
        return sample_plan(x0, x1, "exact", generator=generator)


class SchrodingerBridgeCFM(IndependentCFM):
    """SB-CFM (Tong et al. 2023, arXiv 2302.00482, eq. 19-21): pairs from the entropic OT plan with reg 2 sigma^2
    (the static Schroedinger bridge for a Brownian reference of variance sigma^2), and the Brownian bridge

        x_t = t x1 + (1 - t) x0 + sigma sqrt(t (1 - t)) eps,
        u_t = (1 - 2t) / (2 t (1 - t)) (x_t - mu_t) + x1 - x0.

    ``ot_method="sinkhorn"`` (default, the paper's entropic plan) or ``"exact"`` (torchcfm's default, which it
    found better at practical batch sizes). At t in {0, 1} x_t = mu_t and the first term is taken as 0 (torchcfm
    adds 1e-8 to the denominator instead; the two differ by a relative 1e-8 / (2 t (1 - t))).
    """

    name = "sb"

    def __init__(self, sigma: float = 1.0, ot_method: str = "sinkhorn"):
        super().__init__(sigma)
        if self.sigma <= 0:
            raise ValueError(f"SB-CFM needs sigma > 0 (the bridge's noise; the OT reg is 2 sigma^2); got {sigma}")
        if ot_method not in PLAN_METHODS:
            raise ValueError(f"unknown ot_method {ot_method!r}; allowed: {', '.join(PLAN_METHODS)}")
        self.ot_method = ot_method
        self.reg = 2 * self.sigma**2

    def config(self) -> dict:
        return {**super().config(), "ot_method": self.ot_method}

    def couple(self, x0, x1, generator=None):
        return sample_plan(x0, x1, self.ot_method, self.reg, generator=generator)

    def sigma_t(self, t):
        return self.sigma * torch.sqrt(t * (1 - t))

    def conditional_flow(self, x0, x1, t, xt):
        t = _pad(t, x0)
        bridge = 2 * t * (1 - t)
        ratio = torch.where(bridge > 0, (1 - 2 * t) / torch.where(bridge > 0, bridge, 1), 0)  # sigma_t' / sigma_t
        return ratio * (xt - self.mu_t(x0, x1, t.reshape(-1))) + x1 - x0


class TargetCFM(IndependentCFM):
    """Flow matching with the OT-path of Lipman et al. (2022, arXiv 2210.02747, eq. 20-21), source N(0, I) = eps:

        x_t = t x1 + (1 - (1 - sigma_min) t) eps,    u_t = (x1 - (1 - sigma_min) x_t) / (1 - (1 - sigma_min) t).

    ``sigma`` is sigma_min; x0 is not used (kept for the common signature)."""

    name = "target"

    def mu_t(self, x0, x1, t):
        return _pad(t, x1) * x1

    def sigma_t(self, t):
        return 1 - (1 - self.sigma) * t

    def conditional_flow(self, x0, x1, t, xt):
        t = _pad(t, x1)
        return (x1 - (1 - self.sigma) * xt) / (1 - (1 - self.sigma) * t)


class VPCFM(IndependentCFM):
    """Variance-preserving (trigonometric) path (Albergo & Vanden-Eijnden 2022, arXiv 2209.15571; torchcfm cites
    Albergo, Boffi & Vanden-Eijnden 2023, arXiv 2303.08797):

        x_t = cos(pi t / 2) x0 + sin(pi t / 2) x1 + sigma eps,   u_t = (pi / 2)(cos(pi t / 2) x1 - sin(pi t / 2) x0).
    """

    name = "vp"

    def mu_t(self, x0, x1, t):
        t = _pad(t, x0)
        return torch.cos(math.pi / 2 * t) * x0 + torch.sin(math.pi / 2 * t) * x1

    def conditional_flow(self, x0, x1, t, xt):
        t = _pad(t, x0)
        return math.pi / 2 * (torch.cos(math.pi / 2 * t) * x1 - torch.sin(math.pi / 2 * t) * x0)


MATCHERS = {"independent": IndependentCFM, "ot": ExactOTCFM, "sb": SchrodingerBridgeCFM, "target": TargetCFM,
            "vp": VPCFM}


def make_matcher(name: str, sigma: float = 0.0, **options) -> IndependentCFM:
    """A matcher by name: independent (I-CFM), ot (OT-CFM), sb (SB-CFM, needs sigma > 0; option ot_method)
    (Tong et al. 2023, arXiv 2302.00482), target (Lipman et al. 2022, arXiv 2210.02747; sigma = sigma_min) or vp
    (trigonometric path). ``make_matcher(name, sigma)`` equals ``MATCHERS[name](sigma)``."""
    if name not in MATCHERS:
        raise ValueError(f"unknown flow matcher {name!r}; allowed: {', '.join(MATCHERS)}")
    return MATCHERS[name](sigma, **options)


# ------------------------------------------------------------------------------------------------
# Training loss and the Denoiser view

SOURCES = ("gaussian", "data")
TIME_SCALE = 1000.0  # the network's time input is 1000 t (our nets' sinusoidal embeddings expect that range)


class CFMDenoiser(NetworkDenoiser):
    """A velocity network v(x, 1000 t) trained in torchcfm's convention (Gaussian source at t = 0, data at t = 1)
    as a diffusekit Denoiser on ``FlowSchedule`` (x_s = (1 - s) data + s eps, s = 1 - t):

        u_ours(x, s) = dx/ds = -v(x, 1000 (1 - s)),     x0_hat = x - s u_ours     (the "velocity" prediction).

    The probability-flow ODE of this Denoiser is exactly dx/dt = v(x, t) run backwards in s, for any coupling or
    path the network was trained with (OT, SB, VP, ...): Euler/DDIM on it is plain Euler on v.
    """

    def __init__(self, net: torch.nn.Module, schedule: FlowSchedule | None = None):
        super().__init__(net, schedule or FlowSchedule(t_min=0.0), "velocity", scale_input=False)
        if not isinstance(self.schedule, FlowSchedule):
            raise ValueError(f"CFMDenoiser needs a FlowSchedule; got {type(self.schedule).__name__}")

    def net_inputs(self, x: torch.Tensor, t: torch.Tensor):
        dtype = next(self.net.parameters()).dtype
        return x.to(dtype), (TIME_SCALE * (1 - t)).to(dtype=dtype, device=x.device)

    def raw(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        x_in, t_in = self.net_inputs(x, t)
        return -self.net(x_in, t_in, **cond).to(x.dtype)


class CFMLoss:
    """Per-example conditional flow matching loss (Tong et al. 2023, arXiv 2302.00482), a ``Trainer`` loss:

        L_i = mean_j (v_theta(x_t, 1000 t)_j - u_t(x_t | x0, x1)_j)^2,   (t, x_t, u_t) from ``matcher``.

    ``loss(net, batch, generator) -> Tensor[B]`` (``generator``: one CPU generator or one per example, as the
    ``Trainer`` passes them). ``source="gaussian"``: batch = (x1,) or (x1, labels), x0 ~ N(0, I)
    drawn from ``generator``; labels follow x1 through the coupling and go to the net as ``class_labels`` (with
    probability ``label_dropout`` replaced by the null class ``num_classes`` for classifier-free guidance).
    ``source="data"``: batch = (x0, x1) or (x0, x1, labels of x1). Draw order: x0 noise, pairs, t, eps, dropout.
    """

    def __init__(self, matcher: IndependentCFM, *, source: str = "gaussian", label_dropout: float = 0.0):
        if source not in SOURCES:
            raise ValueError(f"unknown CFM source {source!r}; allowed: {', '.join(SOURCES)}")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1); got {label_dropout}")
        self.matcher = matcher
        self.source = source
        self.label_dropout = float(label_dropout)

    def config(self) -> dict:
        return {"objective": "cfm", "matcher": self.matcher.config(), "source": self.source,
                "label_dropout": self.label_dropout, "time_scale": TIME_SCALE}

    def denoiser(self, net: torch.nn.Module) -> CFMDenoiser:
        """The Denoiser view of a net trained with this loss (Gaussian source only: the sampler's prior)."""
        if self.source != "gaussian":
            raise ValueError("a data-to-data flow has no Gaussian prior, so it has no Denoiser view; integrate "
                             "dx/dt = v(x, 1000 t) from a source sample instead (e.g. with ``integrate_flow``)")
        return CFMDenoiser(net)

    def __call__(self, net: torch.nn.Module, batch, generator: GeneratorArg = None) -> torch.Tensor:
        if self.source == "gaussian":
            x1, labels = batch[0], (batch[1] if len(batch) > 1 else None)
            x0 = randn(x1.shape, generator, dtype=x1.dtype, device=x1.device)
        else:
            if len(batch) < 2:
                raise ValueError("source='data' needs batches (x0, x1) or (x0, x1, labels)")
            x0, x1, labels = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
        t, xt, ut, _, labels = self.matcher.guided_sample_location_and_conditional_flow(
            x0, x1, None, labels, generator=generator)
        cond = class_condition(net, labels, self.label_dropout, generator)
        dtype = next(net.parameters()).dtype
        v = net(xt.to(dtype), (TIME_SCALE * t).to(dtype), **cond)
        return ((v - ut.to(dtype)) ** 2).flatten(1).mean(1)


@torch.no_grad()
def integrate_flow(net: torch.nn.Module, x0: torch.Tensor, steps: int, *, t_start: float = 0.0, t_end: float = 1.0,
                   cond: dict | None = None, return_path: bool = False):
    """Euler's method on dx/dt = v(x, 1000 t) from t_start to t_end in ``steps`` equal steps (torchcfm convention):
    x_{k+1} = x_k + h v(x_k, 1000 t_k), h = (t_end - t_start)/steps. Returns x at t_end (and the (steps+1, ...)
    path when ``return_path``). NFE = steps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    cond = cond or {}
    dtype = next(net.parameters()).dtype
    h = (t_end - t_start) / steps
    x, path = x0, [x0]
    for k in range(steps):
        t_in = torch.full((x.shape[0],), TIME_SCALE * (t_start + k * h), dtype=dtype, device=x.device)
        x = x + h * net(x.to(dtype), t_in, **cond).to(x.dtype)
        path.append(x)
    return (x, torch.stack(path)) if return_path else x


# ------------------------------------------------------------------------------------------------
# Checkpoints (``diffusekit sample/eval --model DIR`` through ``cli._CHECKPOINT_LOADERS["cfm"]``)

CFM_KIND = "cfm"


def cfm_extra_config(loss: CFMLoss) -> dict:
    """The ``extra_config`` of a training checkpoint of a CFM velocity network: kind "cfm" and the loss config."""
    return {"kind": CFM_KIND, "loss": loss.config()}


def load_cfm_denoiser(tensors: dict[str, torch.Tensor], meta: dict, path) -> CFMDenoiser:
    """A :class:`CFMDenoiser` from a loaded CFM checkpoint (``training.checkpoint.load_checkpoint``'s (tensors, meta)
    of folder ``path``): EMA weights when present, eval mode. Raises CheckpointError (a UserError) for a checkpoint
    that is not a Gaussian-source CFM one."""
    from ..training.checkpoint import CheckpointError, load_inference_net

    extra = meta.get("extra_config") or {}
    loss = extra.get("loss") or {}
    if extra.get("kind") != CFM_KIND or loss.get("objective") != "cfm" or not meta.get("model_config"):
        raise CheckpointError(f"{path}: not a flow-matching checkpoint (needs extra_config kind 'cfm', the CFM loss "
                              "config and a model_config)")
    if loss.get("source") != "gaussian":
        raise CheckpointError(f"{path}: a data-to-data flow (source {loss.get('source')!r}) has no Gaussian prior "
                              "to sample from; integrate it from source samples with integrate_flow")
    return CFMDenoiser(load_inference_net(tensors, meta, str(path)))
