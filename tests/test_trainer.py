"""Tests for the generic trainer and its checkpoints (CPU, a few seconds in total)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading

import pytest
import torch
from torch import nn

from diffusekit.errors import UserError
from diffusekit.training import checkpoint as ckpt_mod
from diffusekit.training.checkpoint import (
    META_FILE,
    TENSORS_FILE,
    CheckpointError,
    load_checkpoint,
    load_model_weights,
)
from diffusekit.training.trainer import LOG_FILE, TrainConfig, Trainer, TrainingDivergedError, TrainingInterrupted


# ------------------------------------------------------------------------ fixtures


class MLP(nn.Module):
    """Tiny conditional MLP ``(x, t) -> x``; ``config`` lets checkpoints check the shape."""

    def __init__(self, dim: int = 4, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "dropout": dropout}
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def denoise_loss(model, batch, generator):
    """Toy denoising loss: all noise and times come from the trainer's generator."""
    (x,) = batch
    t = torch.rand(x.shape[0], generator=generator).to(x.device)  # CPU generator, then move
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    xt = (1 - t)[:, None] * x + t[:, None] * noise
    return ((model(xt, t) - noise) ** 2).mean(dim=1)


def make_data(n: int = 37, dim: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) * 0.5 + 1.0,)


def make_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return MLP(**kw)


def cfg(**kw):
    base = dict(steps=10, batch_size=8, lr=3e-3, log_every=5, progress=False, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def read_log(out_dir):
    return [json.loads(line) for line in (out_dir / LOG_FILE).read_text().splitlines()]


def dir_bytes(path):
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


# -------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad",
    [
        dict(steps=0), dict(batch_size=0), dict(lr=0.0), dict(lr=float("nan")), dict(weight_decay=-1.0),
        dict(betas=(0.9,)), dict(betas=(0.9, 1.0)), dict(warmup_steps=-1), dict(grad_clip=0.0),
        dict(ema_decay=1.0), dict(seed=1.5), dict(log_every=0), dict(eval_every=-1),
        dict(checkpoint_every=-2), dict(max_seconds=0.0), dict(progress="yes"), dict(steps=True),
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError) as info:
        cfg(**bad)
    assert "\n" not in str(info.value)


def test_config_json_roundtrip():
    c = cfg(grad_clip=None, ema_decay=None, max_seconds=3.5)
    text = json.dumps(dataclasses.asdict(c))
    assert TrainConfig.from_dict(json.loads(text)) == c
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"steps": 1, "batch_size": 1, "nope": 3})


def test_trainer_input_validation(tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match="fewer than batch_size"):
        Trainer(model, denoise_loss, make_data(n=4), cfg())
    with pytest.raises(ValueError, match="share their first dimension"):
        Trainer(model, denoise_loss, (torch.zeros(8, 2), torch.zeros(9)), cfg())
    with pytest.raises(ValueError, match="needs out_dir"):
        Trainer(model, denoise_loss, make_data(), cfg(checkpoint_every=2))
    bad_loss = lambda m, b, g: denoise_loss(m, b, g).mean()  # noqa: E731  (already reduced)
    with pytest.raises(ValueError, match=r"shape \(8,\), got \(\)"):
        Trainer(model, bad_loss, make_data(), cfg()).fit()


# ------------------------------------------------------------------------ training


def test_loss_falls_on_toy_regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3

    def mse(model, batch, generator):
        xb, yb = batch
        return ((model(xb) - yb) ** 2).squeeze(1)

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    hist = Trainer(model, mse, (x, y), cfg(steps=150, batch_size=32, lr=5e-2)).fit()
    first, last = sum(hist["loss"][:10]) / 10, sum(hist["loss"][-10:]) / 10
    assert last < 0.05 * first
    assert len(hist["loss"]) == 150 and not hist["stopped_early"] and hist["seconds"] > 0


