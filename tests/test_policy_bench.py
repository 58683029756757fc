"""bench policy --quick: the direction of the Diffusion Policy claim and MoDE's exact expert fusion."""

import pytest

from diffusekit.bench import run_bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_policy")
    result = run_bench("policy", out=out, quick=True)
    assert (out / "policy.json").is_file() and (out / "policy.png").is_file()
    return result


def test_mse_averages_into_the_obstacle_diffusion_keeps_both_routes(quick):
    rows = quick["policies"]
    mse, ddpm = rows["mse"], rows["diffusion ddpm-100"]
    assert mse["collision_rate"] >= 0.8
    best_diffusion = min(rows[k]["collision_rate"] for k in rows if k.startswith("diffusion"))
    assert best_diffusion <= mse["collision_rate"] - 0.3
    assert ddpm["left_fraction"] + ddpm["right_fraction"] >= mse["left_fraction"] + mse["right_fraction"] + 0.3
    # at the start, the regressor heads (nearly) straight for the obstacle; diffusion samples turn to either side
    probe_mse, probe_dp = mse["start_probe"], ddpm["start_probe"]
    assert probe_dp["mean_abs_heading_x"] >= 2 * probe_mse["mean_abs_heading_x"]
    assert min(probe_dp["fraction_left"], probe_dp["fraction_right"]) >= 0.15


def test_fewer_steps_cost_less(quick):
    rows = quick["policies"]
    assert rows["diffusion ddim-8"]["flops_per_query"] * 10 < rows["diffusion ddpm-100"]["flops_per_query"]


def test_mode_fused_equals_routed_with_fewer_flops(quick):
    caching = quick["mode_caching"]
    assert caching["max_abs_diff_fused_vs_routed"] < 1e-5
    assert caching["flops_per_query_fused"] < caching["flops_per_query_routed"]
    assert 0 <= caching["routing"]["mutual_information"] <= 1.3863  # at most log(4 experts)
