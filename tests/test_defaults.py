"""The default sampler and grid: valid on every schedule kind and zoo model, searched grid direction, cache."""

import json
import math

import pytest
import torch

from diffusekit import zoo
from diffusekit.core import FlowSchedule, VESchedule, VPDiscrete, VPLinear, prior_sample
from diffusekit.data import ring8_mixture
from diffusekit.samplers import DEFAULT, SAMPLERS, default_timesteps, sample
from diffusekit.samplers import defaults as D

SCHEDULES = {"vp_discrete": lambda: VPDiscrete.named("linear"), "vp_cosine": lambda: VPDiscrete.named("cosine"),
             "vp_linear": VPLinear, "ve": VESchedule, "flow": FlowSchedule}


def _assert_grid(ts, schedule, steps):
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == pytest.approx(schedule.t_max) and float(ts[-1]) == 0.0
    assert bool((ts[1:] < ts[:-1]).all())
    assert bool((ts[1:-1] >= schedule.t_min).all())


def _err(x, ref):
    return float((x - ref).norm(dim=1).mean())


def test_default_names_a_registered_deterministic_sampler():
    assert set(DEFAULT) >= {"sampler", "grid", "steps", "options"}
    info = SAMPLERS[DEFAULT["sampler"]]
    assert not info.stochastic and not info.adaptive
    assert DEFAULT["grid"] == "searched" and DEFAULT["steps"] >= 5


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_fallback_grid_is_valid_on_every_schedule(kind, steps):
    schedule = SCHEDULES[kind]()
    _assert_grid(D.fallback_timesteps(schedule, steps), schedule, steps)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_default_samples_finite_on_every_schedule(kind):
    schedule = SCHEDULES[kind]()
    den = ring8_mixture().denoiser(schedule)
    ts = default_timesteps(den, 6)  # a GMM: searched (cheap) and cached
    _assert_grid(ts, schedule, 6)
    assert torch.equal(default_timesteps(den, 6), ts)  # memory cache
    x = sample(DEFAULT["sampler"], den, prior_sample(schedule, (64, 2), torch.Generator().manual_seed(5),
                                                     dtype=torch.float64), ts)
    assert bool(torch.isfinite(x).all())
    assert float(x.norm(dim=1).mean()) == pytest.approx(2.0, abs=0.3)  # on the ring of radius 2


@pytest.mark.parametrize("name", ["toy_ring8", "digits_unet", "patches_unet", "digits_dit"])
def test_default_grid_for_zoo_models(name):
    den = zoo.load(name)
    shipped = D.load_grid_file(D.PACKAGED_GRIDS_DIR)
    for steps in (3, 5, 10):
        ts = default_timesteps(den, steps)  # a network: a shipped searched grid, else the fixed fallback
        _assert_grid(ts, den.schedule, steps)
        entry = shipped.get(D._file_key(D._cache_key(den, steps)))
        expected = D.fallback_timesteps(den.schedule, steps) if entry is None else \
            torch.tensor(entry["ts"], dtype=torch.float64)
        assert torch.equal(ts, expected)
        # the shipped grids match the shipped weights (rebuilt weights: rerun defaults.search_zoo_grids())
        assert (entry is not None) == (steps in D.ZOO_GRID_JOBS[name][2])
    if name == "toy_ring8":
        x = sample(DEFAULT["sampler"], den, prior_sample(den.schedule, (32, 2), torch.Generator().manual_seed(0)), ts)
        assert bool(torch.isfinite(x).all())


