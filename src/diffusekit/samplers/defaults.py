"""The default sampler, grid and step count: one place, read by the CLI, the demo and the README.

``DEFAULT`` names a registered sampler and its grid; ``default_timesteps(denoiser, steps)`` returns the grid
the default uses for that model at that many steps, on every schedule kind (VP discrete/linear, VE, flow).

The grid is searched once per (model, steps) with a data-free objective and cached; where no search is
run it falls back to a fixed grid. Both come from one family of warped grids (``grid_warped``):

    t_0 = t_max,   s_i = w_beta^{-1}( w_beta(s_hi) + i/(n-1) (w_beta(s_lo) - w_beta(s_hi)) ),  i = 1..n-1,
    t_n = 0,

in the VE noise level s = sigma/alpha = e^{-lam}, with the Box-Cox warp w_beta(s) = (s^beta - 1)/beta
(w_0 = log s: uniform log-SNR, DPM-Solver's grid; beta = 1/rho: Karras et al.'s rho grid). ``start`` in
(0, 1] places s_hi on the log-s segment [s_lo_min, s_top] (1: the grid's start, as in every standard grid;
< 1: the first step skips ahead like diffusers' "leading" spacing), ``end`` in [0, 1) lifts s_lo above
the model's last trained time t_min. The last step goes to t = 0 (the denoised x0 at t_{n-1}).

The search objective (``TrajectoryFitness``) needs no data: the mean distance at t = 0 between the default
sampler's output on a candidate grid and a fine reference solution of the probability-flow ODE from the
same prior noise x_T (``REFERENCE_STEPS`` steps of the same solver on a fine grid that mixes uniform-t and
uniform-lam points). Candidates: every fixed grid of ``make_grid`` that applies (uniform, logsnr,
quadratic, karras, diffusers' spacings on a discrete schedule) and the family, searched by a coarse
scan over (beta, start, end) followed by Nelder-Mead, then (up to 20 steps) every point moved freely;
the best candidate is kept, so the searched grid is never worse than the best fixed grid on the tuning
noise.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.grids import make_grid
from ..core.noise import prior_sample
from ..core.predictions import ALPHA_DIVIDING
from ..core.schedules import VPDiscrete

DEFAULT: dict = {"sampler": "unipc_bh2_3", "grid": "searched", "steps": 10, "options": {},
                 # the fixed grid where no search is run: warped-family parameters, linear in the step count
                 # between blend_steps (start 0.75 -> 1, end 0.1 -> 0 from 10 to 40 steps), see fallback_params
                 "fallback": {"beta": 0.0, "start": (0.75, 1.0), "end": (0.1, 0.0), "blend_steps": (10, 40)}}

S_TOP = math.exp(5.1)  # the warp starts at most here (DPM-Solver's lam >= -5.1); infinite for flow at t = 1
S_BOTTOM = 1e-3  # and ends at least here (a flow model trained to t = 0 has s = sigma/alpha = 0 at its t_min)
REFERENCE_STEPS = 400
FIXED_SEEDS = ("uniform", "logsnr", "quadratic", "karras", "linspace", "leading", "trailing")
BETA_RANGE, START_RANGE, END_RANGE = (-1.0, 2.0), (0.3, 1.0), (0.0, 0.6)
REFINE_MAX_STEPS = 20  # per-point refinement up to this many steps (beyond, the family alone is within ~1.3x)
GRID_FILE = "default_grids.json"
GRID_FILE_FORMAT = "diffusekit.default_grids"
# searched grids for the zoo's shipped models (keyed by weight fingerprint, so rebuilt weights never match)
PACKAGED_GRIDS_DIR = Path(__file__).resolve().parents[1] / "zoo" / "assets"

_MEMORY: dict[tuple, dict] = {}


# ------------------------------------------------------------------------------------------------
# the grid family
# ------------------------------------------------------------------------------------------------
def _warp(s: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.log(s) if abs(beta) < 1e-9 else (s**beta - 1) / beta


def _unwarp(w: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.exp(w) if abs(beta) < 1e-9 else (1 + beta * w).clamp_min(1e-300) ** (1 / beta)


def grid_warped(schedule, steps: int, *, beta: float = 0.0, start: float = 1.0, end: float = 0.0) -> torch.Tensor:
    """The warped grid of ``steps`` steps from ``schedule.t_max`` to t = 0 (see the module docstring).

    beta = 0, start = 1, end = 0 is the uniform log-SNR grid to t_min then t = 0; beta = 1/7 is Karras's.
    Works on every schedule, including a flow schedule's t = 1 (infinite s: the warp starts at S_TOP).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps}")
    if not (0 < start <= 1 and 0 <= end < 1):
        raise ValueError(f"need 0 < start <= 1 and 0 <= end < 1; got start={start}, end={end}")
    steps = int(steps)
    t_max, t_min = float(schedule.t_max), float(schedule.t_min)
    if steps == 1:
        return torch.tensor([t_max, 0.0], dtype=torch.float64)
    s_top = min(float(schedule.sigma_tilde(t_max)), S_TOP)
    # a schedule trained down to t_min = 0 (s = 0) gets the grid's low end at S_BOTTOM, below every shipped t_min
    s_min = max(float(schedule.sigma_tilde(t_min)), S_BOTTOM)
    log_top, log_min = math.log(s_top), math.log(s_min)
    log_lo = log_min + end * (log_top - log_min)
    log_hi = log_lo + start * (log_top - log_lo)
    w_hi = _warp(torch.tensor(math.exp(log_hi), dtype=torch.float64), beta)
    w_lo = _warp(torch.tensor(math.exp(log_lo), dtype=torch.float64), beta)
    u = torch.arange(1, steps, dtype=torch.float64) / (steps - 1)
    s = _unwarp(w_hi + u * (w_lo - w_hi), beta)
    inner = schedule.t_of_sigma_tilde(s).clamp(t_min, t_max)
    ts = torch.cat([torch.tensor([t_max], dtype=torch.float64), inner, torch.zeros(1, dtype=torch.float64)])
    # keep it strictly decreasing where points coincide (a start near t_max, or rounding at t_min)
    for i in range(1, steps):
        if ts[i] >= ts[i - 1]:
            ts[i] = ts[i - 1] * (1 - 1e-9)
    if bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(f"warped grid (beta={beta}, start={start}, end={end}) is not strictly decreasing")
    return ts


