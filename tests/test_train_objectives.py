"""``diffusekit train`` objectives: cfm (with couplings), interpolant, autoencoder, and training in a latent space;
each checkpoint samples through ``diffusekit sample`` (a Denoiser view, or decoding latents)."""

import json

import numpy as np
import pytest

from diffusekit.cli import load_denoiser, main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def _samples(path):
    with np.load(path) as f:
        return f["samples"]


def test_cfm_with_ot_coupling_trains_resumes_and_samples(tmp_path, capsys):
    run = tmp_path / "cfm"
    common = ["--data", "moons", "--num-examples", "256", "--batch-size", "32", "--out", str(run), "--no-progress"]
    assert main(["train", "--objective", "cfm", "--coupling", "ot", "--steps", "20", *common]) == 0
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["extra_config"]["kind"] == "cfm"
    assert meta["extra_config"]["loss"]["matcher"]["name"] == "ot"
    # the saved config has no diffusion schedule, and resuming keeps the objective
    assert main(["train", "--resume", "--steps", "30", "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 30
    from diffusekit.methods.flow_matching import CFMDenoiser

    assert isinstance(load_denoiser(str(run)), CFMDenoiser)
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(run), "--count", "16", "--steps", "4", "--out", str(out),
                 "--no-progress"]) == 0
    x = _samples(out)
    assert x.shape == (16, 2) and np.isfinite(x).all()


def test_one_sided_interpolant_samples_and_two_sided_says_how(tmp_path, capsys):
    cfg = tmp_path / "i.yaml"
    cfg.write_text("objective: {name: interpolant, path: one_sided_linear}\n")
    common = ["--data", "moons", "--num-examples", "256", "--batch-size", "32", "--steps", "10", "--no-progress"]
    run = tmp_path / "one"
    assert main(["train", "--config", str(cfg), "--out", str(run), *common]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(run), "--count", "8", "--steps", "3", "--out", str(out),
                 "--no-progress"]) == 0
    assert _samples(out).shape == (8, 2)
    two = tmp_path / "two"  # the default linear path with a Brownian latent has no Gaussian forward process
    assert main(["train", "--objective", "interpolant", "--out", str(two), *common]) == 0
    assert main(["sample", "--model", str(two), "--count", "8", "--out", str(tmp_path / "t.npz")]) != 0
    assert "methods.interpolants" in _error_line(capsys)


def test_autoencoder_then_latent_diffusion_decodes_to_images(tmp_path, capsys):
    ae = tmp_path / "ae"
    assert main(["train", "--objective", "autoencoder", "--steps", "20", "--batch-size", "32", "--num-examples", "128",
                 "--out", str(ae), "--no-progress"]) == 0
    assert "latent scale factor" in capsys.readouterr().err
    from diffusekit.methods.latent.autoencoder import load_autoencoder

    scale = float(load_autoencoder(ae).scale_factor)
    assert scale != 1.0 and np.isfinite(scale)  # fitted on the data after training
    ldm = tmp_path / "ldm"
    assert main(["train", "--latent", str(ae), "--conditional", "--label-dropout", "0.1", "--steps", "10",
                 "--batch-size", "32", "--num-examples", "128", "--net", "unet", "--out", str(ldm),
                 "--no-progress"]) == 0
    den = load_denoiser(str(ldm))
    assert tuple(den.latent_shape) != tuple(den.image_shape)
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(ldm), "--count", "6", "--steps", "3", "--guidance", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert _samples(out).shape == (6, 1, 8, 8)
    assert main(["sample", "--model", str(ldm), "--count", "4", "--steps", "2", "--out", str(tmp_path / "g.png"),
                 "--no-progress"]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--objective", "cfm", "--schedule", "ve"], "own time convention"),
    (["--objective", "cfm", "--prediction", "v"], "belongs to the diffusion objective"),
    (["--objective", "cfm", "--latent", "nowhere"], "not supported there"),
    (["--objective", "interpolant", "--conditional"], "unconditional"),
    (["--data", "digits", "--latent", "nowhere"], "nowhere"),
    (["--latent", "nowhere"], "needs image data"),
    (["--objective", "cfm", "--coupling", "sb", "--config", "SB0"], "sigma"),
])
def test_objective_errors_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    flags = [str(tmp_path / "sb0.yaml") if f == "SB0" else f for f in flags]
    (tmp_path / "sb0.yaml").write_text("objective: {name: cfm, coupling: sb, sigma: 0}\n")
    out = tmp_path / "run"
    assert main(["train", "--data", "moons", "--steps", "2", "--batch-size", "8", "--num-examples", "32",
                 "--out", str(out), "--no-progress", *flags]) != 0
    assert message in _error_line(capsys)
    assert not (out / "checkpoint.json").exists()