def test_searched_grid_beats_fixed_grids_on_held_out_noise():
    schedule = VPDiscrete.named("linear")
    mixture = ring8_mixture()
    den = mixture.denoiser(schedule)
    tune = prior_sample(schedule, (64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    fitness = D.TrajectoryFitness(den, tune)
    res = D.search_grid(fitness, schedule, 8)
    assert all(res.fitness <= f for f in res.fixed.values())  # the fixed grids are among the candidates
    assert set(res.fixed) >= {"uniform", "logsnr", "quadratic", "karras", "trailing"}
    held = prior_sample(schedule, (128, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    held_fit = D.TrajectoryFitness(den, held)
    best_fixed = min(held_fit(ts) for ts in D.fixed_grids(schedule, 8).values())
    assert held_fit(res.ts) < 0.5 * best_fixed


def test_fine_reference_is_converged():
    schedule = VESchedule()
    den = ring8_mixture().denoiser(schedule)
    x_T = prior_sample(schedule, (32, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    coarse = D.TrajectoryFitness(den, x_T, reference_steps=200).reference
    fine = D.TrajectoryFitness(den, x_T, reference_steps=800).reference
    assert _err(coarse, fine) < 1e-4


def test_grid_file_cache_round_trip(tmp_path):
    schedule = VPLinear()
    den = ring8_mixture().denoiser(schedule)
    res = D.search_default_grid(den, 4, n=16, cache_dir=tmp_path)
    obj = json.loads((tmp_path / D.GRID_FILE).read_text())
    assert obj["format"] == D.GRID_FILE_FORMAT and len(obj["grids"]) == 1
    assert not list(tmp_path.glob("*.tmp"))
    D._MEMORY.clear()
    ts = default_timesteps(den, 4, search=False, cache_dir=tmp_path)
    assert torch.equal(ts, res.ts)
    assert math.isfinite(res.seconds) and res.evaluations > 0
    (tmp_path / D.GRID_FILE).write_text("{not json")
    D._MEMORY.clear()
    with pytest.raises(ValueError, match="cannot read"):
        default_timesteps(den, 4, search=False, cache_dir=tmp_path)


def test_bad_arguments():
    schedule = VPLinear()
    den = ring8_mixture().denoiser(schedule)
    with pytest.raises(ValueError, match="steps"):
        default_timesteps(den, 0)
    with pytest.raises(ValueError, match="search"):
        default_timesteps(den, 3, search="sometimes")
    with pytest.raises(ValueError):
        D.grid_warped(schedule, 5, start=0.0)


def test_fallback_grid_is_competitive_with_the_best_fixed_grid():
    # geometric-mean error ratio to the best fixed grid (an oracle per case) over schedules, mixtures and NFE
    import statistics

    from diffusekit.bench._mixtures import MIXTURES, reference_solution

    logs = []
    for kind in ("vp_discrete", "ve", "flow"):
        schedule = SCHEDULES[kind]()
        for name in ("ring2d", "stiff16d"):
            mixture = MIXTURES[name]()
            den = mixture.denoiser(schedule)
            x = prior_sample(schedule, (32, mixture.dim), torch.Generator().manual_seed(1), dtype=torch.float64)
            ref = reference_solution(mixture, schedule, x)
            for k in (5, 10, 20, 50):
                fixed = [_err(sample(DEFAULT["sampler"], den, x, ts), ref)
                         for ts in D.fixed_grids(schedule, k).values()]
                fb = _err(sample(DEFAULT["sampler"], den, x, D.fallback_timesteps(schedule, k)), ref)
                logs.append(math.log(fb / min(f for f in fixed if math.isfinite(f))))
    assert statistics.mean(logs) < 0.0  # better than the best fixed grid on average
    assert max(logs) < math.log(4.0)


def test_degenerate_candidate_scores_inf():
    schedule = VESchedule()
    den = ring8_mixture().denoiser(schedule)
    x_T = prior_sample(schedule, (4, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    fitness = D.TrajectoryFitness(den, x_T, reference_steps=50)
    ts = torch.tensor([schedule.t_max, 1.0, 1.0, 0.5, 0.0], dtype=torch.float64)  # a repeated point
    assert fitness(ts) == math.inf


def test_default_grid_kind_says_which_grid_is_used(tmp_path):
    from diffusekit import zoo
    from diffusekit.samplers.defaults import _MEMORY, default_grid_kind, fallback_timesteps

    den = zoo.load("toy_ring8")  # a network with searched grids shipped for 5, 10 and 20 steps
    assert default_grid_kind(den, 10) == "searched"
    assert not torch.equal(default_timesteps(den, 10), fallback_timesteps(den.schedule, 10))
    _MEMORY.clear()
    assert default_grid_kind(den, 7) == "fallback"
    torch.testing.assert_close(default_timesteps(den, 7), fallback_timesteps(den.schedule, 7), rtol=0, atol=0)


@pytest.mark.parametrize("prediction,starts_at_t_max", [("eps", False), ("score", False), ("v", True),
                                                        ("velocity", True), ("x0", True)])
def test_default_grid_starts_where_the_model_can_denoise(prediction, starts_at_t_max):
    from diffusekit.core import NetworkDenoiser
    from diffusekit.nets import build_net

    torch.manual_seed(0)
    den = NetworkDenoiser(build_net({"name": "mlp", "dim": 2}).eval(), FlowSchedule(), prediction)
    ts = default_timesteps(den, 6)
    assert (float(ts[0]) == 1.0) is starts_at_t_max
    if not starts_at_t_max:  # lam = -5.1 at the first point: alpha > 0, so x0 = (x - sigma eps)/alpha is finite
        assert 0.99 < float(ts[0]) < 1.0 and float(den.schedule.alpha(ts[0])) > 0
    x_T = prior_sample(den.schedule, (16, 2), torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = sample(DEFAULT["sampler"], den, x_T, ts, **DEFAULT["options"])
    assert torch.isfinite(x).all()
