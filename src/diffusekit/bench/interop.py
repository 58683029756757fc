"""interop: our solvers inside a diffusers pipeline vs diffusers' own schedulers, and our UNet vs diffusers' UNet.

1. **agreement** (per config {diffusers_seconds, ours_seconds, max_rel_diff}): the same algorithm on both sides
   of one diffusers pipeline: DDIM with each of diffusers' spacings, ``DDIMScheduler`` vs our
   ``DiffuseKitScheduler(sampler="ddim", grid=<spacing>)``; max_rel_diff = max |ours - theirs| / max |theirs|.
   diffusers' DDIM with linspace spacing steps from each timestep to t - N // n, not to its next (linspace)
   timestep, so it leaves its own grid; ours steps along the grid, and the two differ there by design.
2. **accuracy** at 5, 10, 20 steps (quick: 5, 10; equal NFE): a local ``DiffusionPipeline`` (the standard loop:
   set_timesteps, scale_model_input, model, step) whose model is the exact posterior-mean denoiser of the ``stiff16d``
   Gaussian mixture (``bench._mixtures``; 16-D, covariance eigenvalues 1e-6 .. 4, shaped 1 x 4 x 4) on diffusers'
   default linear-beta VP schedule, returned as eps the way a diffusers model does. The error is the RMS
   distance to the probability-flow ODE solution from the same x_T (``reference_solution``, scipy DOP853).
   diffusers' best = the lowest error among DPMSolverMultistep (orders 2, 3) and UniPC bh2 (orders 2, 3) over
   linspace / trailing spacing and Karras / lu_lambdas sigmas, chosen on the evaluation noise itself (so it is
   an upper bound on what tuning diffusers could give). Ours = ``DiffuseKitScheduler`` with our default sampler
   (UniPC bh2 order 3) on our default grid searched for this model (data-free, on its own noise, passed as
   diffusers' ``timesteps=``; quick: at 5 steps only), on the fixed fallback grid, and DPM-Solver++(2M) on the
   log-SNR grid, none tuned on the evaluation noise. The model
   reads a timestep the way the scheduler that produced it writes one (diffusers: log sigma interpolated between
   train steps; ours: t = (tau + 1)/N), so only solver and grid differ. Wall time: whole pipeline call, median.
3. **training_throughput**: optimizer steps per second on CPU of our ``UNet`` and diffusers' ``UNet2DModel``
   (``nets.diffusers_backbones``) at nearly equal parameter count, same batch (64 x 1 x 8 x 8), eps loss,
   AdamW; timed side by side in alternating rounds in one process, medians of the rounds.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

from ..core import VPDiscrete
from . import bench_progress, register_bench
from ._mixtures import reference_solution, stiff16d_mixture

STEPS = (5, 10, 20)
SHAPE = (1, 4, 4)  # the 16-D mixture as a one-channel 4 x 4 "image"
OURS = {"ours_default": ("unipc_bh2_3", "default"), "ours_dpmpp2m_logsnr": ("dpm_solver_pp_2m", "logsnr")}


def _diffusers_candidates() -> list[tuple[str, dict]]:
    out = []
    grids = [{"timestep_spacing": "linspace"}, {"timestep_spacing": "trailing"}, {"use_karras_sigmas": True}]
    for grid in grids + [{"use_lu_lambdas": True}]:
        for order in (2, 3):
            out.append(("DPMSolverMultistepScheduler", {"solver_order": order, **grid}))
    for grid in grids:
        for order in (2, 3):
            out.append(("UniPCMultistepScheduler", {"solver_order": order, "solver_type": "bh2", **grid}))
    return out


def _label(cls_name: str, config: dict) -> str:
    short = {"DPMSolverMultistepScheduler": "DPM++", "UniPCMultistepScheduler": "UniPC"}[cls_name]
    parts = [f"o{config['solver_order']}"] + [v if k == "timestep_spacing" else k.replace("use_", "")
                                             for k, v in config.items() if k not in ("solver_order", "solver_type")]
    return f"{short}({', '.join(parts)})"


def _pipeline_classes():
    """A minimal diffusers pipeline and a diffusers model holding an exact mixture denoiser (built lazily)."""
    from diffusers import DiffusionPipeline, ModelMixin
    from diffusers.utils import BaseOutput

    class MixtureEpsModel(ModelMixin):
        """eps_hat(x, tau) = (x - alpha x0_hat) / sigma of the exact mixture denoiser, at the schedule time
        that ``decode`` reads from diffusers' timestep tau."""

        def __init__(self, mixture, schedule, decode):
            super().__init__()
            self.den, self.schedule, self.decode = mixture.denoiser(schedule), schedule, decode

        def forward(self, sample: torch.Tensor, timestep) -> BaseOutput:
            t = self.decode(timestep)
            x = sample.to(torch.float64).reshape(sample.shape[0], -1)
            a, s = float(self.schedule.alpha(t)), float(self.schedule.sigma(t))
            eps = (x - a * self.den(x, t)) / s
            return BaseOutput(sample=eps.reshape(sample.shape).to(sample.dtype))

    class MixturePipeline(DiffusionPipeline):
        """The standard denoising loop of diffusers' pipelines, from a given x_T."""

        def __init__(self, model, scheduler):
            super().__init__()
            self.register_modules(model=model, scheduler=scheduler)

        @torch.no_grad()
        def __call__(self, x_T: torch.Tensor, num_inference_steps: int, timesteps=None) -> torch.Tensor:
            if timesteps is None:
                self.scheduler.set_timesteps(num_inference_steps)
            else:  # diffusers' custom-grid argument
                self.scheduler.set_timesteps(timesteps=timesteps)
            x = x_T * self.scheduler.init_noise_sigma
            for t in self.scheduler.timesteps:
                eps = self.model(self.scheduler.scale_model_input(x, t), t).sample
                x = self.scheduler.step(eps, t, x).prev_sample
            return x

    return MixtureEpsModel, MixturePipeline


