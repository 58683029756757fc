"""AutoDiffusion: training-free evolutionary search of a sampler's time-step sequence.

Li et al. 2023, "AutoDiffusion: Training-Free Optimization of Time Steps and Architectures for Automated
Diffusion Model Acceleration" (ICCV 2023, arXiv 2309.10438). For a frozen model, a fixed solver and a
fixed number of steps n, the n - 1 interior time points of the grid

    t_0 = t_max > t_1 > ... > t_{n-1} > t_n = t_end

are chosen by an evolutionary search that minimises a fitness of the samples generated from a *fixed* x_T:
FID to reference data in the paper; here by default the data-free trajectory error (``trajectory_fitness``:
the distance at t = 0 to a fine solve of the same probability-flow ODE from the same x_T), which measures
what a grid is for and, unlike a distribution distance on a few hundred samples, does not reward grids
that happen to fit the sample noise (with the sliced Wasserstein objective the searched 10-step ring grid
was worse than DDIM's on held-out noise). Candidates are sets of distinct points from a
pool: the integer timesteps t = (k + 1)/N of a ``VPDiscrete`` schedule, or a fine uniform grid in t for a
continuous schedule. The loop (paper's EvolutionSearcher):

1. population: every fixed grid (uniform, logSNR, quadratic, Karras and, on a discrete schedule, diffusers'
   linspace/leading/trailing; snapped to the pool), random candidates up to P//2 + 1, and mutations of the
   fixed grids up to P;
2. each generation: parents = the ``parents`` best of *all* candidates evaluated so far; children by
   mutation (each point replaced with probability ``m_prob``, either by a nearby unused pool point or a
   random unused one) and by gene-wise coin-flip crossover of two parents; random candidates fill up to P;
3. fitness is memoised per candidate, so every distinct grid is sampled once.

Unlike the reference code, every child is repaired to exactly n - 1 distinct points and sorted (its
crossover can duplicate timesteps and so shrink the grid), and the exact (unsnapped) fixed grids are
candidates too: the result is never worse than the best fixed grid on the search's own x_T. The per-step
layer skipping of the paper's architecture search is not implemented.

The result is a plain float64 grid, usable by every sampler; ``save_grid``/``load_grid`` store it as JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.denoiser import CFGDenoiser, Denoiser
from ..core.grids import make_grid
from ..core.noise import generators_from_seeds, prior_sample
from ..core.schedules import Schedule, VPDiscrete
from ..samplers.defaults import FIXED_SEEDS, TrajectoryFitness, fixed_grids
from ..samplers.registry import get_sampler

__all__ = ["StepSpace", "step_space", "EvolutionConfig", "SearchResult", "search_timesteps", "SampleFitness",
           "gmm_fitness", "trajectory_fitness", "digits_fitness", "save_grid", "load_grid", "SEED_GRIDS"]

SEED_GRIDS = FIXED_SEEDS  # every fixed grid that applies to the schedule
GRID_FORMAT = "diffusekit.time_grid"
GRID_VERSION = 1

Candidate = tuple[int, ...]  # sorted, distinct indices into StepSpace.points (increasing index = decreasing t)


# ------------------------------------------------------------------------------------------------
# Search space
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSpace:
    """Grids of ``steps`` steps from ``t_start`` to ``t_end`` whose interior points come from ``points``.

    points: (M,) float64, strictly decreasing, all strictly between t_end and t_start.
    """

    points: torch.Tensor
    t_start: float
    t_end: float
    steps: int

    @property
    def genes(self) -> int:
        """Number of free interior points per candidate (steps - 1)."""
        return self.steps - 1

    def grid(self, cand: Candidate) -> torch.Tensor:
        """The float64 grid [t_start, points[cand...], t_end] (steps + 1 points)."""
        inner = self.points[list(cand)] if cand else torch.zeros(0, dtype=torch.float64)
        ends = torch.tensor([self.t_start, self.t_end], dtype=torch.float64)
        return torch.cat([ends[:1], inner, ends[1:]])

    def snap(self, ts: torch.Tensor, rng: np.random.Generator) -> Candidate:
        """Nearest pool points to a grid's interior points, repaired to ``genes`` distinct ones."""
        inner = torch.as_tensor(ts, dtype=torch.float64)[1:-1]
        idx = [int(torch.argmin((self.points - t).abs())) for t in inner]
        return self.repair(idx, (), rng)

    def repair(self, genes: Sequence[int], donors: Sequence[int], rng: np.random.Generator) -> Candidate:
        """Deduplicate ``genes``; fill up to ``self.genes`` first from ``donors``, then at random from the pool."""
        chosen = list(dict.fromkeys(int(g) for g in genes))[: self.genes]
        extra = [d for d in dict.fromkeys(int(d) for d in donors) if d not in chosen]
        rng.shuffle(extra)
        while len(chosen) < self.genes and extra:
            chosen.append(extra.pop())
        if len(chosen) < self.genes:
            free = np.setdiff1d(np.arange(len(self.points)), np.asarray(chosen, dtype=np.int64))
            chosen += [int(i) for i in rng.choice(free, self.genes - len(chosen), replace=False)]
        return tuple(sorted(chosen))