def test_thread_governor_is_consulted_and_steps_counted_per_thread_count():
    from diffusekit.training.trainer import THREAD_CHECK_STEPS

    before = torch.get_num_threads()
    calls = []

    def governor():  # drops to one thread at its second call, as runtime.ThreadGovernor does under load
        calls.append(len(calls))
        if len(calls) == 2:
            torch.set_num_threads(1)
        return torch.get_num_threads()

    try:
        torch.set_num_threads(2)
        hist = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=23), thread_governor=governor).fit()
    finally:
        torch.set_num_threads(before)
    assert len(calls) == 23 // THREAD_CHECK_STEPS
    assert hist["steps_by_threads"] == {"2": 2 * THREAD_CHECK_STEPS, "1": 23 - 2 * THREAD_CHECK_STEPS}
    with pytest.raises(ValueError, match="thread_governor"):
        Trainer(make_model(), denoise_loss, make_data(), cfg(), thread_governor=3)


def test_ema_matches_hand_computed_two_steps():
    model = make_model()
    seen = []

    def recording_loss(m, batch, generator):
        seen.append([p.detach().clone() for p in m.parameters()])  # weights before each step
        return denoise_loss(m, batch, generator)

    d = 0.9
    trainer = Trainer(model, recording_loss, make_data(), cfg(steps=2, ema_decay=d))
    trainer.fit()
    p0, p1 = seen
    p2 = [p.detach() for p in model.parameters()]
    for e, a, b, c in zip(trainer.ema_model.parameters(), p0, p1, p2):
        ema1 = a * d + b * (1 - d)
        expected = ema1 * d + c * (1 - d)
        torch.testing.assert_close(e, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(e, c)  # EMA is a separate, lagging copy
    assert trainer.ema_model is not model and not trainer.ema_model.training


def test_warmup_lr_values(tmp_path):
    lrs = []

    def loss(m, batch, generator):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return denoise_loss(m, batch, generator)

    trainer = Trainer(make_model(), loss, make_data(), cfg(steps=6, lr=0.01, warmup_steps=4, log_every=1),
                      out_dir=tmp_path)
    trainer.fit()
    expected = [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert [trainer.lr_at(s) for s in range(1, 7)] == pytest.approx(expected, rel=1e-12)
    train_recs = [r for r in read_log(tmp_path) if r["type"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in train_recs] == pytest.approx(expected, rel=1e-12)


def test_grad_clipping_bounds_the_norm():
    clip = 0.5

    def huge_loss(m, batch, generator):
        return denoise_loss(m, batch, generator) * 1e4

    trainer = Trainer(make_model(), huge_loss, make_data(), cfg(steps=3, grad_clip=clip))
    post_clip = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: post_clip.append(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()])).item()
        )
    )
    hist = trainer.fit()
    assert all(n > clip * 10 for n in hist["grad_norm"])  # logged norm is the pre-clip one
    assert len(post_clip) == 3 and all(n <= clip * (1 + 1e-5) for n in post_clip)


def test_log_jsonl_and_eval_records_use_ema(tmp_path):
    calls = []

    def eval_fn(model, step):
        calls.append((model, step))
        return {"ema_norm": float(sum(p.norm() for p in model.parameters()))}

    trainer = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=10, log_every=4, eval_every=5),
                      out_dir=tmp_path, eval_fn=eval_fn)
    hist = trainer.fit()
    assert [s for _, s in calls] == [5, 10] and all(m is trainer.ema_model for m, _ in calls)
    recs = read_log(tmp_path)
    train = [r for r in recs if r["type"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 10]
    assert train[0]["loss"] == pytest.approx(sum(hist["loss"][:4]) / 4)
    assert train[2]["loss"] == pytest.approx(sum(hist["loss"][8:10]) / 2)
    assert set(train[0]) >= {"step", "loss", "lr", "grad_norm", "seconds"}
    evals = [r for r in recs if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [5, 10] and "ema_norm" in evals[0]["metrics"]
    assert hist["evals"] == evals


def test_max_seconds_stops_early_and_saves(tmp_path):
    trainer = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=1000, max_seconds=1e-6),
                      out_dir=tmp_path)
    hist = trainer.fit()
    assert hist["stopped_early"] and hist["step"] == 1 and len(hist["loss"]) == 1
    _, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 1 and meta["stopped_early"] is True
    assert read_log(tmp_path)[-1]["type"] == "stop"


