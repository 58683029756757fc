import pytest
import torch

from diffusekit.core import (FlowSchedule, VESchedule, VPDiscrete, VPLinear, check_grid, diffusers_timesteps,
                             grid_diffusers, grid_karras, grid_logsnr, make_grid)


@pytest.mark.parametrize("name", ["uniform", "logsnr", "quadratic", "karras"])
@pytest.mark.parametrize("schedule", [VPDiscrete.named("linear"), VPLinear(), VESchedule(), FlowSchedule(t_max=0.999)],
                         ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("t_end", [None, 0.0])
def test_grids_decrease_between_the_requested_ends(name, schedule, t_end):
    ts = make_grid(name, schedule, 7, t_end=t_end)
    assert ts.shape == (8,) and ts.dtype == torch.float64
    assert float(ts[0]) == schedule.t_max
    assert float(ts[-1]) == (schedule.t_min if t_end is None else 0.0)
    check_grid(ts, schedule)


def test_logsnr_grid_is_uniform_in_lam():
    s = VPLinear()
    lam = s.lam(grid_logsnr(s, 10))
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-9, atol=1e-9)


def test_karras_grid_on_ve_is_the_edm_formula():
    s = VESchedule(0.002, 80.0)
    i = torch.arange(19, dtype=torch.float64)
    ref = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(grid_karras(s, 18), ref, rtol=1e-12, atol=1e-12)


def test_diffusers_spacings():
    assert diffusers_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert diffusers_timesteps(1000, 10, "leading", steps_offset=1).tolist() == list(range(901, 0, -100))
    assert diffusers_timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert diffusers_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    s = VPDiscrete.named("linear", 1000)
    ts = grid_diffusers(s, 10, spacing="trailing")
    assert s.network_time(ts[:-1]).round().tolist() == list(range(999, 0, -100)) and float(ts[-1]) == 0.0
    with pytest.raises(ValueError, match="unknown spacing"):
        diffusers_timesteps(1000, 4, "middle")
    with pytest.raises(ValueError, match="discrete schedule"):
        grid_diffusers(VPLinear(), 4)


def test_bad_grids():
    s = VPLinear()
    with pytest.raises(ValueError, match="unknown time grid 'cubic'"):
        make_grid("cubic", s, 4)
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_grid(torch.tensor([0.5, 0.7, 0.1]), s)
    with pytest.raises(ValueError, match="positive integer"):
        make_grid("uniform", s, 0)
    with pytest.raises(ValueError, match="finite log-SNR"):
        make_grid("logsnr", FlowSchedule(), 4)
