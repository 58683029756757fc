"""AutoDiffusion time-step search: direction of effect on exact GMMs (trajectory objective, held-out noise),
memoisation, grid validity, files."""

import math

import pytest
import torch

from diffusekit.core import NetworkDenoiser, VPDiscrete, VPLinear, make_grid, prior_sample
from diffusekit.data import ring8_mixture
from diffusekit.methods.autodiffusion import (SEED_GRIDS, EvolutionConfig, SampleFitness, digits_fitness,
                                              gmm_fitness, load_grid, save_grid, search_timesteps, step_space)
from diffusekit.samplers import SAMPLERS
from diffusekit.samplers.defaults import fixed_grids

SMALL = EvolutionConfig(population=12, parents=4, mutations=6, crossovers=4, generations=5, seed=0)


@pytest.fixture(scope="module")
def schedule():
    return VPDiscrete.named("linear")


@pytest.fixture(scope="module")
def ring_search(schedule):
    fitness = gmm_fitness(ring8_mixture(), schedule, n=128, seed=0)  # trajectory error, DDIM
    return search_timesteps(fitness, schedule, 4, config=SMALL)


def _assert_valid_grid(ts, schedule, steps, t_end=0.0):
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == schedule.t_max and float(ts[-1]) == t_end
    assert bool((ts[1:] < ts[:-1]).all()), "strictly decreasing, hence no duplicate steps"


def test_search_beats_standard_grids_and_holds_out(ring_search, schedule):
    res = ring_search
    assert set(res.seed_fitness) == set(SEED_GRIDS)  # every fixed grid is a seed on a discrete schedule
    assert all(res.fitness <= f for f in res.seed_fitness.values())
    assert res.source == "searched"
    # held-out x_T (another seed), more samples, same solver and NFE
    held_out = gmm_fitness(ring8_mixture(), schedule, n=256, seed=100)
    searched = held_out(res.ts)
    for name, ts in fixed_grids(schedule, 4).items():
        assert searched < 0.8 * held_out(ts), name
    best = [h["best_fitness"] for h in res.history]
    assert best == sorted(best, reverse=True) and len(res.history) == SMALL.generations + 1
    assert res.seconds > 0


def test_grid_is_valid_integer_timesteps(ring_search, schedule):
    _assert_valid_grid(ring_search.ts, schedule, 4)
    inner = ring_search.ts[1:-1] * schedule.num_train_timesteps - 1
    assert torch.allclose(inner, inner.round(), atol=1e-9)
    for entry in ring_search.history:
        _assert_valid_grid(torch.tensor(entry["best_ts"], dtype=torch.float64), schedule, 4)


def test_each_distinct_candidate_evaluated_once(schedule):
    inner = gmm_fitness(ring8_mixture(), schedule, n=200, n_projections=32)
    keys = []

    exact = [tuple(ts.tolist()) for ts in fixed_grids(schedule, 5).values()]

    def counting(ts):
        keys.append(tuple(ts.tolist()))
        if keys[-1] not in exact:  # diffusers' "leading" seed starts below t_max
            _assert_valid_grid(ts, schedule, 5)
        return inner(ts)

    res = search_timesteps(counting, schedule, 5, config=SMALL)
    assert len(keys) == len(set(keys)) == res.evaluations
    assert res.history[-1]["evaluations"] == res.evaluations


def test_deterministic_for_a_seed(schedule):
    def run(seed):
        fitness = gmm_fitness(ring8_mixture(), schedule, n=200, n_projections=32)
        cfg = EvolutionConfig(population=8, parents=3, mutations=4, crossovers=3, generations=3, seed=seed)
        return search_timesteps(fitness, schedule, 4, config=cfg)

    a, b = run(3), run(3)
    assert torch.equal(a.ts, b.ts) and a.fitness == b.fitness
    assert [h["best_ts"] for h in a.history] == [h["best_ts"] for h in b.history]


