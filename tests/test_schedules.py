import math

import diffusers
import pytest
import torch

from diffusekit.core import (FlowSchedule, VESchedule, VPDiscrete, VPLinear, betas_for, rescale_zero_terminal_snr,
                             schedule_from_config)

SCHEDULES = {
    "vp_linear_betas": VPDiscrete.named("linear"),
    "vp_scaled_linear": VPDiscrete.named("scaled_linear"),
    "vp_cosine": VPDiscrete.named("cosine"),
    "vp_zero_snr": VPDiscrete.named("scaled_linear", zero_terminal_snr=True, beta_start=0.00085, beta_end=0.012),
    "vp_continuous": VPLinear(),
    "ve": VESchedule(),
    "flow": FlowSchedule(),
}


def interior_times(s, n=101):
    """Times with finite lam: [t_min, t_max], stopping short of a pure-noise t_max (alpha = 0)."""
    hi = s.t_max if float(s.alpha(s.t_max)) > 0 else s.t_max - 1e-3
    return torch.linspace(s.t_min, hi, n, dtype=torch.float64)


@pytest.mark.parametrize("name", [k for k, s in SCHEDULES.items() if s.kind == "vp"])
def test_vp_alpha2_plus_sigma2_is_one(name):
    s = SCHEDULES[name]
    t = interior_times(s)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lam_strictly_decreasing_and_t_of_lam_inverts(name):
    s = SCHEDULES[name]
    t = interior_times(s)
    lam = s.lam(t)
    assert torch.all(lam[1:] < lam[:-1])
    torch.testing.assert_close(s.t_of_lam(lam), t, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_derivatives_match_finite_differences(name):
    s = SCHEDULES[name]
    # midpoints between discrete knots keep finite differences inside one linear piece
    t = interior_times(s, 23)[1:-1]
    if isinstance(s, VPDiscrete):
        t = (torch.floor(t * s.num_train_timesteps) + 0.5) / s.num_train_timesteps
    h = 1e-7 * torch.clamp(t, min=1e-3)
    for f, df in [(s.log_alpha, s.d_log_alpha), (s.log_sigma, s.d_log_sigma), (s.alpha, s.d_alpha),
                  (s.sigma, s.d_sigma), (s.lam, s.d_lam)]:
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(df(t), fd, rtol=1e-5, atol=1e-6)


def test_discrete_schedule_is_exact_at_integer_steps_and_clean_at_zero():
    s = VPDiscrete.named("linear", 1000)
    n = torch.tensor([0, 1, 500, 999])
    t = s.t_of_timestep(n)
    torch.testing.assert_close(s.alpha(t) ** 2, s.alphas_cumprod[n], rtol=1e-12, atol=0)
    torch.testing.assert_close(s.network_time(t), n.double())
    assert float(s.alpha(0.0)) == 1.0 and float(s.sigma(0.0)) == 0.0


def test_named_betas_match_their_definitions():
    torch.testing.assert_close(betas_for("linear", 10), torch.linspace(1e-4, 0.02, 10, dtype=torch.float64))
    sl = betas_for("scaled_linear", 10)  # diffusers' defaults, as its DDPM/DDIM schedulers
    torch.testing.assert_close(sl.sqrt(), torch.linspace(1e-4**0.5, 0.02**0.5, 10, dtype=torch.float64))
    sd = betas_for("scaled_linear", 10, beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's, explicitly
    torch.testing.assert_close(sd.sqrt(), torch.linspace(0.00085**0.5, 0.012**0.5, 10, dtype=torch.float64))
    cos = betas_for("cosine", 1000)
    abar = torch.cumprod(1 - cos, 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(float(abar[499]) - f(0.5) / f(0.0)) < 1e-12
    with pytest.raises(ValueError, match="unknown beta schedule"):
        betas_for("sigmoidal")


SD = {"beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize("name, kwargs", [("linear", {}), ("linear", SD), ("scaled_linear", {}), ("scaled_linear", SD),
                                          ("squaredcos_cap_v2", {})])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_named_schedules_match_diffusers(name, kwargs, zero_snr):
    """Same names, same defaults, same alphas_cumprod as diffusers' DDPMScheduler (incl. its zero-SNR rescale)."""
    ours = VPDiscrete.named(name, 1000, zero_terminal_snr=zero_snr, **kwargs)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, rescale_betas_zero_snr=zero_snr,
                                     **kwargs)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    assert (float(ours.alphas_cumprod[-1]) == 0.0) == zero_snr


def test_zero_terminal_snr_is_exactly_zero():
    """abar_T = 0 exactly (Lin et al. 2023): alpha(1) = 0, lam(1) = -inf, everything else finite."""
    betas = betas_for("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    rescaled = rescale_zero_terminal_snr(betas)
    abar_old, abar_new = torch.cumprod(1 - betas, 0), torch.cumprod(1 - rescaled, 0)
    assert float(abar_new[-1]) == 0.0
    torch.testing.assert_close(abar_new[0], abar_old[0])
    s = VPDiscrete(betas, zero_terminal_snr=True)
    assert float(s.alphas_cumprod[-1]) == 0.0
    assert float(s.alpha(1.0)) == 0.0 and float(s.sigma(1.0)) == 1.0 and float(s.lam(1.0)) == -math.inf
    assert float(s.t_of_lam(-math.inf)) == 1.0 and float(s.t_of_sigma_tilde(math.inf)) == 1.0
    # integer steps stay exact up to the last finite one; alpha is continuous and decreasing into t = 1
    n = torch.arange(1000)
    torch.testing.assert_close(s.alpha(s.t_of_timestep(n)) ** 2, s.alphas_cumprod, rtol=1e-12, atol=0)
    t = torch.linspace(0.99, 1.0, 1001, dtype=torch.float64)
    a = s.alpha(t)
    assert torch.all(a[1:] < a[:-1]) and torch.isfinite(s.lam(t[:-1])).all()
    for f in (s.d_alpha, s.d_sigma, s.d_log_sigma, s.log_sigma):
        assert torch.isfinite(f(t)).all(), f
    torch.testing.assert_close(s.t_of_lam(s.lam(t)), t, rtol=0, atol=1e-12)
    assert s.prior_std() == 1.0


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_config_round_trip(name):
    s = SCHEDULES[name]
    r = schedule_from_config(s.config())
    t = interior_times(s, 11)
    torch.testing.assert_close(r.alpha(t), s.alpha(t), rtol=0, atol=0)
    torch.testing.assert_close(r.sigma(t), s.sigma(t), rtol=0, atol=0)


def test_add_noise_and_time_validation():
    s = VESchedule()
    x0 = torch.ones(3, 2)
    eps = torch.ones(3, 2)
    out = s.add_noise(x0, torch.tensor([0.0, 1.0, 2.0]), eps)
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="time out of range"):
        s.check_time(100.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_from_config({"name": "vp_quadratic"})
    with pytest.raises(ValueError, match="betas must"):
        VPDiscrete(torch.tensor([0.1, 1.5]))


def test_short_config_takes_beta_start_and_end():
    s = schedule_from_config({"name": "vp_discrete", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                              "beta_end": 0.012, "num_train_timesteps": 1000})
    torch.testing.assert_close(s.betas, betas_for("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012))
    with pytest.raises(ValueError, match="unknown vp_discrete options: beta_min; allowed: betas, beta_schedule"):
        schedule_from_config({"name": "vp_discrete", "beta_min": 0.1})
