"""diffusers interop, both ways, against diffusers' own schedulers and pipelines on tiny random local models.

Agreement criterion (every config): |ours - theirs| <= 1e-5 (|theirs| + max|theirs|) elementwise, i.e. 1e-5
relative with an absolute floor of 1e-5 of the sample's scale (diffusers builds its schedule in float32, so
exact float64 agreement is not possible; the measured differences are ~1e-7 of the scale). Our side always
goes through ``load_diffusers_denoiser`` on a saved folder and ``diffusers_grid`` (the grid the diffusers
scheduler picks), so the loader's schedule, prediction names, spacing, final sigma and time rounding are
what is tested. No download anywhere: every model is random-init and saved to a tmp folder.

Configs diffusers itself cannot run (asserted as such): zero terminal SNR with eps prediction under DDIM
(x0 = (x - sigma eps)/alpha at alpha = 0: NaN; ours refuses with a clear error), and UniPC bh1 with its
default final_sigmas_type="zero" (B(h) = h = -inf at the last step: NaN; ours is finite).
"""

import json

import diffusers  # the dev extra: a missing diffusers fails the suite rather than skipping it
import pytest
import torch

from diffusekit.core import generators_from_seeds
from diffusekit.core.schedules import betas_for
from diffusekit.errors import UserError
from diffusekit.interop.diffusers import diffusers_grid, load_diffusers_denoiser, schedule_from_diffusers_config
from diffusekit.interop.scheduler import DiffuseKitScheduler, supported_samplers
from diffusekit.samplers import (diffusers_multistep_orders, sample, sample_ddim, sample_ddpm,
                                 sample_dpm_solver_multistep, sample_euler, sample_unipc)

