"""Tests for diffusekit.data: the bundled offline datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusekit.data import (
    DatasetSplit,
    aniso8d_mixture,
    aniso8d_parameters,
    available_datasets,
    dataset_options,
    load_dataset,
    load_digits_split,
    patch_image_names,
    ring8_mixture,
    ring8_parameters,
)
from diffusekit.data.patches import COLOUR_IMAGES, GREY_IMAGES
from diffusekit.data.series import series_values

ALL = [
    "checkerboard",
    "co2",
    "digits",
    "gmm_aniso8d",
    "gmm_ring8",
    "moons",
    "patches",
    "rings",
    "sunspots",
    "swissroll",
]
RANDOM = ["gmm_ring8", "gmm_aniso8d", "moons", "rings", "checkerboard", "swissroll", "patches"]
FIXED = ["digits", "co2", "sunspots"]
# (shape of one example, labelled?) at default options
EXAMPLE_SHAPE = {
    "gmm_ring8": ((2,), True),
    "gmm_aniso8d": ((8,), True),
    "moons": ((2,), True),
    "rings": ((2,), True),
    "checkerboard": ((2,), False),
    "swissroll": ((2,), False),
    "digits": ((1, 8, 8), True),
    "patches": ((1, 16, 16), False),
    "co2": ((1, 64), False),
    "sunspots": ((1, 32), False),
}


def test_available_datasets():
    assert available_datasets() == ALL


# ------------------------------------------------------------------------------------------------
# common contract
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("split", ["train", "test"])
def test_shapes_dtypes_ranges(name, split):
    d = load_dataset(name, split, n=20)
    assert isinstance(d, DatasetSplit) and d.name == name and len(d) == 20
    shape, labelled = EXAMPLE_SHAPE[name]
    assert d.x.dtype == torch.float32 and tuple(d.x.shape) == (20, *shape)
    assert torch.isfinite(d.x).all()
    if labelled:
        assert d.y is not None and d.y.dtype == torch.int64 and d.y.shape == (20,)
        assert 0 <= int(d.y.min()) and int(d.y.max()) < d.info["num_classes"]
    else:
        assert d.y is None and d.info["num_classes"] is None
    if d.info["value_range"] is not None:
        lo, hi = d.info["value_range"]
        assert lo <= float(d.x.min()) and float(d.x.max()) <= hi
    assert d.info["split"] == split and d.info["seed"] == 0
    assert d.info["options"] == dataset_options(name)
    assert "float32" in repr(d) and name in repr(d)


@pytest.mark.parametrize(
    "name, n_train, n_test",
    [("moons", 10_000, 2_000), ("gmm_aniso8d", 10_000, 2_000), ("patches", 5_000, 1_000), ("digits", 1437, 360),
     ("co2", 1827 - 64 + 1, 457 - 64 + 1), ("sunspots", 247 - 32 + 1, 62 - 32 + 1)],
)
def test_default_sizes(name, n_train, n_test):
    assert len(load_dataset(name, "train")) == n_train
    assert len(load_dataset(name, "test")) == n_test


@pytest.mark.parametrize("name", ALL)
def test_deterministic_and_leaves_global_rng_alone(name):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = load_dataset(name, "train", n=50, seed=7)
    b = load_dataset(name, "train", n=50, seed=7)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert torch.equal(a.x, b.x)
    assert (a.y is None and b.y is None) or torch.equal(a.y, b.y)
    a.x.add_(1.0)  # mutating a result must not leak into the next load (no shared cache)
    assert torch.equal(load_dataset(name, "train", n=50, seed=7).x, b.x)


@pytest.mark.parametrize("name", RANDOM)
def test_seed_and_split_change_random_datasets(name):
    base = load_dataset(name, "train", n=50, seed=0).x
    assert not torch.equal(base, load_dataset(name, "train", n=50, seed=1).x)
    assert not torch.equal(base, load_dataset(name, "test", n=50, seed=0).x)


@pytest.mark.parametrize("name", FIXED)
def test_fixed_datasets_ignore_seed(name):
    assert torch.equal(load_dataset(name, n=30, seed=0).x, load_dataset(name, n=30, seed=5).x)


def test_toy_option_changes_output():
    quiet = load_dataset("moons", n=500, noise=0.0)
    noisy = load_dataset("moons", n=500, noise=0.3)
    assert quiet.info["options"] == {"noise": 0.0}
    # noiseless moons lie exactly on the two unit half circles (centres shifted by (-0.5, -0.25))
    centre = torch.where(quiet.y[:, None] == 0, torch.tensor([-0.5, -0.25]), torch.tensor([0.5, 0.25]))
    assert torch.allclose((quiet.x - centre).norm(dim=1), torch.ones(500), atol=1e-5)
    assert not torch.allclose((noisy.x - centre).norm(dim=1), torch.ones(500), atol=1e-2)


def test_rings_and_checkerboard_geometry():
    r = load_dataset("rings", n=400, noise=0.0)
    radius = r.x.norm(dim=1)
    assert torch.allclose(radius, (r.y + 1).to(torch.float32), atol=1e-5)
    c = load_dataset("checkerboard", n=2000).x
    cell = torch.floor(c + 2.0).long()  # column, row in 0..3
    assert ((cell.sum(1) % 2) == 0).all()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    assert (counts > 0).sum() == 8


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_unknown_dataset_message():
    with pytest.raises(ValueError) as err:
        load_dataset("foo")
    assert str(err.value) == f"unknown dataset 'foo'; available: {', '.join(ALL)}"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="moons", split="val"), r"unknown split 'val' for dataset 'moons'; allowed: train, test"),
        (dict(name="moons", bogus=1), r"unknown option 'bogus' for dataset 'moons'; allowed: noise"),
        (dict(name="checkerboard", noise=0.1), r"unknown option 'noise'.*takes no options"),
        (dict(name="patches", window=3),
         r"unknown option 'window' for dataset 'patches'; allowed: size, grey, min_std"),
        (dict(name="moons", n=0), r"n must be an int >= 1; got 0"),
        (dict(name="moons", n=2.5), r"n must be an int >= 1"),
        (dict(name="moons", seed=-1), r"seed must be an int >= 0"),
        (dict(name="moons", seed=True), r"seed must be an int >= 0"),
        (dict(name="moons", noise=-0.1), r"noise must be a finite number >= 0"),
        (dict(name="swissroll", noise=float("nan")), r"noise must be a finite number >= 0"),
        (dict(name="patches", size=1), r"size must be an int in \[2, 128\]"),
        (dict(name="patches", grey="yes"), r"grey must be True or False"),
        (dict(name="co2", window=500), r"window must be an int in \[2, 457\]"),
        (dict(name="sunspots", stride=0), r"stride must be an int >= 1"),
        (dict(name="digits", n=2000), r"n=2000 exceeds the 1437 examples in digits/train"),
        (dict(name="sunspots", split="test", n=40), r"n=40 exceeds the 31 examples"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        load_dataset(**kwargs)
    assert "\n" not in str(err.value)


def test_load_digits_split_bad_split():
    with pytest.raises(ValueError, match="allowed: train, test"):
        load_digits_split("validation")


# ------------------------------------------------------------------------------------------------
# Gaussian mixtures
# ------------------------------------------------------------------------------------------------


def test_ring8_parameters():
    p = ring8_parameters()
    assert torch.allclose(p["means"].norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    angles = torch.atan2(p["means"][:, 1], p["means"][:, 0]) % (2 * math.pi)
    assert torch.allclose(angles, torch.arange(8, dtype=torch.float64) * math.pi / 4, atol=1e-12)
    assert torch.allclose(p["covs"], 0.0225 * torch.eye(2, dtype=torch.float64).expand(8, 2, 2))
    mix = ring8_mixture()
    assert mix.num_components == 8 and mix.dim == 2
    assert torch.allclose(mix.weights, torch.full((8,), 0.125, dtype=torch.float64))


def test_aniso8d_parameters_fixed_and_well_conditioned():
    p, q = aniso8d_parameters(), aniso8d_parameters()
    assert all(torch.equal(p[k], q[k]) for k in p)  # fixed numbers
    means, covs = p["means"], p["covs"]
    assert means.shape == (4, 8) and covs.shape == (4, 8, 8)
    eig = torch.linalg.eigvalsh(covs)
    assert torch.allclose(eig.min(1).values, torch.full((4,), 0.01, dtype=torch.float64), rtol=1e-8)
    assert torch.allclose(eig.max(1).values, torch.ones(4, dtype=torch.float64), rtol=1e-8)
    off = covs - torch.diag_embed(torch.diagonal(covs, dim1=1, dim2=2))
    assert (off.abs().amax(dim=(1, 2)) > 0.05).all()  # full, not diagonal
    dist = torch.cdist(means, means) + 100 * torch.eye(4, dtype=torch.float64)
    assert dist.min() > 4.0  # well separated: > 4 std along any direction (max eigenvalue 1)
    assert torch.allclose(p["weights"].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_gmm_datasets_carry_their_mixture():
    for name, factory in [("gmm_ring8", ring8_mixture), ("gmm_aniso8d", aniso8d_mixture)]:
        mix = load_dataset(name, n=5).info["mixture"]
        ref = factory()
        assert type(mix).__name__ == "GaussianMixture"
        assert torch.equal(mix.means, ref.means) and torch.equal(mix.covs, ref.covs)


@pytest.mark.parametrize("name", ["gmm_ring8", "gmm_aniso8d"])
def test_gmm_sample_moments_match_mixture(name):
    d = load_dataset(name, "train", seed=3)  # 10,000 samples
    mix = d.info["mixture"]
    x = d.x.double()
    scale = mix.covariance().diagonal().max().sqrt()
    # 5-ish standard errors; a wrong mean/radius/covariance is off by far more
    assert (x.mean(0) - mix.mean()).abs().max() < 0.04 * scale
    assert (torch.cov(x.T) - mix.covariance()).abs().max() < 0.05 * scale**2
    freq = torch.bincount(d.y, minlength=mix.num_components).double() / len(d)
    assert (freq - mix.weights).abs().max() < 0.02


def test_gmm_aniso8d_components_have_their_covariance():
    d = load_dataset("gmm_aniso8d", "test", n=20_000, seed=11)
    p = aniso8d_parameters()
    x = d.x.double()
    for k in range(4):
        xk = x[d.y == k]
        chol = torch.linalg.cholesky(p["covs"][k])
        white = torch.linalg.solve_triangular(chol, (xk - p["means"][k]).T, upper=False).T
        # whitened samples: zero mean, identity covariance (sensitive to the 0.01-variance directions too)
        assert white.mean(0).abs().max() < 5 / math.sqrt(len(xk))
        assert (torch.cov(white.T) - torch.eye(8, dtype=torch.float64)).abs().max() < 7 * math.sqrt(2 / len(xk))


# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


def test_digits_split_is_fixed_disjoint_and_stratified():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test", seed=99)
    itr, ite = tr.info["indices"], te.info["indices"]
    assert len(set(itr.tolist()) & set(ite.tolist())) == 0
    assert sorted(itr.tolist() + ite.tolist()) == list(range(1797))
    assert tr.info["num_classes"] == 10 and tr.info["value_range"] == (-1.0, 1.0)
    ptr = torch.bincount(tr.y, minlength=10).double() / len(tr)
    pte = torch.bincount(te.y, minlength=10).double() / len(te)
    assert (ptr - pte).abs().max() < 0.01
    assert torch.equal((tr.x + 1) * 8, torch.round((tr.x + 1) * 8))  # x = v / 8 - 1 with integer v
    assert float(tr.x.min()) == -1.0 and float(tr.x.max()) == 1.0
    head = load_dataset("digits", "train", n=100)
    assert torch.equal(head.x, tr.x[:100]) and torch.equal(head.y, tr.y[:100])
    x, y = load_digits_split("test")
    assert torch.equal(x, te.x) and torch.equal(y, te.y)


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits()
    d = load_dataset("digits", "test", n=10)
    idx = d.info["indices"].numpy()
    assert np.array_equal(d.x[:, 0].numpy(), raw.images[idx].astype(np.float32) / 8 - 1)
    assert np.array_equal(d.y.numpy(), raw.target[idx])


# ------------------------------------------------------------------------------------------------
# patches
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grey", [True, False])
def test_patch_source_images_disjoint(grey):
    train, test = patch_image_names("train", grey), patch_image_names("test", grey)
    assert train and test and not set(train) & set(test)
    assert "cat" not in train + test  # skimage's cat() is chelsea()
    d_train = load_dataset("patches", "train", n=10, grey=grey)
    d_test = load_dataset("patches", "test", n=10, grey=grey)
    assert d_train.info["images"] == list(train) and d_test.info["images"] == list(test)
    if not grey:
        assert not set(train + test) & set(GREY_IMAGES["train"] + GREY_IMAGES["test"])


def test_patch_options_and_pixels():
    import skimage.data

    d = load_dataset("patches", "train", n=300, seed=4, size=24, grey=False)
    assert d.x.shape == (300, 3, 24, 24) and d.info["channels"] == 3
    assert -1.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0
    assert float(d.x.std()) > 0.1  # real image content, not a constant
    src, corner = d.info["source"], d.info["corner"]
    assert set(src.tolist()) == set(range(len(COLOUR_IMAGES["train"])))  # 300 draws hit every image
    for i in range(3):
        img = getattr(skimage.data, d.info["images"][int(src[i])])()
        r, c = corner[i].tolist()
        crop = img[r : r + 24, c : c + 24, :3].astype(np.float32) / 127.5 - 1
        assert np.allclose(d.x[i].permute(1, 2, 0).numpy(), crop, atol=1e-5)

    g = load_dataset("patches", "test", n=50, seed=4, size=8)
    assert g.x.shape == (50, 1, 8, 8)
    name = g.info["images"][int(g.info["source"][0])]
    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img
    r, c = g.info["corner"][0].tolist()
    crop = img[r : r + 8, c : c + 8].astype(np.float64) / 255
    if crop.ndim == 3:
        crop = crop[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
    assert np.allclose(g.x[0, 0].numpy(), 2 * crop - 1, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# time series
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, window", [("co2", 64), ("sunspots", 32)])
def test_series_windows_and_normalisation(name, window):
    raw, years = series_values(name)
    assert np.isfinite(raw).all()
    tr, te = load_dataset(name, "train"), load_dataset(name, "test")
    s, length = tr.info["split_index"], tr.info["series_length"]
    assert s == round(0.8 * length) and len(raw) == length
    mean, std = tr.info["mean"], tr.info["std"]
    assert (te.info["mean"], te.info["std"]) == (mean, std)
    # chronological: train windows end by s, test windows start at or after s
    assert int(tr.info["starts"].max()) + window <= s and int(te.info["starts"].min()) >= s
    # the train windows (stride 1) cover the train part exactly: it has mean 0 and std 1
    covered = torch.cat([tr.x[:, 0, 0], tr.x[-1, 0, 1:]]).double()
    assert len(covered) == s
    assert abs(float(covered.mean())) < 1e-5 and abs(float(covered.std(unbiased=False)) - 1) < 1e-5
    # inverting the normalisation gives back the raw series
    for d in (tr, te):
        back = d.x[:, 0].double() * d.info["std"] + d.info["mean"]
        expect = raw[d.info["starts"].numpy()[:, None] + np.arange(window)]
        assert np.allclose(back.numpy(), expect, rtol=1e-6, atol=1e-4 * std)
        assert np.allclose(d.info["start_times"].numpy(), years[d.info["starts"].numpy()])


def test_series_stride_and_window_options():
    d = load_dataset("co2", "test", window=16, stride=10)
    assert d.x.shape[1:] == (1, 16)
    assert torch.equal(torch.diff(d.info["starts"]), torch.full((len(d) - 1,), 10))
    assert len(d) == (457 - 16) // 10 + 1


def test_co2_missing_weeks_interpolated():
    from statsmodels.datasets import co2

    orig = co2.load_pandas().data["co2"].to_numpy()
    filled, _ = series_values("co2")
    missing = np.flatnonzero(np.isnan(orig))
    assert len(missing) > 0
    assert np.array_equal(filled[~np.isnan(orig)], orig[~np.isnan(orig)])
    i = missing[0]  # an isolated gap (neighbours observed) is the midpoint of its neighbours
    assert not np.isnan(orig[i - 1]) and not np.isnan(orig[i + 1])
    assert filled[i] == pytest.approx(0.5 * (orig[i - 1] + orig[i + 1]), abs=0.01)


def test_patch_min_std_keeps_only_textured_crops_and_is_deterministic():
    from diffusekit.data.patches import _load_image

    d = load_dataset("patches", "test", n=200, seed=3, min_std=0.1)
    assert d.x.shape == (200, 1, 16, 16) and d.info["min_std"] == 0.1
    assert float(d.x.flatten(1).std(1).min()) >= 0.1
    assert torch.equal(d.x, load_dataset("patches", "test", n=200, seed=3, min_std=0.1).x)
    # the recorded source and corner still point at the crop
    for i in (0, 1, 199):
        img = _load_image(d.info["images"][int(d.info["source"][i])], True)[0]
        r, c = d.info["corner"][i].tolist()
        assert np.allclose(d.x[i, 0].numpy(), img[r:r + 16, c:c + 16] * 2 - 1, atol=1e-6)
    # min_std = 0 is the plain loader
    assert torch.equal(load_dataset("patches", "test", n=50, seed=3).x,
                       load_dataset("patches", "test", n=50, seed=3, min_std=0.0).x)
    with pytest.raises(ValueError, match=r"min_std must be a number in \[0, 1\)"):
        load_dataset("patches", "test", n=5, min_std=1.5)
    with pytest.raises(ValueError, match="min_std=0.99 is too high"):
        load_dataset("patches", "test", n=5, min_std=0.99)
