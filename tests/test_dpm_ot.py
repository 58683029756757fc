"""DPM-OT (arXiv 2307.11308): the semi-discrete OT map, trajectory targets, sampling, and the bench's direction."""

import numpy as np
import pytest
import torch

from diffusekit.core import CountingDenoiser, VPDiscrete
from diffusekit.data import ring8_mixture
from diffusekit.data.toys import RING8_STD
from diffusekit.methods.dpm_ot import (SemiDiscreteOT, load_dpm_ot, sample_dpm_ot, save_dpm_ot,
                                       trajectory_states)
from diffusekit.samplers import sample_ddim
from diffusekit.zoo.recipes import ddim_grid


@pytest.fixture(scope="module")
def ring():
    """Exact ring8 denoiser, 150 stored states 5 steps before the end of a 50-step DDIM grid, a fitted map."""
    torch.set_num_threads(1)
    mix = ring8_mixture()
    den = mix.denoiser(VPDiscrete.named("linear", 1000))
    _, ts = ddim_grid(den.schedule, 50)
    st = trajectory_states(den, 150, (2,), ts, steps_after=5, generator=torch.Generator().manual_seed(0))
    ot = SemiDiscreteOT(st.states)
    ot.fit(iterations=300, samples_per_iteration=1500, generator=torch.Generator().manual_seed(1))
    return mix, den, ts, st, ot


def _off_mode(mix, x) -> float:
    return float((torch.cdist(x.double(), mix.means).min(1).values > 3 * RING8_STD).double().mean())


def test_fit_equalises_cell_masses():
    g = torch.Generator().manual_seed(0)
    targets = torch.cat([2 * torch.randn(12, 2, generator=g), 0.3 * torch.randn(8, 2, generator=g)])  # 8 inside
    ot = SemiDiscreteOT(targets)
    held_out = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(9))
    before = ot.cell_masses(held_out) * 20
    ot.fit(iterations=300, samples_per_iteration=2000, generator=torch.Generator().manual_seed(1))
    after = ot.cell_masses(held_out) * 20
    assert float(before.sum()) == pytest.approx(20.0) and float(after.sum()) == pytest.approx(20.0)
    assert (before - 1).abs().max() > 1.0 and int((before == 0).sum()) >= 4  # interior targets get nothing at h = 0
    assert (after - 1).abs().max() < 0.15, after  # each cell ~ 1/N (5,000 held-out draws per cell)
    assert abs(float(ot.h.mean())) < 1e-9


def test_official_schedule_also_moves_towards_equal_masses():
    g = torch.Generator().manual_seed(3)
    ot = SemiDiscreteOT(torch.randn(10, 2, generator=g))
    held_out = torch.randn(50_000, 2, generator=torch.Generator().manual_seed(9))
    before = float((ot.cell_masses(held_out) * 10 - 1).abs().mean())
    rep = ot.fit(iterations=200, samples_per_iteration=1000, schedule="official",
                 generator=torch.Generator().manual_seed(1))
    after = float((ot.cell_masses(held_out) * 10 - 1).abs().mean())
    assert after < 0.5 * before and rep["schedule"] == "official"


def test_assignment_agrees_with_pot_emd_on_an_empirical_prior():
    ot_lib = pytest.importorskip("ot")
    targets = 1.5 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    u = torch.randn(2400, 2, generator=torch.Generator().manual_seed(5))
    cost = -(u.double() @ targets.double().T).numpy()  # c(u, p) = -<u, p>, the map's cost
    plan = ot_lib.emd(np.full(2400, 1 / 2400), np.full(8, 1 / 8), cost)
    emd_cell = torch.from_numpy(plan.argmax(1))
    emd_cost = float((plan * cost).sum())
    ot = SemiDiscreteOT(targets)
    agree_before = float((ot.assign(u) == emd_cell).double().mean())
    ot.fit(iterations=300, samples_per_iteration=4000, generator=torch.Generator().manual_seed(1))
    agree_after = float((ot.assign(u) == emd_cell).double().mean())
    assert agree_before < 0.8
    assert agree_after > 0.95, agree_after
    assert abs(ot.transport_cost(u) - emd_cost) < 0.02 * abs(emd_cost)


def test_fit_and_sampling_are_deterministic_and_batch_independent(ring):
    _, den, _, st, ot = ring
    again = SemiDiscreteOT(st.states)
    again.fit(iterations=300, samples_per_iteration=1500, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.h, ot.h)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    a = sample_dpm_ot(den, ot, 6, ts_after=st.ts_after, generator=gens(range(6)), topk=2)
    b = sample_dpm_ot(den, ot, 3, ts_after=st.ts_after, generator=gens(range(3)), topk=2)
    c = sample_dpm_ot(den, ot, 6, ts_after=st.ts_after, generator=gens(range(6)), topk=2)
    torch.testing.assert_close(a[:3], b, rtol=0, atol=1e-12)
    assert torch.equal(a, c)


