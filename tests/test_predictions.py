import pytest
import torch

from diffusekit.core import (PREDICTION_TYPES, FlowSchedule, VESchedule, VPDiscrete, VPLinear, convert, eps_from_x0,
                             prediction_from_x0_eps, x0_from_prediction, x0_loss_weight)

SCHEDULES = [VPDiscrete.named("cosine"), VPLinear(), VESchedule(), FlowSchedule()]


def _batch(schedule, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    hi = min(schedule.t_max, 0.99) if schedule.kind == "flow" else schedule.t_max
    t = schedule.t_min + (hi - schedule.t_min) * torch.rand(6, generator=g, dtype=torch.float64)
    return x0, eps, t, schedule.add_noise(x0, t, eps)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_target_then_x0_round_trip(schedule, prediction):
    x0, eps, t, x = _batch(schedule)
    target = prediction_from_x0_eps(x0, eps, t, schedule, prediction)
    torch.testing.assert_close(x0_from_prediction(target, x, t, schedule, prediction), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_from_x0(x0, x, t, schedule), eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_convert_between_every_pair(schedule):
    x0, eps, t, x = _batch(schedule, 1)
    for a in PREDICTION_TYPES:
        pa = prediction_from_x0_eps(x0, eps, t, schedule, a)
        for b in PREDICTION_TYPES:
            torch.testing.assert_close(convert(pa, x, t, schedule, a, b),
                                       prediction_from_x0_eps(x0, eps, t, schedule, b), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_x0_loss_weight_is_the_error_scale(schedule, prediction):
    x0, eps, t, x = _batch(schedule, 2)
    target = prediction_from_x0_eps(x0, eps, t, schedule, prediction)
    delta = 1e-3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dx0 = x0_from_prediction(target + delta, x, t, schedule, prediction) - x0
    ratio = (delta**2).sum(1) / (dx0**2).sum(1)
    torch.testing.assert_close(ratio, x0_loss_weight(t, schedule, prediction), rtol=1e-6, atol=0)


def test_unknown_prediction_type():
    s = VPLinear()
    with pytest.raises(ValueError, match="unknown prediction type 'noise'; allowed: eps"):
        x0_from_prediction(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, s, "noise")
