"""Fast ODE solvers vs diffusers' schedulers at equal NFE: ``diffusekit bench solvers [--quick]``.

Everything runs on one schedule, ``VPDiscrete.named("linear", 1000)`` (the shipped digits model's), from
one x_T per problem shared by every method (our ``prior_sample``; in float64).

Problems and errors (lower is better):

* ``gmm_ring`` (8-mode ring, 2-D) and ``gmm_8d`` (anisotropic 8-D mixture) with the exact denoiser.
  ``error`` is the mean (over samples) Euclidean distance of the sample at t = 0 to a reference solution of
  the probability-flow ODE from the same x_T: our DPM-Solver++(3M) with ``REF_STEPS`` steps uniform in
  logSNR from t = 1 down to t = 1e-8 (sigma ~ 3e-5), then to t = 0. Its convergence is recorded as the gap
  to a 2x finer solve. The sliced Wasserstein distance to fresh true samples (and the true-vs-true floor)
  is in the table too; stochastic samplers only get that.
* ``digits``: the zoo's class-conditional eps UNet (``zoo.load("digits_unet")``; missing asset = error).
  ``error`` is digits-FD of class-cycled samples (guidance 1, clipped to [-1, 1]) vs the digits test split.

Methods: ours = every registered fixed-step deterministic sampler (and the stochastic ones for SW / FD) on
the grids logsnr / karras / uniform / trailing, each ending at t = 0; for every target NFE the step count
whose NFE (counted with ``CountingDenoiser``) equals the target exactly, combinations that cannot hit it
are skipped. The adaptive DPM-Solver is listed separately (GMMs only) with the NFE it reports.
diffusers = its schedulers in the standard manual loop (set_timesteps, scale_model_input, model, step)
with the same betas (diffusers' float32 schedule tensors are replaced by our float64 ones), first
timestep 999 (= our t = 1, asserted), the final step to sigma = 0 where the scheduler supports it
(DEISMultistep cannot: it ends at the first train step), and the number of inference steps whose model-
call count equals the target NFE (searched with a dry ``set_timesteps`` count, then checked). Its sample
is x/alpha for the sigma-space (Euler-type) schedulers, so they start from x_T / alpha(1) (their
``init_noise_sigma`` equals 1/alpha(1) to 2e-5); the others start from x_T. The model is the same exact
denoiser as eps = (x - alpha x0_hat)/sigma, evaluated for the sigma-space schedulers at the sigma their
step uses (``sigmas[step_index]``; their timesteps may be fractional) and for the others at the timestep
diffusers passes (integer; DPM-Solver with Karras sigmas rounds it, as it does for any network); the UNet
is called with diffusers' timestep, as in a user's loop.

Overhead: on the digits UNet (batch 100, 20 NFE), sampler wall time / (NFE x median network forward
time), median over repeats, for our DPM-Solver++(2M) and for DPMSolverMultistepScheduler's loop
(``set_timesteps`` included), interleaved in one process. 1.0 would be a free solver.

JSON layout: ``problems[P][NFE]`` = ``{"ours_best": {"name", "error"}, "diffusers_best": {...}}`` for
P in gmm_ring, gmm_8d, digits and NFE a string; ``table[P]["ours" | "diffusers"][method][NFE]`` = the
full rows (``error``, ``sliced_wasserstein``, ``steps``, ...); ``problem_info[P]`` (metric, sample count,
reference convergence, floors); ``adaptive[P]``; ``overhead`` = ``{"ours", "diffusers", ...}``.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch

from ..core import CountingDenoiser, VPDiscrete, make_grid, prior_sample
from ..core.grids import grid_logsnr
from ..data import aniso8d_mixture, load_dataset, ring8_mixture
from ..metrics import digits_fd, sliced_wasserstein
from ..samplers import SAMPLERS, sample, sample_dpm_solver_adaptive, sample_dpm_solver_multistep
from ..core.grids import grid_diffusers_dpm
from . import register_bench

FULL_NFES = (3, 4, 5, 6, 8, 10, 15, 20, 50)
QUICK_NFES = (4, 8)
GRIDS = ("logsnr", "karras", "uniform", "trailing")
QUICK_GRIDS = ("logsnr", "trailing")
QUICK_SAMPLERS = ("ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc_bh2_2", "euler_ancestral")
# The UNet costs ~1 ms per sample and forward on one core, so digits runs a chosen subset.
DIGITS_OURS = (("ddim", "trailing"), ("dpm_solver_pp_2m", "logsnr"), ("dpm_solver_pp_3m", "logsnr"),
               ("unipc_bh2_2", "logsnr"))
QUICK_DIGITS_OURS = (("ddim", "trailing"), ("dpm_solver_pp_2m", "logsnr"))
DIFFUSERS = (  # (label, scheduler class, config)
    ("DDIM", "DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False}),
    ("DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("DPM++2M-karras", "DPMSolverMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": True}),
    ("DPM++3M", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPM++3M-karras", "DPMSolverMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True}),
    ("DPM++2S", "DPMSolverSinglestepScheduler", {"solver_order": 2}),
    ("DPM++3S", "DPMSolverSinglestepScheduler", {"solver_order": 3}),
    ("UniPC-bh2-o2", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
    ("UniPC-bh2-o3", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2"}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("Euler-karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("PNDM", "PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True, "timestep_spacing": "linspace"}),
    ("LMS", "LMSDiscreteScheduler", {}),
    ("DEIS", "DEISMultistepScheduler", {}),
)
QUICK_DIFFUSERS = ("DDIM", "DPM++2M", "UniPC-bh2-o2", "Euler-karras")
DIGITS_DIFFUSERS = ("DDIM", "DPM++2M", "DPM++2M-karras", "UniPC-bh2-o2")
QUICK_DIGITS_DIFFUSERS = ("DDIM", "DPM++2M")
SW_PROJECTIONS = 64  # the same 64 directions for every method (256 would cost ~0.2 s per 4000-sample SW)
REF_END = 1e-8  # the reference's uniform-logSNR part ends here (sigma ~ 3e-5), then one step to t = 0


# ------------------------------------------------------------------------------------------------
# our samplers
# ------------------------------------------------------------------------------------------------
def _our_grid(grid: str, schedule, steps: int) -> torch.Tensor:
    if grid == "trailing":
        return make_grid("trailing", schedule, steps)  # diffusers' trailing timesteps (first 999), then t = 0
    return make_grid(grid, schedule, steps, t_end=0.0)


class _StepCounter:
    """Step counts of (sampler, grid) that hit a target NFE, from dry runs on a 1-sample GMM."""

    def __init__(self, schedule):
        self.den = ring8_mixture().denoiser(schedule)
        self.x = torch.zeros(1, 2, dtype=torch.float64)
        self.schedule = schedule
        self.cache: dict = {}

    def nfe(self, name: str, grid: str, steps: int) -> int | None:
        key = (name, grid, steps)
        if key not in self.cache:
            counting = CountingDenoiser(self.den)
            opts = {"generator": torch.Generator().manual_seed(0)} if SAMPLERS[name].stochastic else {}
            try:
                sample(name, counting, self.x, _our_grid(grid, self.schedule, steps), **opts)
                self.cache[key] = counting.calls
            except (ValueError, RuntimeError):
                self.cache[key] = None
        return self.cache[key]

    def steps_for(self, name: str, grid: str, target: int) -> int | None:
        k = SAMPLERS[name].nfe_per_step
        guesses = {target // k, (target - 1) // k + 1, -(-target // k)}
        for n in sorted({g + d for g in guesses for d in (-1, 0, 1) if g + d >= 1}):
            if self.nfe(name, grid, n) == target:
                return n
        return None


def _run_ours(name, grid, steps, den, x_T, target, cond=None):
    counting = CountingDenoiser(den)
    opts = {"generator": torch.Generator().manual_seed(4)} if SAMPLERS[name].stochastic else {}
    if cond is not None:
        opts["cond"] = cond
    x = sample(name, counting, x_T, _our_grid(grid, den.schedule, steps), **opts)
    if counting.calls != target:
        raise AssertionError(f"{name}/{grid} with {steps} steps used {counting.calls} NFE, not {target}")
    return x


# ------------------------------------------------------------------------------------------------
# diffusers
# ------------------------------------------------------------------------------------------------
def _diffusers():
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # DPMSolverSinglestep announces its lower_order_final switch
    return diffusers


def _make_scheduler(cls_name: str, config: dict, schedule: VPDiscrete):
    """A diffusers scheduler with our betas, its float32 schedule tensors replaced by our float64 ones."""
    diffusers = _diffusers()
    sch = getattr(diffusers, cls_name)(num_train_timesteps=schedule.num_train_timesteps, beta_start=1e-4,
                                       beta_end=0.02, beta_schedule="linear", **config)
    abar = schedule.alphas_cumprod.clone()
    sch.betas = schedule.betas.clone()
    sch.alphas = 1.0 - sch.betas
    sch.alphas_cumprod = abar
    if hasattr(sch, "final_alpha_cumprod"):  # DDIM, PNDM with set_alpha_to_one
        sch.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sch, "alpha_t"):  # DPM-Solver, UniPC, DEIS
        sch.alpha_t, sch.sigma_t = abar.sqrt(), (1 - abar).sqrt()
        sch.lambda_t = torch.log(sch.alpha_t) - torch.log(sch.sigma_t)
    return sch


def _diffusers_nfe(cls_name: str, config: dict, schedule, steps: int) -> int:
    sch = _make_scheduler(cls_name, config, schedule)
    sch.set_timesteps(steps)
    return len(sch.timesteps)


def _diffusers_steps_for(cls_name, config, schedule, target, cache) -> int | None:
    for n in range(max(1, target // 2 - 1), target + 2):
        key = (cls_name, tuple(sorted(config.items())), n)
        if key not in cache:
            try:
                cache[key] = _diffusers_nfe(cls_name, config, schedule, n)
            except (ValueError, RuntimeError, IndexError):
                cache[key] = None
        if cache[key] == target:
            return n
    return None


class _TimestepToTime:
    """diffusers timestep tau (possibly fractional) -> our t: log sigma~ linear between train steps."""

    def __init__(self, schedule: VPDiscrete):
        self.schedule = schedule
        abar = schedule.alphas_cumprod
        self.log_sigma = 0.5 * torch.log((1 - abar) / abar)

    def __call__(self, tau) -> float:
        tau = float(tau)
        n = self.schedule.num_train_timesteps
        if abs(tau - round(tau)) < 1e-9:
            return (round(tau) + 1) / n
        lo = min(max(int(math.floor(tau)), 0), n - 2)
        w = tau - lo
        log_s = (1 - w) * self.log_sigma[lo] + w * self.log_sigma[lo + 1]
        return float(self.schedule.t_of_sigma_tilde(torch.exp(log_s)))


def _run_diffusers(cls_name, config, steps, eps_model, x_T, schedule, target):
    """The manual diffusers loop; returns the final sample (VP variable, or x/alpha = x at sigma 0)."""
    sch = _make_scheduler(cls_name, config, schedule)
    sch.set_timesteps(steps)
    first = float(sch.timesteps[0])
    if abs(first - (schedule.num_train_timesteps - 1)) > 1e-3:
        raise AssertionError(f"{cls_name} {config}: first timestep {first}, not 999 (our t = 1)")
    init = float(sch.init_noise_sigma)
    alpha_T = float(schedule.alpha(schedule.t_max))
    if init > 1.5:  # sample lives in x/alpha (sigma-space schedulers)
        if abs(init * alpha_T - 1) > 1e-3:
            raise AssertionError(f"{cls_name}: init_noise_sigma {init} does not match 1/alpha(1) = {1 / alpha_T}")
        x = x_T / alpha_T
    else:
        x = x_T.clone()
    calls = 0
    for tau in sch.timesteps:
        x_in = sch.scale_model_input(x, tau)
        # sigma-space schedulers step with sigmas[step_index], which for fractional timesteps diffusers
        # interpolates linearly in sigma; the exact GMM model is evaluated at that sigma
        sigma = float(sch.sigmas[sch.step_index]) if init > 1.5 else None
        eps = eps_model(x_in, tau, sigma)
        calls += 1
        x = sch.step(eps, tau, x).prev_sample
    if calls != target:
        raise AssertionError(f"{cls_name} {config} with {steps} steps made {calls} model calls, not {target}")
    return x.to(x_T.dtype)


def _gmm_eps_model(den, schedule):
    to_t = _TimestepToTime(schedule)

    def eps_model(x_in, tau, sigma=None):
        t = to_t(tau) if sigma is None else float(schedule.t_of_sigma_tilde(sigma))
        x_in = x_in.to(torch.float64)
        a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
        return (x_in - a * den(x_in, t)) / s

    return eps_model


def _unet_eps_model(den, labels):
    net = den.net
    dtype = next(net.parameters()).dtype

    def eps_model(x_in, tau, sigma=None):  # the network gets diffusers' timestep, as in a user's loop
        t_in = torch.full((x_in.shape[0],), float(tau), dtype=dtype)
        return net(x_in.to(dtype), t_in, class_labels=labels).to(x_in.dtype)

    return eps_model


# ------------------------------------------------------------------------------------------------
# problems
# ------------------------------------------------------------------------------------------------
def _best(rows: dict, nfe: str) -> dict | None:
    cands = [(r[nfe]["error"], name) for name, r in rows.items() if nfe in r and r[nfe].get("error") is not None
             and math.isfinite(r[nfe]["error"])]
    if not cands:
        return None
    err, name = min(cands)
    return {"name": name, "error": err}


def _method_plan(names, grids, nfes, counter):
    """[(name, grid, {nfe: steps})] for our samplers; combinations that cannot hit a target are left out."""
    plan = []
    for name in names:
        for grid in grids:
            steps = {k: counter.steps_for(name, grid, k) for k in nfes}
            steps = {k: n for k, n in steps.items() if n is not None}
            if steps:
                plan.append((name, grid, steps))
    return plan


def _diffusers_plan(labels, nfes, schedule, cache):
    plan = []
    for label, cls_name, config in DIFFUSERS:
        if label not in labels:
            continue
        steps = {k: _diffusers_steps_for(cls_name, config, schedule, k, cache) for k in nfes}
        steps = {k: n for k, n in steps.items() if n is not None}
        if steps:
            plan.append((label, cls_name, config, steps))
    return plan


def _gmm_problem(mixture, schedule, nfes, cfg, counter, dcache, log):
    n = cfg["n"]
    den = mixture.denoiser(schedule)
    x_T = prior_sample(schedule, (n, mixture.dim), torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = mixture.sample(n, torch.Generator().manual_seed(1))
    sw_gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731 - the same projections for every method
    floor = sliced_wasserstein(mixture.sample(n, torch.Generator().manual_seed(2)), truth,
                               n_projections=SW_PROJECTIONS, generator=sw_gen())

    def reference(steps):
        ts = torch.cat([grid_logsnr(schedule, steps - 1, t_end=REF_END), torch.zeros(1, dtype=torch.float64)])
        return sample_dpm_solver_multistep(den, x_T, ts, order=3, algorithm="dpmsolver++")

    t0 = time.perf_counter()
    ref = reference(cfg["ref_steps"])
    ref_fine = reference(2 * cfg["ref_steps"])
    ref_gap = float((ref - ref_fine).norm(dim=1).mean())
    ref = ref_fine
    log(f"  reference: {2 * cfg['ref_steps']} steps, gap to {cfg['ref_steps']}: {ref_gap:.2e} "
        f"({time.perf_counter() - t0:.1f}s)")

    def row(x, stochastic):
        r = {"sliced_wasserstein": sliced_wasserstein(x, truth, n_projections=SW_PROJECTIONS, generator=sw_gen())}
        r["error"] = None if stochastic else float((x - ref).norm(dim=1).mean())
        return r

    ours = {}
    for name, grid, steps in _method_plan(cfg["samplers"], cfg["grids"], nfes, counter):
        rows = {}
        for k, m in steps.items():
            try:
                x = _run_ours(name, grid, m, den, x_T, k)
            except (ValueError, RuntimeError) as err:
                rows[str(k)] = {"failed": str(err), "steps": m}
                continue
            rows[str(k)] = {**row(x, SAMPLERS[name].stochastic), "steps": m}
        ours[f"{name}/{grid}"] = rows
    log(f"  ours: {len(ours)} sampler/grid combinations ({time.perf_counter() - t0:.1f}s)")
    theirs = {}
    eps_model = _gmm_eps_model(den, schedule)
    for label, cls_name, config, steps in _diffusers_plan(cfg["diffusers"], nfes, schedule, dcache):
        theirs[label] = {str(k): {**row(_run_diffusers(cls_name, config, m, eps_model, x_T, schedule, k), False),
                                  "steps": m} for k, m in steps.items()}
    log(f"  diffusers: {len(theirs)} schedulers ({time.perf_counter() - t0:.1f}s)")
    adaptive = []
    for atol, rtol in cfg["adaptive_tols"]:
        stats = {}
        x = sample_dpm_solver_adaptive(den, x_T, torch.tensor([schedule.t_max, schedule.t_min, 0.0],
                                                              dtype=torch.float64),
                                       atol=atol, rtol=rtol, stats=stats)
        adaptive.append({"name": f"dpm_solver_adaptive(atol={atol},rtol={rtol})", "nfe": stats["nfe"],
                         **row(x, False)})
    info = {"metric": "mean |x - x_ref| at t = 0 (reference PF-ODE solution from the same x_T)",
            "num_samples": n, "dim": mixture.dim,
            "reference": {"solver": "dpm_solver_pp_3m, uniform logSNR to t = 1e-8, then t = 0, float64",
                          "steps": 2 * cfg["ref_steps"], "gap_to_half_steps": ref_gap},
            "sliced_wasserstein_true_vs_true": floor, "sliced_wasserstein_projections": SW_PROJECTIONS}
    return {"ours": ours, "diffusers": theirs}, info, adaptive


def _digits_denoiser():
    from .. import zoo

    den = zoo.load("digits_unet")  # raises ZooError if the asset is missing: no silent skip
    if not isinstance(den.schedule, VPDiscrete) or den.schedule.num_train_timesteps != 1000 \
            or den.schedule.beta_schedule != "linear" or den.prediction != "eps":
        raise AssertionError(f"digits_unet is expected on VPDiscrete linear 1000 with eps prediction; got "
                             f"{den.schedule!r}, {den.prediction}")
    return den, zoo.load("digits_classifier")


def _digits_problem(den, classifier, schedule, nfes, cfg, counter, dcache, log):
    n = cfg["n_digits"]
    labels = torch.arange(n) % 10
    x_T = prior_sample(schedule, (n, 1, 8, 8), torch.Generator().manual_seed(0), dtype=torch.float64)
    test = load_dataset("digits", "test").x

    def fd(x):
        return digits_fd(x.float().clamp(-1, 1), test, classifier=classifier)

    t0 = time.perf_counter()
    ours = {}
    for name, grid in cfg["digits_ours"]:
        for _, _, steps in _method_plan([name], [grid], nfes, counter):
            ours[f"{name}/{grid}"] = {
                str(k): {"error": fd(_run_ours(name, grid, m, den, x_T, k, cond={"class_labels": labels})),
                         "steps": m} for k, m in steps.items()}
    log(f"  ours: {len(ours)} ({time.perf_counter() - t0:.1f}s)")
    theirs = {}
    eps_model = _unet_eps_model(den, labels)
    for label, cls_name, config, steps in _diffusers_plan(cfg["digits_diffusers"], nfes, schedule, dcache):
        theirs[label] = {str(k): {"error": fd(_run_diffusers(cls_name, config, m, eps_model, x_T, schedule, k)),
                                  "steps": m} for k, m in steps.items()}
    log(f"  diffusers: {len(theirs)} ({time.perf_counter() - t0:.1f}s)")
    train = load_dataset("digits", "train").x
    info = {"metric": "digits-FD vs the digits test split (class-cycled samples, guidance 1, clipped)",
            "num_samples": n, "test_split_size": len(test),
            "digits_fd_train_vs_test": digits_fd(train[:n], test, classifier=classifier)}
    return {"ours": ours, "diffusers": theirs}, info


def _overhead(den, schedule, cfg):
    """Sampler wall time / (NFE x forward time): our DPM-Solver++(2M) vs diffusers' DPMSolverMultistep loop."""
    b, nfe, repeats = cfg["overhead_batch"], cfg["overhead_nfe"], cfg["overhead_repeats"]
    labels = torch.arange(b) % 10
    x_T = prior_sample(schedule, (b, 1, 8, 8), torch.Generator().manual_seed(7))  # float32, the net's dtype
    eps_model = _unet_eps_model(den, labels)
    ts = grid_diffusers_dpm(schedule, nfe)
    t_fixed = torch.full((b,), 500.0)

    def forward():
        den.net(x_T, t_fixed, class_labels=labels)

    def ours():
        counting = CountingDenoiser(den)
        sample("dpm_solver_pp_2m", counting, x_T, ts, cond={"class_labels": labels})
        assert counting.calls == nfe

    def theirs():
        sch = _make_scheduler("DPMSolverMultistepScheduler", {"solver_order": 2}, schedule)
        sch.set_timesteps(nfe)
        x, calls = x_T, 0
        for tau in sch.timesteps:
            x = sch.step(eps_model(sch.scale_model_input(x, tau), tau), tau, x).prev_sample
            calls += 1
        assert calls == nfe

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    forward(), ours(), theirs()  # warm-up
    fwd, t_ours, t_theirs = [], [], []
    for _ in range(repeats):
        fwd += [timed(forward) for _ in range(3)]
        t_ours.append(timed(ours))
        t_theirs.append(timed(theirs))
    f = statistics.median(fwd)
    return {"ours": statistics.median(t_ours) / (nfe * f), "diffusers": statistics.median(t_theirs) / (nfe * f),
            "forward_seconds": f, "ours_seconds": statistics.median(t_ours),
            "diffusers_seconds": statistics.median(t_theirs), "batch": b, "nfe": nfe, "repeats": repeats,
            "ours_sampler": "dpm_solver_pp_2m on diffusers' DPM grid (linspace, final t = 0)",
            "diffusers_sampler": "DPMSolverMultistepScheduler(solver_order=2) manual loop incl. set_timesteps"}