def _timed(fn, repeats: int):
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _accuracy(cfg, bar) -> dict:
    import diffusers

    from ..interop.scheduler import DiffuseKitScheduler
    from ..samplers.defaults import DEFAULT, default_timesteps
    from ._diffusers_side import TimestepToTime

    schedule = VPDiscrete.named("linear", 1000)
    mixture = stiff16d_mixture()
    x_T = torch.randn(cfg["batch"], *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2024))
    ref = reference_solution(mixture, schedule, x_T.reshape(cfg["batch"], -1)).reshape(x_T.shape)
    MixtureEpsModel, MixturePipeline = _pipeline_classes()
    theirs_model = MixtureEpsModel(mixture, schedule, TimestepToTime(schedule))
    ours_model = MixtureEpsModel(mixture, schedule, lambda tau: (float(tau) + 1) / schedule.num_train_timesteps)

    def error(x):
        return float(((x - ref) ** 2).mean().sqrt())

    def timed(pipe, steps, timesteps=None):
        return _timed(lambda: pipe(x_T, steps, timesteps), cfg["repeats"])

    base = diffusers.DDPMScheduler()  # diffusers' default linear betas: the schedule of the problem
    rows = {}
    for steps in cfg["steps"]:
        row = {"diffusers": {}, "ours": {}}
        for cls_name, config in _diffusers_candidates():
            sch = getattr(diffusers, cls_name).from_config(base.config, **config)
            try:
                x, sec = timed(MixturePipeline(theirs_model, sch), steps)
            except (ValueError, IndexError, AssertionError, RuntimeError) as err:  # diffusers' own failures
                row["diffusers"][_label(cls_name, config)] = {"error": None, "failure": str(err)[:120]}
                continue
            finite = bool(torch.isfinite(x).all())
            row["diffusers"][_label(cls_name, config)] = {"error": error(x) if finite else None, "seconds": sec,
                                                          "nfe": len(sch.timesteps)}
            bar.update()
        for key, (sampler, grid) in OURS.items():
            sch = DiffuseKitScheduler.from_diffusers(base, sampler=sampler, grid=grid)
            x, sec = timed(MixturePipeline(ours_model, sch), steps)
            row["ours"][key] = {"sampler": sampler, "grid": grid, "error": error(x), "seconds": sec,
                                "nfe": len(sch.timesteps)}
            bar.update()
        if steps in cfg["searched_steps"]:  # our default's searched grid (data-free, its own noise), as timesteps=
            start = time.perf_counter()
            ts = default_timesteps(mixture.denoiser(schedule), steps, search=True)
            search_seconds = time.perf_counter() - start
            sch = DiffuseKitScheduler.from_diffusers(base, sampler=DEFAULT["sampler"])
            x, sec = timed(MixturePipeline(ours_model, sch), steps, schedule.network_time(ts[:-1]))
            row["ours"]["ours_default_searched"] = {"sampler": DEFAULT["sampler"], "grid": "searched",
                                                    "error": error(x), "seconds": sec, "nfe": len(sch.timesteps),
                                                    "search_seconds": search_seconds}
        valid = {k: v for k, v in row["diffusers"].items() if v.get("error") is not None}
        best = min(valid, key=lambda k: valid[k]["error"])
        row["diffusers_best"] = {"config": best, **valid[best]}
        row["error_ratio_over_diffusers_best"] = {k: v["error"] / valid[best]["error"] for k, v in row["ours"].items()}
        rows[str(steps)] = row
    return rows


