import numpy as np
import pytest
import torch

from diffusekit.core import (CountingDenoiser, FunctionDenoiser, GaussianMixture, VESchedule, VPDiscrete, VPLinear,
                             grid_karras, grid_logsnr, grid_uniform, make_grid, prior_sample)
from diffusekit.samplers.baseline import sample_ddim
from diffusekit.samplers.dpm_solver import sample_dpm_solver_multistep
from diffusekit.samplers.likelihood import solve_pf_ode
from diffusekit.samplers.momentum import (MomentumMixer, ghvb_coefficients, momentum_number, sample_dpm_solver_pp_ghvb,
                                          sample_dpm_solver_pp_hb, sample_plms_ghvb, sample_plms_hb, solve_ode_momentum)
from diffusekit.samplers.plms import AB_COEFFICIENTS, sample_plms


MOMENTUM_SAMPLERS = [sample_plms_hb, sample_plms_ghvb, sample_dpm_solver_pp_hb, sample_dpm_solver_pp_ghvb]


# ------------------------------------------------------------------------------------------------
# Coefficients and beta = 1 equivalences
# ------------------------------------------------------------------------------------------------
def test_ghvb_coefficients_at_beta_one_are_adams_bashforth_and_always_consistent():
    for c in range(1, 5):
        assert ghvb_coefficients(c, 1.0) == list(AB_COEFFICIENTS[c])  # bit for bit
    assert np.allclose(ghvb_coefficients(5, 1.0), np.array([1901, -2774, 2616, -1274, 251]) / 720, rtol=0, atol=1e-15)
    for c in range(1, 6):
        for beta in (0.3, 0.8, 1.0):
            # (1/beta) sum_j b_j = 1: a constant velocity is reproduced (consistency).
            assert abs(sum(ghvb_coefficients(c, beta)) - 1.0) < 1e-12


def test_momentum_number():
    assert momentum_number(3.8) == (4, pytest.approx(0.8))
    assert momentum_number(1.9) == (2, pytest.approx(0.9))
    assert momentum_number(4) == (4, 1.0)
    with pytest.raises(ValueError, match="momentum number"):
        momentum_number(0)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("fn", [sample_plms_hb, sample_plms_ghvb], ids=["hb", "ghvb"])
def test_plms_momentum_at_beta_one_is_plms_bit_for_bit(mixture, fn, order):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    x = prior_sample(s, (40, 2), torch.Generator().manual_seed(0))  # float32, as a network would run
    ts = make_grid("trailing", s, 9)
    assert torch.equal(fn(den, x, ts, order=order, beta=1.0), sample_plms(den, x, ts, order=order, warmup="ab"))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_pp_hb_at_beta_one_is_dpm_solver_pp(mixture, order):
    s = VPLinear()
    den = mixture.denoiser(s)
    x = prior_sample(s, (40, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = grid_logsnr(s, 9, t_end=0.0)
    for solver_type in ("midpoint", "taylor"):
        ref = sample_dpm_solver_multistep(den, x, ts, order=order, solver_type=solver_type)
        out = sample_dpm_solver_pp_hb(den, x, ts, order=order, beta=1.0, solver_type=solver_type)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2])