# ------------------------------------------------------------------------------------------------
# the bench
# ------------------------------------------------------------------------------------------------
def _config(quick: bool) -> dict:
    det = [k for k, v in SAMPLERS.items() if not v.adaptive]
    if quick:
        return {"nfes": QUICK_NFES, "n": 64, "ref_steps": 200, "samplers": QUICK_SAMPLERS, "grids": QUICK_GRIDS,
                "diffusers": QUICK_DIFFUSERS, "adaptive_tols": [(1e-3, 1e-2)], "n_digits": 40,
                "digits_ours": QUICK_DIGITS_OURS, "digits_diffusers": QUICK_DIGITS_DIFFUSERS,
                "overhead_batch": 16, "overhead_nfe": 10, "overhead_repeats": 5}
    return {"nfes": FULL_NFES, "n": 4000, "ref_steps": 1024, "samplers": tuple(det), "grids": GRIDS,
            "diffusers": tuple(label for label, _, _ in DIFFUSERS),
            "adaptive_tols": [(1e-2, 5e-2), (1e-3, 1e-2), (1e-4, 1e-3), (1e-5, 1e-4)], "n_digits": 500,
            "digits_ours": DIGITS_OURS, "digits_diffusers": DIGITS_DIFFUSERS,
            "overhead_batch": 100, "overhead_nfe": 20, "overhead_repeats": 7}


