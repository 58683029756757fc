"""Quick run of ``bench dtr_ant``: files written, and the directions that show at tiny scale (60 steps)."""

from __future__ import annotations

import numpy as np

from diffusekit.bench import run_bench


def test_dtr_ant_quick(tmp_path):
    r = run_bench("dtr_ant", out=tmp_path, quick=True)
    assert (tmp_path / "dtr_ant.json").is_file() and (tmp_path / "dtr_ant.png").stat().st_size > 0
    assert r["summary"] and r["quick"] is True
    table = r["table"]

    # task affinity: neighbouring timesteps share gradient directions, far-apart ones do not (block structure)
    tas = r["tas"]
    matrix = np.array(tas["matrix"])
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)
    assert tas["neighbour_mean"] > tas["far_mean"] + 0.3
    assert tas["within_interval_mean"] > tas["across_interval_mean"] + 0.1

    # the pitfall: raw-SNR intervals collapse onto the first timesteps, log-SNR ones are balanced
    raw = [hi - lo + 1 for lo, hi in r["intervals"]["raw_snr_dp"]]
    log = [hi - lo + 1 for lo, hi in r["intervals"]["log_snr_dp"]]
    assert raw[0] <= 2 and raw[-1] >= 900 and min(log) >= 100

    # UW learns larger weights exp(-s_k)/2 for the high-noise intervals, whose eps-loss is small
    w = table["ant-uw-dp"]["final_weights"]
    assert w[-1] > w[0] > 1.0
    assert len(table["ant-nash-dp"]["final_weights"]) == 5

    # DTR and ANT-UW both lower the held-out high-noise loss against vanilla after the same 60 steps
    vanilla = np.array(table["vanilla"]["bucket_loss_mean"])
    for arm in ("dtr0.8", "ant-uw-dp"):
        assert np.mean(table[arm]["bucket_loss_mean"][3:]) < 0.95 * np.mean(vanilla[3:])