pytestmark = [pytest.mark.filterwarnings("ignore:.*deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

RTOL = 1e-5
SEEDS = [3, 4]


def tiny_unet(seed=0, *, conditional=False):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        common = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                      norm_num_groups=4)
        if conditional:
            net = diffusers.UNet2DConditionModel(**common, cross_attention_dim=12, attention_head_dim=4,
                                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        else:
            net = diffusers.UNet2DModel(**common, down_block_types=("DownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "UpBlock2D"))
        with torch.no_grad():
            for p in net.parameters():  # move off the structured init so every path matters
                p.add_(0.05 * torch.randn_like(p))
    return net.double().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(len(SEEDS), 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def save_folder(tmp_path, model, scheduler):
    model.save_pretrained(tmp_path / "unet")
    scheduler.save_pretrained(tmp_path / "scheduler")
    return tmp_path


def run_diffusers(scheduler, model, x_T, steps, *, generator=None, **cond):
    """diffusers' standard manual loop (init_noise_sigma, scale_model_input, model, step)."""
    scheduler.set_timesteps(steps)
    x = x_T * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching has none
    extra = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            out = model(x_in, t, **cond).sample
            x = scheduler.step(out, t, x, **extra).prev_sample
    return x


def assert_agree(ours, theirs, rtol=RTOL):
    scale = float(theirs.abs().max())
    assert torch.isfinite(ours).all() and scale > 0.1
    err = float(((ours - theirs).abs() / (theirs.abs() + scale)).max())
    assert err < rtol, err


# (id, scheduler class, config, steps, our sampler on the loaded denoiser and diffusers' grid)
def _ddpm(den, x, ts, **kw):
    return sample_ddpm(den, x, ts, generator=generators_from_seeds(SEEDS), **kw)


def _dpmpp_2m(steps):
    return lambda den, x, ts, **kw: sample_dpm_solver_multistep(den, x, ts, order=2,
                                                                 orders=diffusers_multistep_orders(steps, 2), **kw)


def _unipc(order, variant="bh2"):
    return lambda den, x, ts, **kw: sample_unipc(den, x, ts, order=order, variant=variant, lower_order_final=True,
                                                 **kw)


CONFIGS = [
    ("ddpm-linear-leading-eps", diffusers.DDPMScheduler, dict(clip_sample=False), 10, _ddpm),
    ("ddim-cosine-trailing-eps", diffusers.DDIMScheduler,
     dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", clip_sample=False), 10, sample_ddim),
    ("ddim-scaledlinear-leading-vpred", diffusers.DDIMScheduler,
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
          steps_offset=1, clip_sample=False, set_alpha_to_one=False), 10, sample_ddim),
    ("ddim-zerosnr-trailing-vpred", diffusers.DDIMScheduler,
     dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
          clip_sample=False), 10, sample_ddim),
    ("dpmpp2m-karras-eps", diffusers.DPMSolverMultistepScheduler, dict(use_karras_sigmas=True), 10, _dpmpp_2m(10)),
    ("dpmpp2m-scaledlinear-trailing-vpred", diffusers.DPMSolverMultistepScheduler,
     dict(beta_schedule="scaled_linear", timestep_spacing="trailing", prediction_type="v_prediction"), 8,
     _dpmpp_2m(8)),
    ("unipc-bh2-zerosnr-trailing-vpred", diffusers.UniPCMultistepScheduler,
     dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
          beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 10, _unipc(2)),
    ("unipc-bh2-3-karras-eps", diffusers.UniPCMultistepScheduler, dict(solver_order=3, use_karras_sigmas=True), 12,
     _unipc(3)),
    ("flow-euler-shift3-velocity", diffusers.FlowMatchEulerDiscreteScheduler, dict(shift=3.0), 10, sample_euler),
]


@pytest.mark.parametrize("name, cls, config, steps, ours_fn", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_loaded_model_agrees_with_diffusers_loop(tmp_path, unet, x_T, name, cls, config, steps, ours_fn):
    scheduler = cls(**config)
    generator = generators_from_seeds(SEEDS) if cls is diffusers.DDPMScheduler else None
    theirs = run_diffusers(scheduler, unet, x_T, steps, generator=generator)
    den = load_diffusers_denoiser(save_folder(tmp_path, unet, scheduler), dtype=torch.float64)
    ts, round_time = diffusers_grid(cls.from_config(scheduler.config), steps, den.schedule)
    den.net.round_time = round_time
    with torch.no_grad():
        ours = ours_fn(den, x_T, ts)
    assert_agree(ours, theirs)


def test_text_conditional_unet_agrees_with_ddim_loop(tmp_path, x_T):
    """UNet2DConditionModel with a dummy text encoding, passed through our denoiser's **cond."""
    unet = tiny_unet(conditional=True)
    text = torch.randn(len(SEEDS), 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, timestep_spacing="trailing")
    theirs = run_diffusers(scheduler, unet, x_T, 8, encoder_hidden_states=text)
    den = load_diffusers_denoiser(save_folder(tmp_path, unet, scheduler), dtype=torch.float64)
    ts, _ = diffusers_grid(scheduler, 8, den.schedule)
    with torch.no_grad():
        ours = sample_ddim(den, x_T, ts, cond={"encoder_hidden_states": text})
        unconditioned = sample_ddim(den, x_T, ts, cond={"encoder_hidden_states": torch.zeros_like(text)})
    assert_agree(ours, theirs)
    assert float((unconditioned - theirs).abs().max()) > 1e-3  # the text encoding matters


def test_loader_x0_is_the_model_called_directly(tmp_path, unet, x_T):
    scheduler = diffusers.DDPMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    den = load_diffusers_denoiser(save_folder(tmp_path, unet, scheduler), dtype=torch.float64)
    abar = scheduler.alphas_cumprod.double()
    for n in (0, 377, 999):
        with torch.no_grad():
            v = unet(x_T, torch.tensor(n)).sample
            x0 = den(x_T, den.schedule.t_of_timestep(n))
        a, s = abar[n].sqrt(), (1 - abar[n]).sqrt()
        torch.testing.assert_close(x0, a * x_T - s * v, rtol=1e-5, atol=1e-6)  # diffusers' v -> x0
    cfg = den.net.config
    assert (cfg["image_size"], cfg["in_channels"]) == (8, 1)  # what `diffusekit sample` reads


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers_defaults(beta_schedule):
    """Our named betas with diffusers' defaults (1e-4, 0.02 for linear and scaled_linear) equal diffusers'
    (float32) betas; Stable Diffusion's 0.00085 / 0.012 must be passed, as its config does."""
    theirs = diffusers.DDPMScheduler(beta_schedule=beta_schedule).betas.double()
    torch.testing.assert_close(betas_for(beta_schedule, 1000), theirs, rtol=2e-6, atol=1e-9)
    config = {"beta_schedule": beta_schedule, "trained_betas": theirs.tolist()}
    torch.testing.assert_close(schedule_from_diffusers_config(config).betas, theirs)


def test_zero_terminal_snr_is_exact_for_ddim_and_tiny_for_dpm():
    ddim = schedule_from_diffusers_config(diffusers.DDIMScheduler(rescale_betas_zero_snr=True))
    dpm = schedule_from_diffusers_config(diffusers.DPMSolverMultistepScheduler(rescale_betas_zero_snr=True,
                                                                               beta_schedule="scaled_linear"))
    assert float(ddim.alphas_cumprod[-1]) == 0.0 and float(ddim.alpha(1.0)) == 0.0
    assert float(dpm.alphas_cumprod[-1]) == pytest.approx(2.0**-24, rel=1e-9)
    # with linear betas diffusers' 2^-24 lies above abar_{N-2}: not a schedule; we keep the exact zero and say so
    with pytest.warns(UserWarning, match="not a monotone schedule"):
        linear = schedule_from_diffusers_config(diffusers.UniPCMultistepScheduler(rescale_betas_zero_snr=True))
    assert float(linear.alphas_cumprod[-1]) == 0.0


def test_what_diffusers_itself_cannot_run(tmp_path, unet, x_T):
    # DDIM, zero terminal SNR, eps prediction: diffusers divides by alpha = 0
    scheduler = diffusers.DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    assert not torch.isfinite(run_diffusers(scheduler, unet, x_T, 10)).all()
    den = load_diffusers_denoiser(save_folder(tmp_path / "a", unet, scheduler), dtype=torch.float64)
    ts, _ = diffusers_grid(scheduler, 10, den.schedule)
    with pytest.raises(ValueError, match="cannot denoise at alpha = 0"):
        sample_ddim(den, x_T, ts)
    # UniPC bh1 with its default final sigma 0: NaN from B(h) = h = -inf on the last step; ours is finite
    scheduler = diffusers.UniPCMultistepScheduler(solver_type="bh1")
    assert not torch.isfinite(run_diffusers(scheduler, unet, x_T, 10)).all()
    den = load_diffusers_denoiser(save_folder(tmp_path / "b", unet, scheduler), dtype=torch.float64)
    ts, round_time = diffusers_grid(scheduler, 10, den.schedule)
    den.net.round_time = round_time
    with torch.no_grad():
        assert torch.isfinite(sample_unipc(den, x_T, ts, order=2, variant="bh1", lower_order_final=True)).all()


# ---- DiffuseKitScheduler inside diffusers' pipelines ------------------------------------------------------------
def pipeline_images(pipe, steps, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=len(SEEDS), num_inference_steps=steps, generator=generators_from_seeds(SEEDS),
                output_type="pt", **kwargs).images


def test_ddim_sampler_inside_ddim_pipeline_equals_ddim_scheduler(unet):
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False,
                                                                                 timestep_spacing="trailing"))
    theirs = pipeline_images(pipe, 10, eta=0.0)
    pipe.scheduler = DiffuseKitScheduler.from_diffusers(pipe.scheduler, sampler="ddim", grid="trailing")
    ours = pipeline_images(pipe, 10)
    assert_agree(ours, theirs)
    assert torch.equal(pipe.scheduler.timesteps, torch.arange(999, 0, -100, dtype=torch.float64))


@pytest.mark.parametrize("sampler, grid", [("heun", "karras"), ("unipc_bh2_3", "default"),
                                           ("dpm_solver_pp_3s", "logsnr"), ("ddpm", "leading"),
                                           ("plms", "quadratic")])
def test_scheduler_runs_our_sampler_exactly(unet, x_T, sampler, grid):
    """Inside a diffusers loop, the scheduler gives our sampler's own result on the same model (bit for bit up
    to the first point's round-off), one network call per entry of ``timesteps`` = the sampler's NFE."""
    scheduler = DiffuseKitScheduler.from_diffusers(diffusers.DDPMScheduler(prediction_type="v_prediction"),
                                                   sampler=sampler, grid=grid)
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x, t):
            calls.append(float(t))
            return unet(x, t)

    gen = generators_from_seeds(SEEDS) if sampler == "ddpm" else None
    theirs = run_diffusers(scheduler, Counting(), x_T, 6, generator=gen)
    assert len(calls) == len(scheduler.timesteps) == supported_info(sampler).nfe(scheduler.ts)
    den = load_from_scheduler(unet, scheduler)
    with torch.no_grad():
        options = {"generator": generators_from_seeds(SEEDS)} if sampler == "ddpm" else {}
        ours = sample(sampler, den, x_T, scheduler.ts, **options)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12)


def supported_info(name):
    from diffusekit.samplers import get_sampler

    assert name in supported_samplers()
    return get_sampler(name)


def load_from_scheduler(unet, scheduler):
    from diffusekit.core import NetworkDenoiser
    from diffusekit.interop.diffusers import DiffusersNet

    return NetworkDenoiser(DiffusersNet(unet), scheduler.schedule, scheduler.prediction)


def test_scheduler_config_round_trip_and_errors(tmp_path):
    scheduler = DiffuseKitScheduler.from_diffusers(diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear"),
                                                   sampler="dpm_solver_pp_2m", grid="logsnr")
    scheduler.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["sampler"] == "dpm_solver_pp_2m" and saved["beta_schedule"] == "scaled_linear"
    again = DiffuseKitScheduler.from_pretrained(tmp_path)
    again.set_timesteps(7)
    scheduler.set_timesteps(7)
    assert torch.equal(again.ts, scheduler.ts) and torch.equal(again.timesteps, scheduler.timesteps)
    with pytest.raises(UserError, match="cannot run inside a diffusers pipeline"):
        DiffuseKitScheduler(sampler="dpm_solver_adaptive")
    with pytest.raises(UserError, match="changed the sample"):
        scheduler.step(torch.zeros(1, 1, 4, 4), scheduler.timesteps[0], torch.zeros(1, 1, 4, 4))
        scheduler.step(torch.zeros(1, 1, 4, 4), scheduler.timesteps[1], torch.ones(1, 1, 4, 4))
    scheduler.close()


# ---- diffusers backbones and export ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_diffusers_unet(tmp_path_factory):
    from diffusekit.cli import main

    out = tmp_path_factory.mktemp("train")
    assert main(["train", "--data", "digits", "--net", "diffusers_unet2d", "--prediction", "v", "--steps", "3",
                 "--batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    return out


def test_export_round_trip_gives_identical_outputs(trained_diffusers_unet, tmp_path):
    from diffusekit.cli import load_denoiser
    from diffusekit.interop.cli import add_export_arguments, run_export

    import argparse

    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    assert run_export(parser.parse_args(["--model", str(trained_diffusers_unet), "--out", str(tmp_path / "d")])) == 0
    ours = load_denoiser(str(trained_diffusers_unet))
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "d" / "unet", local_files_only=True)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0.0, 10.0, 500.0, 999.0])
    with torch.no_grad():
        assert torch.equal(ours.net(x, t), unet(x, t).sample)
        back = load_denoiser(f"diffusers:{tmp_path / 'd'}")  # the CLI's diffusers:PATH
        assert back.prediction == "v"
        torch.testing.assert_close(back(x, 0.37), ours(x, 0.37), rtol=1e-6, atol=1e-6)
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "d", local_files_only=True)
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod.double(), ours.schedule.alphas_cumprod, rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(UserError, match="not empty"):
        run_export(parser.parse_args(["--model", str(trained_diffusers_unet), "--out", str(tmp_path / "d")]))


