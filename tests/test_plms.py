import numpy as np
import pytest
import torch

from diffusekit.core import CountingDenoiser, VESchedule, VPLinear, grid_karras, grid_uniform, \
    prior_sample
from diffusekit.samplers.baseline import sample_ddim
from diffusekit.samplers.likelihood import solve_pf_ode
from diffusekit.samplers.plms import AB_COEFFICIENTS, ab_coefficients_variable, sample_plms, sample_pndm


def errors(smooth_mixture, schedule, grid, steps, n=100, **options):
    """Mean distance to an adaptive DOP853 reference of the PF-ODE from the same x_T, per step count."""
    den = smooth_mixture.denoiser(schedule)
    ts = grid(schedule, 2)
    x = prior_sample(schedule, (n, 2), torch.Generator().manual_seed(0), dtype=torch.float64, t=float(ts[0]))
    ref = solve_pf_ode(den, x, ts[0], ts[-1])
    return np.array([float((sample_plms(den, x, grid(schedule, int(k)), **options) - ref).norm(dim=1).mean())
                     for k in steps])


def slope(steps, err):
    return -np.polyfit(np.log(steps), np.log(err), 1)[0]


def sigma_uniform(schedule, steps):
    """A grid uniform in sigma~ (VE: sigma~ = t) on [0.3, 3], where PLMS's fixed AB weights are exact."""
    return grid_uniform(schedule, steps, t_start=3.0, t_end=0.3)


@pytest.mark.parametrize("schedule", [VPLinear(), VESchedule()], ids=["vp_linear", "ve"])
def test_declared_order_with_default_options(smooth_mixture, schedule):
    """Default PLMS-4 (fixed weights, AB warm-up) on a Karras grid: the declared order 2."""
    steps = [32, 64, 128, 256]
    err = errors(smooth_mixture, schedule, grid_karras, steps)
    assert abs(slope(steps, err) - sample_plms.info.order) < 0.3, err


@pytest.mark.parametrize("order,steps", [(2, [8, 16, 32, 64]), (3, [16, 32, 64, 128]), (4, [16, 32, 64, 128, 256])])
def test_pndm_reaches_order_k_on_sigma_uniform_grids(smooth_mixture, order, steps):
    """PNDM (pseudo Runge-Kutta warm-up) with the paper's fixed weights is AB-k in sigma~."""
    err = errors(smooth_mixture, VESchedule(), sigma_uniform, steps, order=order, warmup="prk")
    assert abs(slope(steps, err) - order) < 0.3, err


@pytest.mark.parametrize("order,steps", [(2, [32, 64, 128, 256]), (3, [32, 64, 128, 256]), (4, [64, 128, 256, 512])])
def test_variable_step_reaches_order_k_on_karras_grids(smooth_mixture, order, steps):
    err = errors(smooth_mixture, VPLinear(), grid_karras, steps, order=order, warmup="prk", variable_step=True)
    assert abs(slope(steps, err) - order) < 0.3, err


def test_warmup_accuracy_caps_the_order(smooth_mixture):
    """A first-order (DDIM) first step leaves an O(h^2) error that no later AB4 step removes."""
    steps = [64, 128, 256]
    ab = errors(smooth_mixture, VESchedule(), sigma_uniform, steps, order=4, warmup="ab")
    prk = errors(smooth_mixture, VESchedule(), sigma_uniform, steps, order=4, warmup="prk")
    local = lambda e: np.log(e[-2] / e[-1]) / np.log(2)  # noqa: E731
    assert local(ab) < 2.5 and local(prk) > 3.5, (ab, prk)


def test_fixed_weights_lose_order_on_non_uniform_grids(smooth_mixture):
    steps = [32, 64, 128, 256]
    fixed = errors(smooth_mixture, VPLinear(), grid_karras, steps, order=4)
    variable = errors(smooth_mixture, VPLinear(), grid_karras, steps, order=4, variable_step=True)
    assert slope(steps, fixed) < 2.5 and slope(steps, variable) > 3.0 and variable[-1] < fixed[-1] / 5


def test_order_one_is_ddim(smooth_mixture):
    s = VPLinear()
    den = smooth_mixture.denoiser(s)
    x = prior_sample(s, (8, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = grid_uniform(s, 12, t_end=0.0)
    torch.testing.assert_close(sample_plms(den, x, ts, order=1), sample_ddim(den, x, ts), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("warmup", ["ab", "heun", "prk"])
def test_nfe_accounting(smooth_mixture, order, warmup):
    s = VPLinear()
    den = CountingDenoiser(smooth_mixture.denoiser(s))
    n = 10
    out = sample_plms(den, torch.randn(3, 2), grid_uniform(s, n, t_end=0.0), order=order, warmup=warmup)
    expected = {"ab": n, "heun": n + (order > 1), "prk": n + 3 * (order - 1)}[warmup]
    assert den.calls == expected
    assert out.shape == (3, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_pndm_is_plms_with_prk_warmup_and_short_grids_work(smooth_mixture):
    s = VESchedule()
    den = CountingDenoiser(smooth_mixture.denoiser(s))
    x = 80 * torch.randn(4, 2, dtype=torch.float64)
    ts = grid_karras(s, 6)
    torch.testing.assert_close(sample_pndm(den, x, ts), sample_plms(den, x, ts, warmup="prk"), rtol=0, atol=0)
    den.calls = 0
    sample_pndm(den, x, grid_karras(s, 2, t_end=0.0))  # one PRK step, then a plain step onto clean data
    assert den.calls == 4 + 1


def test_ab_weights():
    for k, fixed in AB_COEFFICIENTS.items():
        assert abs(sum(fixed) - 1) < 1e-15
        np.testing.assert_allclose(ab_coefficients_variable([5.0 - j for j in range(k)], 6.0), fixed, rtol=1e-12)
    w = ab_coefficients_variable([1.0, 1.5, 2.5], 0.7)
    assert abs(sum(w) - 1) < 1e-12
    # exact for quadratics: the weighted sum reproduces the mean of p over [1.0, 0.7]
    p = lambda u: 3 * u**2 - u + 2  # noqa: E731
    mean = ((0.7**3 - 1.0) - (0.7**2 - 1.0) / 2 + 2 * (0.7 - 1.0)) / (0.7 - 1.0)
    assert abs(sum(c * p(u) for c, u in zip(w, [1.0, 1.5, 2.5])) - mean) < 1e-12


def test_bad_input(smooth_mixture):
    s = VPLinear()
    den = smooth_mixture.denoiser(s)
    with pytest.raises(ValueError, match="order must be 1, 2, 3 or 4"):
        sample_plms(den, torch.randn(2, 2), grid_uniform(s, 3), order=5)
    with pytest.raises(ValueError, match="unknown warmup 'rk'; allowed: ab, heun, prk"):
        sample_plms(den, torch.randn(2, 2), grid_uniform(s, 3), warmup="rk")