def fixed_grids(schedule, steps: int) -> dict[str, torch.Tensor]:
    """Every fixed ``make_grid`` grid of ``steps`` steps to t = 0 that applies to ``schedule``."""
    out = {}
    for name in FIXED_SEEDS:
        try:
            if name in ("linspace", "leading", "trailing"):
                if not isinstance(schedule, VPDiscrete):
                    continue
                out[name] = make_grid(name, schedule, steps)
            else:
                out[name] = make_grid(name, schedule, steps, t_end=0.0)
        except (ValueError, TypeError):  # e.g. logSNR from a flow schedule's t = 1 before that is supported
            continue
    return out


def fallback_params(steps: int) -> dict:
    """The warped-family parameters of the fallback grid at ``steps`` steps (``DEFAULT["fallback"]``).

    Chosen by measurement over 4 mixtures x 5 schedules (VP discrete linear and cosine, VP linear, VE, flow)
    x 5-50 NFE (``tests/test_defaults.py`` checks it against the fixed grids): at few steps a first step that
    skips ahead and a last point above t_min pay off, at many steps they cost accuracy.
    """
    fb = DEFAULT["fallback"]
    lo, hi = fb["blend_steps"]
    f = min(max((steps - lo) / (hi - lo), 0.0), 1.0)
    return {"beta": fb["beta"], "start": fb["start"][0] + f * (fb["start"][1] - fb["start"][0]),
            "end": fb["end"][0] + f * (fb["end"][1] - fb["end"][0])}


def _prediction(denoiser) -> str | None:
    """The prediction type of the network under ``denoiser`` and its wrappers (``inner``), if any."""
    seen = 0
    while not hasattr(denoiser, "prediction") and hasattr(denoiser, "inner") and seen < 32:
        denoiser, seen = denoiser.inner, seen + 1
    return getattr(denoiser, "prediction", None)