@pytest.mark.parametrize("name", ["diffusers_unet2d", "diffusers_dit"])
def test_backbones_keep_our_contract(name):
    from diffusekit.nets import build_net

    net = build_net({"name": name, "in_channels": 1, "image_size": 8, "num_classes": 3})
    again = build_net(net.config)
    again.load_state_dict(net.state_dict())
    assert not any(getattr(m, "dropout_prob", 0) for m in net.modules())  # label dropout is the loss's job
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        out = net(x, t, class_labels=torch.tensor([0, 2]))
        null = net(x, t)  # class_labels=None: the null class (index num_classes)
        assert torch.equal(null, net(x, t, class_labels=torch.tensor([3, 3])))
        assert torch.equal(out, again(x, t, class_labels=torch.tensor([0, 2])))
    assert out.shape == x.shape and not torch.equal(out, null)


def test_export_refuses_what_diffusers_cannot_express():
    from diffusekit.interop.export import scheduler_config_for

    with pytest.raises(UserError, match="only discrete VP"):
        scheduler_config_for({"name": "ve"}, "eps")
    with pytest.raises(UserError, match="no diffusers prediction_type"):
        scheduler_config_for({"name": "vp_discrete", "beta_schedule": "linear"}, "edm")
    cfg = scheduler_config_for({"name": "vp_discrete", "beta_schedule": "scaled_linear", "zero_terminal_snr": True},
                               "v")
    ours = schedule_from_diffusers_config({**cfg, "_class_name": "DDIMScheduler"})
    assert ours.zero_terminal_snr and float(ours.alphas_cumprod[-1]) == 0.0
    torch.testing.assert_close(ours._source_betas, betas_for("scaled_linear", 1000))


