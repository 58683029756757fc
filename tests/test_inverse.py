"""Inverse problems: SVD operator identities, shape validation, and the direction of each solver's effect
(DPS, DDRM, RED-Diff beat the pseudo-inverse in PSNR) with the shipped digits UNet and natural-patch UNet, and
the inverse bench's JSON layout."""

from __future__ import annotations

import math

import pytest
import torch

from diffusekit.core import grid_uniform
from diffusekit.methods.inverse import (SOLVERS, denoising, gaussian_blur, inpaint_box, inpaint_random, solve_ddrm,
                                        solve_dps, solve_pinv, solve_reddiff, super_resolution)

SHAPE = (1, 8, 8)
OPERATORS = {
    "inpaint_box": lambda: inpaint_box(SHAPE),
    "inpaint_random": lambda: inpaint_random(SHAPE, 0.5, seed=3),
    "sr2": lambda: super_resolution(SHAPE, 2),
    "sr4": lambda: super_resolution(SHAPE, 4),
    "deblur": lambda: gaussian_blur(SHAPE, 1.0),
    "deblur_exact": lambda: gaussian_blur(SHAPE, 1.0, rcond=0.0),
    "denoise": lambda: denoising(SHAPE),
    "sr2_rgb": lambda: super_resolution((3, 8, 8), 2),
}


