"""Peer agreement: our samplers against the installed diffusers schedulers, elementwise, in float64.

A tiny randomly initialised ``diffusers.UNet2DModel`` (8x8, 1 channel) predicts eps. Our side wraps it
with ``NetworkDenoiser`` on ``VPDiscrete`` (network time n = tN - 1); the diffusers side drives each
scheduler in the usual manual loop (scale_model_input -> model -> step). Both use the same betas, the
same integer timesteps (``grid_diffusers``) and the same noise: every stochastic step draws from
per-sample generators seeded identically on both sides (diffusers' ``randn_tensor`` draws per sample
from a list of generators exactly as ``diffusekit.core.noise.randn`` does).

diffusers builds ``alphas_cumprod`` in float32; we overwrite it with our float64 values before
``set_timesteps``, and replace the sigma-space schedulers' float32 sigmas by the float64 values of the
same timesteps, so the comparison measures the algorithms rather than float32 rounding of the schedule.
Euler and Euler ancestral also round the sample to float32 inside ``step`` (``sample.to(torch.float32)``,
an fp16 safeguard), which limits their agreement to ~1e-7 of the sample's scale; elementwise relative
errors are therefore measured against |x| plus the sample's largest magnitude (``assert_agree``).
"""

import diffusers  # the dev extra: a missing diffusers fails the suite rather than skipping it
import pytest
import torch

from diffusekit.core import NetworkDenoiser, VPDiscrete, generators_from_seeds, grid_diffusers
from diffusekit.core.schedules import betas_for
from diffusekit.interop.diffusers import DiffusersNet
from diffusekit.methods.thresholding import DynamicThresholdDenoiser
from diffusekit.samplers.baseline import sample_ddim, sample_ddpm
from diffusekit.samplers.karras import sample_euler_ancestral, sample_euler_sigma, sample_heun
from diffusekit.samplers.plms import sample_plms

# diffusers converts tensors with np.array(tensor), which numpy 2 flags; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N_TRAIN = 1000
STEPS = 10  # N_TRAIN // STEPS is even, so PNDM's half steps fall on integer timesteps
SEEDS = [11, 12, 13]
RTOL = 1e-5


class HalfUNetPlusIdentity(torch.nn.Module):
    """The test's eps model on our public adapter: eps_hat = x + 0.5 unet(x, t). The identity part is the exact
    eps for data at 0 at high noise, which keeps x0_hat and the samples O(1) (a bare random UNet drives them
    to |x| ~ 300 through 1/alpha)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = DiffusersNet(unet)

    def forward(self, x, t):
        return x + 0.5 * self.unet(x, t)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    net = HalfUNetPlusIdentity(unet).double().eval()
    schedule = VPDiscrete(betas_for("linear", N_TRAIN), beta_schedule="linear")
    den = NetworkDenoiser(net, schedule, "eps")
    x_T = torch.randn(len(SEEDS), 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, schedule, den, x_T


def model(net, x, timestep):
    """The diffusers-side network call with a scalar scheduler timestep."""
    return net(x, torch.full((x.shape[0],), float(timestep), dtype=torch.float64))


def make_scheduler(cls, schedule, **config):
    sch = cls(num_train_timesteps=N_TRAIN, beta_schedule="linear", **config)
    sch.alphas_cumprod = schedule.alphas_cumprod.clone()
    if hasattr(sch, "final_alpha_cumprod"):  # DDIM, PNDM
        one = config.get("set_alpha_to_one", cls is diffusers.DDIMScheduler)
        sch.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if one else sch.alphas_cumprod[0]
    sch.set_timesteps(STEPS)
    if hasattr(sch, "sigmas"):  # sigma-space schedulers: the same sigmas, unrounded
        all_sigmas = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt()
        nearest = (sch.sigmas.double()[:, None] - all_sigmas[None, :]).abs().argmin(1)
        sch.sigmas = torch.where(sch.sigmas == 0, 0.0, all_sigmas[nearest])
    return sch


def assert_agree(ours, theirs, rtol=RTOL):
    """Elementwise relative agreement; the absolute floor is rtol times the sample's scale."""
    err = ((ours - theirs).abs() / (theirs.abs() + theirs.abs().max())).max()
    assert torch.isfinite(ours).all() and err < rtol, float(err)
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * float(theirs.abs().max()))


def run_diffusers(net, sch, x, *, scaled=False, **step_kwargs):
    """The standard manual loop; ``scaled`` schedulers get scale_model_input."""
    with torch.no_grad():
        for t in sch.timesteps:
            x_in = sch.scale_model_input(x, t) if scaled else x
            x = sch.step(model(net, x_in, t), t, x, **step_kwargs).prev_sample
    return x


def test_ddpm_agrees(setup):
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.DDPMScheduler, schedule, clip_sample=False, timestep_spacing="leading")
    theirs = run_diffusers(net, sch, x_T, generator=generators_from_seeds(SEEDS))
    with torch.no_grad():
        ours = sample_ddpm(den, x_T, grid_diffusers(schedule, STEPS, spacing="leading"),
                           generator=generators_from_seeds(SEEDS))
    assert_agree(ours, theirs)