def grid_schedule(denoiser):
    """The schedule the default grids are laid on: the model's own, except where the model cannot denoise at
    its t_max. An eps/score/EDM output gives x0_hat = (x - sigma eps)/alpha, undefined where alpha(t_max) = 0 (a
    flow schedule's t = 1, zero terminal SNR); such a model's grids start at t_max' = t_of_lam(-log S_TOP), where
    lam = -5.1 (DPM-Solver's lower log-SNR end; t' = 0.994 for a flow schedule). Started from the model's prior
    x ~ N(0, sigma(t_max)^2 I), the neglected signal alpha(t_max') x0 is 0.6% of the noise there."""
    schedule = denoiser.schedule
    if _prediction(denoiser) not in ALPHA_DIVIDING or float(schedule.alpha(schedule.t_max)) > 0:
        return schedule
    view = copy.copy(schedule)
    view.t_max = float(schedule.t_of_lam(torch.tensor([-math.log(S_TOP)], dtype=torch.float64))[0])
    return view


def fallback_timesteps(schedule, steps: int) -> torch.Tensor:
    """The fixed grid the default uses where no searched grid is cached (``fallback_params``)."""
    return grid_warped(schedule, steps, **fallback_params(steps))


# ------------------------------------------------------------------------------------------------
# the data-free objective
# ------------------------------------------------------------------------------------------------
def reference_grid(schedule, steps: int = REFERENCE_STEPS) -> torch.Tensor:
    """A fine grid for reference solves: the union of a uniform-t and a uniform-lam grid (steps + 1 points)."""
    half = steps // 2
    a = make_grid("uniform", schedule, half, t_end=schedule.t_min)
    b = grid_warped(schedule, steps - half + 1)[:-1]
    ts = torch.unique(torch.cat([a, b])).flip(0)
    ts = ts[torch.cat([torch.tensor([True]), (ts[:-1] - ts[1:]) > 1e-12 * ts[0]])]
    return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])


class TrajectoryFitness:
    """fitness(ts) = mean_b |x_ts(x_T,b) - x_ref(x_T,b)| at t = 0: the error of the sampler on grid ``ts``
    against a fine solve of the same probability-flow ODE from the same x_T. Needs no data.

    Args: denoiser, x_T (B, ...), sampler (registered deterministic name), options for it, cond (e.g.
    class labels), reference_steps (the fine solve: that many steps of ``sampler`` on ``reference_grid``)
    or ``reference`` (a precomputed x_ref, e.g. from an independent high-accuracy integrator).
    """

    def __init__(self, denoiser, x_T: torch.Tensor, *, sampler: str | None = None, options: dict | None = None,
                 cond: dict | None = None, reference_steps: int = REFERENCE_STEPS,
                 reference: torch.Tensor | None = None):
        from .registry import get_sampler

        self.info = get_sampler(sampler or DEFAULT["sampler"])
        if self.info.stochastic or self.info.adaptive:
            raise ValueError(f"trajectory error needs a fixed-step deterministic sampler; got {self.info.name!r}")
        self.denoiser, self.x_T = denoiser, x_T
        self.options = dict(DEFAULT["options"] if options is None else options)
        if cond is not None:
            self.options["cond"] = cond
        self.evaluations = 0
        if reference is None:
            reference = self.sample(reference_grid(grid_schedule(denoiser), reference_steps))
        self.reference = reference

    def sample(self, ts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.info.fn(self.denoiser, self.x_T.clone(), ts, **self.options)

    def __call__(self, ts: torch.Tensor) -> float:
        self.evaluations += 1
        try:
            x = self.sample(ts)
        except (ArithmeticError, ValueError, RuntimeError):  # a degenerate candidate (e.g. two points at one lam)
            return math.inf
        if not bool(torch.isfinite(x).all()):
            return math.inf
        err = (x - self.reference).flatten(1).to(torch.float64).norm(dim=1).mean()
        return float(err) if math.isfinite(float(err)) else math.inf


# ------------------------------------------------------------------------------------------------
# the search
# ------------------------------------------------------------------------------------------------
@dataclass
class GridSearchResult:
    """ts: the chosen grid; source: "searched" (a family member) or the fixed grid's name; fitness on the
    tuning noise; params: the family parameters (None for a fixed grid); fixed: every fixed grid's fitness;
    evaluations and seconds: the search's cost (the reference solve included)."""

    ts: torch.Tensor
    source: str
    fitness: float
    params: dict | None
    fixed: dict[str, float]
    evaluations: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"ts": [float(t) for t in self.ts], "source": self.source, "fitness": self.fitness,
                "params": self.params, "fixed": self.fixed, "evaluations": self.evaluations,
                "seconds": self.seconds}


