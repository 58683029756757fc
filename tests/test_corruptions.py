"""ImageNet-C-style corruptions: deterministic under a seed, in range, and harder with severity."""

import pytest
import torch

from diffusekit.data import load_dataset
from diffusekit.data.corruptions import SEVERITIES, available_corruptions, corrupt
from diffusekit.zoo import load

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "elastic"}


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


@pytest.mark.parametrize("name", available_corruptions())
def test_corruption_is_deterministic_in_range_and_changes_the_image(name, digits_test):
    x = digits_test.x[:50]
    a, b = corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=7)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01
    if name in RANDOM:
        assert not torch.equal(corrupt(x, name, 3, seed=8), a)
    state = torch.random.get_rng_state()
    corrupt(x, name, 5, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    rgb = torch.rand(4, 3, 24, 24) * 2 - 1  # captioned RGB canvases work too
    assert corrupt(rgb, name, 2, seed=0).shape == rgb.shape


@pytest.mark.parametrize("seed", [0, 1])
def test_source_error_rises_with_severity(seed, digits_test):
    """The zoo classifier's error on the digits test split never falls from one severity to the next (beyond
    2 of 360 images) and grows by at least 10 points from severity 1 to 5, for every corruption."""
    clf = load("digits_classifier")
    with torch.no_grad():
        clean = float((clf(digits_test.x).argmax(1) != digits_test.y).float().mean())
        for name in available_corruptions():
            errors = [float((clf(corrupt(digits_test.x, name, s, seed=seed)).argmax(1) != digits_test.y)
                            .float().mean()) for s in SEVERITIES]
            assert errors[0] >= clean - 0.006, (name, clean, errors)
            assert all(b >= a - 0.006 for a, b in zip(errors, errors[1:])), (name, errors)
            assert errors[-1] >= errors[0] + 0.1, (name, errors)


def test_bad_requests_are_clear_errors(digits_test):
    with pytest.raises(ValueError, match="unknown corruption 'fog'; available: gaussian_noise"):
        corrupt(digits_test.x, "fog", 1)
    with pytest.raises(ValueError, match="severity must be an integer 1-5"):
        corrupt(digits_test.x, "contrast", 6)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        corrupt(digits_test.x[0], "contrast", 1)