def step_space(schedule: Schedule, steps: int, *, t_end: float = 0.0, resolution: int = 1000) -> StepSpace:
    """The search space for ``steps`` steps: start at ``schedule.t_max``, end at ``t_end`` (0 = clean data).

    Pool: for ``VPDiscrete``, every integer timestep t = (k + 1)/N strictly between t_end and t_max (the
    paper's encoding); otherwise ``resolution`` points uniform in t on [t_min, t_max], minus the ends.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    t_start, t_end = float(schedule.t_max), float(t_end)
    if not 0 <= t_end < t_start:
        raise ValueError(f"t_end must satisfy 0 <= t_end < t_max = {t_start}; got {t_end}")
    if isinstance(schedule, VPDiscrete):
        pool = schedule.t_of_timestep(torch.arange(schedule.num_train_timesteps - 1, -1, -1))
    else:
        if int(resolution) != resolution or resolution < 2:
            raise ValueError(f"resolution must be an integer >= 2; got {resolution!r}")
        pool = torch.linspace(t_start, float(schedule.t_min), int(resolution), dtype=torch.float64)
    pool = pool[(pool < t_start) & (pool > t_end)]
    if pool.numel() < steps - 1:
        raise ValueError(f"{steps} steps need {steps - 1} interior points but the pool holds only {pool.numel()}")
    return StepSpace(pool.to(torch.float64).contiguous(), t_start, t_end, int(steps))


# ------------------------------------------------------------------------------------------------
# Evolutionary search
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvolutionConfig:
    """Search settings (paper: population 50, parents 10, mutations 25, crossovers 10-15, m_prob 0.1-0.25,
    10-15 generations; the defaults here are sized for CPU toys).

    ``local_width``: a mutated point moves by a Gaussian number of pool indices with this standard deviation
    (as a fraction of the pool size) with probability ``local_prob``; otherwise it jumps to a random unused
    point (the paper's only move).
    """

    population: int = 20
    parents: int = 5
    mutations: int = 8
    crossovers: int = 6
    m_prob: float = 0.25
    generations: int = 10
    local_prob: float = 0.5
    local_width: float = 0.03
    seed: int = 0
    seed_grids: tuple[str, ...] = SEED_GRIDS

    def __post_init__(self):
        for name in ("population", "parents", "generations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        for name in ("mutations", "crossovers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {v!r}")
        for name in ("m_prob", "local_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)!r}")
        if not self.local_width > 0:
            raise ValueError(f"local_width must be > 0; got {self.local_width!r}")


@dataclass
class SearchResult:
    """Outcome of ``search_timesteps``.

    ts: the best grid, float64 (steps + 1,), t_max first, t_end last. fitness: its fitness (lower is better).
    source: "searched", or the name of the exact fixed grid when none of the searched ones beat it.
    history: one dict per generation (0 = initial population) with the best fitness so far, the generation's
    best, the cumulative number of evaluations and the best grid. seed_fitness: fitness of the exact standard
    grids (not snapped) under the same objective. evaluations: distinct candidates evaluated (= fitness calls).
    """

    ts: torch.Tensor
    fitness: float
    history: list[dict]
    seconds: float
    evaluations: int
    seed_fitness: dict[str, float]
    steps: int
    config: dict = field(default_factory=dict)
    source: str = "searched"

    def meta(self) -> dict:
        """JSON-ready description for ``save_grid``."""
        return {"method": "autodiffusion", "fitness": self.fitness, "steps": self.steps, "seconds": self.seconds,
                "evaluations": self.evaluations, "seed_fitness": self.seed_fitness, "config": self.config,
                "source": self.source}


def _key(ts: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(t) for t in ts)


def _score(value) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.inf


def search_timesteps(fitness: Callable[[torch.Tensor], float], schedule: Schedule, steps: int, *,
                     t_end: float = 0.0, config: EvolutionConfig | None = None, resolution: int = 1000,
                     progress: Callable[[dict], None] | None = None) -> SearchResult:
    """Evolutionary search (Li et al. 2023, arXiv 2309.10438, the EvolutionSearcher loop) for the grid of
    ``steps`` steps from ``schedule.t_max`` to ``t_end`` that minimises ``fitness(ts)``.

    ``fitness`` maps a float64 grid (steps + 1,) to a float, lower is better (NaN/inf count as inf); it must
    be deterministic (fixed x_T and noise, see ``SampleFitness``). Each distinct grid is evaluated once.
    With a solver taking k network calls per step, NFE = k * steps. Deterministic given ``config.seed``.
    ``progress``, if given, receives each generation's history entry.
    """
    config = config or EvolutionConfig()
    space = step_space(schedule, steps, t_end=t_end, resolution=resolution)
    rng = np.random.default_rng(config.seed)
    cache: dict[tuple[float, ...], float] = {}
    t0 = time.perf_counter()

    def evaluate(ts: torch.Tensor) -> float:
        key = _key(ts)
        if key not in cache:
            cache[key] = _score(fitness(ts.clone()))
        return cache[key]

    seed_fitness, seeds, seed_grids = {}, [], {}
    exact = fixed_grids(schedule, steps) if t_end == 0 else {}
    for name in config.seed_grids:
        try:
            ts = exact[name] if name in exact else make_grid(name, schedule, steps, t_end=t_end)
        except (ValueError, TypeError):  # e.g. a diffusers spacing on a continuous schedule
            continue
        seed_fitness[name] = evaluate(ts)
        seed_grids[name] = ts
        seeds.append(space.snap(ts, rng))

    scores: dict[Candidate, float] = {}
    if space.genes == 0:  # a single step: the only grid is [t_max, t_end]
        scores[()] = evaluate(space.grid(()))
        history = [{"generation": 0, "best_fitness": scores[()], "generation_best": scores[()],
                    "evaluations": len(cache), "best_ts": space.grid(()).tolist()}]
        return SearchResult(space.grid(()), scores[()], history, time.perf_counter() - t0, len(cache),
                            seed_fitness, space.steps, asdict(config))

    pool_size = len(space.points)
    width = max(1.0, config.local_width * pool_size)

    def is_new(cand, batch):
        return cand not in scores and cand not in batch

    def random_candidate() -> Candidate:
        return tuple(sorted(int(i) for i in rng.choice(pool_size, space.genes, replace=False)))

    def mutate(parent: Candidate) -> Candidate:
        genes = list(parent)
        for j in range(len(genes)):
            if rng.random() >= config.m_prob:
                continue
            if rng.random() < config.local_prob:
                genes[j] = int(np.clip(round(genes[j] + rng.normal() * width), 0, pool_size - 1))
            else:
                genes[j] = int(rng.integers(pool_size))
        return space.repair(genes, (), rng)

    def crossover(a: Candidate, b: Candidate) -> Candidate:
        genes = [a[j] if rng.random() < 0.5 else b[j] for j in range(space.genes)]
        return space.repair(genes, a + b, rng)

    def mutant_of(parents: Sequence[Candidate]) -> Candidate:
        return mutate(parents[rng.integers(len(parents))])

    def child_of(parents: Sequence[Candidate]) -> Candidate:
        i, j = rng.choice(len(parents), 2, replace=False)
        return crossover(parents[i], parents[j])

    def fill(batch: list, target: int, make: Callable[[], Candidate], tries: int = 20) -> None:
        goal = len(batch) + target
        for _ in range(target * tries):
            if len(batch) >= goal:
                return
            cand = make()
            if is_new(cand, batch):
                batch.append(cand)

    def run_batch(batch: list, generation: int) -> dict:
        for cand in batch:
            scores[cand] = evaluate(space.grid(cand))
        best = min(scores, key=lambda c: (scores[c], c))
        entry = {"generation": generation, "best_fitness": scores[best],
                 "generation_best": min((scores[c] for c in batch), default=math.inf),
                 "evaluations": len(cache), "best_ts": space.grid(best).tolist()}
        if progress is not None:
            progress(entry)
        return entry

    # initial population: standard grids, random candidates to P//2 + 1, mutations of the standard grids to P
    batch: list[Candidate] = []
    for cand in seeds:
        if is_new(cand, batch):
            batch.append(cand)
    fill(batch, max(0, config.population // 2 + 1 - len(batch)), random_candidate)
    if seeds:
        fill(batch, max(0, config.population - len(batch)), lambda: mutant_of(seeds))
    fill(batch, max(0, config.population - len(batch)), random_candidate)
    history = [run_batch(batch, 0)]

    for generation in range(1, config.generations + 1):
        parents = sorted(scores, key=lambda c: (scores[c], c))[: config.parents]
        batch = []
        fill(batch, config.mutations, lambda p=parents: mutant_of(p))
        if len(parents) >= 2:
            fill(batch, config.crossovers, lambda p=parents: child_of(p))
        fill(batch, max(0, config.population - len(batch)), random_candidate)
        history.append(run_batch(batch, generation))

    best = min(scores, key=lambda c: (scores[c], c))
    ts, fit, source = space.grid(best), scores[best], "searched"
    if seed_fitness and min(seed_fitness.values()) < fit:  # an exact fixed grid the pool cannot represent
        source = min(seed_fitness, key=seed_fitness.get)
        ts, fit = seed_grids[source], seed_fitness[source]
    return SearchResult(ts, fit, history, time.perf_counter() - t0, len(cache), seed_fitness, space.steps,
                        asdict(config), source)


# ------------------------------------------------------------------------------------------------
# Fitness functions
# ------------------------------------------------------------------------------------------------
class SampleFitness:
    """fitness(ts) = metric(sampler(denoiser, x_T, ts)): a fixed x_T, and for stochastic samplers fresh
    per-sample generators from the same seeds on every call, so equal grids give equal fitness.

    Args:
        denoiser: any Denoiser. x_T: (B, ...) starting noise. metric: samples -> float, lower is better.
        sampler: a registered sampler name; sampler_options go to it. cond: e.g. {"class_labels": y}.
        noise_seed: base seed of the per-sample generators (stochastic samplers only).
    """

    def __init__(self, denoiser: Denoiser, x_T: torch.Tensor, metric: Callable[[torch.Tensor], float], *,
                 sampler: str = "ddim", sampler_options: dict | None = None, cond: dict | None = None,
                 noise_seed: int = 0):
        self.info = get_sampler(sampler)
        if self.info.adaptive:
            raise ValueError(f"sampler {sampler!r} chooses its own steps; a searched grid needs a fixed-step sampler")
        self.denoiser, self.x_T, self.metric = denoiser, x_T, metric
        self.options = dict(sampler_options or {})
        if cond is not None:
            self.options["cond"] = cond
        self.noise_seed = int(noise_seed)

    def sample(self, ts: torch.Tensor) -> torch.Tensor:
        options = dict(self.options)
        if self.info.stochastic:
            options["generator"] = generators_from_seeds(self.noise_seed, len(self.x_T))
        with torch.no_grad():
            return self.info.fn(self.denoiser, self.x_T.clone(), ts, **options)

    def __call__(self, ts: torch.Tensor) -> float:
        x = self.sample(ts)
        if not bool(torch.isfinite(x).all()):
            return math.inf
        return _score(self.metric(x))


def trajectory_fitness(denoiser: Denoiser, x_T: torch.Tensor, *, sampler: str = "ddim",
                       sampler_options: dict | None = None, cond: dict | None = None,
                       reference: torch.Tensor | None = None, reference_steps: int = 400) -> TrajectoryFitness:
    """Data-free fitness: mean distance at t = 0 between ``sampler`` on the candidate grid and a reference
    solution of the PF-ODE from the same ``x_T`` (default: ``reference_steps`` steps of the same sampler on
    a fine grid; pass ``reference`` from an independent integrator). Deterministic samplers only."""
    return TrajectoryFitness(denoiser, x_T, sampler=sampler, options=sampler_options or {}, cond=cond,
                             reference=reference, reference_steps=reference_steps)


def gmm_fitness(mixture, schedule: Schedule, *, n: int = 1000, metric: str = "trajectory",
                sampler: str = "ddim", sampler_options: dict | None = None, seed: int = 0,
                n_projections: int = 128, reference: torch.Tensor | None = None):
    """Fitness on a Gaussian mixture with its exact denoiser (no model error, so only the grid matters).

    x_T ~ prior from ``seed``. ``metric``: "trajectory" (default; ``trajectory_fitness``, needs no data;
    ``reference`` may hold an independent solution from the same x_T), or against ``n`` true samples from
    ``seed + 1``: "sliced_wasserstein" (projections fixed by ``seed + 2``), "mmd" (unbiased RBF MMD^2,
    median bandwidth) or "nll" (-mean log p under the mixture; note it rewards over-sharpened samples, so
    it is a likelihood proxy, not a distance). Use another ``seed`` for a held-out evaluation.
    """
    from ..metrics import gmm_nll, mmd_rbf, sliced_wasserstein

    x_T = prior_sample(schedule, (n, mixture.dim), torch.Generator().manual_seed(seed), dtype=torch.float64)
    if metric == "trajectory":
        if get_sampler(sampler).stochastic:
            raise ValueError(f"the trajectory metric needs a deterministic sampler; got {sampler!r}")
        return trajectory_fitness(mixture.denoiser(schedule), x_T, sampler=sampler,
                                  sampler_options=sampler_options, reference=reference)
    reference = mixture.sample(n, torch.Generator().manual_seed(seed + 1))
    metrics = {
        "sliced_wasserstein": lambda x: sliced_wasserstein(x, reference, n_projections=n_projections,
                                                           generator=torch.Generator().manual_seed(seed + 2)),
        "mmd": lambda x: mmd_rbf(x, reference),
        "nll": lambda x: gmm_nll(x, mixture),
    }
    if metric not in metrics:
        raise ValueError(f"unknown GMM metric {metric!r}; allowed: trajectory, {', '.join(metrics)}")
    return SampleFitness(mixture.denoiser(schedule), x_T, metrics[metric], sampler=sampler,
                         sampler_options=sampler_options, noise_seed=seed + 3)


def digits_fitness(denoiser: Denoiser, classifier, reference: torch.Tensor, *, n_per_class: int = 20,
                   guidance: float = 2.0, sampler: str = "ddim", sampler_options: dict | None = None,
                   seed: int = 0) -> SampleFitness:
    """digits-FD fitness for a class-conditional digits model (as ``zoo.recipes.sample_digits`` samples it):
    balanced labels, CFG at ``guidance``, x_T from ``seed``, samples clipped to [-1, 1], Frechet distance of
    classifier features to ``reference`` (N, 1, 8, 8) images (features computed once).
    """
    from ..metrics import digits_features, frechet_distance

    ref_feats = digits_features(reference, classifier)
    labels = torch.arange(10).repeat_interleave(int(n_per_class))
    x_T = prior_sample(denoiser.schedule, (len(labels), 1, 8, 8), torch.Generator().manual_seed(seed))
    den = CFGDenoiser(denoiser, guidance) if guidance != 1.0 else denoiser

    def metric(x):
        return frechet_distance(digits_features(x.clamp(-1, 1), classifier), ref_feats)

    return SampleFitness(den, x_T, metric, sampler=sampler, sampler_options=sampler_options,
                         cond={"class_labels": labels}, noise_seed=seed + 1)


# ------------------------------------------------------------------------------------------------
# Grid files
# ------------------------------------------------------------------------------------------------
def save_grid(path, ts, meta: dict | None = None) -> None:
    """Write a grid as JSON: {"format", "version", "ts": [floats, full precision], "meta": {...}}."""
    from ..plotting import atomic_write_bytes

    ts = _validate_ts(torch.as_tensor(ts, dtype=torch.float64).flatten().tolist(), "ts")
    try:
        text = json.dumps({"format": GRID_FORMAT, "version": GRID_VERSION, "ts": ts, "meta": meta or {}},
                          indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta must be JSON-serialisable with finite numbers ({err})") from None
    atomic_write_bytes(path, (text + "\n").encode())


def load_grid(path) -> tuple[torch.Tensor, dict]:
    """Read a grid written by ``save_grid``: (ts float64 tensor, meta). Raises a one-line ValueError on a
    missing, non-JSON or malformed file, or on a grid that is not finite, >= 0 and strictly decreasing."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"cannot read grid file {path}: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"grid file {path} is not valid JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(obj, dict) or obj.get("format") != GRID_FORMAT:
        raise ValueError(f"grid file {path} is not a {GRID_FORMAT} file (missing or wrong 'format')")
    if obj.get("version") != GRID_VERSION:
        raise ValueError(f"grid file {path} has version {obj.get('version')!r}; supported: {GRID_VERSION}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"grid file {path}: 'meta' must be an object")
    ts = _validate_ts(obj.get("ts"), f"grid file {path}: 'ts'")
    return torch.tensor(ts, dtype=torch.float64), meta


def _validate_ts(ts, what: str) -> list[float]:
    if not isinstance(ts, list) or len(ts) < 2:
        raise ValueError(f"{what} must be a list of at least 2 numbers")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in ts):
        raise ValueError(f"{what} must hold only finite numbers")
    ts = [float(t) for t in ts]
    if min(ts) < 0 or any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"{what} must be >= 0 and strictly decreasing (from noise to data)")
    return ts
