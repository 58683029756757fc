"""DPM-Encoder / CycleDiffusion (arXiv 2210.05559): exact reconstruction, the decoder is our DDIM sampler, the
latent's noise statistics under the exact GMM denoiser, CycleDiffusion identities, a zero-shot class edit with the
zoo model, latent-energy guidance, the digit domains, the CLI's error paths and the quick bench's direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusekit import zoo
from diffusekit.cli import main
from diffusekit.core import GaussianMixture, VPDiscrete, grid_uniform
from diffusekit.core.noise import randn_like
from diffusekit.data.digits import load_digits_split
from diffusekit.methods.cyclediffusion import (DPMLatent, classifier_energy, cycle_diffusion, ddim_invert,
                                               dpm_decode, dpm_encode, latent_energy_guidance, thick_digits,
                                               thin_digits, translation_grid)
from diffusekit.samplers import sample_ddim, sample_ddpm

SCHED = VPDiscrete.named("linear", 1000)


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    a = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    covs = 0.1 * a @ a.transpose(1, 2) + 0.05 * torch.eye(4, dtype=torch.float64)
    return GaussianMixture(means, covs)


@pytest.fixture(scope="module")
def digits_model():
    return zoo.load("digits_unet"), zoo.load("digits_classifier")


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("steps", [1, 7, 40])
def test_encoder_then_decoder_reproduces_the_input_in_float64(mixture, eta, steps):
    den = mixture.denoiser(SCHED)
    x0 = mixture.sample(64, torch.Generator().manual_seed(1)).double()
    ts = translation_grid(SCHED, steps, t_start=0.9)
    z = dpm_encode(den, x0, ts, eta=eta, generator=torch.Generator().manual_seed(2))
    assert z.noises.shape == (steps, 64, 4) and z.x_T.dtype == torch.float64
    assert float((dpm_decode(den, z) - x0).abs().max()) < 1e-10


def test_reconstruction_holds_for_a_float32_network_up_to_float32_rounding(digits_model):
    den, _ = digits_model
    x, y = load_digits_split("test")
    x, cond = x[:8].double(), {"class_labels": y[:8]}
    ts = translation_grid(den.schedule, 6)
    with torch.no_grad():
        z = dpm_encode(den, x, ts, eta=0.3, cond=cond, generator=torch.Generator().manual_seed(0))
        err = float((dpm_decode(den, z, cond=cond) - x).abs().max())
        assert err < 1e-4
        # with the other class the same latent decodes to something else
        assert float((dpm_decode(den, z, cond={"class_labels": (y[:8] + 1) % 10}) - x).abs().max()) > 0.5


@pytest.mark.parametrize("t_end", [0.0, None])
def test_decoder_is_sample_ddim_fed_the_same_noises(mixture, t_end):
    den = mixture.denoiser(SCHED)
    ts = grid_uniform(SCHED, 9, t_end=t_end)
    x_T = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = sample_ddim(den, x_T, ts, eta=0.7, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # replay sample_ddim's draws: one per step with noise (none onto t = 0)
    noises = [randn_like(x_T, g) if float(t) > 0 else torch.zeros_like(x_T) for t in ts[1:]]
    got = dpm_decode(den, DPMLatent(x_T, torch.stack(noises), ts, 0.7))
    assert torch.equal(got, ref)


def test_eta_one_decoder_is_the_ddpm_sampler(mixture):
    """eta = 1 is DDPM ancestral sampling: the decoder equals ``sample_ddpm`` fed the same noises."""
    den = mixture.denoiser(SCHED)
    ts = grid_uniform(SCHED, 12, t_end=0.0)
    x_T = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    ref = sample_ddpm(den, x_T, ts, generator=torch.Generator().manual_seed(13))
    g = torch.Generator().manual_seed(13)
    noises = [randn_like(x_T, g) if float(t) > 0 else torch.zeros_like(x_T) for t in ts[1:]]
    got = dpm_decode(den, DPMLatent(x_T, torch.stack(noises), ts, 1.0))
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)


def test_latent_noise_is_standard_normal_under_the_exact_denoiser(mixture):
    """E[eps_i] = 0 exactly (the exact denoiser is the posterior mean); the excess variance k^2 Var(x0|x_s)/c^2
    shrinks with the step (measured: 0.12 at 50 steps, 0.036 at 200), and the shape is Gaussian."""
    den = mixture.denoiser(SCHED)
    x0 = mixture.sample(2000, torch.Generator().manual_seed(5)).double()
    excess = {}
    for steps in (50, 200):
        z = dpm_encode(den, x0, translation_grid(SCHED, steps), eta=1.0, generator=torch.Generator().manual_seed(6))
        eps = z.noises[:-1].flatten()  # the last noise absorbs x0 - x0_hat(x_{t_{n-1}}): not a forward draw
        std = float(eps.std())
        excess[steps] = std**2 - 1
        assert abs(float(eps.mean())) < 0.01
    assert excess[200] > 0 and excess[50] > 2.5 * excess[200] and abs(std - 1) < 0.03
    standard = eps / std
    assert abs(float((standard.abs() < 1).double().mean()) - 0.6827) < 0.01
    assert abs(float(standard.pow(4).mean()) - 3) < 0.15  # Gaussian kurtosis
    x_T = z.x_T.flatten()
    assert abs(float(x_T.mean())) < 0.03 and abs(float(x_T.std()) - 1) < 0.03


def test_cyclediffusion_with_source_equal_target_returns_the_input(mixture):
    den = mixture.denoiser(SCHED)
    x0 = mixture.sample(32, torch.Generator().manual_seed(7)).double()
    y = cycle_diffusion(den, den, x0, translation_grid(SCHED, 12, t_start=0.7), eta=0.2,
                        generator=torch.Generator().manual_seed(8))
    assert float((y - x0).abs().max()) < 1e-10


def test_cyclediffusion_moves_toward_the_target_model(mixture):
    """Two mixtures differing by a shift: translating source samples lands near the target mixture."""
    shift = torch.tensor([2.0, -1.0, 0.0, 1.0], dtype=torch.float64)
    target_mix = GaussianMixture(mixture.means + shift, mixture.covs)
    x0 = mixture.sample(500, torch.Generator().manual_seed(9)).double()
    y = cycle_diffusion(mixture.denoiser(SCHED), target_mix.denoiser(SCHED), x0, translation_grid(SCHED, 30),
                        eta=0.1, generator=torch.Generator().manual_seed(10))
    assert float(target_mix.log_prob(y).mean()) > float(target_mix.log_prob(x0).mean()) + 5
    assert float((y - x0 - shift).norm(dim=1).mean()) < 0.6 * float(shift.norm())  # mostly the shift, kept pairing


def test_zero_shot_class_edit_reaches_the_target_class(digits_model):
    den, clf = digits_model
    x, y = load_digits_split("test")
    x, y = x[:40], y[:40]
    target = (y + 3) % 10
    with torch.no_grad():
        out = cycle_diffusion(den, den, x, translation_grid(den.schedule, 10, t_start=0.6), eta=0.1,
                              source_cond={"class_labels": y}, target_cond={"class_labels": target},
                              generator=torch.Generator().manual_seed(0))
        pred = clf(out.clamp(-1, 1)).argmax(1)
    to_target, kept = float((pred == target).float().mean()), float((pred == y).float().mean())
    assert to_target > 0.6 and to_target > kept + 0.4


def test_latent_energy_guidance_lowers_the_energy(digits_model):
    den, clf = digits_model
    x, y = load_digits_split("test")
    x, y = x[:6], y[:6]
    target = (y + 5) % 10
    ts = translation_grid(den.schedule, 4, t_start=0.3)
    z = dpm_encode(den, x, ts, eta=0.5, cond={"class_labels": y}, generator=torch.Generator().manual_seed(1))
    z_new, history = latent_energy_guidance(den, z, classifier_energy(clf, target), steps=3, step_size=0.3,
                                            weight=10.0, noise_scale=0.0, cond={"class_labels": y})
    assert len(history) == 4 and history[-1] < 0.5 * history[0]  # measured: 15 -> 1.4
    assert z_new.noises.shape == z.noises.shape and not z_new.x_T.requires_grad


def test_ddim_inversion_is_exact_only_in_the_small_step_limit(mixture):
    den = mixture.denoiser(SCHED)
    x0 = mixture.sample(64, torch.Generator().manual_seed(11)).double()
    errs = {}
    for steps in (10, 200):
        ts = grid_uniform(SCHED, steps, t_start=0.5, t_end=0.0)
        errs[steps] = float((sample_ddim(den, ddim_invert(den, x0, ts), ts) - x0).abs().mean())
    assert errs[200] < 0.5 * errs[10] and errs[200] < 0.05


def test_domains_change_stroke_thickness():
    x, _ = load_digits_split("test")
    ink = {name: float(((f(x) + 1) / 2).mean()) for name, f in (("thin", thin_digits), ("orig", lambda v: v),
                                                                  ("thick", thick_digits))}
    assert ink["thin"] < ink["orig"] - 0.08 and ink["thick"] > ink["orig"] + 0.08
    assert float(thick_digits(x).min()) >= -1 and float(thick_digits(x).max()) <= 1


def test_encoder_refuses_eta_zero(mixture):
    with pytest.raises(ValueError, match="eta > 0"):
        dpm_encode(mixture.denoiser(SCHED), torch.zeros(2, 4), translation_grid(SCHED, 3), eta=0.0)


# --- the command line ---------------------------------------------------------------------------------------

def _err(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def _digits_npz(path, n=3, **extra):
    x, _ = load_digits_split("test")
    np.savez(path, samples=x[:n].numpy(), **extra)
    return path


def test_translate_cli_class_edit_writes_npz_and_png(tmp_path, capsys):
    inp = _digits_npz(tmp_path / "in.npz")
    out = tmp_path / "out.npz"
    base = ["translate", "--source", "zoo:digits_unet", "--source-class", "7", "--target-class", "7", "--input",
            str(inp), "--steps", "4", "--no-progress"]
    assert main([*base, "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["samples"].shape == (3, 1, 8, 8)
        assert np.abs(f["samples"] - f["inputs"]).max() < 1e-4  # same model, same class: the input back
    assert main([*base, "--out", str(tmp_path / "out.png")]) == 0 and (tmp_path / "out.png").stat().st_size > 0
    before = out.read_bytes()
    assert "already exists; pass --overwrite" in _err(capsys, [*base, "--out", str(out)])
    assert out.read_bytes() == before


def test_translate_cli_reads_a_png(tmp_path):
    from PIL import Image

    x, y = load_digits_split("test")
    pixels = ((x[0, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    out = tmp_path / "y.npz"
    assert main(["translate", "--source", "zoo:digits_unet", "--source-class", str(int(y[0])), "--target-class",
                 str(int(y[0])), "--input", str(tmp_path / "digit.png"), "--out", str(out), "--steps", "3",
                 "--no-progress"]) == 0
    with np.load(out) as f:
        assert f["inputs"].shape == (1, 1, 8, 8) and np.abs(f["inputs"][0, 0] - x[0, 0].numpy()).max() < 1 / 127
        assert np.abs(f["samples"] - f["inputs"]).max() < 1e-4


@pytest.mark.parametrize("extra, match", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--eta", "0"], "--eta must be > 0"),
    (["--source-class", "3"], "give both --source-class and --target-class"),
    (["--source-class", "3", "--target-class", "12"], "--target-class must be an integer in [0, 9]"),
    (["--source-class", "3", "--target-class", "4", "--t-start", "2"], "--t-start/--t-end"),
])
def test_translate_cli_bad_flags_are_one_line_errors(tmp_path, capsys, extra, match):
    inp = _digits_npz(tmp_path / "in.npz")
    out = tmp_path / "o.npz"
    assert match in _err(capsys, ["translate", "--source", "zoo:digits_unet", "--input", str(inp), "--out", str(out),
                                  *extra])
    assert not out.exists()


def test_translate_cli_bad_inputs_are_one_line_errors(tmp_path, capsys):
    def run(inp, out="o.npz", *extra):
        return _err(capsys, ["translate", "--source", "zoo:digits_unet", "--source-class", "1", "--target-class", "2",
                             "--input", str(inp), "--out", str(tmp_path / out), *extra])

    assert "no such file" in run(tmp_path / "missing.npz")
    (tmp_path / "x.txt").write_text("hi")
    assert "must be a .npz or .png" in run(tmp_path / "x.txt")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in run(tmp_path / "bad.npz")
    np.savez(tmp_path / "wide.npz", samples=np.zeros((2, 1, 16, 16), np.float32))
    assert "the model takes (1, 8, 8)" in run(tmp_path / "wide.npz")
    np.savez(tmp_path / "raw.npz", samples=np.full((2, 1, 8, 8), 16.0, np.float32))
    assert "scaled to [-1, 1]" in run(tmp_path / "raw.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 8, 8)), b=np.zeros((2, 8, 8)))
    assert "give one array" in run(tmp_path / "two.npz")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG garbage")
    assert "not a readable PNG" in run(tmp_path / "fake.png")
    assert "--out must end in .png or .npz" in run(_digits_npz(tmp_path / "ok.npz"), "o.jpg")
    assert "unconditional" in _err(capsys, ["translate", "--source", "zoo:patches_unet", "--source-class", "1",
                                            "--target-class", "2", "--input", str(tmp_path / "ok.npz"),
                                            "--out", str(tmp_path / "o.npz")])
    assert "different noise schedules" in _err(capsys, ["translate", "--source", "zoo:digits_unet", "--target",
                                                        "zoo:toy_ring8", "--input", str(tmp_path / "ok.npz"),
                                                        "--out", str(tmp_path / "o.npz")])
    assert "--target is needed" in _err(capsys, ["translate", "--source", "zoo:digits_unet", "--input",
                                                 str(tmp_path / "ok.npz"), "--out", str(tmp_path / "o.npz")])
    assert not (tmp_path / "o.npz").exists()


# --- the quick bench ----------------------------------------------------------------------------------------

def test_quick_bench_cyclediffusion_direction(tmp_path):
    """At tiny scale: the DPM-Encoder reconstructs (float32 network) where DDIM inversion does not; in the zero-shot
    class edit CycleDiffusion keeps more of the input (SSIM) than SDEdit at the same target-class rate; latent
    guidance moves the class toward the target."""
    from diffusekit.bench import run_bench

    result = run_bench("cyclediffusion", out=tmp_path, quick=True)
    assert (tmp_path / "cyclediffusion.json").exists() and (tmp_path / "cyclediffusion.png").exists()
    rec = result["domain"]["reconstruction"]
    assert rec["cycle_max_abs_err"] < 1e-3 < rec["ddim_inversion_mean_abs_err"]
    front = result["class_edit"]["frontier_ssim_at_target_acc"]
    assert front["cycle"]["0.7"] is not None and front["sdedit"]["0.7"] is not None
    assert front["cycle"]["0.7"] > front["sdedit"]["0.7"] + 0.05  # measured: 0.76 vs 0.49
    guide = result["guidance"]
    assert guide["gradient"]["target_acc"] > guide["before"]["target_acc"]
    assert guide["gradient"]["energy"][-1] < guide["gradient"]["energy"][0]