def test_dpm_solver_pp_ghvb_at_beta_one_is_dpm_solver_pp(mixture, order):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    x = prior_sample(s, (40, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = make_grid("trailing", s, 9)
    torch.testing.assert_close(sample_dpm_solver_pp_ghvb(den, x, ts, order=order, beta=1.0),
                               sample_dpm_solver_multistep(den, x, ts, order=order), rtol=1e-12, atol=1e-12)


def test_dpm_solver_pp_hb_first_step_is_plain_and_momentum_changes_later_steps(mixture):
    """The reference starts v at the first second-order step: step 0 is plain DPM-Solver++."""
    s = VPLinear()
    den = mixture.denoiser(s)
    x = prior_sample(s, (10, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = grid_logsnr(s, 6, t_end=0.0)
    a, b = [], []
    sample_dpm_solver_multistep(den, x, ts, callback=lambda d: a.append(d["x"]))
    sample_dpm_solver_pp_hb(den, x, ts, beta=0.5, callback=lambda d: b.append(d["x"]))
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-12)  # step 1 starts v = D
    assert not torch.allclose(a[2], b[2])


def test_mixer_matches_hand_written_updates():
    e = [torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([-2.0])]
    hb, ghvb = MomentumMixer("hb", 2, 0.5), MomentumMixer("ghvb", 2, 0.5)
    got_hb = [float(hb(v)) for v in e]
    got_ghvb = [float(ghvb(v)) for v in e]
    # HB: e^ = AB2; v <- v/2 + e^/2.   e^: 1, (9 - 1)/2 = 4, (-6 - 3)/2 = -4.5
    assert got_hb == pytest.approx([1.0, 2.5, -1.0])
    # GHVB: v = 1, 2, 0; e_step = ((2.5) v_n - (1.5) v_{n-1})/(2 * 0.5)
    assert got_ghvb == pytest.approx([1.0, 2.5 * 2 - 1.5 * 1, 2.5 * 0 - 1.5 * 2])


# ------------------------------------------------------------------------------------------------
# Invariants
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", MOMENTUM_SAMPLERS, ids=lambda f: f.info.name)
def test_nfe_shapes_and_final_time(mixture, fn):
    s = VPLinear()
    den = CountingDenoiser(mixture.denoiser(s))
    x = torch.randn(5, 2)
    seen = []
    out = fn(den, x, grid_uniform(s, 7, t_end=0.0), callback=seen.append)
    assert den.calls == 7 * fn.info.nfe_per_step == 7
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert [d["i"] for d in seen] == list(range(7)) and float(seen[-1]["t_next"]) == 0.0
    assert not fn.info.stochastic


@pytest.mark.parametrize("fn", MOMENTUM_SAMPLERS, ids=lambda f: f.info.name)
def test_batch_size_invariance(mixture, fn):
    s = VPDiscrete.named("linear")
    den = mixture.denoiser(s)
    x = prior_sample(s, (12, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = make_grid("trailing", s, 8)
    torch.testing.assert_close(fn(den, x[3:5], ts), fn(den, x, ts)[3:5], rtol=1e-12, atol=1e-12)


def test_bad_options(mixture):
    s = VPLinear()
    den = mixture.denoiser(s)
    x, ts = torch.randn(3, 2), grid_uniform(s, 4)
    with pytest.raises(ValueError, match="beta must be a number in"):
        sample_plms_hb(den, x, ts, beta=0.0)
    with pytest.raises(ValueError, match="beta must be a number in"):
        sample_plms_ghvb(den, x, ts, beta=1.5)
    with pytest.raises(ValueError, match="order must be an integer in 1..5"):
        sample_plms_hb(den, x, ts, order=6)
    with pytest.raises(ValueError, match="order must be an integer in 1..2"):
        sample_dpm_solver_pp_ghvb(den, x, ts, order=3)
    with pytest.raises(ValueError, match="solver_type"):
        sample_dpm_solver_pp_hb(den, x, ts, solver_type="heun")


# ------------------------------------------------------------------------------------------------
# Convergence order on the exact GMM denoiser
# ------------------------------------------------------------------------------------------------
def _errors(smooth_mixture, fn, schedule, grid, steps, **options):
    den = smooth_mixture.denoiser(schedule)
    ts = grid(schedule, 2)
    x = prior_sample(schedule, (50, 2), torch.Generator().manual_seed(0), dtype=torch.float64, t=float(ts[0]))
    ref = solve_pf_ode(den, x, ts[0], ts[-1])
    return np.array([float((fn(den, x, grid(schedule, int(k)), **options) - ref).norm(dim=1).mean()) for k in steps])


def _slope(steps, err):
    return -np.polyfit(np.log(steps), np.log(err), 1)[0]


def _sigma_uniform(schedule, steps):
    return grid_uniform(schedule, steps, t_start=3.0, t_end=0.3)  # VE: uniform in sigma~ = t


@pytest.mark.parametrize("fn,schedule,grid,steps,options", [
    (sample_plms_hb, VPLinear(), grid_karras, [32, 64, 128, 256], {}),
    (sample_plms_ghvb, VPLinear(), grid_karras, [32, 64, 128, 256], {}),
    (sample_dpm_solver_pp_hb, VPLinear(), grid_logsnr, [16, 32, 64, 128], {}),
    (sample_dpm_solver_pp_ghvb, VPLinear(), grid_logsnr, [16, 32, 64, 128], {}),
], ids=["plms_hb", "plms_ghvb", "dpm_solver_pp_hb", "dpm_solver_pp_ghvb"])
def test_declared_order_with_default_options(smooth_mixture, fn, schedule, grid, steps, options):
    err = _errors(smooth_mixture, fn, schedule, grid, steps, **options)
    assert abs(_slope(steps, err) - fn.info.order) < 0.3, err


def test_ghvb_2_is_second_order_on_sigma_uniform_grids(smooth_mixture):
    """GHVB of order r = 2 (Theorem 2) with beta = 0.8: second order where PLMS's weights are exact."""
    steps = [16, 32, 64, 128]
    err = _errors(smooth_mixture, sample_plms_ghvb, VESchedule(), _sigma_uniform, steps, order=2, beta=0.8)
    assert abs(_slope(steps, err) - 2) < 0.3, err


# ------------------------------------------------------------------------------------------------
# Method claims (direction of the paper's effect)
# ------------------------------------------------------------------------------------------------
def test_toy_ode_momentum_stays_bounded_where_ab2_diverges():
    """A stiff linear ODE in the spirit of the paper's Appendix C (26 steps of 3/26; see
    ``bench.momentum.toy_ode``): AB2's step lies just outside its stability region, so AB2 blows up,
    while HB (beta 0.8, 0.9) and GHVB 1.8 stay near the exact solution."""
    from diffusekit.bench.momentum import toy_ode

    f, x0, exact, t_end, steps = toy_ode()
    final = {name: solve_ode_momentum(f, x0, 0.0, t_end, steps, method=m, order=2, beta=b)[-1]
             for name, (m, b) in {"ab2": ("hb", 1.0), "hb0.8": ("hb", 0.8), "hb0.9": ("hb", 0.9),
                                  "ghvb1.8": ("ghvb", 0.8)}.items()}
    assert float(final["ab2"].norm()) > 20 * float(exact.norm())
    for name in ("hb0.8", "hb0.9", "ghvb1.8"):
        assert float((final[name] - exact).norm()) < 0.01, (name, final[name], exact)


def guided_gmm_denoiser(scale: float):
    """Exact 'classifier-free guidance' on a GMM: x0 = x0_u + w (x0_c - x0_u), with the unconditional
    model the 4-mode mixture and the conditional model its first mode."""
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0], [0.5, 0.8]], dtype=torch.float64)
    covs = torch.stack([0.02 * torch.eye(2)] * 4).double()
    s = VPDiscrete.named("linear")
    den_u = GaussianMixture(means, covs).denoiser(s)
    den_c = GaussianMixture(means[:1], covs[:1]).denoiser(s)

    def guided(x, t):
        x0_u = den_u.denoise(x, t)
        return x0_u + scale * (den_c.denoise(x, t) - x0_u)

    return FunctionDenoiser(guided, s)


def test_momentum_reduces_blow_up_at_high_guidance_and_low_nfe():
    """At guidance 8 and 5 steps PLMS4 overshoots (sample norms ~2x the converged ones); HB 0.8 and
    GHVB 3.8 shrink the overshoot and the error to a 500-step DDIM solve."""
    den = guided_gmm_denoiser(8.0)
    s = den.schedule
    x = prior_sample(s, (200, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sample_ddim(den, x, make_grid("trailing", s, 500))
    ts = make_grid("trailing", s, 5)

    def blow_up(y):
        return float(y.norm(dim=1).mean() / ref.norm(dim=1).mean())

    def error(y):
        return float((y - ref).norm(dim=1).mean())

    plain = sample_plms(den, x, ts)
    assert blow_up(plain) > 1.5
    for y in (sample_plms_hb(den, x, ts), sample_plms_ghvb(den, x, ts)):
        assert blow_up(y) < blow_up(plain) and error(y) < error(plain)


def test_momentum_reduces_artifacts_on_the_digits_model():
    """Digits UNet at CFG 8, 5 steps: fewer pixels far outside [-1, 1] with HB than with plain PLMS4."""
    from diffusekit import zoo
    from diffusekit.core import CFGDenoiser

    net = zoo.load("digits_unet")  # shipped with the package (src/diffusekit/zoo/assets): missing is a failure
    from diffusekit.bench.momentum import far_outside_fraction

    den = CFGDenoiser(net, 8.0)
    labels = torch.arange(10).repeat(3)
    x = prior_sample(den.schedule, (len(labels), 1, 8, 8), torch.Generator().manual_seed(0))
    ts = make_grid("trailing", den.schedule, 5)
    with torch.no_grad():
        plain = sample_plms(den, x, ts, cond={"class_labels": labels})
        hb = sample_plms_hb(den, x, ts, cond={"class_labels": labels})
    assert far_outside_fraction(hb) <= far_outside_fraction(plain)
    assert float(hb.abs().max()) < float(plain.abs().max())
