"""Training recipes shared by ``diffusekit demo`` and ``diffusekit zoo build``.

Each recipe is plain code over the core: a network, a ``DiffusionLoss`` and the generic ``Trainer``.
Sizes were chosen so the digits model trains to good quality in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time

import torch

from ..core import CFGDenoiser, CountingDenoiser, NetworkDenoiser, VPDiscrete, make_grid, prior_sample
from ..core.schedules import schedule_from_config
from ..data import load_dataset
from ..metrics import class_accuracy, digits_fd
from ..nets import build_net
from ..samplers import sample_ddim
from ..training.losses import DiffusionLoss
from ..training.trainer import TrainConfig, Trainer

DIGITS_NET = {"name": "unet", "in_channels": 1, "base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [4], "num_classes": 10}
DIGITS_SCHEDULE = {"name": "vp_discrete", "beta_schedule": "linear", "num_train_timesteps": 1000}
DIGITS_LOSS = {"prediction": "eps", "weighting": "uniform", "label_dropout": 0.1}

# The digits DiT (Peebles & Xie 2023): 8 x 8 digits cut into 2 x 2 patches (16 tokens), width 96, depth 4, 4 heads,
# adaLN-Zero class conditioning; 724k parameters, close to DIGITS_NET's 756k, so ``bench dit`` compares the two
# at equal size. Same schedule and loss as the UNet; a lower learning rate (1e-3) than the UNet's 2e-3.
DIGITS_DIT_NET = {"name": "dit", "in_channels": 1, "image_size": 8, "patch_size": 2, "hidden_size": 96, "depth": 4,
                  "num_heads": 4, "num_classes": 10}
DIGITS_DIT_TRAIN = {"batch_size": 128, "lr": 1e-3, "warmup_steps": 200, "ema_decay": 0.999}

# The demo's network: the digits UNet without attention and at half the width (DIGITS_NET stays the shipped
# asset's config). Profiled at batch 128 on 8 x 8 inputs (torch.profiler), the 3 x 3 convolutions take ~60%
# of a DIGITS_NET training step (backward 37%, forward 22%), attention ~5%, GroupNorm ~5%. Convolution cost
# grows with channels squared, and attention over the 16 positions of the 4 x 4 level adds little here.
# Side by side on 2 threads: DIGITS_NET 14 steps/s, without attention 17, and at width 16 also 42 (width 24:
# 22); per unit of time width 16 reaches the targets sooner (seed 0, EMA 0.995: FD 8.7 / accuracy 0.954 at
# 3000 steps, 8.5 / 0.955 at 4000; width 24: 8.9 / 0.961 at 2000, 8.8 / 0.962 at 4000).
DEMO_NET = {"name": "unet", "in_channels": 1, "base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
            "attention_resolutions": [], "num_classes": 10}
# Trainer settings of the demo (TrainConfig fields); ``steps`` is the default length of ``diffusekit demo``:
# 110 s of training on 2 nearly idle cores, 144 s on one core beside a CPU-bound process. Measured with the
# default solver (unipc_bh2_3, 10 steps) at guidance 1, targets FD <= 2 x 5.64 and accuracy >= 0.93:
# seed 0 FD 7.63 / accuracy 0.965, seed 1 7.49 / 0.967, seed 2 6.62 / 0.970.
DEMO_TRAIN = {"steps": 4000, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100, "ema_decay": 0.995}

# Unconditional model of 16 x 16 grey natural-image patches (the ``patches`` dataset, train images only):
# one more resolution level than the digits net, attention at 4 x 4.
PATCHES_NET = {"name": "unet", "in_channels": 1, "base_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
               "attention_resolutions": [4], "image_size": 16}
PATCHES_SCHEDULE = {"name": "vp_discrete", "beta_schedule": "linear", "num_train_timesteps": 1000}
PATCHES_LOSS = {"prediction": "eps", "weighting": "uniform", "label_dropout": 0.0}
PATCHES_TRAIN_N = 50_000  # distinct random crops of the train images (more than the loader's default 5,000)

RING_NET = {"name": "mlp", "dim": 2, "hidden": 256, "depth": 4, "time_embed_dim": 64}
RING_SCHEDULE = {"name": "vp_linear", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3}
# v-prediction with min-SNR weighting: with eps-prediction the same budget left ~1.5% of samples between
# modes (mean exact NLL 4.0 vs 1.3, measured side by side)
RING_LOSS = {"prediction": "v", "weighting": "min_snr", "label_dropout": 0.0}


def make_loss(schedule_config: dict, loss_config: dict) -> DiffusionLoss:
    return DiffusionLoss(schedule_from_config(schedule_config), **loss_config)


def train_model(net_config: dict, schedule_config: dict, loss_config: dict, data: tuple, train_config: TrainConfig,
                *, out_dir=None, seed: int = 0, eval_fn=None, thread_governor=None):
    """Build the net (seeded), train it, return (trainer, loss, history). ``eval_fn``, ``thread_governor``: see
    ``Trainer``."""
    torch.manual_seed(seed)
    net = build_net(net_config)
    loss = make_loss(schedule_config, loss_config)
    extra = {"schedule": schedule_config, "loss": loss_config}
    trainer = Trainer(net, loss, data, train_config, out_dir=out_dir, eval_fn=eval_fn, extra_config=extra,
                      thread_governor=thread_governor)
    history = trainer.fit()
    return trainer, loss, history


SOLVERS = ("ddim", "default")


def ddim_grid(schedule, steps: int) -> tuple[str, torch.Tensor]:
    """(name, times) of the DDIM evaluation grid: diffusers' trailing grid on a discrete VP schedule, else the
    log-SNR grid ending at t = 0."""
    if isinstance(schedule, VPDiscrete):
        return "trailing", make_grid("trailing", schedule, steps)
    return "logsnr", make_grid("logsnr", schedule, steps, t_end=0.0)


def digits_solver(denoiser, solver: str = "ddim", steps: int | None = None) -> tuple:
    """The sampler the digits evaluation uses: ``(fn, ts, options, description)``.

    ``solver="ddim"``: DDIM on the trailing grid (log-SNR grid ending at t = 0 for continuous schedules),
    ``steps`` default 50 (what the zoo manifests record). ``solver="default"``: the project default
    (``samplers.DEFAULT``: its sampler and options on ``default_timesteps(denoiser, steps)``), ``steps``
    default ``DEFAULT["steps"]``. ``description``: ``{"sampler", "grid", "steps", "options", "timesteps"}``