def test_custom_timesteps_give_our_grid():
    """diffusers' custom-grid argument ``set_timesteps(timesteps=...)`` takes network times; the grid ends at 0."""
    scheduler = DiffuseKitScheduler(sampler="unipc_bh2_3", grid="logsnr")
    scheduler.set_timesteps(6)
    grid = scheduler.ts
    scheduler.set_timesteps(timesteps=scheduler.schedule.network_time(grid[:-1]))
    torch.testing.assert_close(scheduler.ts, grid, rtol=1e-12, atol=1e-12)
    with pytest.raises(UserError, match="strictly decreasing"):
        scheduler.set_timesteps(timesteps=[10, 500])


# ---- the bench ---------------------------------------------------------------------------------------------------
def test_bench_interop_quick(tmp_path):
    from diffusekit.bench import run_bench

    run_bench("interop", out=tmp_path, quick=True)
    result = json.loads((tmp_path / "interop.json").read_text())
    acc = result["accuracy"]
    # our default sampler on its searched grid (data-free, own noise) beats diffusers' best, which is chosen on the
    # evaluation noise itself, at 5 steps (the fixed fallback grid alone does not: 1.15x quick, 1.75x full run)
    assert acc["5"]["error_ratio_over_diffusers_best"]["ours_default_searched"] < 1.0
    assert all(r["ours"]["ours_default"]["nfe"] == r["diffusers_best"]["nfe"] == int(k) for k, r in acc.items())
    agree = result["agreement"]
    assert agree["ddim-leading-10"]["max_rel_diff"] < 1e-4 and agree["ddim-trailing-10"]["max_rel_diff"] < 1e-4
    assert agree["ddim-linspace-10"]["max_rel_diff"] > 1e-2  # diffusers' DDIM leaves its linspace grid
    tp = result["training_throughput"]
    params = tp["ours_unet"]["parameters"], tp["diffusers_unet2d"]["parameters"]
    assert abs(params[0] - params[1]) < 0.1 * params[0]
    assert tp["ours_unet"]["steps_per_second"] > 0 and tp["diffusers_unet2d"]["steps_per_second"] > 0
    assert (tmp_path / "interop.png").is_file()