def _agreement(cfg) -> dict:
    import diffusers

    from ..interop.scheduler import DiffuseKitScheduler

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                     block_out_channels=(16, 32), norm_num_groups=8,
                                     down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    out = {}
    for spacing in ("linspace", "leading", "trailing"):
        pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(
            clip_sample=False, timestep_spacing=spacing, set_alpha_to_one=True))
        pipe.set_progress_bar_config(disable=True)

        def run(p=pipe):
            return p(batch_size=cfg["agree_batch"], num_inference_steps=10, generator=torch.Generator().manual_seed(5),
                     output_type="np").images

        theirs, t_theirs = _timed(run, cfg["repeats"])
        pipe.scheduler = DiffuseKitScheduler.from_diffusers(pipe.scheduler, sampler="ddim", grid=spacing)
        ours, t_ours = _timed(run, cfg["repeats"])
        theirs, ours = torch.as_tensor(theirs), torch.as_tensor(ours)
        out[f"ddim-{spacing}-10"] = {"diffusers_seconds": t_theirs, "ours_seconds": t_ours,
                                     "max_rel_diff": float((ours - theirs).abs().max() / theirs.abs().max())}
    return out


def _matched_diffusers_unet(target: int) -> dict:
    """The diffusers UNet2DModel config (widths c, 2c; attention on/off) whose parameter count is nearest target."""
    from ..nets import build_net, count_parameters

    best = None
    for c in range(16, 65, 8):
        for attention in (False, True):
            cfg = {"name": "diffusers_unet2d", "in_channels": 1, "image_size": 8, "block_out_channels": [c, 2 * c],
                   "attention": attention}
            n = count_parameters(build_net(cfg))
            if best is None or abs(n - target) < abs(best[0] - target):
                best = (n, cfg)
    return best[1]


def _throughput(cfg, bar) -> dict:
    from ..nets import build_net, count_parameters

    ours_cfg = {"name": "unet", "in_channels": 1, "image_size": 8}
    torch.manual_seed(0)
    nets = {"ours_unet": build_net(ours_cfg)}
    nets["diffusers_unet2d"] = build_net(_matched_diffusers_unet(count_parameters(nets["ours_unet"])))
    schedule = VPDiscrete.named("linear", 1000)
    opts = {k: torch.optim.AdamW(n.parameters(), lr=1e-4) for k, n in nets.items()}
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(cfg["train_batch"], 1, 8, 8, generator=gen)

    def train_step(key):
        n = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        t = schedule.t_of_timestep(n)
        x_t = schedule.add_noise(x0, t, eps).float()
        loss = ((nets[key](x_t, schedule.network_time(t).float()) - eps) ** 2).mean()
        opts[key].zero_grad(set_to_none=True)
        loss.backward()
        opts[key].step()

    for key in nets:  # warm-up
        for _ in range(2):
            train_step(key)
    rates = {k: [] for k in nets}
    for _ in range(cfg["train_rounds"]):
        for key in nets:
            start = time.perf_counter()
            for _ in range(cfg["train_steps"]):
                train_step(key)
            rates[key].append(cfg["train_steps"] / (time.perf_counter() - start))
        bar.update()
    return {k: {"steps_per_second": statistics.median(v), "rounds": v, "parameters": count_parameters(nets[k]),
                "config": nets[k].config} for k, v in rates.items()} | {
        "batch": cfg["train_batch"], "threads": torch.get_num_threads()}


