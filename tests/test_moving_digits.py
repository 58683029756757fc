"""Moving digits: deterministic clips whose motion matches their labels, walls bounce, held-out splits."""

import math

import pytest
import torch

from diffusekit.domains.video.moving_digits import (DIRECTIONS, MovingDigitsConfig, _bounce, moving_digits,
                                                    render_digit)


def test_clips_are_deterministic_and_prefix_stable():
    a = moving_digits(6, seed=3)
    b = moving_digits(3, seed=3)
    assert torch.equal(a.videos[:3], b.videos) and torch.equal(a.digits[:3], b.digits)
    assert not torch.equal(moving_digits(3, seed=4).videos, b.videos)
    assert a.videos.shape == (6, 8, 1, 24, 24)
    assert a.videos.min() >= -1 and a.videos.max() <= 1


def test_centre_of_mass_follows_the_labelled_velocity_until_a_bounce():
    cfg = MovingDigitsConfig(frames=6, canvas=32, digit_size=8, speeds=(1.0,))
    clips = moving_digits(40, seed=0, config=cfg)
    checked = 0
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    for i in range(len(clips)):
        path = clips.positions[i, :, 0]
        angle = math.radians(45 * int(clips.direction[i, 0]))
        expected = torch.tensor([math.cos(angle), -math.sin(angle)])
        step = path[1] - path[0]
        if torch.allclose(step, expected, atol=1e-5):  # no bounce in the first step
            mass = clips.videos[i, :2, 0] + 1
            com = torch.stack([(mass * xs).sum((1, 2)), (mass * ys).sum((1, 2))], -1) / mass.sum((1, 2))[:, None]
            assert torch.allclose(com[1] - com[0], expected, atol=0.35)
            checked += 1
    assert checked >= 10


def test_bounce_stays_inside_and_reflects():
    t = torch.arange(20).double().numpy()
    path = _bounce(torch.tensor([5.0]).double().numpy(), torch.tensor([2.0]).double().numpy(), t, 4.0, 10.0)
    assert path.min() >= 4.0 and path.max() <= 10.0
    assert path[3, 0] == pytest.approx(9.0)  # 5, 7, 9, then 11 reflects to 9
    assert path[4, 0] == pytest.approx(7.0)


def test_render_rotation_keeps_mass_and_two_digits_combine():
    digit = moving_digits(1).videos  # any clip just to touch the pool
    img = torch.linspace(-1, 1, 64).reshape(8, 8)
    still = render_digit(img, torch.tensor([[16.0, 16.0]] * 2), torch.tensor([0.0, 90.0]), canvas=32, digit_size=16)
    mass = (still + 1).sum((1, 2))
    assert mass[1] == pytest.approx(float(mass[0]), rel=0.05)
    cfg = MovingDigitsConfig(num_digits=2, frames=4, canvas=32, rotations=(-10.0, 10.0))
    pair = moving_digits(3, config=cfg, split="test")
    assert pair.digits.shape == (3, 2) and pair.videos.shape == (3, 4, 1, 32, 32) and digit.shape[1] == 8
    assert set(DIRECTIONS) == {"E", "NE", "N", "NW", "W", "SW", "S", "SE"}


def test_bad_configs_are_refused():
    for bad in (dict(frames=1), dict(canvas=4), dict(num_digits=3), dict(digit_size=40), dict(classes=(11,))):
        with pytest.raises(ValueError):
            MovingDigitsConfig(**bad)
    with pytest.raises(ValueError, match="split"):
        moving_digits(2, split="val")
