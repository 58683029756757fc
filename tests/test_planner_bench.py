"""``bench planner --quick``: Trajectory Diffuser costs a fraction of Diffuser's computation per decision at no lower
return (Huang et al. 2024, arXiv 2407.16142, vs Janner et al. 2022, arXiv 2205.09991). Asserted on network
evaluations, FLOPs and return, never on wall time."""

import json

import torch


def test_quick_bench_direction(tmp_path):
    from diffusekit.bench import run_bench

    torch.set_num_threads(1)
    r = run_bench("planner", out=tmp_path, quick=True)
    assert (tmp_path / "planner.png").exists() and json.loads((tmp_path / "planner.json").read_text())["summary"]
    d, td, ar = (r["methods"][m] for m in ("diffuser", "trajectory_diffuser", "autoregressive"))
    # cost: Diffuser's 20 denoiser steps + 36 value gradients vs 5 refinement steps (+ cheap GRU cells)
    assert d["nfe"]["denoiser"] == 20 and td["nfe"]["denoiser"] == 5 and ar["nfe"]["denoiser"] == 0
    assert d["nfe"]["value"] == 2 * (20 - 2) + 1
    assert d["flops_per_decision"] > 3 * td["flops_per_decision"] > 3 * ar["flops_per_decision"], r["summary"]
    # return: the refined autoregressive plans reach the goal, and do no worse than Diffuser's at this budget
    assert td["success_rate"] == 1.0, r["summary"]
    assert td["return_mean"] >= d["return_mean"], r["summary"]