def test_continuous_schedule_and_every_sampler_accepts_the_grid():
    schedule = VPLinear()
    fitness = gmm_fitness(ring8_mixture(), schedule, n=200, n_projections=32, sampler="dpm_solver_pp_2m")
    cfg = EvolutionConfig(population=8, parents=3, mutations=4, crossovers=3, generations=2)
    res = search_timesteps(fitness, schedule, 5, config=cfg, resolution=200)
    _assert_valid_grid(res.ts, schedule, 5)
    pool = step_space(schedule, 5, resolution=200).points
    assert all(bool((pool == t).any()) for t in res.ts[1:-1])
    den = ring8_mixture().denoiser(schedule)
    x = prior_sample(schedule, (16, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, info in SAMPLERS.items():
        if info.adaptive or info.students_only:
            continue  # adaptive: own grid; student samplers (methods.distill.samplers) run students only
        opts = {"generator": torch.Generator().manual_seed(0)} if info.stochastic else {}
        assert torch.isfinite(info.fn(den, x.clone(), res.ts, **opts)).all(), name


def test_stochastic_fitness_uses_fixed_noise(schedule):
    fitness = gmm_fitness(ring8_mixture(), schedule, n=100, n_projections=16, sampler="ddpm",
                          metric="sliced_wasserstein")
    ts = make_grid("uniform", schedule, 4, t_end=0.0)
    assert fitness(ts) == fitness(ts)
    with pytest.raises(ValueError, match="deterministic"):
        gmm_fitness(ring8_mixture(), schedule, n=10, sampler="ddpm")


def test_exact_fixed_grid_kept_when_the_pool_cannot_beat_it(schedule):
    # a fitness that only the exact logsnr grid minimises: the search returns it, not a snapped copy
    target = fixed_grids(schedule, 4)["logsnr"]
    res = search_timesteps(lambda ts: float((ts - target).abs().sum()), schedule, 4, config=SMALL)
    assert res.source == "logsnr" and torch.equal(res.ts, target) and res.fitness == 0.0


def test_single_step_and_bad_arguments(schedule):
    fitness = gmm_fitness(ring8_mixture(), schedule, n=100, n_projections=16)
    res = search_timesteps(fitness, schedule, 1, config=SMALL)
    assert res.ts.tolist() == [1.0, 0.0]
    assert res.evaluations == len({tuple(ts.tolist()) for ts in fixed_grids(schedule, 1).values()})
    with pytest.raises(ValueError, match="positive integer"):
        step_space(schedule, 0)
    with pytest.raises(ValueError, match="pool holds only"):
        step_space(VPDiscrete.named("linear", 8), 9)
    with pytest.raises(ValueError, match="population"):
        EvolutionConfig(population=0)
    with pytest.raises(ValueError, match="unknown GMM metric"):
        gmm_fitness(ring8_mixture(), schedule, metric="fid")
    with pytest.raises(ValueError, match="fixed-step"):
        SampleFitness(fitness.denoiser, fitness.x_T, float, sampler="dpm_solver_adaptive")


def test_save_load_round_trip(tmp_path, ring_search):
    path = tmp_path / "grid.json"
    save_grid(path, ring_search.ts, ring_search.meta())
    ts, meta = load_grid(path)
    assert ts.dtype == torch.float64 and torch.equal(ts, ring_search.ts)
    assert meta["fitness"] == ring_search.fitness and meta["method"] == "autodiffusion"
    awkward = torch.tensor([1.0, 1 / 3, math.pi / 100, 1e-17, 0.0], dtype=torch.float64)
    save_grid(path, awkward, None)
    assert torch.equal(load_grid(path)[0], awkward)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 0]", "not a diffusekit.time_grid"),
    ('{"format": "diffusekit.time_grid", "version": 2, "ts": [1, 0]}', "version"),
    ('{"format": "diffusekit.time_grid", "version": 1, "ts": [1]}', "at least 2"),
    ('{"format": "diffusekit.time_grid", "version": 1, "ts": [0.5, 0.5, 0]}', "strictly decreasing"),
    ('{"format": "diffusekit.time_grid", "version": 1, "ts": [1, "a", 0]}', "finite numbers"),
    ('{"format": "diffusekit.time_grid", "version": 1, "ts": [1, NaN, 0]}', "finite numbers"),
    ('{"format": "diffusekit.time_grid", "version": 1, "ts": [1, -0.5]}', ">= 0"),
    ('{"format": "diffusekit.time_grid", "version": 1, "ts": [1, 0], "meta": 3}', "'meta'"),
])
def test_bad_grid_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_grid(path)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_save(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_grid(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="strictly decreasing"):
        save_grid(tmp_path / "g.json", [0.0, 1.0])
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_grid(tmp_path / "g.json", [1.0, 0.0], {"x": object()})
    assert not (tmp_path / "g.json").exists(), "a failed save writes nothing"


def test_digits_fitness_runs_deterministically():
    from diffusekit.metrics import DigitsClassifier
    from diffusekit.nets import build_net
    from diffusekit.zoo.recipes import DIGITS_NET

    torch.manual_seed(0)
    den = NetworkDenoiser(build_net(DIGITS_NET).eval(), VPDiscrete.named("linear"), "eps")
    classifier = DigitsClassifier().eval()
    reference = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fitness = digits_fitness(den, classifier, reference, n_per_class=3)
    ts = make_grid("uniform", den.schedule, 3, t_end=0.0)
    value = fitness(ts)
    assert math.isfinite(value) and value == fitness(ts)


def test_quick_bench_searched_beats_best_fixed_on_held_out_noise(tmp_path):
    import json

    from diffusekit.bench import run_bench

    run_bench("autodiffusion", out=tmp_path, quick=True)
    saved = json.loads((tmp_path / "autodiffusion.json").read_text())
    assert saved["objective"] == "trajectory" and saved["tune_seed"] != saved["held_out_seed"]
    for name, entry in saved["problems"].items():
        for k, row in entry["nfe"].items():
            held = row["held_out"]
            assert {"uniform", "logsnr", "quadratic", "karras", "linspace", "leading", "trailing"} <= set(held)
            assert held["searched"] < min(v for g, v in held.items() if g not in ("searched",
                                                                                  "default_family_search")), (name, k)
            assert row["searched_over_best_fixed"] < 1.0
