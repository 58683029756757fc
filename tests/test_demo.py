"""The demo (``diffusekit demo``) at tiny sizes, its recipe, and the start-up thread settings."""

import json
import math
import os
import subprocess
import sys

import pytest

from diffusekit.demo import run_demo
from diffusekit.runtime import ThreadGovernor, available_cores, busy_cores, choose_threads, next_threads
from diffusekit.samplers import DEFAULT
from diffusekit.zoo.recipes import DEMO_NET, DEMO_TRAIN

TINY = {"steps": 3, "n_per_class": 2, "sample_steps": 2, "progress": False}
MACHINE = {"train_seconds", "sample_seconds", "train_steps_by_threads"}  # how fast, not what


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in MACHINE}


def test_tiny_demo_files_keys_and_determinism(tmp_path):
    a = run_demo(tmp_path / "a", seed=3, **TINY)
    for name in ("samples.png", "loss.png", "metrics.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == a
    for key in ("digits_fd", "digits_fd_real", "digits_fd_baseline", "class_accuracy", "final_loss"):
        assert math.isfinite(a[key]), key
    assert a["digits_fd_real"] < a["digits_fd_baseline"]
    # fixed optimizer steps, not a time budget
    assert a["train_steps"] == 3 and a["train_steps_requested"] == 3 and not a["train_stopped_early"]
    # the project's default solver, recorded with its grid (a fresh network: no stored search), steps and NFE
    assert a["sampler_name"] == DEFAULT["sampler"] and a["sampler_grid"] == "fallback"
    assert a["sampler_steps"] == 2 and a["sampler_options"] == DEFAULT["options"] and a["nfe"] >= 2
    assert set(a["by_guidance"]) == {"1", "2"} and a["num_samples"] == 20
    assert a["net"] == DEMO_NET
    assert sum(a["train_steps_by_threads"].values()) == 3
    # same seed -> the same figures; another seed -> others
    b = run_demo(tmp_path / "b", seed=3, **TINY)
    assert _untimed(a) == _untimed(b)
    c = run_demo(tmp_path / "c", seed=4, **TINY)
    assert c["final_loss"] != a["final_loss"]


def test_wall_clock_cap_is_explicit(tmp_path):
    m = run_demo(tmp_path, steps=10**6, train_seconds=0.2, guidance=1.0, extra_guidance=1.0, n_per_class=1,
                 sample_steps=2, progress=False)
    assert m["train_stopped_early"] and m["train_steps"] < 10**6
    assert set(m["by_guidance"]) == {"1"}


@pytest.mark.parametrize("bad", [{"steps": 0}, {"steps": 2.5}, {"n_per_class": 0}, {"sample_steps": 0},
                                 {"train_seconds": -1.0}, {"train_seconds": float("nan")}, {"seed": -1},
                                 {"guidance": float("nan")}, {"extra_guidance": -2.0}])
def test_nonsense_input_is_a_value_error(tmp_path, bad):
    with pytest.raises(ValueError):
        run_demo(tmp_path / "never", **{**TINY, **bad})
    assert not (tmp_path / "never").exists()


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        run_demo(tmp_path / "file", **TINY)


def test_demo_recipe():
    # the demo net is the attention-free, small one; its default length is fixed steps, not seconds
    assert DEMO_NET["attention_resolutions"] == []
    assert isinstance(DEMO_TRAIN["steps"], int) and DEMO_TRAIN["batch_size"] == 128


# ---------------------------------------------------------------------------------------- threads


def test_choose_threads():
    assert choose_threads(2, 0.0) == 2
    assert choose_threads(2, 0.3) == 2
    assert choose_threads(2, 1.0) == 1  # one core taken: one thread on the free one
    assert choose_threads(2, 2.0) == 1  # never fewer than one
    assert choose_threads(8, 2.6) == 5
    assert choose_threads(4, None) == 4  # nothing measurable: every core
    assert available_cores() >= 1
    # hysteresis: drop a thread at half a core taken, add one back only for a nearly free core
    assert next_threads(2, 2, 0.6) == 1
    assert next_threads(2, 1, 0.4) == 1 and next_threads(2, 1, 0.15) == 2
    assert next_threads(2, 2, 0.4) == 2
    busy = busy_cores(0.02)
    assert busy is None or 0.0 <= busy <= os.cpu_count() + 1e-9


def _run(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def test_configure_threads_before_torch():
    # the CLI module imports torch only inside commands, after main() has chosen the thread count;
    # the count fits the cores, and the OpenMP wait policy is left alone (PASSIVE halves 2-thread speed)
    code = ("import sys, os; import diffusekit.cli; assert 'torch' not in sys.modules\n"
            "from diffusekit.runtime import configure_threads; n = configure_threads()\n"
            "import torch; print(os.environ.get('OMP_WAIT_POLICY', '-'), n, torch.get_num_threads())")
    policy, n, torch_threads = _run(code).split()
    assert policy == "-" and int(n) == int(torch_threads) >= 1


def test_configure_threads_respects_the_user(monkeypatch):
    import torch

    from diffusekit import runtime

    monkeypatch.setattr(runtime, "_chosen", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads() == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
        assert runtime.configure_threads() == 1  # chosen once
    finally:
        torch.set_num_threads(before)


def test_thread_governor(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        fixed = ThreadGovernor(min_window=0.0)
        assert not fixed.enabled and fixed() == torch.get_num_threads() and fixed.history == []
        monkeypatch.delenv("OMP_NUM_THREADS")
        governor = ThreadGovernor(min_window=0.0)
        sum(i * i for i in range(200_000))  # some CPU time of our own, which must not count as others' load
        n = governor()
        assert 1 <= n <= available_cores() and torch.get_num_threads() == n
        other, wait, chosen = governor.history[-1]
        assert other >= 0 and wait >= 0 and chosen == n
        assert ThreadGovernor(min_window=60.0)() == torch.get_num_threads()  # too soon: unchanged
    finally:
        torch.set_num_threads(before)