def _x(op, batch=4, seed=0):
    return torch.randn(batch, *op.in_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _y(op, batch=4, seed=1):
    return torch.randn(batch, *op.out_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", OPERATORS)
def test_svd_reproduces_apply_and_is_orthogonal(name):
    op = OPERATORS[name]()
    x = _x(op)
    z = op.vt(x)
    usv = op.u(op.singular_values * z[:, : op.m])
    torch.testing.assert_close(usv, op.apply(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(op.v(z), x, atol=1e-12, rtol=0)  # V V^T = I
    y = _y(op)
    torch.testing.assert_close(op.u(op.ut(y)), y, atol=1e-12, rtol=0)  # U U^T = I
    assert float(z.norm()) == pytest.approx(float(x.norm()), rel=1e-12)


@pytest.mark.parametrize("name", OPERATORS)
def test_transpose_is_adjoint(name):
    op = OPERATORS[name]()
    x, y = _x(op), _y(op)
    lhs = (op.apply(x) * y).sum()
    rhs = (x * op.transpose(y)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


@pytest.mark.parametrize("name", OPERATORS)
def test_pinv_of_apply_is_projection(name):
    op = OPERATORS[name]()
    x = _x(op)
    p = op.pinv(op.apply(x))
    torch.testing.assert_close(op.pinv(op.apply(p)), p, atol=1e-10, rtol=0)  # idempotent
    torch.testing.assert_close(((x - p) * p).sum(), torch.zeros((), dtype=x.dtype), atol=1e-9, rtol=0)  # orthogonal
    if float(op.singular_values.min()) > op.rcond * float(op.singular_values.max()):
        torch.testing.assert_close(op.apply(p), op.apply(x), atol=1e-10, rtol=0)  # A A^+ A = A (full rank rows)


def test_operators_match_definitions():
    x = _x(super_resolution(SHAPE, 2))
    torch.testing.assert_close(super_resolution(SHAPE, 2).apply(x), torch.nn.functional.avg_pool2d(x, 2))
    box = inpaint_box(SHAPE, (2, 6, 2, 6))
    assert box.m == 64 - 16
    filled = box.fill(box.apply(x))
    assert torch.all(filled[:, :, 2:6, 2:6] == 0) and torch.equal(filled[:, :, :2], x[:, :, :2])
    torch.testing.assert_close(denoising(SHAPE).apply(x), x)
    blur = gaussian_blur(SHAPE, 1.0).apply(torch.ones(1, *SHAPE, dtype=torch.float64))
    assert blur[0, 0, 4, 4] == pytest.approx(1.0, abs=1e-3)  # normalised kernel away from the border


def test_bad_shapes_and_options_raise():
    op = super_resolution(SHAPE, 2)
    with pytest.raises(ValueError, match="this operator takes"):
        op.apply(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="this operator measures"):
        op.pinv(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="spectral coefficients"):
        op.v(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="divisor"):
        super_resolution(SHAPE, 3)
    with pytest.raises(ValueError, match="box"):
        inpaint_box(SHAPE, (0, 9, 0, 4))
    with pytest.raises(ValueError, match="p_missing"):
        inpaint_random(SHAPE, 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        from diffusekit.methods.inverse import MaskOperator
        MaskOperator(torch.ones(4, 4, dtype=torch.bool), SHAPE)
    with pytest.raises(ValueError, match="sigma_y"):
        op.measure(torch.zeros(1, *SHAPE), sigma_y=-1.0)


# -- solvers on digits -----------------------------------------------------------------------------------
SIGMA_Y = 0.05


@pytest.fixture(scope="module")
def digits():
    from diffusekit import zoo
    from diffusekit.data import load_dataset

    den = zoo.load("digits_unet")
    x = load_dataset("digits", "test").x[:8]
    cond = {"class_labels": torch.full((8,), den.null_class)}
    return den, x, cond


def test_solvers_validate_inputs(digits):
    den, x, cond = digits
    op = super_resolution(SHAPE, 2)
    ts = grid_uniform(den.schedule, 3, t_end=0.0)
    bad_y = torch.zeros(8, 1, 8, 8)
    for name in ("dps", "ddrm", "reddiff"):
        with pytest.raises(ValueError, match="this operator measures"):
            SOLVERS[name](den, bad_y, op, ts, sigma_y=SIGMA_Y, cond=cond)
    y = op.apply(x)
    with pytest.raises(ValueError, match="sigma_y > 0"):
        solve_reddiff(den, y, op, ts, sigma_y=0.0, cond=cond)
    with pytest.raises(ValueError, match="eta"):
        solve_ddrm(den, y, op, ts, sigma_y=SIGMA_Y, eta=1.5, cond=cond)
    with pytest.raises(ValueError, match="zeta"):
        solve_dps(den, y, op, ts, zeta=-1.0, cond=cond)
    with pytest.raises(ValueError, match="LinearOperator"):
        solve_ddrm(den, y, "sr2", ts, sigma_y=SIGMA_Y, cond=cond)


def test_ddrm_noise_free_keeps_observed_pixels(digits):
    den, x, cond = digits
    op = inpaint_box(SHAPE)
    y = op.apply(x)
    with torch.no_grad():
        out = solve_ddrm(den, y, op, grid_uniform(den.schedule, 5, t_end=0.0), sigma_y=0.0, cond=cond,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.apply(out), y, atol=1e-5, rtol=0)


SETTINGS = {
    "dps": (50, {"inpaint_box": {"zeta": 1.0}, "sr2": {"zeta": 2.0}}),
    "ddrm": (20, {"inpaint_box": {}, "sr2": {}}),
    "reddiff": (50, {"inpaint_box": {"lam": 25.0, "lr": 0.25}, "sr2": {"lam": 25.0, "lr": 0.25}}),
}


@pytest.mark.parametrize("task", ["inpaint_box", "sr2"])
@pytest.mark.parametrize("method", list(SETTINGS))
def test_solver_beats_pseudo_inverse(digits, method, task):
    from diffusekit.metrics import psnr

    den, x, cond = digits
    op = OPERATORS[task]()
    y = op.measure(x, SIGMA_Y, torch.Generator().manual_seed(1))
    steps, options = SETTINGS[method]
    out = SOLVERS[method](den, y, op, grid_uniform(den.schedule, steps, t_end=0.0), sigma_y=SIGMA_Y, cond=cond,
                          generator=torch.Generator().manual_seed(2), **options[task])
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    base = psnr(solve_pinv(den, y, op).clamp(-1, 1), x).mean()
    ours = psnr(out.detach().clamp(-1, 1), x).mean()
    assert ours > base + 0.5, f"{method} on {task}: PSNR {ours:.2f} vs pinv {base:.2f}"


def test_same_seed_same_result_any_batch(digits):
    den, x, cond = digits
    op = super_resolution(SHAPE, 2)
    y = op.measure(x, SIGMA_Y, torch.Generator().manual_seed(1))
    ts = grid_uniform(den.schedule, 4, t_end=0.0)
    gens = lambda k: [torch.Generator().manual_seed(10 + i) for i in range(k)]  # noqa: E731
    with torch.no_grad():
        full = solve_ddrm(den, y, op, ts, sigma_y=SIGMA_Y, cond=cond, generator=gens(8))
        half = solve_ddrm(den, y[:4], op, ts, sigma_y=SIGMA_Y, cond={"class_labels": cond["class_labels"][:4]},
                          generator=gens(4))
    torch.testing.assert_close(full[:4], half, atol=1e-5, rtol=1e-5)


# -- any schedule: exact Gaussian prior, where posterior sampling has a closed-form error -----------------
@pytest.mark.parametrize("schedule_name", ["vp_discrete", "vp_linear", "ve", "flow"])
def test_solvers_work_for_any_schedule_on_gaussian_prior(schedule_name):
    """Prior N(0, Sigma) on 2 x 2 images (correlation 0.9), top-left pixel missing, sigma_y = 0.05. An exact
    posterior sample has expected squared error 2 tr(Sigma_post) / n; DDRM should match it (Kawar et al.:
    DDRM is a posterior sampler for linear-Gaussian problems), and every solver beats the pseudo-inverse."""
    from diffusekit.core import (FlowSchedule, FunctionDenoiser, GaussianMixture, VESchedule, VPDiscrete, VPLinear,
                                 grid_logsnr)

    schedule = {"vp_discrete": lambda: VPDiscrete.named("linear"), "vp_linear": VPLinear, "ve": VESchedule,
                "flow": FlowSchedule}[schedule_name]()
    cov = 0.1 * torch.eye(4, dtype=torch.float64) + 0.9
    gmm = GaussianMixture(torch.zeros(1, 4, dtype=torch.float64), cov[None])
    exact = gmm.denoiser(schedule)
    den = FunctionDenoiser(lambda x, t: exact(x.flatten(1), t).reshape(x.shape), schedule)
    op = inpaint_box((1, 2, 2), (0, 1, 0, 1))
    n = 256
    x = gmm.sample(n, torch.Generator().manual_seed(0)).reshape(n, 1, 2, 2)
    y = op.measure(x, SIGMA_Y, torch.Generator().manual_seed(1))
    a = op.apply(torch.eye(4, dtype=torch.float64).reshape(4, 1, 2, 2)).T  # (m, n) matrix of A
    post = cov - cov @ a.T @ torch.linalg.solve(a @ cov @ a.T + SIGMA_Y**2 * torch.eye(3, dtype=torch.float64), a @ cov)
    sample_mse = 2 * float(torch.trace(post)) / 4
    pinv_mse = float((solve_pinv(None, y, op) - x).square().mean())
    ts = grid_logsnr(schedule, 30, t_start=0.999 if schedule_name == "flow" else None, t_end=0.0)
    options = {"dps": {"zeta": 1.0}, "ddrm": {}, "reddiff": {"lam": 25.0, "lr": 0.25}}
    for method, opts in options.items():
        out = SOLVERS[method](den, y, op, ts, sigma_y=SIGMA_Y, generator=torch.Generator().manual_seed(2), **opts)
        mse = float((out.detach() - x).square().mean())
        assert mse < 0.7 * pinv_mse, f"{method}: MSE {mse:.4f} vs pinv {pinv_mse:.4f}"
        if method == "ddrm":
            assert mse == pytest.approx(sample_mse, rel=0.25), f"DDRM MSE {mse:.4f} vs exact sampling {sample_mse:.4f}"


def test_ddrm_and_reddiff_need_alpha_positive_at_start():
    from diffusekit.core import FlowSchedule, FunctionDenoiser, grid_uniform

    schedule = FlowSchedule()
    den = FunctionDenoiser(lambda x, t: torch.zeros_like(x), schedule)
    op = inpaint_box((1, 2, 2), (0, 1, 0, 1))
    y = torch.zeros(2, 3, dtype=torch.float64)
    for fn in (solve_ddrm, solve_reddiff):
        with pytest.raises(ValueError, match="alpha_t > 0"):
            fn(den, y, op, grid_uniform(schedule, 4, t_end=0.0), sigma_y=SIGMA_Y)


# -- solvers with the natural-image patch prior ------------------------------------------------------------
@pytest.fixture(scope="module")
def patches():
    from diffusekit import zoo
    from diffusekit.data import load_dataset

    return zoo.load("patches_unet"), load_dataset("patches", "test", n=8, seed=11, min_std=0.1).x


@pytest.mark.parametrize("method,task,steps,options", [
    ("dps", "inpaint_random", 50, {"zeta": 1.0}),
    ("ddrm", "deblur", 20, {}),
    ("reddiff", "deblur", 30, {"lam": 25.0, "lr": 0.1}),
])
def test_patch_prior_beats_pseudo_inverse_on_held_out_natural_patches(patches, method, task, steps, options):
    from diffusekit.methods.inverse import gaussian_blur, inpaint_random
    from diffusekit.metrics import psnr

    den, x = patches
    op = {"inpaint_random": lambda: inpaint_random((1, 16, 16), 0.5, seed=0),
          "deblur": lambda: gaussian_blur((1, 16, 16), 1.0)}[task]()
    y = op.measure(x, SIGMA_Y, torch.Generator().manual_seed(1))
    with torch.set_grad_enabled(method == "dps"):
        out = SOLVERS[method](den, y, op, grid_uniform(den.schedule, steps, t_end=0.0), sigma_y=SIGMA_Y,
                              generator=torch.Generator().manual_seed(2), **options)
    base = psnr(solve_pinv(den, y, op).clamp(-1, 1), x).mean()
    ours = psnr(out.detach().clamp(-1, 1), x).mean()
    assert ours > base + 2.0, f"{method} on {task}: PSNR {ours:.2f} vs pinv {base:.2f}"


@pytest.fixture(scope="module")
def inverse_bench(tmp_path_factory):
    import json

    from diffusekit.bench import run_bench

    out = tmp_path_factory.mktemp("inverse")
    run_bench("inverse", out=out, quick=True)
    return json.loads((out / "inverse.json").read_text())


def test_inverse_bench_json_layout(inverse_bench):
    """``DIR/inverse.json`` maps task -> method -> {psnr, ssim, nfe, seconds} (digits at the top level, patches
    under "patches"), and every diffusion method beats the pseudo-inverse on the digits tasks."""
    saved = inverse_bench
    tasks = ("inpaint_box", "inpaint_random", "sr2", "sr4", "deblur")
    methods = ("pinv", "dps", "ddrm", "reddiff")
    for table in (saved, saved["patches"]):
        for task in tasks:
            assert set(methods) <= set(table[task])
            for method in methods:
                row = table[task][method]
                assert {"psnr", "ssim", "nfe", "seconds"} <= set(row)
                assert math.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1 and row["seconds"] >= 0
    assert all(saved[t][m]["psnr"] > saved[t]["pinv"]["psnr"] for t in tasks for m in methods[1:])


def test_inverse_bench_tunes_on_disjoint_images(inverse_bench):
    """Settings are chosen on tuning images disjoint from the reported ones; the split is in the JSON."""
    from diffusekit.bench.inverse import image_split

    saved = inverse_bench
    for prior in ("digits", "patches"):
        split = saved["split"][prior]
        (a, b), (c, d) = split["reported"], split["tuning"]
        assert b - a == saved["num_images"][prior] and d - c == saved["num_tuning_images"][prior]
        assert b <= c or d <= a, "index ranges overlap"
        x, x_tune, again = image_split(prior, b - a, d - c)
        assert again == split
        # no tuning image equals a reported one
        same = (x[:, None] - x_tune[None]).flatten(2).abs().amax(-1) == 0
        assert not bool(same.any())
        dps = saved["tuning"][prior]["inpaint_box"]["dps"]
        assert len(dps) >= 2 and all(math.isfinite(r["tuning_psnr"]) for r in dps)
        chosen = saved["inpaint_box"]["dps"]["zeta"] if prior == "digits" else \
            saved["patches"]["inpaint_box"]["dps"]["zeta"]
        assert chosen == max(dps, key=lambda r: r["tuning_psnr"])["zeta"]
