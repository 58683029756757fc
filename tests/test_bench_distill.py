"""``diffusekit bench distill --quick`` (ring only, tiny budgets): files, structure and the direction of effect."""

import json

import pytest

from diffusekit.bench import run_bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_distill")
    result = run_bench("distill", out=out, quick=True)
    return out, result


def test_writes_json_and_png_with_every_student(quick):
    out, result = quick
    assert (out / "distill.png").stat().st_size > 0
    on_disk = json.loads((out / "distill.json").read_text())
    assert on_disk["summary"] == result["summary"] and list(on_disk["domains"]) == ["ring"]
    ring = on_disk["domains"]["ring"]
    for method in ("progressive", "prodiff", "consistency", "reflow", "rectified"):
        for nfe in ("1", "2", "4"):
            row = ring["students"][method][nfe]
            assert row["train_seconds"] > 0 and row["train_steps"] > 0
            assert row["native"]["sampler"] in ("ddim", "consistency") and row["native"]["steps"] == int(nfe)
            assert all(key in row for key in ("nll", "swd_teacher", "swd_data"))
    for method in ("slam", "boot"):  # either run, or skipped with a reason in the JSON
        assert method in ring["students"] or ring["skipped"][method].startswith("not run")
    assert set(ring["best_training_free"]) == {"1", "2", "4"}


def test_distilled_students_beat_the_best_training_free_solver_on_the_ring(quick):
    """At 2 NFE, progressive distillation, consistency distillation and reflow all beat the best of our
    training-free samplers x grids (chosen on a tuning x_T set) by the exact NLL under the true mixture; at 1 NFE
    progressive distillation is far better than any 1-NFE solver; the 50-step teacher stays better than all."""
    _, result = quick
    ring = result["domains"]["ring"]
    free, students = ring["best_training_free"], ring["students"]
    # measured (quick, 1 thread): free NLL 64.8 / 10.3 at 1 / 2 NFE; progressive 6.3 / 4.2, CD 57 / 4.0,
    # reflow 6.5 / 5.6; teacher@50 1.37
    for method in ("progressive", "consistency", "reflow"):
        assert students[method]["2"]["nll"] < 0.7 * free["2"]["nll"], (method, students[method]["2"], free["2"])
    assert students["progressive"]["1"]["nll"] < 0.3 * free["1"]["nll"]
    best_student = min(rows[n]["nll"] for rows in students.values() for n in rows)
    assert ring["teacher"]["nll"] < best_student
    # the training-free search really searched: NFE 2 picked from several samplers x grids
    assert len(ring["training_free_tuning"]["2"]) >= 8


def test_reflow_paths_are_straight_and_rectified_diffusion_paths_are_not(quick):
    """Rectified Diffusion's claim, the curvature half: its student keeps curved VP paths (not straighter than the
    teacher's) while reflow's velocity paths are nearly straight; its few-step gain over the teacher's own DDIM at
    the same curvature is asserted in tests/test_distill_rectified.py (the quick budget here is too small for it
    to beat the searched solvers at 2 NFE: 11.8 vs 10.3)."""
    _, result = quick
    ring = result["domains"]["ring"]
    curv = ring["excess_length"]
    assert set(curv) == {"teacher", "rectified", "reflow"}
    assert curv["reflow"] < 0.3 * curv["teacher"], curv
    assert curv["rectified"] > 0.5 * curv["teacher"], curv
