"""Shift streams of the test-time adaptation benchmark (``data.shift_streams``): determinism, cycle order, label
sorting, open-set composition and input checks."""

import pytest
import torch

from diffusekit.data import load_dataset
from diffusekit.data.shift_streams import (CONTINUAL_CYCLE, ShiftStream, continual_stream, open_set_stream,
                                           single_stream)


def _batches(stream):
    return [(x.clone(), y.clone()) for x, y in stream]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("make", [
    lambda seed: single_stream("gaussian_noise", 3, batch_size=32, repeats=2, seed=seed),
    lambda seed: single_stream("impulse_noise", 5, batch_size=50, order="sorted", seed=seed),
    lambda seed: continual_stream(("shot_noise", "contrast"), 4, cycles=2, images_per_domain=40, batch_size=20,
                                  seed=seed),
    lambda seed: open_set_stream("gaussian_noise", 2, unknown_fraction=0.4, batch_size=25, seed=seed),
])
def test_streams_are_deterministic_from_the_seed(make):
    state = torch.random.get_rng_state()
    first, again, other = _batches(make(3)), _batches(make(3)), _batches(make(4))
    assert _same(first, again)
    assert not _same(first, other)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched


def test_single_stream_is_the_corrupted_test_split_in_batches():
    stream = single_stream("contrast", 2, batch_size=64, seed=0)
    test = load_dataset("digits", "test")
    assert stream.x.shape == test.x.shape and len(stream) == -(-360 // 64)
    assert sorted(stream.y.tolist()) == sorted(test.y.tolist())
    sizes = [x.shape[0] for x, _ in stream]
    assert sizes == [64] * 5 + [40]
    assert stream.x.abs().max() <= 1.0 + 1e-6
    assert set(stream.domains) == {"contrast-2"}


def test_continual_stream_visits_the_corruptions_in_cycle_order():
    cycle = ("gaussian_noise", "defocus_blur", "contrast")
    stream = continual_stream(cycle, 5, cycles=3, images_per_domain=30, batch_size=10, seed=1)
    assert stream.x.shape[0] == 3 * 3 * 30
    expected = [f"{c}-5" for _ in range(3) for c in cycle for _ in range(30)]
    assert stream.domains == expected
    assert stream.info["visits"] == [(k, c) for k in range(3) for c in cycle]
    assert stream.batch_domains() == [f"{c}-5" for _ in range(3) for c in cycle for _ in range(3)]
    assert CONTINUAL_CYCLE[0] == "gaussian_noise" and len(set(CONTINUAL_CYCLE)) == len(CONTINUAL_CYCLE)
    # a second visit of a noise domain draws new noise, not a copy of the first visit
    first, second = stream.x[:30], stream.x[270:300]
    assert not torch.equal(first, second)


def test_sorted_stream_is_label_sorted_and_holds_the_same_samples():
    iid = single_stream("jpeg", 3, batch_size=40, repeats=2, seed=5)
    srt = single_stream("jpeg", 3, batch_size=40, order="sorted", repeats=2, seed=5)
    assert torch.equal(srt.y, torch.sort(srt.y).values)
    assert not torch.equal(iid.y, torch.sort(iid.y).values)
    assert sorted(iid.y.tolist()) == sorted(srt.y.tolist())
    # the same images (the same draws, only reordered): equal after sorting rows lexicographically
    def rows(s):
        flat = torch.cat([s.y[:, None].double(), s.x.flatten(1).double()], 1)
        return torch.tensor(sorted(flat.tolist()))

    assert torch.equal(rows(iid), rows(srt))
    classes_per_batch = [len(set(y.tolist())) for _, y in srt]
    assert max(classes_per_batch) <= 2


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.7])
def test_open_set_stream_has_the_requested_unknown_fraction(fraction):
    stream = open_set_stream("defocus_blur", 3, unknown_fraction=fraction, natural_fraction=0.5, batch_size=64,
                             repeats=2, seed=2)
    known = stream.y >= 0
    assert set(stream.y[~known].tolist()) <= {-1}
    assert set(stream.y[known].tolist()) <= {0, 1, 2, 3, 4}
    n = stream.y.numel()
    assert abs(float((~known).double().mean()) - fraction) <= 1.0 / n
    assert int(known.sum()) == 2 * int((load_dataset("digits", "test").y < 5).sum())
    kinds = stream.domains
    assert all((k == "known") == bool(kn) for k, kn in zip(kinds, known.tolist()))
    unknown = n - int(known.sum())
    assert abs(kinds.count("natural_patch") - round(unknown * 0.5)) <= 1
    assert stream.x.shape[1:] == (1, 8, 8) and stream.x.abs().max() <= 1.0 + 1e-6
    if fraction > 0:  # unknowns are interleaved with knowns, not appended
        half = n // 2
        assert 0 < int((~known[:half]).sum()) < unknown


def test_single_stream_on_other_images():
    x = torch.linspace(-1, 1, 5 * 3 * 24 * 24).reshape(5, 3, 24, 24)
    y = torch.tensor([3, 1, 4, 1, 5])
    stream = single_stream("gaussian_noise", 2, batch_size=2, data=(x, y), seed=0)
    assert stream.x.shape == x.shape and sorted(stream.y.tolist()) == sorted(y.tolist()) and len(stream) == 3
    with pytest.raises(ValueError, match="data must be images"):
        single_stream("gaussian_noise", 2, data=(x[0], y))


def test_with_batch_size_keeps_the_order():
    stream = single_stream("pixelate", 1, batch_size=64, seed=0)
    ones = stream.with_batch_size(1)
    assert isinstance(ones, ShiftStream) and len(ones) == 360
    assert torch.equal(torch.cat([x for x, _ in ones]), stream.x)


@pytest.mark.parametrize("call, match", [
    (lambda: single_stream("fog", 3), "unknown shift 'fog'"),
    (lambda: single_stream("contrast", 0), "severity must be an integer in 1..5"),
    (lambda: single_stream("contrast", 6), "severity must be an integer in 1..5"),
    (lambda: single_stream("contrast", 2, batch_size=0), "batch size must be a positive integer"),
    (lambda: single_stream("contrast", 2, order="shuffled"), "unknown order"),
    (lambda: continual_stream(("contrast",), 2, images_per_domain=1000), "at most 360"),
    (lambda: open_set_stream("contrast", 2, unknown_fraction=1.0), "below 1"),
])
def test_bad_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