def _clip(p):
    b, s, e = p
    return (min(max(b, BETA_RANGE[0]), BETA_RANGE[1]), min(max(s, START_RANGE[0]), START_RANGE[1]),
            min(max(e, END_RANGE[0]), END_RANGE[1]))


def _log_s_bounds(schedule) -> tuple[float, float]:
    s_top = min(float(schedule.sigma_tilde(schedule.t_max)), S_TOP)
    return math.log(float(schedule.sigma_tilde(schedule.t_min))), math.log(s_top)


def _grid_of_log_s(schedule, log_s) -> torch.Tensor:
    """[t_max, points at these log s (sorted, clamped to the model's range), 0]."""
    lo, hi = _log_s_bounds(schedule)
    v = torch.as_tensor(sorted((float(x) for x in log_s), reverse=True), dtype=torch.float64).clamp(lo, hi)
    inner = schedule.t_of_sigma_tilde(v.exp()).clamp(schedule.t_min, schedule.t_max)
    ts = torch.cat([torch.tensor([schedule.t_max], dtype=torch.float64), inner, torch.zeros(1, dtype=torch.float64)])
    for i in range(1, len(ts) - 1):
        if ts[i] >= ts[i - 1]:
            ts[i] = ts[i - 1] * (1 - 1e-9)
    return ts


