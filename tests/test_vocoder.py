"""The trained vocoder of ``domains.audio.vocoder`` (Vocos arXiv 2306.00814 trunk, APNet arXiv 2305.07952 heads,
Griffin-Lim refinement) and ``bench vocoder``: shapes and alignment, the losses' invariants, the untrained start
equal to the mel pseudo-inverse, the zoo round trip, and the quick bench's direction (training improves on the
untrained start; the ship decision follows the stated criterion)."""

import math

import numpy as np
import pytest
import torch

from diffusekit.domains.audio.features import mel_image
from diffusekit.domains.audio.text2audio import pitched_clip
from diffusekit.domains.audio.vocoder import (GriffinLimVocoder, VocosVocoder, anti_wrapping, griffin_lim_refine,
                                              meets_ship_criterion, multi_resolution_stft_loss, phase_losses, vocode,
                                              vocoder_segments)


@pytest.fixture(scope="module")
def chirp():
    wave, _, _ = pitched_clip(0, 1, kind="chirp_up")
    return wave[:8000]


def test_output_length_and_untrained_magnitude_is_the_pseudo_inverse(chirp):
    torch.manual_seed(0)
    net = VocosVocoder(channels=16, layers=1).eval()
    mel = torch.from_numpy(mel_image(chirp))[None]
    assert net(mel, refine_iters=0).shape == (1, (mel.shape[-1] - 1) * 160)
    log_magnitude, phase = net.log_magnitude_and_phase(mel)
    assert log_magnitude.shape == phase.shape == (1, 513, mel.shape[-1])
    assert float(phase.abs().max()) <= math.pi + 1e-6
    log_mel = (mel + 1) * 0.5 * (math.log(10.0) - math.log(1e-5)) + math.log(1e-5)
    base = torch.log(torch.clamp(net.mel_pinv @ torch.exp(log_mel), min=1e-5)).clamp(max=math.log(100.0))
    torch.testing.assert_close(log_magnitude, base)


def test_griffin_lim_refine_keeps_a_consistent_spectrum(chirp):
    net = VocosVocoder(channels=8, layers=1)
    x = torch.from_numpy(chirp[: 160 * 40])[None]
    spectrum = net.analyse(x)
    phase = griffin_lim_refine(net, spectrum.abs(), spectrum.angle(), 5)
    y = net.synthesize(torch.polar(spectrum.abs(), phase))
    assert float((y - x).abs().max()) < 1e-3  # the true (consistent) phase is a fixed point


def test_losses_vanish_on_the_truth_and_anti_wrapping_is_2pi_periodic(chirp):
    x = torch.from_numpy(chirp)[None]
    assert float(multi_resolution_stft_loss(x, x)) < 1e-5
    assert float(multi_resolution_stft_loss(0.5 * x, x)) > 0.3
    p = torch.linspace(-3.0, 3.0, 50)
    torch.testing.assert_close(anti_wrapping(p + 2 * math.pi), anti_wrapping(p), atol=1e-5, rtol=0)
    assert float(anti_wrapping(torch.tensor(3 * math.pi)).item()) == pytest.approx(math.pi, abs=1e-5)
    phase = torch.rand(2, 5, 7) * 6 - 3
    assert float(phase_losses(phase + 2 * math.pi, phase).abs().max()) < 1e-5


def test_segments_are_aligned_with_their_mel_frames(chirp):
    mel, wave = vocoder_segments([chirp], window=16, stride=8)
    assert mel.shape[1:] == (64, 16) and wave.shape[1] == 15 * 160
    inner = mel_image(wave[1].numpy())[:, 4:12]  # interior frames do not see the segment's edges
    np.testing.assert_allclose(inner, mel[1, :, 4:12].numpy(), atol=0.05)


def test_vocode_and_griffin_lim_give_the_requested_length(chirp):
    mel = mel_image(chirp)
    assert vocode(GriffinLimVocoder(2), mel, length=7000).shape == (7000,)
    net = VocosVocoder(channels=8, layers=1, refine_iters=2).eval()
    wave = vocode(net, mel)
    assert wave.shape == ((mel.shape[1] - 1) * 160,) and float(np.abs(wave).max()) <= 1.0


def test_ship_criterion():
    base = {"lsd": 8.0, "sc": 0.35, "f0_cents": 14.0}
    assert meets_ship_criterion({"lsd": 6.9, "sc": 0.30, "f0_cents": 12.0}, base)
    assert not meets_ship_criterion({"lsd": 7.5, "sc": 0.30, "f0_cents": 12.0}, base)  # < 1 dB better
    assert not meets_ship_criterion({"lsd": 6.0, "sc": 0.33, "f0_cents": 12.0}, base)  # < 10 % SC
    assert not meets_ship_criterion({"lsd": 6.0, "sc": 0.30, "f0_cents": float("nan")}, base)


def test_zoo_quick_build_round_trip(tmp_path, chirp):
    from diffusekit.domains.audio.cli_tts import check_vocoder
    from diffusekit.zoo.recipes_audio import build_speech_vocoder

    meta = build_speech_vocoder({"kind": "quick"}, tmp_path, False)
    assert meta["kind"] == "vocoder" and meta["loader"].endswith(":load_speech_vocoder")
    vocoder = check_vocoder(str(tmp_path / "speech_vocoder.json"))  # not shipped: loaded by its manifest path
    mel = mel_image(chirp)
    assert np.isfinite(vocode(vocoder, mel)).all()
    # the tts command takes such a (not shipped) vocoder by its manifest path
    from diffusekit.cli import main

    out = tmp_path / "cat.wav"
    assert main(["audio", "tts", "--text", "cat", "--vocoder", str(tmp_path / "speech_vocoder.json"),
                 "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".png").is_file()
    (tmp_path / "speech_vocoder.safetensors").write_bytes(b"broken")
    assert main(["audio", "tts", "--text", "cat", "--vocoder", str(tmp_path / "speech_vocoder.json"),
                 "--out", str(tmp_path / "dog.wav")]) == 2
    assert not (tmp_path / "dog.wav").exists()


def test_quick_bench_training_improves_on_the_untrained_start(tmp_path):
    import json

    from diffusekit.bench import run_bench

    run_bench("vocoder", out=tmp_path, quick=True)
    result = json.loads((tmp_path / "vocoder.json").read_text())
    t = result["table"]
    # the network's own phase and magnitude: trained beats its untrained start by a clear margin
    assert t["vocoder (network phase)"]["sc"] < 0.9 * t["untrained (network phase)"]["sc"]
    assert t["vocoder (network phase)"]["lsd"] < t["untrained (network phase)"]["lsd"] - 1.0
    # with Griffin-Lim refinement, the trained magnitude beats the pseudo-inverse one (quick: 7.48 vs 7.85 dB)
    assert t["vocoder+GL32"]["lsd"] < t["untrained+GL32"]["lsd"] - 0.2
    # on event clips (silence around the events) it beats librosa's Griffin-Lim by far (quick: 13.9 vs 20.3 dB)
    assert t["vocoder+GL32"]["events"]["lsd"] < t["griffin-lim@64"]["events"]["lsd"] - 3.0
    assert result["ships"] == (t["vocoder+GL32"]["lsd"] <= t["griffin-lim@64"]["lsd"] - 1.0
                               and t["vocoder+GL32"]["sc"] <= 0.9 * t["griffin-lim@64"]["sc"]
                               and t["vocoder+GL32"]["f0_cents"] <= 0.9 * t["griffin-lim@64"]["f0_cents"])
    assert (tmp_path / "vocoder.png").is_file()