# ----------------------------------------------------------------- exact resume


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "k, device", [(5, "cpu"), (9, "cpu"), pytest.param(5, "cuda", marks=CUDA)]
)
def test_exact_resume_matches_uninterrupted(tmp_path, k, device):
    n_steps = 14
    # 37 examples / batch 8: 4 batches per epoch, so both resume points fall mid-epoch
    # (k=5) or at an epoch boundary (k=9 -> the next batch draws a new permutation).
    config = dict(steps=n_steps, warmup_steps=3, grad_clip=0.5, weight_decay=0.01, seed=7)

    def model(seed=0):
        return make_model(seed=seed, dropout=0.1).to(device)  # dropout: global RNG matters

    full = Trainer(model(), denoise_loss, make_data(), cfg(**config))
    full_hist = full.fit()

    torch.manual_seed(12345)  # the global RNG state must not matter: it is restored
    part = Trainer(model(), denoise_loss, make_data(), cfg(**{**config, "steps": k}), out_dir=tmp_path / "run")
    part_hist = part.fit()
    assert part_hist["loss"] == full_hist["loss"][:k]

    torch.manual_seed(999)
    resumed = Trainer(model(seed=3), denoise_loss, make_data(), cfg(**config), out_dir=tmp_path / "run")
    meta = resumed.resume(tmp_path / "run")
    assert meta["step"] == k and resumed.step == k
    res_hist = resumed.fit()

    assert res_hist["start_step"] == k
    assert res_hist["loss"] == full_hist["loss"]  # exact float equality, whole curve
    assert res_hist["grad_norm"] == full_hist["grad_norm"]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for key in sa["state"][i]:
            assert torch.equal(sa["state"][i][key], sb["state"][i][key])
    steps_logged = [r["step"] for r in read_log(tmp_path / "run") if r["type"] == "train"]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == n_steps


def test_resume_trims_log_written_after_the_checkpoint(tmp_path):
    t = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=6, log_every=1, checkpoint_every=3),
                out_dir=tmp_path)
    t.fit()
    # Simulate a crash after step 6's log line but with only the step-3 checkpoint on disk.
    t3 = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=3, log_every=1), out_dir=tmp_path / "c3")
    t3.fit()
    for name in (TENSORS_FILE, META_FILE):
        (tmp_path / name).write_bytes((tmp_path / "c3" / name).read_bytes())
    with open(tmp_path / LOG_FILE, "a") as f:
        f.write('{"type": "train", "step": 7, "lo')  # torn last line
    r = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=6, log_every=1), out_dir=tmp_path)
    r.resume(tmp_path)
    r.fit()
    assert [rec["step"] for rec in read_log(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_resume_rejects_mismatched_model_config(tmp_path):
    Trainer(make_model(), denoise_loss, make_data(), cfg(steps=2), out_dir=tmp_path).fit()
    other = Trainer(make_model(hidden=16), denoise_loss, make_data(), cfg(steps=4))
    with pytest.raises(CheckpointError, match=r"model config differs.*\['hidden'\]") as info:
        other.resume(tmp_path)
    assert "\n" not in str(info.value)
    no_config = nn.Linear(5, 4)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_model_weights(tmp_path, no_config)
    with pytest.raises(CheckpointError, match="examples but data has"):
        Trainer(make_model(), denoise_loss, make_data(n=40), cfg(steps=4)).resume(tmp_path)


def test_load_model_weights_ema_and_raw(tmp_path):
    extra = {"schedule": {"kind": "vp", "beta_max": 20.0}}
    trainer = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=2), out_dir=tmp_path, extra_config=extra)
    trainer.fit()
    trainer = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=3), out_dir=tmp_path)
    trainer.resume(tmp_path)  # no extra_config given: the checkpoint's is carried on
    trainer.fit()
    m = make_model(seed=5)
    meta = load_model_weights(tmp_path, m)
    assert meta["step"] == 3 and meta["extra_config"] == extra
    for a, b in zip(m.parameters(), trainer.ema_model.parameters()):
        assert torch.equal(a, b)
    load_model_weights(tmp_path, m, ema=False)
    for a, b in zip(m.parameters(), trainer.model.parameters()):
        assert torch.equal(a, b)
    no_ema_dir = tmp_path / "noema"
    Trainer(make_model(), denoise_loss, make_data(), cfg(steps=1, ema_decay=None), out_dir=no_ema_dir).fit()
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_model_weights(no_ema_dir, m)