def test_ddpm_with_dynamic_thresholding_agrees(setup):
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.DDPMScheduler, schedule, clip_sample=False, thresholding=True,
                         dynamic_thresholding_ratio=0.9, sample_max_value=1.5, timestep_spacing="leading")
    theirs = run_diffusers(net, sch, x_T, generator=generators_from_seeds(SEEDS))
    with torch.no_grad():
        ours = sample_ddpm(DynamicThresholdDenoiser(den, ratio=0.9, sample_max_value=1.5), x_T,
                           grid_diffusers(schedule, STEPS, spacing="leading"), generator=generators_from_seeds(SEEDS))
    assert_agree(ours, theirs)


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_agrees(setup, eta):
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.DDIMScheduler, schedule, clip_sample=False, set_alpha_to_one=True,
                         timestep_spacing="leading")
    theirs = run_diffusers(net, sch, x_T, eta=eta, generator=generators_from_seeds(SEEDS))
    with torch.no_grad():
        ours = sample_ddim(den, x_T, grid_diffusers(schedule, STEPS, spacing="leading"), eta=eta,
                           generator=generators_from_seeds(SEEDS))
    assert_agree(ours, theirs)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_agrees_with_euler_in_sigma(setup, spacing):
    """diffusers' Euler steps in sigma~ = sqrt((1 - abar)/abar) on x/alpha: our ``sample_euler_sigma``
    (our ``sample_euler`` steps in t and is a different first-order method)."""
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.EulerDiscreteScheduler, schedule, timestep_spacing=spacing)
    ts = grid_diffusers(schedule, STEPS, spacing=spacing)
    theirs = run_diffusers(net, sch, x_T / schedule.alpha(ts[0]), scaled=True)
    with torch.no_grad():
        ours = sample_euler_sigma(den, x_T, ts)
    assert_agree(ours, theirs)


def test_euler_churn_agrees_under_the_diffusers_option(setup):
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.EulerDiscreteScheduler, schedule, timestep_spacing="leading")
    ts = grid_diffusers(schedule, STEPS, spacing="leading")
    churn = dict(s_churn=3.0, s_tmin=0.5, s_tmax=20.0, s_noise=1.01)
    theirs = run_diffusers(net, sch, x_T / schedule.alpha(ts[0]), scaled=True, generator=generators_from_seeds(SEEDS),
                           **churn)
    with torch.no_grad():
        ours = sample_euler_sigma(den, x_T, ts, S_churn=3.0, S_min=0.5, S_max=20.0, S_noise=1.01,
                                  diffusers_churn=True, generator=generators_from_seeds(SEEDS))
        karras = sample_euler_sigma(den, x_T, ts, S_churn=3.0, S_min=0.5, S_max=20.0, S_noise=1.01,
                                    generator=generators_from_seeds(SEEDS))
    assert_agree(ours, theirs)
    # Karras' Alg. 2 evaluates the network at the churned point: a different (correct) sampler.
    assert float((karras - theirs).abs().max()) > 1e-3


def test_euler_ancestral_agrees(setup):
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.EulerAncestralDiscreteScheduler, schedule, timestep_spacing="leading")
    ts = grid_diffusers(schedule, STEPS, spacing="leading")
    theirs = run_diffusers(net, sch, x_T / schedule.alpha(ts[0]), scaled=True, generator=generators_from_seeds(SEEDS))
    with torch.no_grad():
        ours = sample_euler_ancestral(den, x_T, ts, generator=generators_from_seeds(SEEDS))
    assert_agree(ours, theirs)


def test_heun_agrees(setup):
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.HeunDiscreteScheduler, schedule, timestep_spacing="leading")
    ts = grid_diffusers(schedule, STEPS, spacing="leading")
    assert len(sch.timesteps) == 2 * STEPS - 1  # the final step to sigma = 0 is a 1-NFE Euler step
    theirs = run_diffusers(net, sch, x_T / schedule.alpha(ts[0]), scaled=True)
    with torch.no_grad():
        ours = sample_heun(den, x_T, ts)
    assert_agree(ours, theirs)


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "pndm"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_pndm_agrees(setup, skip_prk_steps, set_alpha_to_one):
    """skip_prk_steps=True is our warmup="heun" (pseudo improved Euler first step); False is PNDM,
    warmup="prk". With set_alpha_to_one=False diffusers ends on the first train step t = 1/N, and its last
    step (from timestep 0 to the same alpha) is the identity: our grid simply ends at t = 1/N."""
    net, schedule, den, x_T = setup
    sch = make_scheduler(diffusers.PNDMScheduler, schedule, skip_prk_steps=skip_prk_steps,
                         set_alpha_to_one=set_alpha_to_one, timestep_spacing="leading")
    theirs = run_diffusers(net, sch, x_T)
    ts = grid_diffusers(schedule, STEPS, spacing="leading")
    if not set_alpha_to_one:
        ts = ts[:-1]
    with torch.no_grad():
        ours = sample_plms(den, x_T, ts, order=4, warmup="heun" if skip_prk_steps else "prk")
    assert_agree(ours, theirs)