def test_dit_folder_and_bare_model_folder(tmp_path, x_T):
    """A DiT with learned variance (2C outputs) from a bare model folder + scheduler_config.json: our denoiser uses
    the mean half, as diffusers' DiTPipeline does; clear errors for a folder without a scheduler config."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1,
                                              out_channels=2, num_layers=1, sample_size=8, patch_size=2,
                                              norm_num_groups=1).double().eval()
    dit.save_pretrained(tmp_path / "dit")
    with pytest.raises(UserError, match="no scheduler config"):
        load_diffusers_denoiser(tmp_path / "dit")
    diffusers.DDIMScheduler(beta_schedule="scaled_linear").save_config(tmp_path / "dit")
    den = load_diffusers_denoiser(tmp_path / "dit", dtype=torch.float64)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        eps = dit(x_T, timestep=torch.tensor([250, 250]), class_labels=labels).sample[:, :1]
        torch.testing.assert_close(den.eps(x_T, den.schedule.t_of_timestep(250), class_labels=labels), eps)
    with pytest.raises(UserError, match="not a folder"):
        load_diffusers_denoiser(tmp_path / "missing")


def test_every_supported_sampler_runs_inside_a_diffusers_loop(unet, x_T):
    """Each registered fixed-grid sampler (multi-evaluation steps, stochastic ones with the loop's generators)
    gives its native result inside diffusers' loop, one model call per entry of ``timesteps``."""
    from diffusekit.samplers import SAMPLERS

    names = supported_samplers()
    assert {"heun", "dpm_solver_pp_3s", "pndm", "unipc_bh2_3", "ddpm"} <= set(names)
    for name in names:
        info = SAMPLERS[name]
        scheduler = DiffuseKitScheduler.from_diffusers(diffusers.DDPMScheduler(prediction_type="v_prediction"),
                                                       sampler=name, grid="logsnr")
        gen = (lambda: generators_from_seeds(SEEDS)) if info.stochastic else (lambda: None)
        theirs = run_diffusers(scheduler, unet, x_T, 4, generator=gen())
        with torch.no_grad():
            ours = info.fn(load_from_scheduler(unet, scheduler), x_T, scheduler.ts,
                           **({"generator": gen()} if info.stochastic else {}))
        assert len(scheduler.timesteps) == info.nfe(scheduler.ts) or info.nfe(scheduler.ts) is None, name
        torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12, msg=name)


def test_scheduler_on_a_flow_matching_pipeline(unet, x_T):
    """From FlowMatchEulerDiscreteScheduler: velocity prediction on x = (1 - sigma) x0 + sigma eps, network time
    1000 sigma; our default sampler and grid run from sigma = 1 and add_noise is the flow interpolation."""
    scheduler = DiffuseKitScheduler.from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert scheduler.config.process == "flow" and scheduler.prediction == "velocity"
    theirs = run_diffusers(scheduler, unet, x_T, 6)
    assert float(scheduler.timesteps[0]) == 1000.0
    with torch.no_grad():
        ours = sample(scheduler.config.sampler, load_from_scheduler(unet, scheduler), x_T, scheduler.ts)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12)
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(scheduler.add_noise(x0, eps, torch.tensor([250.0, 250.0])), 0.75 * x0 + 0.25 * eps)
