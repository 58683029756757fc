"""StyleTTS-ZS (arXiv 2409.10058): VQ prosody code, EDM style diffusion with CFG on the speaker prompt, one-step
distillation. Unit checks on untrained modules, then the quick bench (one training run) for the directions."""

import json
import math

import pytest
import torch

from diffusekit.core.schedules import VESchedule
from diffusekit.methods.styletts_zs import (SIGMA_DATA, ProsodyVQ, StyleDenoiserNet, prompt_guided, style_denoiser,
                                            style_schedule)
from diffusekit.methods.styletts_zs_data import prompt_partners, speaker_split
from diffusekit.methods.styletts_zs_train import StyleCondition, edm_style_loss


def _condition(batch: int, vocab: int = 12, generator=None) -> StyleCondition:
    g = generator or torch.Generator().manual_seed(0)
    return StyleCondition(torch.randint(1, vocab, (batch, 64), generator=g), torch.randn(batch, 4, generator=g),
                          torch.ones(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.long))


def test_vq_nearest_code_and_straight_through():
    torch.manual_seed(0)
    vq = ProsodyVQ(latent_dim=4, codebook_size=16, channels=16)
    z_e = torch.randn(3, 4, 16, requires_grad=True)
    z_q, idx, codebook_loss, commit_loss = vq.quantize(z_e)
    brute = torch.cdist(z_e.detach().transpose(1, 2).reshape(-1, 4), vq.codebook.detach()).argmin(1).view(3, 16)
    assert torch.equal(idx, brute)
    assert torch.allclose(z_q, vq.codebook[idx].transpose(1, 2), atol=1e-6)
    assert torch.allclose(codebook_loss, commit_loss) and codebook_loss.shape == (3,)
    z_q.sum().backward()  # straight-through: dz_q/dz_e = I
    assert torch.allclose(z_e.grad, torch.ones_like(z_e))
    recon, *_ = vq(torch.randn(2, 2, 64))
    assert recon.shape == (2, 2, 64)