# ------------------------------------------------------------------- divergence


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path, bad_value):
    snapshot = {}

    def loss(m, batch, generator):
        out = denoise_loss(m, batch, generator)
        if trainer.step == 4:  # computing step 5; the step-4 checkpoint is on disk
            snapshot.update(dir_bytes(tmp_path))
            return out * bad_value
        return out

    trainer = Trainer(make_model(), loss, make_data(), cfg(steps=10, checkpoint_every=2, log_every=1),
                      out_dir=tmp_path)
    with pytest.raises(TrainingDivergedError, match="at step 5") as info:
        trainer.fit()
    assert isinstance(info.value, RuntimeError) and "\n" not in str(info.value)
    assert snapshot[TENSORS_FILE] and dir_bytes(tmp_path) == snapshot  # byte-identical, no new files
    assert load_checkpoint(tmp_path)[1]["step"] == 4


# ------------------------------------------------------------------- checkpoints


@pytest.fixture
def saved(tmp_path):
    Trainer(make_model(), denoise_loss, make_data(), cfg(steps=3), out_dir=tmp_path).fit()
    return tmp_path


def test_checkpoint_layout_and_no_temp_files(saved):
    assert sorted(os.listdir(saved)) == [META_FILE, TENSORS_FILE, LOG_FILE]
    tensors, meta = load_checkpoint(saved)
    names = set(tensors)
    assert any(n.startswith("model.") for n in names) and any(n.startswith("ema.") for n in names)
    assert "optim.state.0.step" in names and tensors["optim.state.0.step"].dim() == 0
    assert "optim.state.0.exp_avg" in names
    assert tensors["rng.data"].dtype == torch.uint8 and tensors["rng.loss.rank0"].dtype == torch.uint8
    assert meta["step"] == 3 and meta["format_version"] == 1
    assert meta["model_config"] == {"dim": 4, "hidden": 32, "dropout": 0.0}
    assert meta["train_config"]["batch_size"] == 8
    assert meta["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    on_disk = json.loads((saved / META_FILE).read_text())
    assert on_disk == meta


def test_missing_truncated_corrupt_checkpoints_raise(saved, tmp_path_factory):
    def fresh_copy():
        d = tmp_path_factory.mktemp("ck")
        for name in (TENSORS_FILE, META_FILE):
            (d / name).write_bytes((saved / name).read_bytes())
        return d

    d = fresh_copy()
    data = (d / TENSORS_FILE).read_bytes()
    (d / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.safetensors: unreadable") as info:
        load_checkpoint(d)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)

    d = fresh_copy()
    data = bytearray((d / TENSORS_FILE).read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor payload: only the checksum can notice
    (d / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(d)

    d = fresh_copy()
    (d / TENSORS_FILE).write_bytes(b"\x07" * 64)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(d)

    d = fresh_copy()
    text = (d / META_FILE).read_text()
    (d / META_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.json: not valid JSON"):
        load_checkpoint(d)

    d = fresh_copy()
    (d / TENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match="tensor file is missing"):
        load_checkpoint(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(d / "nope")
    with pytest.raises(CheckpointError, match="metadata file is missing"):
        load_checkpoint(tmp_path_factory.mktemp("empty"))


def test_failed_write_keeps_old_checkpoint_and_no_temp_files(saved, monkeypatch):
    before = dir_bytes(saved)

    def exploding_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", exploding_save)
    t = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=4))
    t.fit()
    with pytest.raises(OSError, match="disk full"):
        t.save(saved)
    assert dir_bytes(saved) == before  # old pair untouched, temp file removed


def test_crash_between_renames_never_mixes(saved, monkeypatch):
    old_meta = load_checkpoint(saved)[1]
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(META_FILE):
            raise KeyboardInterrupt  # "crash" after the tensor file was committed
        real_replace(src, dst)

    t = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=5))
    t.fit()
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        t.save(saved)
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    assert sorted(os.listdir(saved)) == [META_FILE, TENSORS_FILE, LOG_FILE]
    assert json.loads((saved / META_FILE).read_text())["step"] == old_meta["step"] == 3
    with pytest.warns(RuntimeWarning, match="interrupted"):
        tensors, meta = load_checkpoint(saved)
    assert meta["step"] == 5  # the complete new checkpoint, with its own metadata
    for name, p in t.model.state_dict().items():
        assert torch.equal(tensors[f"model.{name}"], p)
    assert not math.isnan(meta["train_seconds"])


# ------------------------------------------------------------------- interruption


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_the_step_then_resume_is_exact(tmp_path, signum):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    config = dict(steps=12, warmup_steps=3, seed=5)
    full = Trainer(make_model(), denoise_loss, make_data(), cfg(**config))
    full_hist = full.fit()

    def loss_signalling_at_step_4(model, batch, generator):
        if part.step == 3:  # computing step 4: the signal arrives mid-step, step 4 still completes
            os.kill(os.getpid(), signum)
        return denoise_loss(model, batch, generator)

    before = signal.getsignal(signum)
    part = Trainer(make_model(), loss_signalling_at_step_4, make_data(), cfg(**config), out_dir=tmp_path)
    with pytest.raises(TrainingInterrupted) as info:
        part.fit()
    assert signal.getsignal(signum) is before  # the handler is removed again
    stop = info.value
    assert isinstance(stop, KeyboardInterrupt)
    assert (stop.signum, stop.exit_code, stop.step, stop.saved_to) == (signum, 128 + signum, 4, tmp_path)
    assert "\n" not in str(stop) and f"{signal.Signals(signum).name} at step 4" in str(stop)
    assert load_checkpoint(tmp_path)[1]["step"] == 4
    assert read_log(tmp_path)[-1]["type"] == "stop" and read_log(tmp_path)[-1]["step"] == 4

    resumed = Trainer(make_model(seed=9), denoise_loss, make_data(), cfg(**config), out_dir=tmp_path)
    resumed.resume(tmp_path)
    assert resumed.fit()["loss"] == full_hist["loss"]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_sweeps_orphaned_temp_files(tmp_path):
    Trainer(make_model(), denoise_loss, make_data(), cfg(steps=2), out_dir=tmp_path).fit()
    orphans = [tmp_path / f".{TENSORS_FILE}.k9x1.tmp", tmp_path / f".{META_FILE}.abcd.tmp",
               tmp_path / f".{LOG_FILE}.zz.tmp"]
    for p in orphans:
        p.write_bytes(b"left by kill -9")
    keep = tmp_path / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    r = Trainer(make_model(), denoise_loss, make_data(), cfg(steps=3), out_dir=tmp_path)
    r.resume(tmp_path)
    r.fit()
    assert not any(p.exists() for p in orphans) and keep.read_text() == "mine"


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    def nan_loss(m, batch, generator):
        return denoise_loss(m, batch, generator) * float("nan")

    with pytest.raises(TrainingDivergedError) as info:
        Trainer(make_model(), nan_loss, make_data(), cfg(steps=4), out_dir=tmp_path).fit()
    assert "no checkpoint was written" in str(info.value) and "kept" not in str(info.value)


def test_config_from_yaml_text_values():
    c = TrainConfig.from_dict({"steps": "100", "batch_size": 8, "lr": "1e-3", "betas": ["0.9", "0.99"]})
    assert (c.steps, c.lr, c.betas) == (100, 1e-3, (0.9, 0.99))
    for bad in ({"progress": "no"}, {"progress": "false"}, {"lr": "fast"}):
        with pytest.raises(UserError):
            TrainConfig.from_dict({"steps": 1, "batch_size": 1, **bad})
    with pytest.raises(UserError, match="needs batch_size"):
        TrainConfig.from_dict({"steps": 1})
    with pytest.raises(UserError, match="must be a mapping"):
        TrainConfig.from_dict(5)
