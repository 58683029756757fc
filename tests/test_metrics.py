"""Tests for diffusekit.metrics: distances, image metrics, digits classifier / FD."""

import math

import numpy as np
import pytest
import torch

from diffusekit.metrics import (
    DigitsClassifier,
    class_accuracy,
    digits_fd,
    digits_features,
    frechet_distance,
    gaussian_frechet_distance,
    gmm_nll,
    mmd_rbf,
    mode_coverage,
    psnr,
    sliced_wasserstein,
    ssim,
    train_digits_classifier,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _fd_reference(mu1, c1, mu2, c2) -> float:
    """Independent formula: Tr((C1 C2)^{1/2}) = Tr((C1^{1/2} C2 C1^{1/2})^{1/2})."""
    s = _psd_sqrt(c1)
    cross = np.trace(_psd_sqrt(s @ c2 @ s))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * cross)


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_identical_sets_is_zero():
    x = torch.randn(500, 6, generator=_gen(0))
    assert abs(frechet_distance(x, x)) < 1e-8
    assert abs(frechet_distance(x.numpy(), x.numpy()[::-1].copy())) < 1e-8  # order does not matter


def test_gaussian_frechet_closed_forms():
    d = 5
    mu1 = np.zeros(d)
    mu2 = np.arange(d, dtype=float)
    a = _random_spd(d, 1)
    # shifted means, same covariance: ||delta||^2
    assert gaussian_frechet_distance(mu1, a, mu2, a) == pytest.approx(np.sum(mu2**2), rel=1e-9)
    # scaled covariance s^2 A: (1 - s)^2 Tr(A)
    s = 1.7
    expected = np.sum(mu2**2) + (1 - s) ** 2 * np.trace(a)
    assert gaussian_frechet_distance(mu1, a, mu2, s * s * a) == pytest.approx(expected, rel=1e-9)
    # commuting diagonal covariances: sum (sqrt(a_i) - sqrt(b_i))^2
    da, db = np.array([1.0, 2.0, 0.5, 3.0, 0.1]), np.array([4.0, 0.5, 0.5, 1.0, 2.0])
    expected = np.sum((np.sqrt(da) - np.sqrt(db)) ** 2)
    assert gaussian_frechet_distance(mu1, np.diag(da), mu1, np.diag(db)) == pytest.approx(expected, rel=1e-9)
    # general non-commuting covariances vs an independent formula; symmetric
    b = _random_spd(d, 2)
    ref = _fd_reference(mu1, a, mu2, b)
    assert gaussian_frechet_distance(mu1, a, mu2, b) == pytest.approx(ref, rel=1e-8)
    assert gaussian_frechet_distance(mu2, b, mu1, a) == pytest.approx(ref, rel=1e-8)
    # torch inputs work too
    got = gaussian_frechet_distance(torch.tensor(mu1), torch.tensor(a), torch.tensor(mu2), torch.tensor(b))
    assert got == pytest.approx(ref, rel=1e-8)


def test_frechet_large_sample_matches_closed_form():
    d, n = 3, 100_000
    rng = np.random.default_rng(3)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 0.0])
    c1, c2 = _random_spd(d, 4), 2.0 * _random_spd(d, 5)
    xa = rng.multivariate_normal(mu1, c1, size=n)
    xb = rng.multivariate_normal(mu2, c2, size=n)
    exact = gaussian_frechet_distance(mu1, c1, mu2, c2)
    assert frechet_distance(xa, xb) == pytest.approx(exact, rel=0.03)
    # two samples of the same Gaussian: near 0 (O(d^2 / n) bias)
    assert frechet_distance(xa, rng.multivariate_normal(mu1, c1, size=n)) < 1e-3


