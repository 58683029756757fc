import math

import pytest
import torch

from diffusekit.core import CountingDenoiser, FunctionDenoiser, VPLinear
from diffusekit.methods.thresholding import DynamicThresholdDenoiser, StaticThresholdDenoiser, dynamic_threshold

# diffusers converts tensors with np.array(tensor), which numpy 2 flags; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def constant_denoiser(x0):
    """A Denoiser whose x0_hat is a fixed tensor (whatever x is)."""
    return FunctionDenoiser(lambda x, t: x0.to(x.dtype), VPLinear())


def test_in_range_x0_is_unchanged():
    x0 = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(dynamic_threshold(x0), x0, rtol=0, atol=0)
    x = torch.zeros_like(x0)
    torch.testing.assert_close(DynamicThresholdDenoiser(constant_denoiser(x0))(x, 0.5), x0, rtol=0, atol=0)
    torch.testing.assert_close(StaticThresholdDenoiser(constant_denoiser(x0))(x, 0.5), x0, rtol=0, atol=0)


def test_output_is_bounded_and_per_sample():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([0.2, 1, 3, 10, 100, 1e4]).reshape(
        -1, 1, 1, 1).double()
    out = dynamic_threshold(x0, ratio=0.9)
    assert out.abs().max() <= 1.0 and out.shape == x0.shape and out.dtype == x0.dtype
    for i in range(6):  # each sample is thresholded on its own
        torch.testing.assert_close(dynamic_threshold(x0[i:i + 1], ratio=0.9), out[i:i + 1], rtol=0, atol=0)
    # s = percentile of |x0|: for a sample far out of range, about 10% of its entries saturate at +-1
    saturated = (out[-1].abs() == 1.0).double().mean()
    assert 0.05 < float(saturated) < 0.15
    # the paper's defaults never clip below 1 and never rescale a sample whose 99.5th percentile is <= 1
    torch.testing.assert_close(dynamic_threshold(x0[:1]), x0[:1].clamp(-1, 1), rtol=0, atol=0)


def test_sample_max_value_one_is_static_clipping():
    x0 = 5 * torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(dynamic_threshold(x0, sample_max_value=1.0), x0.clamp(-1, 1), rtol=0, atol=0)
    torch.testing.assert_close(StaticThresholdDenoiser(constant_denoiser(x0), clip_range=2.0)(x0, 0.3),
                               x0.clamp(-2, 2), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("ratio,max_value", [(0.995, 1.0), (0.995, 1.5), (0.9, 3.0), (0.6, math.inf)])
def test_matches_diffusers_threshold_sample(dtype, ratio, max_value):
    import diffusers
    sched = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    g = torch.Generator().manual_seed(1)
    x0 = (torch.randn(5, 3, 8, 8, generator=g) * torch.tensor([0.3, 1.0, 2.0, 4.0, 50.0]).reshape(-1, 1, 1, 1))
    x0 = x0.to(dtype)
    ours = dynamic_threshold(x0, ratio=ratio, sample_max_value=max_value)
    theirs = sched._threshold_sample(x0)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_wrapper_is_one_call_and_passes_condition_through():
    seen = {}

    def fn(x, t, class_labels=None):
        seen["labels"] = class_labels
        return 3 * x

    inner = CountingDenoiser(FunctionDenoiser(fn, VPLinear()))
    den = DynamicThresholdDenoiser(inner, ratio=0.5, sample_max_value=2.0)
    x = torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(2, 10)
    out = den(x, 0.4, class_labels=torch.tensor([1, 2]))
    assert inner.calls == 1 and seen["labels"].tolist() == [1, 2] and den.schedule is inner.schedule
    s = torch.quantile((3 * x).abs(), 0.5, dim=1).clamp(1, 2)[:, None]
    torch.testing.assert_close(out, (3 * x).clamp(-s, s) / s)


def test_bad_options():
    den = constant_denoiser(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="ratio must be in"):
        DynamicThresholdDenoiser(den, ratio=1.5)
    with pytest.raises(ValueError, match="sample_max_value must be >= 1"):
        DynamicThresholdDenoiser(den, sample_max_value=0.5)
    with pytest.raises(ValueError, match="clip_range must be > 0"):
        StaticThresholdDenoiser(den, clip_range=0.0)
