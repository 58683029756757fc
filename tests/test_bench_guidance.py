"""The guidance bench (CFG x rescale, classifier/universal guidance) runs end to end in quick mode."""

import json
import math

import diffusekit.bench.guidance  # noqa: F401  (registers the bench)
from diffusekit.bench import run_bench


def test_guidance_bench_quick(tmp_path):
    result = run_bench("guidance", out=tmp_path, quick=True)
    saved = json.loads((tmp_path / "guidance.json").read_text())
    assert (tmp_path / "guidance.png").stat().st_size > 0
    assert saved["summary"] == result["summary"] and saved["quick"] is True
    keys = {"accuracy", "judge_accuracy", "diversity", "saturation", "digits_fd"}
    assert set(saved["cfg"]) == {str(p) for p in saved["rescale_phi"]}
    for by_scale in saved["cfg"].values():
        assert set(by_scale) == {str(w) for w in saved["scales"]}
        for m in by_scale.values():
            assert set(m) == keys and all(math.isfinite(v) for v in m.values())
            assert 0 <= m["accuracy"] <= 1 and 0 <= m["judge_accuracy"] <= 1 and 0 <= m["saturation"] <= 1
    for kind in ("classifier", "universal", "universal_eps"):
        rows = saved["gradient_guidance"][kind]
        assert set(rows) == {str(s) for s in saved["gradient_guidance_scales"][kind]}
        assert all(set(m) == keys for m in rows.values())
    # direction of effect: gradient guidance raises the target-class accuracy of the unconditional model
    cls = saved["gradient_guidance"]["classifier"]
    top = str(max(saved["gradient_guidance_scales"]["classifier"]))
    assert cls[top]["accuracy"] > cls["0"]["accuracy"] + 0.2 and cls[top]["judge_accuracy"] > cls["0"]["judge_accuracy"]
    # CFG above 1 keeps the class and raises saturation; rescale (phi > 0) lowers it again
    cfg = saved["cfg"]
    w_hi = str(max(saved["scales"]))
    phi_hi = str(max(saved["rescale_phi"]))
    assert cfg["0.0"][w_hi]["accuracy"] >= 0.9
    assert cfg["0.0"][w_hi]["saturation"] > cfg["0.0"]["1"]["saturation"]
    assert cfg[phi_hi][w_hi]["saturation"] < cfg["0.0"][w_hi]["saturation"]
