"""Consecutive Brownian Bridge interpolation (arXiv 2405.05953): triplet data, recursive midpoints, and the quick
bench's direction (the bridge beats a conditional DDPM sampled from noise at few steps, with far less seed spread)."""

import json

import pytest
import torch

from diffusekit.bench import run_bench
from diffusekit.methods.bridge import CBBInterpolator, ConsecutiveBrownianBridge, frame_triplets


def test_frame_triplets_order_and_gaps():
    videos = torch.arange(2 * 7).float().reshape(2, 7, 1, 1, 1).expand(2, 7, 1, 2, 2)  # value = clip * 7 + frame
    prev, mid, nxt = frame_triplets(videos, gaps=(1, 3))
    assert prev.shape == (2 * (5 + 1), 1, 2, 2)
    assert torch.equal(mid[:, 0, 0, 0] - prev[:, 0, 0, 0], nxt[:, 0, 0, 0] - mid[:, 0, 0, 0])
    gaps = (mid - prev)[:, 0, 0, 0].tolist()
    assert gaps == [1.0] * 10 + [3.0] * 2
    with pytest.raises(ValueError):
        frame_triplets(videos, gaps=(4,))


def test_recursive_midpoints_place_every_frame():
    """With an oracle net for linear motion (x = (y + z) / 2), K = 8 gives the 9 evenly spaced frames."""

    class MeanOracle(torch.nn.Module):
        def forward(self, inp, tau):
            return inp[:, :1] - (inp[:, 2:3] + inp[:, 3:4]) / 2

    interp = CBBInterpolator(MeanOracle(), ConsecutiveBrownianBridge(1000), frame_shape=(1, 2, 2), default_steps=3)
    first, last = torch.full((3, 1, 2, 2), -1.0), torch.full((3, 1, 2, 2), 1.0)
    calls = []
    seq = interp.insert_frames(first, last, 8, generator=torch.Generator().manual_seed(0), progress=calls.append)
    assert len(seq) == 9 and calls == [3, 6, 12]
    for k, frame in enumerate(seq):
        torch.testing.assert_close(frame, torch.full_like(first, -1.0 + k / 4), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        interp.insert_frames(first, last, 3)
    clip = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 0.0, 1.0)])
    torch.testing.assert_close(interp.double_frame_rate(clip)[:, 0, 0, 0], torch.tensor([-1, -.5, 0, .5, 1.0]))


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cbb")
    result = run_bench("cbb", out=out, quick=True)
    return out, result


def test_quick_bench_bridge_beats_noise_started_ddpm_at_few_steps(quick_bench):
    out, result = quick_bench
    assert (out / "cbb.png").stat().st_size > 0
    table = json.loads((out / "cbb.json").read_text())["table"]
    for steps in ("1", "2"):
        cbb, ddpm = table["cbb"][steps], table["ddpm_ddim"][steps]
        assert cbb["psnr"] > ddpm["psnr"] + 5.0, (steps, cbb, ddpm)
        assert cbb["ssim"] > ddpm["ssim"] + 0.2, (steps, cbb, ddpm)
        assert cbb["seed_std"] < 0.5 * ddpm["seed_std"], (steps, cbb, ddpm)
        assert cbb["nfe"] == 2 * int(steps) and ddpm["nfe"] == int(steps)
    # one bridge step from (y, z) to t = 0 draws no noise: every seed gives the same frame
    assert table["cbb"]["1"]["seed_std"] == 0.0
    assert table["blend"]["seed_std"] == 0.0 and "at 2 steps: cbb PSNR" in result["summary"]