def _figure(accuracy, throughput):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [int(k) for k in accuracy]
    ax.plot(steps, [accuracy[str(k)]["diffusers_best"]["error"] for k in steps], "o-", color="C3",
            label="diffusers best (tuned on the same noise)")
    labels = {"ours_default_searched": ("o-", "UniPC bh2-3, searched grid (our default)"),
              "ours_default": ("o--", "UniPC bh2-3, fixed fallback grid"),
              "ours_dpmpp2m_logsnr": ("s:", "DPM-Solver++(2M), log-SNR grid")}
    for key, (style, label) in labels.items():
        pts = [(k, accuracy[str(k)]["ours"][key]["error"]) for k in steps if key in accuracy[str(k)]["ours"]]
        if pts:
            ax.plot(*zip(*pts), style, color="C0", label=f"DiffuseKitScheduler: {label}")
    ax.set(xscale="log", yscale="log", xlabel="steps (= NFE)", ylabel="RMS error to the ODE solution",
           title="stiff16d mixture inside a diffusers pipeline")
    ax.set_xticks(steps, [str(k) for k in steps])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    keys = ["ours_unet", "diffusers_unet2d"]
    ax2.bar([f"{k}\n{throughput[k]['parameters'] / 1e3:.0f}k params" for k in keys],
            [throughput[k]["steps_per_second"] for k in keys], color=["C0", "C3"])
    ax2.set(ylabel="training steps / s (CPU)", title=f"batch {throughput['batch']}, {throughput['threads']} thread(s)")
    fig.tight_layout()
    return fig


@register_bench("interop", "DiffuseKitScheduler inside a diffusers pipeline vs diffusers' best schedulers on an exact "
                           "mixture model (error, wall time), DDIM agreement, and UNet training throughput")
def run(quick: bool):
    cfg = ({"batch": 32, "repeats": 1, "agree_batch": 4, "train_batch": 64, "train_steps": 3, "train_rounds": 3,
            "steps": (5, 10), "searched_steps": (5,)} if quick else
           {"batch": 256, "repeats": 3, "agree_batch": 16, "train_batch": 64, "train_steps": 20, "train_rounds": 7,
            "steps": STEPS, "searched_steps": STEPS})
    n_runs = len(cfg["steps"]) * (len(_diffusers_candidates()) + len(OURS))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        bar = bench_progress(desc="interop", total=n_runs + cfg["train_rounds"])
        accuracy = _accuracy(cfg, bar)
        agreement = _agreement(cfg)
        throughput = _throughput(cfg, bar)
        bar.close()
    ratios = {k: r["error_ratio_over_diffusers_best"] for k, r in accuracy.items()}
    summary = ("error ours / diffusers best: " + ", ".join(
        f"{k} steps " + "/".join(f"{v:.2f}" for v in r.values()) + " (" + "/".join(r) + ")" for k, r in ratios.items())
               + "; DDIM in DDIMPipeline, max rel diff ours vs DDIMScheduler: "
               + ", ".join(f"{k.split('-')[1]} {a['max_rel_diff']:.1e}" for k, a in agreement.items())
               + f"; training steps/s ours {throughput['ours_unet']['steps_per_second']:.1f} vs diffusers "
               f"{throughput['diffusers_unet2d']['steps_per_second']:.1f}")
    result = {"problem": "stiff16d exact mixture, VP linear betas 1e-4..0.02, 1000 train steps",
              "steps": list(cfg["steps"]),
              "batch": cfg["batch"], "accuracy": accuracy, "agreement": agreement,
              "training_throughput": throughput, "summary": summary}
    return result, _figure(accuracy, throughput)
