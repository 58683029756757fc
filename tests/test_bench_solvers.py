"""The solvers bench (ours vs diffusers at equal NFE) runs end to end in quick mode and writes its JSON/PNG."""

import json
import math

import pytest

pytest.importorskip("diffusers")
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

import diffusekit.bench.solvers  # noqa: E402,F401  (registers the bench)
from diffusekit.bench import run_bench  # noqa: E402


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_solvers_bench_quick(tmp_path):
    # No skip when the digits asset is missing: the bench must fail loudly (zoo.ZooError) instead.
    result = run_bench("solvers", out=tmp_path, quick=True)
    saved = json.loads((tmp_path / "solvers.json").read_text())
    assert (tmp_path / "solvers.png").stat().st_size > 0
    assert saved["summary"] == result["summary"] and saved["quick"] is True
    nfes = [str(k) for k in saved["nfe"]]
    assert nfes == ["4", "8"]
    assert set(saved["problems"]) == {"gmm_ring", "gmm_8d", "digits"}
    for problem, by_nfe in saved["problems"].items():
        assert sorted(by_nfe) == sorted(nfes), problem
        for k in nfes:
            for side in ("ours_best", "diffusers_best"):
                best = by_nfe[k][side]
                assert isinstance(best["name"], str) and best["name"], (problem, k, side)
                assert _finite(best["error"]) and best["error"] >= 0, (problem, k, side)
            # the best is the minimum of that side's table at this NFE
            rows = saved["table"][problem]["ours"]
            errs = [r[k]["error"] for r in rows.values() if k in r and r[k].get("error") is not None]
            assert by_nfe[k]["ours_best"]["error"] == min(errs)
    for problem in ("gmm_ring", "gmm_8d"):
        info = saved["problem_info"][problem]
        assert _finite(info["reference"]["gap_to_half_steps"]) and info["reference"]["gap_to_half_steps"] < 1e-2
        # ours and diffusers' DDIM run the same algorithm on the same trailing grid from the same x_T
        for k in nfes:
            ours = saved["table"][problem]["ours"]["ddim/trailing"][k]["error"]
            theirs = saved["table"][problem]["diffusers"]["DDIM"][k]["error"]
            assert abs(ours - theirs) <= 1e-6 * (1 + theirs)
        # stochastic samplers get SW only
        stoch = saved["table"][problem]["ours"]["euler_ancestral/logsnr"]["4"]
        assert stoch["error"] is None and _finite(stoch["sliced_wasserstein"])
    assert _finite(saved["overhead"]["ours"]) and saved["overhead"]["ours"] > 0
    assert _finite(saved["overhead"]["diffusers"]) and saved["overhead"]["diffusers"] > 0