def test_frechet_errors():
    with pytest.raises(ValueError):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError):
        gaussian_frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# ----------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_translation_exact():
    """If b = a + delta exactly, each projected W2 is |<delta, theta>|."""
    a = torch.randn(300, 3, generator=_gen(0), dtype=torch.float64)
    delta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sw = sliced_wasserstein(a, a + delta, n_projections=64, generator=_gen(7))
    theta = torch.randn(3, 64, generator=_gen(7), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    assert sw == pytest.approx(float((delta @ theta).abs().mean()), rel=1e-10)


def test_sliced_wasserstein_unequal_counts():
    # 1-D: a = {0, 1, 2}, b = {0, 3}: W2^2 = 1/6 * 1 + 1/6 * 4 + 1/3 * 1 = 7/6
    a = torch.tensor([[0.0], [1.0], [2.0]])
    b = torch.tensor([[3.0], [0.0]])
    assert sliced_wasserstein(a, b, n_projections=5, generator=_gen(0)) == pytest.approx(math.sqrt(7 / 6), rel=1e-12)
    # replicating each set to a common count gives the same empirical measures
    a = torch.randn(4, 2, generator=_gen(1))
    b = torch.randn(6, 2, generator=_gen(2)) + 1.0
    sw = sliced_wasserstein(a, b, n_projections=32, generator=_gen(3))
    sw_rep = sliced_wasserstein(a.repeat(3, 1), b.repeat(2, 1), n_projections=32, generator=_gen(3))
    assert sw == pytest.approx(sw_rep, rel=1e-10)


def test_sliced_wasserstein_same_vs_shifted():
    a = torch.randn(2000, 2, generator=_gen(0))
    b = torch.randn(1500, 2, generator=_gen(1))
    same = sliced_wasserstein(a, b, generator=_gen(2))
    assert same < 0.08
    values = [sliced_wasserstein(a, b + s, generator=_gen(2)) for s in (0.5, 1.0, 2.0)]
    assert same < values[0] < values[1] < values[2]
    # shift (s, s): mean |<(s, s), theta>| = s * sqrt(2) * 2 / pi for directions uniform on the circle
    assert values[2] == pytest.approx(2 * math.sqrt(2) * 2 / math.pi, rel=0.1)


def test_sliced_wasserstein_errors():
    with pytest.raises(ValueError):
        sliced_wasserstein(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError):
        sliced_wasserstein(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError):
        sliced_wasserstein(torch.randn(5, 2), torch.randn(5, 2), n_projections=0)


# ----------------------------------------------------------------------------- MMD


def test_mmd_matches_brute_force():
    a = torch.randn(7, 2, generator=_gen(0), dtype=torch.float64)
    b = torch.randn(5, 2, generator=_gen(1), dtype=torch.float64) + 0.3
    sigma = 0.8
    k = lambda x, y: math.exp(-float((x - y).square().sum()) / (2 * sigma**2))  # noqa: E731
    kaa = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    kbb = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    kab = sum(k(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    assert mmd_rbf(a, b, bandwidth=sigma) == pytest.approx(kaa + kbb - 2 * kab, rel=1e-10)
    # median heuristic: the median pairwise distance of the pooled sample
    pooled = torch.cat([a, b])
    iu = torch.triu_indices(12, 12, offset=1)
    med = float(torch.cdist(pooled, pooled)[iu[0], iu[1]].median())
    assert mmd_rbf(a, b) == pytest.approx(mmd_rbf(a, b, bandwidth=med), rel=1e-10)


def test_mmd_same_vs_shifted():
    a = torch.randn(800, 2, generator=_gen(0))
    same = [mmd_rbf(a, torch.randn(800, 2, generator=_gen(s)), bandwidth=1.0) for s in range(1, 4)]
    assert abs(np.mean(same)) < 2e-3
    shifted = [mmd_rbf(a, torch.randn(800, 2, generator=_gen(9)) + s, bandwidth=1.0) for s in (0.25, 0.5, 1.0)]
    assert max(abs(v) for v in same) < shifted[0] < shifted[1] < shifted[2]
    assert mmd_rbf(a, torch.randn(800, 2, generator=_gen(9)) + 1.0) > 0.1  # median bandwidth


def test_mmd_errors():
    with pytest.raises(ValueError):
        mmd_rbf(torch.randn(1, 2), torch.randn(5, 2))
    with pytest.raises(ValueError):
        mmd_rbf(torch.randn(5, 2), torch.randn(5, 2), bandwidth=0.0)


# ----------------------------------------------------------------------------- mode coverage, NLL


def test_mode_coverage():
    means = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    jitter = 0.1 * torch.randn(30, 2, generator=_gen(0))
    samples = torch.cat([means[0] + jitter[:10], means[1] + jitter[10:20], means[2] + jitter[20:29],
                         torch.tensor([[9.0, 9.0]])])
    # modes 0, 1, 2 have 10, 10, 9 samples; mode 3 none (the far sample is outside the radius)
    assert mode_coverage(samples, means, radius=1.0) == pytest.approx(0.75)
    assert mode_coverage(samples, means, radius=1.0, min_count=10) == pytest.approx(0.5)
    assert mode_coverage(samples, means, radius=1.0, min_count=11) == 0.0
    assert mode_coverage(samples, means, radius=6.0) == 1.0
    assert mode_coverage(torch.zeros(0, 2), means, radius=1.0) == 0.0
    with pytest.raises(ValueError):
        mode_coverage(samples, means, radius=-1.0)
    with pytest.raises(ValueError):
        mode_coverage(samples, means[:, :1], radius=1.0)


class _StdNormal:
    def log_prob(self, x):
        return -0.5 * x.square().sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def test_gmm_nll_duck_typed():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    expected = math.log(2 * math.pi) + 0.5  # mean of 0.5 ||x||^2 is 0.5, plus log(2 pi)
    assert gmm_nll(x, _StdNormal()) == pytest.approx(expected)
    big = torch.randn(50_000, 2, generator=_gen(0))
    assert gmm_nll(big, _StdNormal()) == pytest.approx(1 + math.log(2 * math.pi), rel=1e-2)  # entropy
    with pytest.raises(ValueError, match="log_prob"):
        gmm_nll(x, object())


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_closed_form():
    ref = torch.rand(3, 1, 8, 8, generator=_gen(0)) * 2 - 1
    x = ref.clone()
    x[0] += 0.1  # mse 0.01
    x[1] -= 0.5  # mse 0.25
    out = psnr(x, ref)
    assert out.shape == (3,)
    assert out[0].item() == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert out[1].item() == pytest.approx(10 * math.log10(4 / 0.25), rel=1e-5)
    assert math.isinf(out[2].item())
    assert psnr(x, ref, data_range=1.0)[0].item() == pytest.approx(20.0, rel=1e-5)
    with pytest.raises(ValueError):
        psnr(x, ref[:2])
    with pytest.raises(ValueError):
        psnr(x, ref, data_range=0)


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("win_size", [7, 5])
def test_ssim_matches_skimage(size, channels, win_size):
    from skimage.metrics import structural_similarity

    g = _gen(size * 10 + channels)
    ref = torch.rand(4, channels, size, size, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    scales = torch.tensor([0.0, 0.05, 0.3, 1.0], dtype=torch.float64)[:, None, None, None]
    x = (ref + scales * noise).clamp(-1, 1)
    ours = ssim(x, ref, data_range=2.0, win_size=win_size)
    assert ours.shape == (4,) and ours.dtype == torch.float64
    for i in range(4):
        if channels == 1:
            sk = structural_similarity(x[i, 0].numpy(), ref[i, 0].numpy(), data_range=2.0, win_size=win_size)
        else:
            sk = structural_similarity(
                x[i].permute(1, 2, 0).numpy(), ref[i].permute(1, 2, 0).numpy(),
                data_range=2.0, win_size=win_size, channel_axis=-1,
            )
        assert abs(ours[i].item() - sk) < 1e-6
    assert ours[0].item() == pytest.approx(1.0)
    assert ours[1] > ours[2] > ours[3]


def test_ssim_errors():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x, x, win_size=9)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x, x, win_size=4)
    with pytest.raises(ValueError):
        ssim(x[:, 0], x[:, 0])


# ----------------------------------------------------------------------------- digits


def _digits_split(split: str):
    try:
        from diffusekit.data.digits import load_digits_split
    except ImportError:  # fallback while the data module is not there
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8 - 1
        y = torch.tensor(d.target, dtype=torch.long)
        idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=d.target, random_state=0)
        idx = idx_tr if split == "train" else idx_te
        return x[idx], y[idx]
    return load_digits_split(split)


@pytest.fixture(scope="module")
def digits_setup():
    xtr, ytr = _digits_split("train")
    xte, yte = _digits_split("test")
    clf = train_digits_classifier(xtr, ytr, epochs=15, seed=0)
    return clf, xtr, ytr, xte, yte


def test_digits_classifier_accuracy(digits_setup):
    clf, _, _, xte, yte = digits_setup
    assert not clf.training
    assert class_accuracy(xte, yte, classifier=clf) >= 0.95
    feats = digits_features(xte, clf)
    assert feats.shape == (xte.shape[0], 64)


def test_digits_fd_separates_real_from_pixel_gaussian(digits_setup):
    clf, xtr, _, xte, _ = digits_setup
    g = _gen(0)
    gauss = (xtr.mean(0) + xtr.std(0) * torch.randn(xte.shape, generator=g)).clamp(-1, 1)
    fd_real = digits_fd(xtr[: len(xte)], xte, classifier=clf)
    fd_gauss = digits_fd(gauss, xte, classifier=clf)
    assert fd_real >= 0 and fd_gauss > 20 * fd_real


def test_digits_training_is_deterministic():
    xtr, ytr = _digits_split("train")
    state = torch.random.get_rng_state()
    a = train_digits_classifier(xtr[:200], ytr[:200], epochs=1, seed=3)
    b = train_digits_classifier(xtr[:200], ytr[:200], epochs=1, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_digits_errors():
    clf = DigitsClassifier()
    with pytest.raises(ValueError, match="8, 8"):
        digits_features(torch.zeros(3, 1, 16, 16), clf)
    with pytest.raises(ValueError):
        class_accuracy(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1]), classifier=clf)
    with pytest.raises(ValueError):
        train_digits_classifier(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 10]), epochs=1, seed=0)


