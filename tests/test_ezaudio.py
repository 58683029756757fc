"""EzAudio (arXiv 2409.10819): zero-terminal-SNR schedule and trailing grid against diffusers, v-prediction at
alpha = 0, CFG rescale against its formula, masked training's loss weights, exact known frames in inpainting, and
the inpainting claim (f0 in the gap of held-out chirps) on the shipped asset and in the quick bench."""

import numpy as np
import torch

from diffusekit.core.predictions import x0_from_prediction
from diffusekit.domains.audio.text2audio import audio_tokenizer, compact_mel_image, frozen_text_encoder, pitched_clip
from diffusekit.methods import ezaudio as ez
from diffusekit.methods.ezaudio_net import EzAudioDiT


def test_zero_terminal_snr_schedule_matches_diffusers_and_ends_at_pure_noise():
    from diffusers import DDIMScheduler

    sched = ez.ezaudio_schedule()
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
                        prediction_type="v_prediction", timestep_spacing="trailing")
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), atol=2e-6)
    assert float(sched.alpha(1.0)) == 0.0 and float(sched.sigma(1.0)) == 1.0
    assert float(sched.alphas_cumprod[-1]) == 0.0 and float(sched.alphas_cumprod[-2]) > 0
    # trailing spacing starts at the last train step t = T (pure noise) and matches diffusers' integer steps
    ref.set_timesteps(10)
    grid = ez.grid_trailing(sched, 10)
    assert float(grid[0]) == 1.0 and float(grid[-1]) == 0.0 and grid.numel() == 11
    np.testing.assert_array_equal((grid[:-1] * 1000 - 1).round().long().numpy(), ref.timesteps.numpy())


def test_v_prediction_is_well_defined_at_alpha_zero():
    sched = ez.ezaudio_schedule()
    x0 = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(1))
    t = torch.ones(3, dtype=torch.float64)
    x_t = sched.add_noise(x0, t, eps)
    torch.testing.assert_close(x_t, eps)  # pure noise at t = T
    v = -x0  # v = alpha eps - sigma x0 with alpha = 0, sigma = 1
    recovered = x0_from_prediction(v, x_t, t, sched, "v")
    assert torch.isfinite(recovered).all()
    torch.testing.assert_close(recovered, x0)


class _FakeTextDenoiser:
    """raw(x, t, context, ...) = a caption-dependent v: 2 x for the caption, 0.5 x + 1 for the null caption."""

    def __init__(self):
        self.schedule = ez.ezaudio_schedule()

    def null_condition(self, cond):
        return {"context": torch.zeros_like(cond["context"]), "context_mask": cond["context_mask"]}

    def raw(self, x, t, context, context_mask, **other):
        is_null = (context.abs().sum((1, 2)) == 0).to(x.dtype)[:, None, None]
        return is_null * (0.5 * x + 1.0) + (1 - is_null) * 2.0 * x

    def denoise(self, x, t, **cond):
        return x0_from_prediction(self.raw(x, t, **cond), x, t, self.schedule, "v")


def test_cfg_rescale_matches_the_formula_and_is_finite_at_alpha_zero():
    inner = _FakeTextDenoiser()
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cond = {"context": torch.ones(2, 3, 4, dtype=torch.float64), "context_mask": torch.ones(2, 3, dtype=torch.bool)}
    for t_value in (0.5, 1.0):
        t = torch.full((2,), t_value, dtype=torch.float64)
        alpha, sigma = float(inner.schedule.alpha(t_value)), float(inner.schedule.sigma(t_value))
        v_c, v_u = 2.0 * x, 0.5 * x + 1.0
        v_cfg = v_u + 5.0 * (v_c - v_u)
        ratio = v_c.std(dim=(1, 2), keepdim=True) / v_cfg.std(dim=(1, 2), keepdim=True)
        expected_v = 0.75 * v_cfg * ratio + 0.25 * v_cfg
        got = ez.RescaledCFGDenoiser(inner, 5.0, 0.75)(x, t, **cond)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, alpha * x - sigma * expected_v)
        # the rescaled output's std moves toward the conditional one's
        v_got = (alpha * x - got) / sigma
        assert abs(float(v_got.std() - v_c.std())) < abs(float(v_cfg.std() - v_c.std()))
        plain = ez.RescaledCFGDenoiser(inner, 5.0, 0.0)(x, t, **cond)
        torch.testing.assert_close(plain, alpha * x - sigma * v_cfg)
        torch.testing.assert_close(ez.RescaledCFGDenoiser(inner, 1.0, 0.75)(x, t, **cond), inner.denoise(x, t, **cond))


def test_span_mask_ratio_and_probability():
    g = torch.Generator().manual_seed(0)
    m = ez.span_mask(400, 32, g, mask_prob=1.0, ratio=(0.25, 1.0), span=4)
    assert bool((m.sum(1) >= 8).all()) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert float(m.mean()) < 0.9  # spans, not everything
    none = ez.span_mask(50, 32, g, mask_prob=0.0)
    assert bool((none == 1).all())
    share = float((ez.span_mask(2000, 32, g, mask_prob=0.25).mean(1) < 1).double().mean())
    assert 0.18 < share < 0.30  # ~25 % of examples are span-masked (a few masks cover every frame by chance)