def test_unknown_objective_option_lists_the_allowed_ones(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("objective: {name: cfm, couplng: ot}\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) != 0
    line = _error_line(capsys)
    assert "couplng" in line and "coupling" in line


def test_interpolant_loss_takes_per_example_generators():
    """The trainer's loss_noise="per_example" hands one generator per example: an example's loss then does not
    depend on the batch it is computed in (what resuming at another world size needs)."""
    import torch

    from diffusekit.methods.interpolants import InterpolantLoss
    from diffusekit.nets import build_net

    net = build_net({"name": "mlp", "dim": 2})
    with torch.no_grad():  # its last layer starts at zero; any output will do here
        for p in net.parameters():
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    x1 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    loss = InterpolantLoss("linear", "brownian", "velocity")

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(6)]

    whole = loss(net, (x1,), gens())
    g = gens()
    halves = torch.cat([loss(net, (x1[:2],), g[:2]), loss(net, (x1[2:],), g[2:])])
    assert torch.allclose(whole, halves, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(whole, loss(net, (x1,), [torch.Generator().manual_seed(7 + i) for i in range(6)]))


@pytest.mark.parametrize("objective", ["cfm", "interpolant"])
def test_data_to_data_flow_trains_and_transports_source_draws(tmp_path, capsys, objective):
    """objective source: gmm_ring8 -> moons; sample pushes fresh ring8 test draws through the learned ODE, and more
    training moves them closer to moons than the source draws were (sliced W2)."""
    import torch

    from diffusekit.data import load_dataset
    from diffusekit.metrics import sliced_wasserstein

    cfg = tmp_path / "d.yaml"
    extra = ", coupling: ot" if objective == "cfm" else ", path: linear, gamma: brownian"
    cfg.write_text(f"objective: {{name: {objective}, source: gmm_ring8{extra}}}\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data", "moons", "--num-examples", "512", "--batch-size", "64",
                 "--steps", "150", "--ema-decay", "0.9", "--out", str(run), "--no-progress"]) == 0  # short: fast EMA
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(run), "--count", "400", "--steps", "20", "--out", str(out),
                 "--no-progress"]) == 0
    with np.load(out) as f:
        x, x0 = torch.from_numpy(f["samples"]), torch.from_numpy(f["source"])
    moons = load_dataset("moons", "test", n=400).x
    g = torch.Generator().manual_seed(0)
    assert x.shape == x0.shape == (400, 2)
    assert sliced_wasserstein(x, moons, generator=g) < 0.6 * sliced_wasserstein(x0, moons, generator=g)
    assert main(["sample", "--model", str(run), "--guidance", "2", "--out", str(tmp_path / "g.npz")]) != 0
    assert "only --steps, --count and --seed apply" in _error_line(capsys)


def test_data_source_errors(tmp_path, capsys):
    cfg = tmp_path / "d.yaml"
    cfg.write_text("objective: {name: interpolant, path: one_sided_linear, source: gmm_ring8}\n")
    assert main(["train", "--config", str(cfg), "--data", "moons", "--out", str(tmp_path / "r")]) != 0
    assert "two-sided path" in _error_line(capsys)
    cfg.write_text("objective: {name: cfm, source: digits}\n")
    assert main(["train", "--config", str(cfg), "--data", "moons", "--num-examples", "100", "--steps", "2",
                 "--out", str(tmp_path / "r")]) != 0
    assert "shape" in _error_line(capsys)
