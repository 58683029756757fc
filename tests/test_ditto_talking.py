"""Ditto (arXiv 2411.19509) on small talking faces: exact streaming (windows cross-fade without seams), CFG algebra on
the learned null audio, the trained motion model's lip sync, and the quick bench's direction (motion-space beats
pixel-space diffusion on sync and on network FLOPs per frame at equal training and sampling steps)."""

import pytest
import torch
from torch import nn

from diffusekit.domains.video.talking_faces import AUDIO_DIM, MOTION_DIM
from diffusekit.methods.ditto_talking import (OVERLAP, WINDOW, MotionModel, MotionTransformer, audio_null_condition,
                                              crossfade_weights, guided, iter_stream_motion, sample_motion, seam_ratio,
                                              stream_motion, window_generator)


class AudioReadout(nn.Module):
    """A stand-in network whose x0 prediction is a fixed function of each frame's audio (it ignores x_t, t and the
    reference), so every window of any length agrees exactly with every other on the frames they share."""

    def __init__(self):
        super().__init__()
        self.config = {"window": WINDOW}
        self.map = nn.Linear(AUDIO_DIM, MOTION_DIM)
        torch.nn.init.normal_(self.map.weight, generator=torch.Generator().manual_seed(0))
        self.register_buffer("mean", torch.zeros(MOTION_DIM))
        self.register_buffer("std", torch.ones(MOTION_DIM))

    def forward(self, x, t, audio, reference, audio_keep):
        return self.map(audio) * audio_keep[:, None, None] + 0 * x


def _audio(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, frames, AUDIO_DIM, generator=torch.Generator().manual_seed(seed))


def test_crossfade_weights_make_a_partition_of_unity():
    w = crossfade_weights(OVERLAP)
    assert w.shape == (OVERLAP,) and bool((w > 0).all() and (w < 1).all()) and bool((w.diff() > 0).all())
    torch.testing.assert_close(w + w.flip(0), torch.ones(OVERLAP))


@pytest.mark.parametrize("frames", [WINDOW, 70, 96, 101])
def test_streaming_equals_one_long_window_when_windows_agree(frames):
    """With windows that agree on their overlap the streamed sequence is exactly the single-window sample (DDIM to
    t = 0 returns the x0 prediction), whatever the length: index bookkeeping, padding and cross-fade are exact."""
    model = MotionModel(AudioReadout())
    audio, reference = _audio(frames), torch.zeros(2, MOTION_DIM)
    single = sample_motion(model, audio, reference, steps=3, guidance=1.0, generator=torch.Generator().manual_seed(0))
    streamed = stream_motion(model, audio, reference, steps=3, guidance=1.0, seed=5)
    assert streamed.shape == (2, frames, MOTION_DIM)
    torch.testing.assert_close(streamed, single, atol=1e-5, rtol=1e-5)


def test_first_chunk_is_final_after_one_window_and_chunks_cover_the_talk():
    calls = []

    def window_fn(a, r, k):
        calls.append((k, a.shape[1]))
        return torch.full((a.shape[0], a.shape[1], MOTION_DIM), float(k))

    chunks = iter_stream_motion(window_fn, _audio(96), torch.zeros(2, MOTION_DIM))
    first = next(chunks)
    assert calls == [(0, WINDOW)] and first.shape[1] == WINDOW - OVERLAP, "first frames must be out after window 0"
    rest = list(chunks)
    assert sum(c.shape[1] for c in [first, *rest]) == 96 and all(n == WINDOW for _, n in calls)
    blended = rest[0][0, :OVERLAP, 0]  # frames 24..31: window 0 (value 0) fading into window 1 (value 1)
    torch.testing.assert_close(blended, crossfade_weights(OVERLAP))


def test_cfg_scale_one_is_the_conditional_model_and_null_drops_the_audio():
    model = MotionModel(AudioReadout())
    x = torch.randn(2, WINDOW, MOTION_DIM, generator=torch.Generator().manual_seed(1))
    cond = {"audio": _audio(WINDOW), "reference": torch.zeros(2, MOTION_DIM), "audio_keep": torch.ones(2)}
    t = torch.full((2,), 0.5, dtype=torch.float64)
    conditional = model.denoiser.eps(x, t, **cond)
    null = model.denoiser.eps(x, t, **audio_null_condition(cond))
    torch.testing.assert_close(guided(model.denoiser, 1.0).eps(x, t, **cond), conditional)
    torch.testing.assert_close(guided(model.denoiser, 2.0).eps(x, t, **cond), null + 2.0 * (conditional - null),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(conditional, null)


def test_untrained_transformer_stream_starts_as_its_first_window():
    torch.manual_seed(0)
    net = MotionTransformer(width=32, depth=1)
    with torch.no_grad():  # zero-initialised output layers: give them weights so that the sample depends on x
        for p in net.parameters():
            if p.ndim > 1 and not p.abs().sum():
                p.normal_(0, 0.1)
    model = MotionModel(net)
    audio, ref = _audio(70), torch.zeros(2, MOTION_DIM)
    streamed = stream_motion(model, audio, ref, steps=2, seed=3)
    first = sample_motion(model, audio[:, :WINDOW], ref, steps=2, generator=window_generator(3, 0))
    torch.testing.assert_close(streamed[:, :WINDOW - OVERLAP], first[:, :WINDOW - OVERLAP])
    assert not torch.allclose(streamed[:, WINDOW - OVERLAP:WINDOW], first[:, WINDOW - OVERLAP:])


def test_windows_that_disagree_cross_fade_without_seams():
    """Windows that each follow the true smooth motion but disagree by a random offset (as samples of the random,
    audio-independent parts do): with the cross-fade the change at the window boundaries stays at the size of the
    ordinary frame-to-frame change; cutting windows end to end (the check's failing case) makes a visible jump."""
    frames = 120
    time_axis = torch.arange(frames, dtype=torch.float32)
    truth = torch.stack([torch.sin(time_axis / 6 + d) for d in range(MOTION_DIM)], dim=1)[None]

    def window_fn(a, r, k):
        offset = 0.4 * torch.randn(MOTION_DIM, generator=torch.Generator().manual_seed(k))
        start = k * (a.shape[1] - current_overlap)
        return truth[:, start:start + a.shape[1]] + offset

    current_overlap = OVERLAP
    faded = torch.cat(list(iter_stream_motion(window_fn, torch.zeros(1, frames, AUDIO_DIM), truth[:, 0])), 1)
    current_overlap = 0
    cut = torch.cat(list(iter_stream_motion(window_fn, torch.zeros(1, frames, AUDIO_DIM), truth[:, 0],
                                            overlap=0)), 1)
    assert seam_ratio(faded) < 1.5 and seam_ratio(cut, overlap=0) > 3.0, (seam_ratio(faded), seam_ratio(cut, overlap=0))


def test_quick_bench_direction(tmp_path):
    from diffusekit.bench import run_bench

    result = run_bench("ditto_talking", out=tmp_path, quick=True)
    table, flops = result["table"], result["mflops_per_frame_nfe"]
    for name in ("ditto_talking.json", "ditto_talking.png", "ditto_talking_example.gif"):
        assert (tmp_path / name).exists()
    motion, pixel = table["motion_steps=2"], table["pixel_steps=2"]
    assert motion["sync"] > pixel["sync"] + 0.05, (motion["sync"], pixel["sync"])
    assert motion["sync"] > motion["sync_mismatched_audio"] + 0.4, "the motion must follow this talk's audio"
    assert flops["motion"] * 50 < flops["pixel"]
    assert motion["seam_ratio"] < 1.3
