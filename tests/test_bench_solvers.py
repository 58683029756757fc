"""The solvers bench in quick mode: held-out split, independent reference, and the direction of the effect
(our default no worse than diffusers' best configuration at the quick NFEs)."""

import json
import math

import pytest
import torch

import diffusers  # noqa: E402,F401  (a missing dev extra fails, not skips)

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

import diffusekit.bench.solvers  # noqa: E402,F401  (registers the bench)
from diffusekit.bench import _diffusers_side as dside  # noqa: E402
from diffusekit.bench import run_bench  # noqa: E402
from diffusekit.bench._mixtures import MIXTURES, reference_solution  # noqa: E402
from diffusekit.core import FlowSchedule, VESchedule, VPDiscrete, prior_sample  # noqa: E402
from diffusekit.samplers import sample  # noqa: E402
from diffusekit.samplers.defaults import grid_warped  # noqa: E402


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("solvers")
    result = run_bench("solvers", out=out, quick=True)
    return result, json.loads((out / "solvers.json").read_text()), out


def test_quick_bench_files_and_layout(quick):
    result, saved, out = quick
    assert (out / "solvers.png").stat().st_size > 0
    assert saved["summary"] == result["summary"] and saved["quick"] is True
    assert saved["nfe"] == [5, 10] and set(saved["problems"]) == {"ring2d", "stiff16d"}
    for p, rows in saved["problems"].items():
        info = saved["problem_info"][p]
        assert info["tune_seed"] != info["held_out_seed"]
        assert info["reference"]["gap_to_rtol_1e-8"] < 1e-6
        for k, row in rows.items():
            for key in ("ours_default", "ours_best", "ours_best_fixed", "diffusers_best", "diffusers_default"):
                assert _finite(row[key]["held_out"]) and _finite(row[key]["tune"]), (p, k, key)
            # selection happened on the tuning set: the chosen configuration is the tuning minimum
            assert row["ours_best"]["tune"] <= row["ours_best_fixed"]["tune"]
            assert row["diffusers_best"]["tune"] <= row["diffusers_default"]["tune"]
            assert row["diffusers_best"]["tune"] <= row["diffusers_lu_lambdas"]["tune"]
            assert saved["search"][p][k]["seconds"] > 0


def test_quick_default_no_worse_than_diffusers_best(quick):
    _, saved, _ = quick
    for p, rows in saved["problems"].items():
        for k, row in rows.items():
            assert row["ours_default"]["held_out"] <= row["diffusers_best"]["held_out"], (p, k)
            assert row["ours_default"]["held_out"] <= row["diffusers_default"]["held_out"], (p, k)


def test_option_space_covers_diffusers_options():
    space = dside.option_space("full")
    classes = {cls for _, cls, _ in space}
    assert {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
            "DEISMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler"} <= classes
    dpm = [c for _, cls, c in space if cls == "DPMSolverMultistepScheduler"]
    for opt in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"):
        assert any(c.get(opt) for c in dpm), opt
    assert {c.get("timestep_spacing") for c in dpm} >= {"linspace", "leading", "trailing"}
    assert {c.get("solver_order", 2) for c in dpm} == {1, 2, 3}
    assert len({label for label, _, _ in space}) == len(space)


@pytest.mark.parametrize("schedule", [VPDiscrete.named("linear"), VESchedule(), FlowSchedule()],
                         ids=["vp", "ve", "flow"])
def test_reference_agrees_with_a_fine_solver(schedule):
    # DOP853 on the schedule-free PF-ODE vs a fine DPM-Solver++(3M) solve on the schedule itself, to t_min
    # then the denoised x0 (flow: from its pure-noise t = 1)
    mixture = MIXTURES["aniso8d"]()
    x_T = prior_sample(schedule, (16, mixture.dim), torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = reference_solution(mixture, schedule, x_T)
    x = sample("dpm_solver_pp_3m", mixture.denoiser(schedule), x_T, grid_warped(schedule, 800))
    assert float((x - ref).norm(dim=1).mean()) < 1e-4