# ----------------------------------------------------------------------------------------------
# independent judge
# ----------------------------------------------------------------------------------------------
def test_judge_classifies_held_out_digits_and_rejects_noise():
    from diffusekit.data import load_dataset
    from diffusekit.metrics import judge_accuracy, judge_predict

    test = load_dataset("digits", "test")
    assert judge_accuracy(test.x, test.y) > 0.97
    # uniform-noise images are not assigned one class consistently: no class gets 90% of them
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    counts = torch.bincount(judge_predict(noise), minlength=10)
    assert int(counts.max()) < 180


def test_judge_is_not_fooled_by_an_adversarial_step_against_the_cnn():
    """A targeted gradient attack on the zoo CNN flips the CNN's decision but not the SVM judge's."""
    from diffusekit import zoo
    from diffusekit.data import load_dataset
    from diffusekit.metrics import class_accuracy, judge_accuracy

    clf = zoo.load("digits_classifier")
    test = load_dataset("digits", "test")
    x, y = test.x[:100], test.y[:100]
    target = (y + 1) % 10
    adv = x.clone().requires_grad_(True)
    for _ in range(40):  # iterative signed-gradient attack, L_inf budget 0.4 on the [-1, 1] scale
        loss = torch.nn.functional.cross_entropy(clf(adv), target)
        (g,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv -= 0.04 * g.sign()
            adv.copy_((x + (adv - x).clamp(-0.4, 0.4)).clamp(-1, 1))
    adv = adv.detach()
    assert class_accuracy(adv, target, classifier=clf) > 0.6  # the CNN is fooled (measured 0.78)
    assert judge_accuracy(adv, target) < 0.15  # the judge is not (0.06) ...
    assert judge_accuracy(adv, y) > 0.75  # ... and still reads the true digit (0.83)


def test_judge_rejects_bad_input():
    from diffusekit.metrics import judge_accuracy

    with pytest.raises(ValueError, match="shape"):
        judge_accuracy(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        judge_accuracy(torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))


def test_gradient_kurtosis_separates_natural_patches_from_gaussian_noise():
    from diffusekit.data import load_dataset
    from diffusekit.metrics import gradient_excess_kurtosis

    patches = load_dataset("patches", "test", n=200).x
    gauss = torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert gradient_excess_kurtosis(patches) > 3.0
    assert abs(gradient_excess_kurtosis(gauss)) < 0.2
    with pytest.raises(ValueError, match="H, W >= 2"):
        gradient_excess_kurtosis(torch.zeros(3, 16))
