import numpy as np
import pytest
import torch

from diffusekit.domains.audio.music import (MusicConfig, beat_consistency, degree_hz, match_scores,
                                            melodic_smoothness, motion_music_pairs, piano_roll, render_audio,
                                            retrieval_accuracy, rhythm_agreement)
from diffusekit.methods.cdcd import chunk_shuffle
from diffusekit.methods.cdcd_music import (MotionMusicTransformer, correspondence_metrics, motion_candidates,
                                           music_cdcd_loss)
from diffusekit.methods.discrete import MaskReplaceDiffusion


@pytest.fixture(scope="module")
def data():
    return motion_music_pairs(30, 3, seed=0, split="train")


def test_pairs_are_deterministic_follow_the_rule_and_splits_differ(data):
    again = motion_music_pairs(30, 3, seed=0, split="train")
    assert torch.equal(again.tokens, data.tokens) and torch.equal(again.motion, data.motion)
    test = motion_music_pairs(30, 3, seed=0, split="test")
    assert not torch.equal(test.motion, data.motion)
    cfg = data.config
    assert data.tokens.shape == (90, cfg.beats) and int(data.tokens.max()) < cfg.num_tokens
    assert bool(beat_consistency(data.tokens, data.motion, cfg).all())            # the rule holds on every beat
    assert float(melodic_smoothness(data.tokens, data.motion).min()) == 1.0
    assert torch.equal(data.motion[0], data.motion[2]) and not torch.equal(data.tokens[0], data.tokens[2])
    assert set(data.motion.unique().tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        motion_music_pairs(3, split="valid")


def test_matcher_finds_the_true_motion_and_not_a_shuffled_or_random_one(data):
    cand = motion_candidates(data.motion, data.motion_id, 10, torch.Generator().manual_seed(0))
    assert cand.shape == (90, 10, data.config.beats) and torch.equal(cand[:, 0], data.motion)
    assert bool((match_scores(data.tokens, cand)[:, 1:] < 1).all())
    assert float(retrieval_accuracy(data.tokens, cand).mean()) == 1.0
    shuffled = chunk_shuffle(data.tokens, torch.Generator().manual_seed(0), num_chunks=8)
    assert float(beat_consistency(shuffled, data.motion).double().mean()) < 0.7
    assert float(rhythm_agreement(shuffled, data.motion).mean()) < float(rhythm_agreement(data.tokens,
                                                                                          data.motion).mean())
    noise = torch.randint(0, data.config.num_tokens, data.tokens.shape, generator=torch.Generator().manual_seed(1))
    metrics = correspondence_metrics(noise, data.motion, data.motion_id, data.config)
    assert metrics["retrieval"] < 0.4 and metrics["consistency"] < 0.3
    assert correspondence_metrics(data.tokens, data.motion, data.motion_id)["consistency"] == 1.0


def test_renderers_play_the_right_pitch_on_note_beats_and_silence_on_rests():
    cfg = MusicConfig()
    tokens = np.array([0, 1, 5, 12] * 8)
    wave = render_audio(tokens, cfg)
    beat = int(cfg.beat_seconds * 16000)
    assert wave.shape == (beat * 32,) and np.abs(wave[:beat]).max() == 0
    for i in (1, 2, 3):
        seg = wave[i * beat:(i + 1) * beat].astype(np.float64)
        spec = np.abs(np.fft.rfft(seg * np.hanning(beat), 8 * beat))
        peak = np.fft.rfftfreq(8 * beat, 1 / 16000)[spec.argmax()]
        assert abs(peak - degree_hz(tokens[i] - 1, cfg)) < 8.0
    roll = piano_roll(tokens, cfg, velocities=np.full(32, 0.5))
    assert roll.shape == (cfg.num_degrees, 32) and roll.sum() == pytest.approx(0.5 * 24)
    assert roll[11, 3] == 0.5 and roll[:, 0].sum() == 0


def test_network_starts_uniform_and_sees_the_motion(data):
    cfg = data.config
    torch.manual_seed(0)
    net = MotionMusicTransformer(cfg.num_tokens, cfg.beats, cfg.levels, hidden_size=32)
    x = torch.full((4, cfg.beats), cfg.num_tokens)
    assert torch.equal(net(x, torch.ones(4), motion=data.motion[:4]), torch.zeros(4, cfg.beats, cfg.num_tokens))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    a = net(x, torch.ones(4), motion=data.motion[:4])
    b = net(x, torch.ones(4), motion=data.motion[4:8])
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError):
        net(x, torch.ones(4), motion=data.motion[:4, :10])


def test_cdcd_loss_is_vb_at_zero_lambda_and_pushes_away_from_negatives(data):
    process = MaskReplaceDiffusion(data.config.num_tokens, 10)
    torch.manual_seed(0)
    net = MotionMusicTransformer(data.config.num_tokens, data.config.beats, data.config.levels, hidden_size=32)
    batch = (data.tokens[:16], data.motion_id[:16], data.motion[:16])
    base = music_cdcd_loss(process, data, lambda_c=0.0)(net, batch, torch.Generator().manual_seed(3)).detach()
    terms = process.loss_terms(net, batch[0], torch.Generator().manual_seed(3), motion=batch[2])
    assert torch.allclose(base, process.vb_loss(terms).float())
    for kind in ("intra", "inter"):
        cdcd = music_cdcd_loss(process, data, lambda_c=0.5, negatives=kind)(net, batch,
                                                                            torch.Generator().manual_seed(3)).detach()
        assert bool((cdcd <= base + 1e-6).all()) and float(cdcd.mean()) < float(base.mean())


def test_quick_bench_contrastive_intra_term_learns_the_correspondence_sooner(tmp_path):
    from diffusekit.bench import run_bench

    result = run_bench("cdcd_music", out=tmp_path, quick=True)
    assert (tmp_path / "cdcd_music.json").is_file() and (tmp_path / "cdcd_music.png").is_file()
    base, cdcd = result["table"]["baseline"], result["table"]["step-intra 0.3"]
    assert [e["step"] for e in base["curve"]] == [50, 100, 150]
    # same init, data order and sampling seeds: with lambda_c = 0.3 the motion is followed sooner
    assert cdcd["final"]["consistency"] > base["final"]["consistency"] + 0.15
    assert cdcd["final"]["retrieval"] > base["final"]["retrieval"] + 0.15
    assert cdcd["curve_mean"]["consistency"] > base["curve_mean"]["consistency"] + 0.05
    assert result["reference_test_data"]["consistency"] == 1.0
    assert base["final"]["retrieval"] > 0.2  # both learn something beyond chance (0.1)
