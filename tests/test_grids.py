import pytest
import torch

from diffusekit.core import (FlowSchedule, VESchedule, VPDiscrete, VPLinear, check_grid, diffusers_timesteps,
                             grid_diffusers, grid_karras, grid_logsnr, make_grid)


@pytest.mark.parametrize("name", ["uniform", "logsnr", "quadratic", "karras"])
@pytest.mark.parametrize("schedule", [VPDiscrete.named("linear"), VPLinear(), VESchedule(), FlowSchedule()],
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
    with pytest.raises(ValueError, match="needs t_end with SNR > 1"):
        make_grid("logsnr", FlowSchedule(), 4, t_end=0.9)
    with pytest.raises(ValueError, match="rho must be > 0"):
        make_grid("karras", s, 4, rho=0.0)


@pytest.mark.parametrize("name, bad, allowed", [
    ("trailing", {"t_end": 0.0}, "final, steps_offset"), ("leading", {"t_start": 0.5}, "final, steps_offset"),
    ("linspace", {"rho": 7.0}, "final, steps_offset"), ("uniform", {"rho": 7.0}, "t_start, t_end"),
    ("logsnr", {"final": "zero"}, "t_start, t_end"), ("karras", {"tend": 0.0}, "rho, t_start, t_end"),
])
def test_an_option_a_grid_does_not_take_is_a_one_line_error(name, bad, allowed):
    message = f"the {name} grid does not take {next(iter(bad))}; allowed options: {allowed}"
    with pytest.raises(ValueError, match=message):
        make_grid(name, VPDiscrete.named("linear"), 4, **bad)
    make_grid("trailing", VPDiscrete.named("linear"), 4, final="first", steps_offset=0)  # the allowed ones do


@pytest.mark.parametrize("name", ["logsnr", "karras"])
@pytest.mark.parametrize("schedule", [FlowSchedule(), VPDiscrete.named("linear", zero_terminal_snr=True)],
                         ids=["flow", "zero_snr"])
def test_lam_grids_from_pure_noise(name, schedule):
    """From the default start alpha = 0 (lam = -inf): a first step to lam = -lam(t_min) (t = 1 - t_min on a flow
    schedule), then the grid's own spacing between finite ends; t_end = 0 adds the usual last step."""
    s = schedule
    lam_min = float(s.lam(s.t_min))
    for t_end, tail in [(None, 0), (0.0, 1)]:
        for n in range(1, 9):
            ts = make_grid(name, s, n, t_end=t_end)
            assert len(ts) == n + 1 and float(ts[0]) == 1.0 and float(s.alpha(ts[0])) == 0.0
            check_grid(ts, s)
            assert float(ts[-1]) == (0.0 if tail else s.t_min)
            if n - 1 - tail >= 1:
                lam = s.lam(ts[1:len(ts) - tail])
                assert abs(float(lam[0]) + lam_min) < 1e-9 and abs(float(lam[-1]) - lam_min) < 1e-9
                if name == "logsnr":
                    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(len(lam) - 1), rtol=1e-9, atol=0)
            elif n == 2 and tail:
                assert abs(float(s.lam(ts[1]))) < 1e-9  # the one interior point between two infinite ends: SNR 1
    if isinstance(s, FlowSchedule):
        assert abs(float(make_grid(name, s, 5)[1]) - (1 - s.t_min)) < 1e-12
