"""``diffusekit bench flows --quick``: the couplings' and the SDE's effects in the direction the papers claim."""

import torch

from diffusekit.bench import run_bench


def test_flows_quick_ot_straighter_and_sde_repairs_an_under_trained_drift(tmp_path):
    torch.set_num_threads(1)
    result = run_bench("flows", out=tmp_path, quick=True)
    assert (tmp_path / "flows.json").exists() and (tmp_path / "flows.png").exists()
    res = result["results"]["8gaussians->moons"]
    icfm, otcfm = res["methods"]["I-CFM"], res["methods"]["OT-CFM"]
    # OT-CFM (Tong et al. 2023): straighter paths, so fewer Euler steps for the same W2
    assert otcfm["straightness"] < 0.5 * icfm["straightness"], (otcfm, icfm)
    assert otcfm["w2"]["2"] < icfm["w2"]["2"], (otcfm, icfm)
    # torchcfm's OT-CFM trained identically is straighter than its I-CFM too (the same effect, not our artefact)
    assert res["torchcfm"]["OT-CFM"]["straightness"] < 0.5 * res["torchcfm"]["I-CFM"]["straightness"]
    # the SDE with a moderate eps corrects an under-trained drift (Albergo et al. 2023): W2 at 100 steps
    under = res["interpolant"]["under-trained"]
    assert under["eps=0.5"]["w2"]["100"] < under["eps=0"]["w2"]["100"], under