(the grid's name and the times it gave for this model).
    """
    from ..samplers import DEFAULT, default_timesteps, get_sampler
    from ..samplers.defaults import default_grid_kind

    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
    if solver == "ddim":
        steps = 50 if steps is None else steps
        grid, ts = ddim_grid(denoiser.schedule, steps)
        return sample_ddim, ts, {}, {"sampler": "ddim", "grid": grid, "steps": steps, "options": {},
                                     "timesteps": [float(t) for t in ts]}
    steps = DEFAULT["steps"] if steps is None else steps
    info = get_sampler(DEFAULT["sampler"])
    ts = default_timesteps(denoiser, steps)
    options = dict(DEFAULT["options"])
    grid = default_grid_kind(denoiser, steps)  # "searched", or "fallback" (a fixed grid) for a fresh network
    return info.fn, ts, options, {"sampler": info.name, "grid": grid, "steps": steps, "options": options,
                                  "timesteps": [float(t) for t in ts]}


def _draw_digits(denoiser: NetworkDenoiser, labels: torch.Tensor, guidance: float, seed: int, solver: str,
                 steps: int | None) -> tuple[torch.Tensor, dict, int]:
    """(samples clipped to [-1, 1], solver description, network calls) of ``sample_digits``."""
    fn, ts, options, desc = digits_solver(denoiser, solver, steps)
    x_T = prior_sample(denoiser.schedule, (len(labels), 1, 8, 8), torch.Generator().manual_seed(seed))
    den = CountingDenoiser(CFGDenoiser(denoiser, guidance) if guidance != 1.0 else denoiser)
    with torch.no_grad():
        x = fn(den, x_T, ts, cond={"class_labels": labels}, **options)
    return x.clamp(-1, 1), desc, den.calls


def sample_digits(denoiser: NetworkDenoiser, labels: torch.Tensor, *, guidance: float = 2.0, steps: int | None = None,
                  seed: int = 0, solver: str = "ddim") -> torch.Tensor:
    """Class-conditional samples with ``digits_solver(denoiser, solver, steps)`` at CFG scale ``guidance``,
    x_T from ``seed``, clipped to [-1, 1]. Shapes: labels (N,) -> (N, 1, 8, 8)."""
    return _draw_digits(denoiser, labels, guidance, seed, solver, steps)[0]


def per_pixel_gaussian_baseline(x_train: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Samples of an independent per-pixel Gaussian fitted to the training images (clipped to [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = x_train.mean(0), x_train.std(0)
    return (mu + sd * torch.randn((n, *mu.shape), generator=g)).clamp(-1, 1)


def evaluate_digits(denoiser: NetworkDenoiser, classifier, *, n_per_class: int = 100, guidance: float = 2.0,
                    steps: int | None = None, seed: int = 0, solver: str = "ddim") -> tuple[dict, torch.Tensor]:
    """digits-FD (samples vs test split), class accuracy, and the reference distances.

    Samples ``n_per_class`` per class with ``sample_digits`` (``solver``, ``steps``: see ``digits_solver``).
    The metrics record the sampler as one line (``sampler``) and its parts (``sampler_name``,
    ``sampler_grid``, ``sampler_steps``, ``sampler_options``, ``sampler_timesteps``) with ``nfe``, the
    network calls per sample batch (one CFG call evaluates the conditional and null labels together).
    """
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    labels = torch.arange(10).repeat_interleave(n_per_class)
    t0 = time.perf_counter()
    samples, desc, nfe = _draw_digits(denoiser, labels, guidance, seed, solver, steps)
    sample_seconds = time.perf_counter() - t0
    metrics = {
        "digits_fd": digits_fd(samples, test.x, classifier=classifier),
        "digits_fd_real": digits_fd(train.x, test.x, classifier=classifier),
        "digits_fd_baseline": digits_fd(per_pixel_gaussian_baseline(train.x, len(labels), seed), test.x,
                                        classifier=classifier),
        "class_accuracy": class_accuracy(samples, labels, classifier=classifier),
        "guidance_scale": guidance,
        "sampler": f"{desc['sampler']}, {desc['steps']} steps, {desc['grid']}",
        "sampler_name": desc["sampler"],
        "sampler_grid": desc["grid"],
        "sampler_steps": desc["steps"],
        "sampler_options": desc["options"],
        "sampler_timesteps": desc["timesteps"],
        "nfe": nfe,
        "num_samples": len(labels),
        "sample_seconds": sample_seconds,
    }
    return metrics, samples


def _dequantise(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform dequantisation of 8-bit data on [-1, 1] (bin width 1/127.5), as likelihoods need."""
    g = torch.Generator().manual_seed(seed)
    return x + (torch.rand(x.shape, generator=g, dtype=x.dtype) - 0.5) / 127.5


def evaluate_patches(denoiser: NetworkDenoiser, x_train: torch.Tensor, *, n_eval: int = 256, n_samples: int = 1000,
                     steps: int = 50, likelihood_steps: int = 50, seed: int = 0) -> dict:
    """Held-out bits/dim and derivative statistics of the patch model, each beside a Gaussian baseline.

    * ``bpd_*``: PF-ODE likelihood (RK4, ``likelihood_steps`` log-SNR steps, one Hutchinson probe) of
      dequantised 8-bit patches, as bits per dimension of the discrete data, for crops of the held-out
      test images and fresh crops of the train images; ``gaussian_bpd_*`` is the full-covariance Gaussian
      fitted to the training patches, the best second-order model.
    * ``gradient_kurtosis_*``: excess kurtosis of pixel differences (0 for any Gaussian model) of DDIM
      samples, test patches and Gaussian-baseline samples.
    """
    from ..metrics import gradient_excess_kurtosis
    from ..samplers.likelihood import bits_per_dim, pf_ode_log_likelihood

    dims = x_train[0].numel()
    flat = _dequantise(x_train, seed + 1).flatten(1).double()
    gaussian = torch.distributions.MultivariateNormal(flat.mean(0), covariance_matrix=torch.cov(flat.T)
                                                      + 1e-6 * torch.eye(dims, dtype=torch.float64))
    width = 256 / 127.5  # 256 bins of width 1/127.5
    sets = {"test": load_dataset("patches", "test", n=n_eval, seed=seed),
            "train_images": load_dataset("patches", "train", n=n_eval, seed=seed + 1)}
    metrics = {}
    t0 = time.perf_counter()
    for name, data in sets.items():
        x = _dequantise(data.x, seed + 2)
        result = pf_ode_log_likelihood(denoiser, x, steps=likelihood_steps, divergence="hutchinson",
                                       generator=torch.Generator().manual_seed(seed + 3))
        metrics[f"bpd_{name}"] = float(bits_per_dim(result.log_prob, dims, bins=256, data_range=width).mean())
        metrics[f"gaussian_bpd_{name}"] = float(bits_per_dim(gaussian.log_prob(x.flatten(1).double()), dims,
                                                             bins=256, data_range=width).mean())
    metrics["likelihood_seconds"] = time.perf_counter() - t0
    schedule = denoiser.schedule
    t0 = time.perf_counter()
    with torch.no_grad():
        x_T = prior_sample(schedule, (n_samples, *x_train.shape[1:]), torch.Generator().manual_seed(seed))
        samples = sample_ddim(denoiser, x_T, make_grid("trailing", schedule, steps)).clamp(-1, 1)
    metrics["sample_seconds"] = time.perf_counter() - t0
    z = torch.randn(n_samples, dims, generator=torch.Generator().manual_seed(seed + 4), dtype=torch.float64)
    baseline = gaussian.loc + z @ gaussian.scale_tril.T
    baseline = baseline.float().reshape(samples.shape).clamp(-1, 1)
    metrics["gradient_kurtosis_samples"] = gradient_excess_kurtosis(samples)
    metrics["gradient_kurtosis_test"] = gradient_excess_kurtosis(sets["test"].x)
    metrics["gradient_kurtosis_train_images"] = gradient_excess_kurtosis(sets["train_images"].x)
    metrics["gradient_kurtosis_gaussian"] = gradient_excess_kurtosis(baseline)
    metrics.update({"sampler": f"ddim, {steps} steps, trailing", "num_samples": n_samples, "num_eval": n_eval,
                    "likelihood": f"PF-ODE, RK4 {likelihood_steps} log-SNR steps, Hutchinson (1 Rademacher probe)"})
    return metrics


# ------------------------------------------------------------------------------------------------
# digits_student_2step: a 2-step student of digits_unet (issue 10)
# ------------------------------------------------------------------------------------------------
# Chosen by a short trial on 2 shared cores (500 samples, guidance 1, test-split digits FD; teacher DDIM 50
# steps: 11.3, accuracy 0.986; best training-free 2-NFE solver: DDIM / DPM-Solver++(2M) / UniPC on the trailing
# grid 28.9, 0.984): consistency distillation, 314 updates in 300 s, 2-step consistency sampling with tau at
# index 11 of the 18-point grid: FD 14.0, accuracy 0.992; progressive distillation 8 -> 4 -> 2 (684 + 161 updates
# in 480 s): FD 21.8, accuracy 0.996 at 2 steps (13.6 at 4). The shipped build (600 updates, 749 s on 2 shared
# cores; 1000 samples): FD 12.1, accuracy 0.986 at 2 NFE, teacher DDIM 50 steps 8.9 / 0.989 (ratio 1.37), best
# training-free 2-NFE solver 25.9 / 0.982 (DDIM on the trailing grid; tau = 0.343, index 11, chosen on the train
# split).
DIGITS_STUDENT_STEPS = 2
DIGITS_STUDENT_CD = {"n_points": 18, "solver": "heun", "distance": "l2", "mu": 0.95}
DIGITS_STUDENT_TRAIN = {"steps": 600, "batch_size": 128, "lr": 1e-4, "warmup_steps": 0, "grad_clip": 1.0,
                        "ema_decay": None, "seed": 0, "log_every": 50}
# 2-NFE training-free solvers of the teacher compared with the student (the best is recorded)
TRAINING_FREE_2NFE = (("ddim", "trailing"), ("dpm_solver_pp_2m", "trailing"), ("unipc_bh2_3", "trailing"),
                      ("unipc_bh2_3", "default"), ("dpm_solver_pp_2m", "logsnr"), ("heun", "logsnr_1"))


def draw_digits_with(denoiser, sampler: str, ts, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Class-conditional samples (guidance 1) of any Denoiser with a registered sampler on grid ``ts``, x_T from
    ``seed`` (per-sample noise from seed + 10^6 for a stochastic sampler), clipped to [-1, 1]."""
    from ..core import generators_from_seeds
    from ..samplers import DEFAULT, get_sampler

    info = get_sampler(sampler)
    options = dict(DEFAULT["options"]) if sampler == DEFAULT["sampler"] else {}
    if info.stochastic:
        options["generator"] = generators_from_seeds(seed + 10**6, len(labels))
    x_T = prior_sample(denoiser.schedule, (len(labels), 1, 8, 8), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return info.fn(denoiser, x_T, ts, cond={"class_labels": labels}, **options).clamp(-1, 1)


def training_free_grid(denoiser, grid: str) -> tuple[torch.Tensor, int]:
    """(grid, steps) of a ``TRAINING_FREE_2NFE`` entry: 2 steps on the named grid ("default": the project's
    default grid for this model), or one step ("logsnr_1": one log-SNR step to t = 0, 2 NFE for Heun)."""
    from ..samplers import default_timesteps

    if grid == "default":
        return default_timesteps(denoiser, 2), 2
    if grid == "logsnr_1":
        return make_grid("logsnr", denoiser.schedule, 1, t_end=0.0), 1
    if grid == "trailing":
        return make_grid("trailing", denoiser.schedule, 2), 2
    return make_grid(grid, denoiser.schedule, 2, t_end=0.0), 2


def best_training_free_2nfe(teacher, classifier, *, n_per_class: int = 100, seed: int = 0) -> dict:
    """digits FD (test split) and class accuracy of each ``TRAINING_FREE_2NFE`` solver of ``teacher``, and the
    best by FD: {"solvers": {name/grid: {...}}, "best": name/grid}."""
    test = load_dataset("digits", "test")
    labels = torch.arange(10).repeat_interleave(n_per_class)
    rows = {}
    for sampler, grid in TRAINING_FREE_2NFE:
        ts, _ = training_free_grid(teacher, grid)
        x = draw_digits_with(teacher, sampler, ts, labels, seed)
        rows[f"{sampler}/{grid}"] = {"digits_fd": digits_fd(x, test.x, classifier=classifier),
                                     "class_accuracy": class_accuracy(x, labels, classifier=classifier),
                                     "timesteps": [float(t) for t in ts]}
    return {"solvers": rows, "best": min(rows, key=lambda k: rows[k]["digits_fd"])}


def choose_consistency_tau(student, grid: torch.Tensor, classifier, *, n_per_class: int = 50, seed: int = 1) -> dict:
    """The intermediate time tau of 2-step consistency sampling [t_max, tau, 0] (Song et al. 2023, arXiv 2303.01469,
    Sec. 6 pick tau by a search): the point of the training grid ``grid`` whose samples are nearest the digits
    *train* split in digits FD (samples from ``seed``, so the test split and the evaluation noise stay unseen).
    Returns {"tau", "index", "train_fd": {index: FD}}."""
    train = load_dataset("digits", "train")
    labels = torch.arange(10).repeat_interleave(n_per_class)
    fds = {}
    for i in range(1, len(grid) - 1):
        ts = torch.stack([grid[0], grid[i], torch.zeros((), dtype=torch.float64)])
        fds[i] = digits_fd(draw_digits_with(student, "consistency", ts, labels, seed), train.x, classifier=classifier)
    best = min(fds, key=fds.get)
    return {"tau": float(grid[best]), "index": best, "train_fd": fds}