def search_grid(fitness, schedule, steps: int, *, refine_evals: int = 60) -> GridSearchResult:
    """Minimise ``fitness(ts)`` over the fixed grids and the warped family at ``steps`` steps, then refine.

    1. every fixed grid (``fixed_grids``);
    2. coarse scan of the family: beta in {-1, -0.5, 0, 1/7, 0.5, 1, 2} x start in {1, 0.85, 0.75, 0.6} x
       end in {0, 0.1, 0.2, 0.3}, then Nelder-Mead (scipy) from the best member for ``refine_evals``
       evaluations;
    3. for 2 <= steps <= REFINE_MAX_STEPS: every interior point free, in log s, by adaptive Nelder-Mead
       from the best grid so far for 40 (steps - 1) evaluations.

    The best candidate is returned, so the result is never worse than the best fixed grid on the tuning
    noise. Deterministic for a deterministic ``fitness``.
    """
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    fixed = {}
    for name, ts in fixed_grids(schedule, steps).items():
        fixed[name] = fitness(ts)
    family: dict[tuple, float] = {}

    def family_fit(p) -> float:
        p = tuple(round(v, 6) for v in _clip(p))
        if p not in family:
            try:
                family[p] = fitness(grid_warped(schedule, steps, beta=p[0], start=p[1], end=p[2]))
            except ValueError:
                family[p] = math.inf
        return family[p]

    evaluations = len(fixed)
    cands = [(f, name, None, None) for name, f in fixed.items()]
    if steps > 1:
        for beta in (-1.0, -0.5, 0.0, 1 / 7, 0.5, 1.0, 2.0):
            for start in (1.0, 0.85, 0.75, 0.6):
                for end in (0.0, 0.1, 0.2, 0.3):
                    family_fit((beta, start, end))
        best = min(family, key=family.get)
        if refine_evals > 0:
            simplex = [best, (best[0] + 0.25, best[1], best[2]), (best[0], best[1] - 0.08, best[2]),
                       (best[0], best[1], best[2] + 0.08)]
            minimize(family_fit, best, method="Nelder-Mead",
                     options={"initial_simplex": [_clip(p) for p in simplex], "maxfev": refine_evals,
                              "xatol": 1e-3, "fatol": 0.0})
        evaluations += len(family)
        for p, f in family.items():
            cands.append((f, "searched", {"beta": p[0], "start": p[1], "end": p[2]}, None))
    f, source, params, _ = min(cands, key=lambda c: (c[0], c[1] != "searched"))
    ts = fixed_grids(schedule, steps)[source] if params is None else grid_warped(schedule, steps, **params)
    if 2 <= steps <= REFINE_MAX_STEPS:
        start = schedule.sigma_tilde(ts[1:-1]).log().tolist()
        result = minimize(lambda v: fitness(_grid_of_log_s(schedule, v)), start, method="Nelder-Mead",
                          options={"maxfev": 40 * (steps - 1), "xatol": 1e-4, "fatol": 0.0, "adaptive": True})
        evaluations += int(result.nfev)
        if math.isfinite(result.fun) and result.fun < f:
            f, source, ts = float(result.fun), "searched", _grid_of_log_s(schedule, result.x)
            params = {**(params or {}), "points_refined": True}
    return GridSearchResult(ts, source, f, params, fixed, evaluations, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# cache and the public entry point
# ------------------------------------------------------------------------------------------------
def model_fingerprint(denoiser) -> str:
    """A stable id of a model: its schedule, its class and (for networks) its weights; GMMs by parameters."""
    h = hashlib.sha256()
    h.update(type(denoiser).__name__.encode())
    h.update(json.dumps(denoiser.schedule.config(), sort_keys=True, default=str).encode())
    tensors = []
    if hasattr(denoiser, "mixture"):
        m = denoiser.mixture
        tensors = [m.means, m.covs, m.weights]
    elif hasattr(denoiser, "net"):
        h.update(str(getattr(denoiser, "prediction", "")).encode())
        tensors = list(denoiser.net.state_dict().values())
    else:
        h.update(str(id(denoiser)).encode())  # unknown denoisers: cached for this object only
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_key(denoiser, steps: int) -> tuple:
    return (model_fingerprint(denoiser), DEFAULT["sampler"], json.dumps(DEFAULT["options"], sort_keys=True),
            int(steps))


def load_grid_file(directory) -> dict:
    """The searched grids stored next to a checkpoint: {"<fingerprint>/<sampler>/<steps>": entry}."""
    path = Path(directory) / GRID_FILE
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not isinstance(obj, dict) or obj.get("format") != GRID_FILE_FORMAT or not isinstance(obj.get("grids"), dict):
        raise ValueError(f"{path} is not a {GRID_FILE_FORMAT} file")
    return obj["grids"]


def _file_key(key: tuple) -> str:
    return f"{key[0]}/{key[1]}/{key[2]}/{key[3]}"


def _write_grid_file(directory, grids: dict) -> None:
    from ..io import atomic_write_text

    text = json.dumps({"format": GRID_FILE_FORMAT, "version": 1, "grids": grids}, indent=1, allow_nan=False)
    atomic_write_text(Path(directory) / GRID_FILE, text + "\n")


def search_default_grid(denoiser, steps: int, *, n: int = 64, seed: int = 0, shape: tuple | None = None,
                        cond: dict | None = None, cache_dir=None) -> GridSearchResult:
    """Search the default sampler's grid for ``denoiser`` at ``steps`` steps (``search_grid`` with a
    ``TrajectoryFitness`` on ``n`` prior samples from ``seed``), store it in memory and, with ``cache_dir``,
    in ``cache_dir/default_grids.json`` (atomic write; JSON, no pickle). ``shape``: one sample's shape
    (needed for networks; GMMs know their dimension)."""
    if shape is None:
        if not hasattr(denoiser, "mixture"):
            raise ValueError("shape (one sample's shape) is needed to search a grid for this denoiser")
        shape = (denoiser.mixture.dim,)
    t0 = time.perf_counter()
    x_T = prior_sample(denoiser.schedule, (n, *shape), torch.Generator().manual_seed(seed), dtype=torch.float64)
    param = next(iter(getattr(getattr(denoiser, "net", None), "parameters", lambda: iter(()))()), None)
    if param is not None:
        x_T = x_T.to(param.dtype)
    fitness = TrajectoryFitness(denoiser, x_T, cond=cond)
    res = search_grid(fitness, grid_schedule(denoiser), steps)
    res.seconds = time.perf_counter() - t0  # the reference solve included
    res.extra = {"reference_steps": REFERENCE_STEPS, "samples": n}
    key = _cache_key(denoiser, steps)
    entry = {**res.to_json(), "samples": n, "seed": seed}
    _MEMORY[key] = entry
    if cache_dir is not None:
        grids = load_grid_file(cache_dir)
        grids[_file_key(key)] = entry
        _write_grid_file(cache_dir, grids)
    return res


def _cached_entry(denoiser, steps: int, cache_dir) -> dict | None:
    """The searched grid stored for this model at ``steps`` (memory, ``cache_dir``, the zoo's file), or None."""
    key = _cache_key(denoiser, steps)
    if key in _MEMORY:
        return _MEMORY[key]
    for directory in ((cache_dir,) if cache_dir is not None else ()) + (PACKAGED_GRIDS_DIR,):
        entry = load_grid_file(directory).get(_file_key(key))
        if entry is not None:
            _MEMORY[key] = entry
            return entry
    return None


def default_grid_kind(denoiser, steps: int | None = None, *, cache_dir=None) -> str:
    """Which grid ``default_timesteps(denoiser, steps, cache_dir=cache_dir)`` (search="auto") gives: "searched"
    (a stored search, or an exact mixture, searched on the fly) or "fallback" (the fixed grid)."""
    steps = DEFAULT["steps"] if steps is None else steps
    if _cached_entry(denoiser, steps, cache_dir) is not None or hasattr(denoiser, "mixture"):
        return "searched"
    return "fallback"


def default_timesteps(denoiser, steps: int | None = None, *, search: bool | str = "auto",
                      cache_dir=None) -> torch.Tensor:
    """The default grid for ``denoiser`` at ``steps`` steps (default ``DEFAULT['steps']``), float64.

    A searched grid cached for this model (in memory, in ``cache_dir/default_grids.json``, e.g. the
    checkpoint's folder, or shipped beside the zoo's assets for the zoo's own weights) is used as is.
    Otherwise ``search="auto"`` searches only where it is cheap (an exact Gaussian-mixture denoiser: about a
    second to 17 s) and falls back to the fixed grid ``fallback_timesteps`` for networks (a search costs
    ~10-90 s on a small network on CPU); ``search=True`` always searches (and caches), False never does.
    """
    steps = DEFAULT["steps"] if steps is None else steps
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    if search not in (False, "auto", True):
        raise ValueError(f"search must be True, False or 'auto'; got {search!r}")
    entry = _cached_entry(denoiser, steps, cache_dir)
    if entry is not None:
        return torch.tensor(entry["ts"], dtype=torch.float64)
    if search is True or (search == "auto" and hasattr(denoiser, "mixture")):
        return search_default_grid(denoiser, steps, cache_dir=cache_dir).ts
    return fallback_timesteps(grid_schedule(denoiser), steps)


ZOO_GRID_JOBS = {"toy_ring8": ((2,), 64, (5, 10, 20)), "digits_unet": ((1, 8, 8), 16, (5, 10)),
                 "digits_dit": ((1, 8, 8), 16, (5, 10)),
                 "patches_unet": ((1, 16, 16), 16, (5, 10))}


def search_zoo_grids(assets_dir=None) -> dict:
    """Search and store the default grids shipped for the zoo's models (``ZOO_GRID_JOBS``: sample shape, number
    of prior samples, step counts; the null class for a conditional model) in ``assets_dir/default_grids.json``
    (default: the zoo's assets). Returns {name: {steps: seconds}}. About 10 minutes on 2 CPU cores."""
    from .. import zoo

    assets_dir = PACKAGED_GRIDS_DIR if assets_dir is None else assets_dir
    cost = {}
    for name, (shape, n, steps_list) in ZOO_GRID_JOBS.items():
        den = zoo.load(name)
        cond = {"class_labels": torch.full((n,), den.null_class)} if den.num_classes is not None else None
        cost[name] = {k: search_default_grid(den, k, n=n, shape=shape, cond=cond, cache_dir=assets_dir).seconds
                      for k in steps_list}
    return cost