def test_trajectory_states_are_the_sampler_states_and_nfe_is_k(ring):
    _, den, ts, st, ot = ring
    g = torch.Generator().manual_seed(0)
    from diffusekit.core.noise import prior_sample

    x_T = prior_sample(den.schedule, (150, 2), g)
    seen = {}
    sample_ddim(den, x_T, ts, callback=lambda d: seen.setdefault(int(d["i"]), d["x"]))
    torch.testing.assert_close(st.states, seen[len(ts) - 1 - 5 - 1])
    assert len(st.ts_after) == 6 and float(st.ts_after[-1]) == 0.0 and st.nfe == 45
    counting = CountingDenoiser(den)
    _, info = sample_dpm_ot(counting, ot, 10, ts_after=st.ts_after, generator=torch.Generator().manual_seed(0),
                            return_info=True)
    assert counting.calls == 5 == info["nfe"]


def test_dpm_ot_has_less_mode_mixture_than_ddim_at_equal_nfe(ring):
    mix, den, _, st, ot = ring
    x = sample_dpm_ot(den, ot, 2000, ts_after=st.ts_after, generator=torch.Generator().manual_seed(2))
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ddim = sample_ddim(den, x_T, ddim_grid(den.schedule, 5)[1])
    off_ot, off_ddim = _off_mode(mix, x), _off_mode(mix, ddim)
    assert off_ot < 0.05 and off_ddim > 4 * off_ot, (off_ot, off_ddim)


def test_singular_rule_rejects_noise_between_modes(ring):
    mix, _, _, st, ot = ring
    u = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(4))
    keep = ot.regular(u, topk=2, angle_threshold=0.7)
    top = ot.topk(u, 2)
    mode = torch.cdist(st.states.double(), mix.means).argmin(1)  # nearest mode of each stored state
    across = mode[top[:, 0]] != mode[top[:, 1]]
    assert 0 < int((~keep).sum()) < len(u) // 2
    assert float(across[~keep].double().mean()) > 0.9 > float(across[keep].double().mean()) + 0.5
    assert bool(ot.regular(u[:5], topk=1).all())


def test_state_round_trip(ring, tmp_path):
    _, _, _, st, ot = ring
    save_dpm_ot(tmp_path / "map.safetensors", ot, st.ts_after)
    loaded, ts_after = load_dpm_ot(tmp_path / "map.safetensors")
    u = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.assign(u), ot.assign(u)) and torch.equal(ts_after, st.ts_after)
    assert torch.equal(loaded.regular(u), ot.regular(u))
    (tmp_path / "other.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="DPM-OT"):
        load_dpm_ot(tmp_path / "other.safetensors")


def test_bad_input_is_rejected(ring):
    _, den, ts, _, ot = ring
    with pytest.raises(ValueError, match="targets"):
        SemiDiscreteOT(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="steps_after"):
        trajectory_states(den, 4, (2,), ts, steps_after=50)
    with pytest.raises(ValueError, match="entries"):
        ot.assign(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="topk"):
        ot.regular(torch.zeros(3, 2), topk=0)
    with pytest.raises(ValueError, match="schedule"):
        ot.fit(schedule="sgd")
    fresh = SemiDiscreteOT(torch.randn(4, 2))
    with pytest.raises(ValueError, match="fit"):
        fresh.regular(torch.zeros(3, 2), topk=2)


def test_bench_quick_direction(tmp_path):
    from diffusekit.bench import run_bench

    r = run_bench("dpm_ot", out=tmp_path, quick=True)
    assert (tmp_path / "dpm_ot.json").exists() and (tmp_path / "dpm_ot.png").stat().st_size > 0
    for k in ("5", "10"):
        row = r["ring8"]["table"][k]
        assert row["dpm_ot"]["nfe"] == row["ddim"]["nfe"] == int(k)
        assert row["dpm_ot"]["off_mode"] < 0.5 * min(row["ddim"]["off_mode"], row["dpm_solver_pp_2m"]["off_mode"])
    digits = r["digits"]["table"]["5"]
    assert digits["dpm_ot"]["digits_fd"] < digits["ddim"]["digits_fd"]
    build = r["digits"]["build"]
    assert build["ot_k5"]["mass_error_after"] < 0.5 * build["ot_k5"]["mass_error_before"]
    assert build["trajectory_nfe_total"] == build["trajectories"] * build["trajectory_nfe_each"]