class _RecordingNet(torch.nn.Module):
    """F(x_in, t_in) = 0.3 x_in + 0.1 t_in / 1000, recording its inputs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t_in, **cond):
        self.seen = (x.detach().clone(), t_in.detach().clone())
        return self.w * x + 0.1 * t_in[:, None, None] / 1000


def test_edm_preconditioning_equations():
    net = _RecordingNet()
    d = style_denoiser(net)
    assert isinstance(d.schedule, VESchedule)
    x = torch.randn(4, 8, 16, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 2.0, 10.0], dtype=torch.float64)
    out = d(x, sigma)
    s = sigma[:, None, None]
    c_skip, c_out = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2), s * SIGMA_DATA / torch.sqrt(s**2 + SIGMA_DATA**2)
    c_in, c_noise = 1 / torch.sqrt(s**2 + SIGMA_DATA**2), torch.log(sigma) / 4
    x_in, t_in = net.seen
    assert torch.allclose(x_in.double(), c_in * x, atol=1e-6)
    assert torch.allclose(t_in.double() / 1000, c_noise, atol=1e-6)  # c_noise = ln(sigma)/4 (StyleTTS2, EDM)
    f = 0.3 * c_in * x + 0.1 * c_noise[:, None, None]
    assert torch.allclose(out, c_skip * x + c_out * f, atol=1e-5)


def test_edm_loss_is_lambda_weighted_denoising_error():
    """L = lambda(sigma) ||D(y + sigma n; sigma) - y||^2 with lambda = (sigma^2 + sd^2)/(sigma sd)^2 and
    ln sigma ~ N(-1.2, 1.2^2)."""
    torch.manual_seed(0)
    net = StyleDenoiserNet(12, latent_dim=8, channels=16, text_dim=8, emb_dim=16)
    y, cond = torch.randn(6, 8, 16) * 0.5, _condition(6)
    loss = edm_style_loss(net, y, cond, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws, in the same order
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(6, generator=g, dtype=torch.float64)).clamp(0.002, 10.0)
    n = torch.randn(y.shape, generator=g)
    with torch.no_grad():
        d = style_denoiser(net)(y + sigma[:, None, None].float() * n, sigma, **cond.cond())
    lam = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    expected = lam.float() * (d - y).pow(2).flatten(1).mean(1)
    assert torch.allclose(loss.detach(), expected, rtol=1e-3, atol=1e-5)


def test_cfg_on_prompt_limits_and_one_batched_call():
    torch.manual_seed(0)
    net = StyleDenoiserNet(12, latent_dim=8, channels=16, text_dim=8, emb_dim=16)
    with torch.no_grad():
        net.null_prompt.normal_()  # an untrained null embedding is zero; make it differ from the prompt's
    cond = _condition(3)
    x, t = torch.randn(3, 8, 16), torch.full((3,), 0.7, dtype=torch.float64)
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        conditional = style_denoiser(net)(x, t, **cond.cond())
        unconditional = style_denoiser(net)(x, t, **{**cond.cond(), "keep": torch.zeros(3, dtype=torch.bool)})
        calls.clear()
        guided = prompt_guided(net, 2.5)(x, t, **cond.cond())
        assert calls == [6]  # conditional and null-prompt passes in one call of 2B
        assert torch.allclose(prompt_guided(net, 0.0)(x, t, **cond.cond()), unconditional, atol=1e-5)
        assert torch.allclose(prompt_guided(net, 1.0)(x, t, **cond.cond()), conditional, atol=1e-6)
    assert torch.allclose(guided, unconditional + 2.5 * (conditional - unconditional), atol=1e-4)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)


def test_speaker_split_and_prompt_partners():
    speakers = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    train, test = speaker_split(speakers.numpy(), held_out=2, seed=0)
    assert not {int(speakers[i]) for i in train} & {int(speakers[i]) for i in test}
    assert sorted(train + test) == list(range(10))
    partners = prompt_partners(speakers, range(10), range(10), torch.Generator().manual_seed(0))
    assert torch.equal(speakers[partners], speakers) and bool((partners != torch.arange(10)).all())
    with pytest.raises(ValueError, match="held_out"):
        speaker_split(speakers.numpy(), held_out=4)
    assert math.isclose(style_schedule().t_max, 10.0)


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    from diffusekit.bench import run_bench

    out = tmp_path_factory.mktemp("styletts_zs")
    result = run_bench("styletts_zs", out=out, quick=True)
    return result, out


def test_quick_bench_directions(quick_bench):
    result, out = quick_bench
    assert (out / "styletts_zs.png").is_file()
    assert json.loads((out / "styletts_zs.json").read_text())["summary"] == result["summary"]
    vq = result["vq"]
    # the 16-token code reconstructs held-out contours far better than each contour's own mean (a constant)
    assert vq["reconstruction_mse"] < 0.3 * vq["constant_contour_mse"]
    rows = result["contours"]
    student, teacher1 = rows["student@1 (distilled)"], rows["teacher euler@1"]
    teacher = rows["teacher heun@15"]
    assert student["network_calls"] == 1 and teacher1["network_calls"] == 1 and teacher["network_calls"] == 15
    # the multi-step teacher beats its own one-call sample; the distilled one-call student closes the gap
    assert teacher["mmd"] < teacher1["mmd"] - 0.01
    assert student["mmd"] < teacher1["mmd"] - 0.01
    assert student["mmd"] < rows["baseline: global style only"]["mmd"] - 0.05
    # CFG on the speaker prompt pulls the sample's mean f0 to the prompt speaker's (w=2 vs the null prompt)
    g = result["guidance"]
    assert g["w=2"]["f0_error_semitones"] < g["w=0"]["f0_error_semitones"] - 1.5


def test_prosody_data_split_is_zero_shot(quick_bench):
    from diffusekit.methods.styletts_zs_data import F0_RANGE, FRAMES, prosody_dataset

    data = prosody_dataset()  # cached by the bench run
    assert data.contours.shape == (240, 2, FRAMES) and data.phonemes.shape == (240, FRAMES)
    assert not set(data.speakers[data.test].tolist()) & set(data.speakers[data.train].tolist())
    assert torch.isfinite(data.contours).all() and torch.isfinite(data.styles).all()
    train = data.contours[data.train]
    assert torch.allclose(train.mean((0, 2)), torch.zeros(2), atol=1e-4)
    f0_hz = data.raw_contours[:, 0].exp()
    assert F0_RANGE[0] - 1e-3 <= float(f0_hz.min()) and float(f0_hz.max()) <= F0_RANGE[1] + 1e-3
