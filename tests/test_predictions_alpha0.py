"""x0 from a network output at alpha = 0 (pure noise): finite for v/velocity/x0, a clear error otherwise."""

import pytest
import torch

from diffusekit.core import FlowSchedule
from diffusekit.core.predictions import x0_from_prediction


@pytest.mark.parametrize("prediction", ["eps", "score", "edm"])
def test_alpha_dividing_predictions_refuse_alpha_zero(prediction):
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="cannot denoise at alpha = 0"):
        x0_from_prediction(torch.randn(3, 2), x, torch.tensor(1.0), FlowSchedule(), prediction)


@pytest.mark.parametrize("prediction", ["v", "velocity", "x0"])
def test_other_predictions_are_finite_at_alpha_zero(prediction):
    x = torch.randn(3, 2)
    x0 = x0_from_prediction(torch.randn(3, 2), x, torch.tensor(1.0), FlowSchedule(), prediction)
    assert torch.isfinite(x0).all()


def test_eps_prediction_below_alpha_zero_is_unchanged():
    x, eps = torch.randn(3, 2), torch.randn(3, 2)
    x0 = x0_from_prediction(eps, x, torch.tensor(0.5), FlowSchedule(), "eps")
    torch.testing.assert_close(x0, (x - 0.5 * eps) / 0.5)