def _tiny_loss(masked=True, mask_prob=1.0):
    tok = audio_tokenizer()
    enc = frozen_text_encoder(tok, seed=0)
    return ez.EzAudioLoss(ez.ezaudio_schedule(), enc, tok, masked=masked, mask_prob=mask_prob, ratio=(0.4, 0.6)), tok


class _OffsetNet(torch.nn.Module):
    """A net whose output is a trainable tensor: the loss gradient on it is the loss weight of each frame."""

    def __init__(self, shape):
        super().__init__()
        self.out = torch.nn.Parameter(torch.zeros(shape))
        self.seen = None

    def forward(self, x, t, context=None, context_mask=None, known=None, known_mask=None):
        self.seen = known_mask
        return self.out.expand_as(x)


def test_masked_training_puts_zero_loss_weight_on_kept_frames():
    loss, tok = _tiny_loss()
    x0 = torch.rand(6, 64, 32) * 2 - 1
    tokens, mask = tok.encode(["a rising chirp"] * 6, max_len=24)
    net = _OffsetNet((6, 64, 32))
    losses = loss(net, (x0, tokens, mask), torch.Generator().manual_seed(0))
    losses.sum().backward()
    m = net.seen
    assert bool(((m > 0).sum(1) < 32).all()) and bool(((m > 0).sum(1) > 0).all())
    grad_frames = net.out.grad.abs().sum(1)  # (B, F)
    assert float(grad_frames[m == 0].abs().max()) == 0.0
    assert bool((grad_frames[m == 1] > 0).all())
    # the unmasked baseline weighs every frame
    base, _ = _tiny_loss(masked=False)
    net2 = _OffsetNet((6, 64, 32))
    base(net2, (x0, tokens, mask), torch.Generator().manual_seed(0)).sum().backward()
    assert net2.seen is None and bool((net2.out.grad.abs().sum(1) > 0).all())


def test_inpainting_keeps_known_frames_exactly_and_linear_fill_interpolates():
    tok = audio_tokenizer()
    enc = frozen_text_encoder(tok, seed=0)
    torch.manual_seed(0)
    net = EzAudioDiT(hidden_size=32, depth=1, num_heads=2, context_dim=enc.width, adapter_rank=2).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.abs().sum():
                p.normal_(0, 0.05)
    den = ez.EzAudioLoss(ez.ezaudio_schedule(), enc, tok).ezaudio_denoiser(net)
    known = torch.rand(2, 64, 32) * 2 - 1
    km = ez.middle_gap_mask(2, 32, 12, 20)
    out = ez.sample_ezaudio(den, ["a rising chirp", "a falling chirp"], known=known, known_mask=km, steps=4,
                            guidance=3.0)
    torch.testing.assert_close(out[:, :, :12], known[:, :, :12], rtol=0, atol=0)
    torch.testing.assert_close(out[:, :, 20:], known[:, :, 20:], rtol=0, atol=0)
    assert not torch.allclose(out[:, :, 12:20], known[:, :, 12:20])
    filled = ez.linear_fill(known, km)
    w = (torch.arange(12, 20) - 11) / 9.0
    torch.testing.assert_close(filled[:, :, 12:20], known[:, :, 11:12] * (1 - w) + known[:, :, 20:21] * w)


def test_mel_peak_f0_reads_real_chirps_within_a_quarter_tone():
    errors = []
    for i in range(6):
        wave, _, event = pitched_clip(5, i, kind=("chirp_up", "chirp_down", "tone")[i % 3])
        errors.append(ez.gap_f0_cents(compact_mel_image(wave), event, 12, 20))
    assert max(errors) < 50.0, errors


def test_quick_bench_masked_training_inpaints_better_than_replacement_and_rescale_desaturates(tmp_path):
    """The paper's claims at our scale (the shipped asset, held-out clips of seed 1, never trained on).

    Inpainting the middle 0.48 s: the masked-trained model uses the known frames (its fill is far closer in f0 than
    the same model's caption-only generation) and beats replacement with the same network trained without masking
    on chirp f0 and gap mel L1, by a small margin (~8 %; the bench's full run has the numbers). Neither beats linear
    interpolation of mel frames at this scale (see docs/benchmarks.md), which is not asserted. CFG at w = 5: rescale
    phi = 0.75 lowers the share of mel values pushed outside [-1, 1]."""
    from diffusekit.bench import run_bench

    result = run_bench("ezaudio", out=tmp_path, quick=True)
    assert (tmp_path / "ezaudio.json").is_file() and (tmp_path / "ezaudio.png").is_file()
    table = result["inpainting"]
    masked = table["ezaudio_masked"]
    assert masked["f0_cents_chirps"] < 0.8 * table["ezaudio_no_context"]["f0_cents_chirps"], table
    assert masked["f0_cents_chirps"] < table["replacement_unmasked"]["f0_cents_chirps"], table
    assert masked["mel_l1"] < table["replacement_unmasked"]["mel_l1"], table
    assert table["real"]["f0_cents"] < 0.1 * masked["f0_cents"]  # the metric's floor: the known frames are exact
    rescale = result["rescale_ablation_w5"]
    assert rescale["phi_0.75"]["saturated"] < 0.9 * rescale["phi_0"]["saturated"], rescale