def _figure(nfes, problems, table, adaptive, overhead):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    keys = [str(k) for k in nfes]
    for ax, (pname, best) in zip(axes, problems.items()):
        for side, color in (("ours", "C0"), ("diffusers", "C3")):
            for rows in table[pname][side].values():
                pts = [(k, rows[str(k)]["error"]) for k in nfes
                       if str(k) in rows and rows[str(k)].get("error") is not None]
                if pts:
                    ax.plot(*zip(*pts), color=color, alpha=0.12, lw=0.8)
            pts = [(int(k), best[k][f"{side}_best"]["error"]) for k in keys if best[k][f"{side}_best"]]
            if pts:
                ax.plot(*zip(*pts), color=color, marker="o", lw=2, label=f"{side} (best per NFE)")
        for a in adaptive.get(pname, []):
            ax.plot(a["nfe"], a["error"], "k^", ms=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(nfes), keys)
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.set_ylabel("digits-FD" if pname == "digits" else "trajectory error")
        ax.set_title(f"{pname}: best error vs NFE (faint: every method; ^ adaptive)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[3]
    ax.bar(["ours\nDPM++2M", "diffusers\nDPMSolverMultistep"], [overhead["ours"], overhead["diffusers"]],
           color=["C0", "C3"])
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    for i, v in enumerate((overhead["ours"], overhead["diffusers"])):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom")
    ax.set_title(f"wall / (NFE x forward), digits UNet, batch {overhead['batch']}, {overhead['nfe']} NFE",
                 fontsize=9)
    fig.tight_layout()
    return fig


def _run(quick: bool, log=print):
    import diffusers

    cfg = _config(quick)
    nfes = cfg["nfes"]
    schedule = VPDiscrete.named("linear", 1000)
    counter, dcache = _StepCounter(schedule), {}
    table, info, adaptive, problems = {}, {}, {}, {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        # the digits asset is needed by the digits part and the overhead: load it first so a missing asset
        # fails at once, before minutes of GMM work
        den, classifier = _digits_denoiser()
        for pname, mixture in (("gmm_ring", ring8_mixture()), ("gmm_8d", aniso8d_mixture())):
            log(f"{pname}:")
            table[pname], info[pname], adaptive[pname] = _gmm_problem(mixture, schedule, nfes, cfg, counter,
                                                                      dcache, log)
        log("digits:")
        table["digits"], info["digits"] = _digits_problem(den, classifier, schedule, nfes, cfg, counter, dcache,
                                                          log)
        log("overhead:")
        overhead = _overhead(den, schedule, cfg)
    for pname in table:
        problems[pname] = {str(k): {"ours_best": _best(table[pname]["ours"], str(k)),
                                    "diffusers_best": _best(table[pname]["diffusers"], str(k))} for k in nfes}
    fig = _figure(nfes, problems, table, adaptive, overhead)
    k = "10" if "10" in problems["gmm_ring"] else str(nfes[-1])

    def fmt(b):
        return "n/a" if b is None else f"{b['name']} {b['error']:.3g}"

    summary = "; ".join(f"{p} @NFE {k}: ours {fmt(problems[p][k]['ours_best'])} vs diffusers "
                        f"{fmt(problems[p][k]['diffusers_best'])}" for p in problems)
    summary += f"; overhead (wall/(NFE x fwd)) ours {overhead['ours']:.3f} vs diffusers {overhead['diffusers']:.3f}"
    result = {"nfe": list(nfes), "schedule": "VPDiscrete linear 1000", "diffusers_version": diffusers.__version__,
              "grids": list(cfg["grids"]), "problems": problems, "table": table, "problem_info": info,
              "adaptive": adaptive, "overhead": overhead, "summary": summary}
    return result, fig


register_bench("solvers", "our ODE solvers vs diffusers' schedulers at equal NFE (GMM trajectory error, SW, "
                          "digits-FD) and per-step overhead")(_run)
