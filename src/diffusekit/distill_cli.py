"""``diffusekit distill``: distil a many-step teacher into a few-step student checkpoint.

    diffusekit distill --teacher DIR|zoo:NAME --method METHOD --out DIR [--steps K] [--train-steps N] ...

Methods (``methods/distill``): ``progressive`` (Salimans & Ho 2022, rounds 2^r K -> ... -> K on nested grids),
``prodiff`` (Huang et al. 2022, one round 2K -> K, L1 on x0), ``consistency`` (consistency distillation, Song et
al. 2023; K-step consistency sampling), ``reflow`` (Liu et al. 2022, a velocity net on the flow schedule trained on
the teacher's ODE pairs; K Euler steps) and ``rectified`` (Rectified Diffusion, Wang et al. 2024: the teacher
retrained on its own pairs, same schedule and prediction; K DDIM steps); ``boot`` (Gu et al. 2023, data-free:
a one-step generator bootstrapped on the teacher's Signal-ODE from prior noise only; K = 1); and ``slam`` (Xu et
al. 2024, consistency distillation on sub-path linear ODEs) when ``methods/distill/slam`` is present.

The output folder gets ``distill.json`` (the run's settings, written before training), one trainer folder per
stage under ``stages/`` (a checkpoint every ``--checkpoint-every`` steps, at the end and on Ctrl-C / SIGTERM) and,
once done, the student as ``checkpoint.safetensors`` + ``checkpoint.json`` (``methods/distill/checkpoint``), which
``diffusekit sample --model DIR`` samples at the student's native step count by default. ``--resume`` continues
an interrupted run where it stopped (a multi-round method at its round); a folder holding another run is refused
unless ``--overwrite``. Every mistake in the input is a one-line error before anything is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .errors import UserError, user_input

import importlib.util

# SLAM lives in its own module (methods/distill/slam.py); offered when that module is installed
METHODS = ("progressive", "prodiff", "consistency",
           *(("slam",) if importlib.util.find_spec("diffusekit.methods.distill.slam") else ()),
           "boot", "reflow", "rectified")
RUN_FILE = "distill.json"
STAGES_DIR = "stages"
# the training data of the zoo's diffusion models (a trained checkpoint records its own)
ZOO_DATA = {"digits_unet": {"name": "digits"}, "toy_ring8": {"name": "gmm_ring8"},
            "patches_unet": {"name": "patches", "n": 50_000}}
# per-method defaults: learning rate (students that start from the teacher fine-tune; reflow's velocity net is
# fresh unless the teacher is a flow model) and the teacher's step count (see --teacher-steps)
DEFAULT_LR = {"progressive": 1e-4, "prodiff": 1e-4, "consistency": 1e-4, "slam": 1e-4, "boot": 1e-4,
              "reflow": 1e-3, "rectified": 1e-4}
DEFAULTS = {"steps": None, "train_steps": 1000, "batch_size": 128, "seed": 0, "pairs": 2048, "checkpoint_every": 200}
SETTINGS = ("teacher", "method", "steps", "teacher_steps", "train_steps", "batch_size", "lr", "seed", "pairs", "data")


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default=None, help="teacher: a checkpoint folder or zoo:NAME (with --resume: the "
                   "saved one)")
    p.add_argument("--method", default=None, choices=METHODS, help="distillation method")
    p.add_argument("--out", required=True, help="output folder (distill.json, stages/, the student checkpoint)")
    p.add_argument("--steps", type=int, default=None, help="the student's sampling steps K (default: 2; boot: 1, "
                   "its only choice; progressive needs teacher steps = K * 2^r, prodiff uses 2K)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="progressive: the first teacher grid (K * 2^r steps, default 4K); prodiff: fixed at 2K; "
                        "consistency, slam: points N of the Karras grid (default 18); boot: steps of its "
                        "log-SNR bootstrapping grid (default 16); reflow / rectified: DDIM steps of the teacher's "
                        "(noise, sample) pairs (default 50)")
    p.add_argument("--train-steps", type=int, default=None,
                   help=f"optimizer steps per stage (progressive: per round; default: {DEFAULTS['train_steps']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"batch size (default: {DEFAULTS['batch_size']}, "
                   "at most the number of training examples)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: 1e-4; reflow 1e-3)")
    p.add_argument("--pairs", type=int, default=None,
                   help=f"reflow / rectified: number of teacher pairs (default: {DEFAULTS['pairs']})")
    p.add_argument("--data", default=None, help="dataset of the distillation inputs (default: the teacher's "
                   "training data)")
    p.add_argument("--seed", type=int, default=None, help=f"seed of data order, noise and pairs (default: "
                   f"{DEFAULTS['seed']})")
    p.add_argument("--checkpoint-every", type=int, default=DEFAULTS["checkpoint_every"],
                   help="steps between trainer checkpoints; 0: only at the end of a stage and on Ctrl-C")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its saved settings")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out folder that holds one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------ settings


def _check_positive(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise UserError(f"--{name.replace('_', '-')} must be an integer >= 1; got {value}")


def _settings(args, saved: dict | None) -> dict:
    """The run's settings: the saved ones on --resume (a flag that contradicts them is an error), else the flags
    with the defaults filled in."""
    given = {k: getattr(args, k) for k in SETTINGS}
    if saved is not None:
        clash = [k for k, v in given.items() if v is not None and saved.get(k) != v]
        if clash:
            k = clash[0]
            raise UserError(f"--resume continues the saved run; --{k.replace('_', '-')} {given[k]} differs from its "
                            f"{saved.get(k)!r} (drop the flag, or start a new run with --overwrite)")
        return dict(saved)
    if args.teacher is None or args.method is None:
        raise UserError("--teacher and --method are needed to start a run (with --resume they come from the saved "
                        "run)")
    s = {k: (v if v is not None else DEFAULTS.get(k)) for k, v in given.items()}
    for name in ("steps", "teacher_steps", "train_steps", "batch_size", "pairs"):
        _check_positive(name, s[name])
    if s["steps"] is None:
        s["steps"] = 1 if s["method"] == "boot" else 2
    if s["lr"] is None:
        s["lr"] = DEFAULT_LR[s["method"]]
    if not s["lr"] > 0:
        raise UserError(f"--lr must be > 0; got {s['lr']}")
    k, method = s["steps"], s["method"]
    if method == "progressive":
        s["teacher_steps"] = s["teacher_steps"] or 4 * k
        n = s["teacher_steps"]
        while n > k and n % 2 == 0:
            n //= 2
        if n != k or s["teacher_steps"] == k:
            raise UserError(f"--teacher-steps {s['teacher_steps']}: progressive distillation halves the teacher grid "
                            f"down to --steps {k}, so it must be {k} * 2^r with r >= 1 (e.g. {2 * k}, {4 * k}, "
                            f"{8 * k})")
    elif method == "prodiff":
        if s["teacher_steps"] not in (None, 2 * k):
            raise UserError(f"--teacher-steps: ProDiff distils a 2K-step teacher into K steps; with --steps {k} it is "
                            f"{2 * k} (omit the flag)")
        s["teacher_steps"] = 2 * k
    elif method == "boot":
        if k != 1:
            raise UserError(f"--steps {k}: a BOOT student is a one-step generator; use --steps 1 (or omit it)")
        s["teacher_steps"] = s["teacher_steps"] or 16
    elif method in ("consistency", "slam"):
        s["teacher_steps"] = s["teacher_steps"] or 18
        if s["teacher_steps"] < max(2, k):
            raise UserError(f"--teacher-steps {s['teacher_steps']}: the consistency grid needs at least "
                            f"max(2, --steps) = {max(2, k)} points")
    else:
        s["teacher_steps"] = s["teacher_steps"] or 50
    return s


def _teacher_data(spec: str, teacher, data_flag: str | None) -> dict:
    """The dataset config ({name, n, options}) the teacher was trained on, or --data."""
    if data_flag is not None:
        return {"name": data_flag}
    if spec.startswith("zoo:"):
        return dict(ZOO_DATA.get(spec[4:], {})) or _no_data(spec)
    from .training.checkpoint import load_checkpoint

    _, meta = load_checkpoint(spec)
    extra = meta.get("extra_config") or {}
    # a trained checkpoint records its data; a student records the settings it was distilled with
    data = extra.get("data") or (extra.get("student") or {}).get("settings", {}).get("data")
    return dict(data) if data else _no_data(spec)


def _no_data(spec: str):
    raise UserError(f"--teacher {spec}: its training data is not recorded; pass --data NAME")


def _default_grid(schedule, steps: int):
    """The grid the students sample on: the digits evaluation's DDIM grid (``zoo.recipes.ddim_grid``)."""
    from .zoo.recipes import ddim_grid

    return ddim_grid(schedule, steps)[1]


def _check_grids(s: dict, teacher) -> None:
    """Build the grids the run will use, so a step count the teacher's schedule cannot take fails up front."""
    from .core import make_grid
    from .methods.distill.consistency import consistency_grid

    if s["method"] in ("consistency", "slam"):
        consistency_grid(teacher.schedule, s["teacher_steps"])
    elif s["method"] == "boot":
        make_grid("logsnr", teacher.schedule, s["teacher_steps"], t_end=0.0)
    else:
        _default_grid(teacher.schedule, s["teacher_steps"])
        _default_grid(teacher.schedule, s["steps"])


# ------------------------------------------------------------------------------------------ folder


def _check_folder(out: Path, *, resume: bool, overwrite: bool) -> dict | None:
    """Check --out before any work; returns the saved settings on --resume."""
    from .io import check_output_dir

    check_output_dir(out, what="--out")
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite starts a new one; pass only one")
    run_file = out / RUN_FILE
    if resume:
        if not run_file.is_file():
            raise UserError(f"--resume: no distillation run in {out} ({RUN_FILE} is missing)")
        try:
            saved = json.loads(run_file.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"--resume: {run_file} is not valid JSON ({err.msg})") from None
        if not isinstance(saved, dict) or set(saved.get("settings", {})) != set(SETTINGS):
            raise UserError(f"--resume: {run_file} does not hold the settings of a diffusekit distill run")
        return saved["settings"]
    if out.exists() and any(out.iterdir()) and not overwrite:
        what = "a distillation run" if run_file.exists() else "files"
        raise UserError(f"--out {out} already holds {what}; pass --resume to continue a run, --overwrite to start "
                        "again, or choose another folder")
    return None


def _clear_run(out: Path) -> None:
    """--overwrite: remove an earlier run's files (only those)."""
    from .training.checkpoint import META_FILE, TENSORS_FILE

    for name in (RUN_FILE, META_FILE, TENSORS_FILE):
        (out / name).unlink(missing_ok=True)
    if (out / STAGES_DIR).is_dir():
        shutil.rmtree(out / STAGES_DIR)


# ------------------------------------------------------------------------------------------ stages


class _Run:
    """Runs the stages of one distillation, each a Trainer with its own folder (resumed when it holds a
    checkpoint, skipped when it is complete)."""

    def __init__(self, out: Path, settings: dict, progress: bool, checkpoint_every: int):
        self.out, self.s, self.progress, self.checkpoint_every = out, settings, progress, checkpoint_every
        self.train_seconds = 0.0

    def config(self, n: int):
        from .training.config import TrainConfig

        return TrainConfig(steps=self.s["train_steps"], batch_size=min(self.s["batch_size"], n), lr=self.s["lr"],
                           warmup_steps=0, grad_clip=1.0, ema_decay=None, seed=self.s["seed"], log_every=50,
                           checkpoint_every=min(self.checkpoint_every, self.s["train_steps"]),
                           progress=self.progress)

    def fit(self, name: str, net, loss_fn, data: tuple, extra: dict):
        """Train ``net`` in place for the stage ``name`` (resuming its checkpoint); returns the net (eval)."""
        from .runtime import ThreadGovernor
        from .training.checkpoint import META_FILE
        from .training.trainer import Trainer

        folder = self.out / STAGES_DIR / name
        trainer = Trainer(net, loss_fn, data, self.config(len(data[0])), out_dir=folder,
                          extra_config={"stage": name, **extra}, thread_governor=ThreadGovernor())
        if (folder / META_FILE).is_file():
            trainer.resume(folder)
            if trainer.step < trainer.config.steps and trainer.is_main:
                print(f"{name}: resuming at step {trainer.step} of {trainer.config.steps}", file=sys.stderr)
        if trainer.step < trainer.config.steps and trainer.is_main:
            print(extra.get("what", name), file=sys.stderr)
        trainer.fit()
        self.train_seconds += trainer._train_seconds
        return net.eval()


def _fresh_copy(net):
    import copy

    return copy.deepcopy(net).train().requires_grad_(True)


def _frozen(teacher):
    from .methods.distill.progressive import frozen_teacher  # lazy: the parser imports this module

    return frozen_teacher(teacher)


def distill_progressive(run: _Run, teacher, data: tuple, *, loss: str):
    """Rounds teacher_steps -> ... -> steps (``loss='snr_trunc'``) or one round 2K -> K (ProDiff, ``'l1'``)."""
    from .core import NetworkDenoiser
    from .methods.distill.progressive import ProgressiveDistillationLoss

    s = run.s
    ts = _default_grid(teacher.schedule, s["teacher_steps"])
    r = 0
    while len(ts) - 1 > s["steps"]:
        r += 1
        loss_fn = ProgressiveDistillationLoss(_frozen(teacher), ts, teacher.prediction, loss=loss,
                                              scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
        net = run.fit(f"round{r}", _fresh_copy(teacher.net), loss_fn, data,
                      {"what": f"round {r}: {len(ts) - 1} -> {(len(ts) - 1) // 2} steps", "loss": loss,
                       "ts_teacher": ts.tolist()})
        teacher = NetworkDenoiser(net, teacher.schedule, teacher.prediction, scale_input=teacher.scale_input,
                                  sigma_data=teacher.sigma_data)
        ts = ts[::2]
    return teacher, {"sampler": "ddim", "steps": len(ts) - 1, "ts": ts.tolist()}


def consistency_native_grid(schedule, grid, steps: int) -> list[float]:
    """The K-step consistency sampling grid [t_max, tau_1, ..., tau_{K-1}, 0]: the taus are the points of the
    training grid ``grid`` (N points, Karras) at indices round(k (N - 1) / K), k = 1..K-1 -- even spacing in the
    Karras variable s^(1/rho), as the CD grid itself."""
    n = len(grid)
    taus = [float(grid[round(k * (n - 1) / steps)]) for k in range(1, steps)]
    return [float(grid[0]), *taus, 0.0]


def distill_consistency(run: _Run, teacher, data: tuple):
    """Consistency distillation (Song et al. 2023, arXiv 2303.01469, Alg. 2: Heun teacher step, EMA target,
    L2) on the N = teacher_steps Karras grid; the student is ``ConsistencyDenoiser`` over a copy of the teacher's
    network, sampled by K-step consistency sampling (Alg. 1) on ``consistency_native_grid``."""
    from .methods.distill.consistency import ConsistencyDistillationLoss, consistency_grid

    s = run.s
    ts = consistency_grid(teacher.schedule, s["teacher_steps"])
    loss_fn = ConsistencyDistillationLoss(_frozen(teacher), ts, teacher.prediction, scale_input=teacher.scale_input,
                                          sigma_data=teacher.sigma_data)
    net = run.fit("consistency", _fresh_copy(teacher.net), loss_fn, data,
                  {"what": f"consistency distillation on a {len(ts)}-point grid", "ts": ts.tolist()})
    student = loss_fn.consistency(net)
    grid = consistency_native_grid(teacher.schedule, ts, s["steps"])
    return student, {"sampler": "consistency", "steps": s["steps"], "ts": grid}


def distill_slam(run: _Run, teacher, data: tuple):
    """SLAM (Xu et al. 2024, arXiv 2404.13903; ``methods/distill/slam``): consistency distillation along sub-path
    linear ODEs with the gamma-conditioned copy of the teacher's network (DDIM teacher step, as SPLAM), on the
    N = teacher_steps Karras grid. The student is saved with gamma = 1 folded into the network (an ordinary
    consistency student) and samples on SLAM's own K-step grid."""
    import copy

    from .core import NetworkDenoiser
    from .methods.distill.consistency import ConsistencyDenoiser, consistency_grid
    from .methods.distill.slam import GammaConditionedNet, SlamDistillationLoss, slam_native_ts

    s = run.s
    ts = consistency_grid(teacher.schedule, s["teacher_steps"])
    loss_fn = SlamDistillationLoss(_frozen(teacher), ts, teacher.prediction, solver="ddim",
                                   scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
    net = GammaConditionedNet(copy.deepcopy(teacher.net)).train().requires_grad_(True)
    net = run.fit("slam", net, loss_fn, data, {"what": f"SLAM on a {len(ts)}-point grid", "ts": ts.tolist()})
    slam = loss_fn.consistency(net)
    folded = NetworkDenoiser(net.fold(1.0).eval(), teacher.schedule, teacher.prediction,
                             scale_input=teacher.scale_input, sigma_data=teacher.sigma_data)
    student = ConsistencyDenoiser(folded, sigma_data=slam.sigma_data, t_min=slam.t_min)
    grid = slam_native_ts(teacher.schedule, ts, s["steps"]) + [0.0]
    return student, {"sampler": "consistency", "steps": s["steps"], "ts": grid}


def distill_boot(run: _Run, teacher, shape: tuple):
    """BOOT (Gu et al. 2023, arXiv 2306.05544): the one-step generator bootstrapped between consecutive points of
    a teacher_steps log-SNR grid plus the boundary loss, on prior noise only (the Trainer's data is a (batch, 0)
    placeholder; a class-conditional teacher gets uniformly drawn labels). Native sampling: ``one_step``."""
    import torch

    from .core import make_grid
    from .methods.distill.boot import BootLoss

    s, sched = run.s, teacher.schedule
    num_classes = teacher.num_classes

    def random_labels(b, generator, device):
        return {"class_labels": torch.randint(0, num_classes, (b,), generator=generator).to(device)}

    ts = make_grid("logsnr", sched, s["teacher_steps"], t_end=0.0)
    loss_fn = BootLoss(_frozen(teacher), ts, teacher.prediction, shape=shape, scale_input=teacher.scale_input,
                       sigma_data=teacher.sigma_data, cond_sampler=random_labels if num_classes else None)
    placeholder = torch.zeros(s["batch_size"], 0)
    net = run.fit("boot", _fresh_copy(teacher.net), loss_fn, (placeholder,),
                  {"what": f"BOOT on a {s['teacher_steps']}-step log-SNR grid (data-free)", "ts": ts.tolist()})
    return loss_fn.student(net), {"sampler": "one_step", "steps": 1, "ts": [float(sched.t_max), 0.0]}


def _pairs(teacher, s: dict, shape: tuple):
    """``pairs`` deterministic teacher pairs (x_T, DDIM_{teacher_steps}(x_T)), x_T from ``seed``."""
    import torch

    from .methods.distill.rectified import teacher_pairs

    print(f"pairs: {s['pairs']} teacher samples, DDIM {s['teacher_steps']} steps", file=sys.stderr)
    # a class-conditional teacher samples pair i under label i mod C (balanced classes; the student learns them)
    labels = None if teacher.num_classes is None else torch.arange(s["pairs"]) % teacher.num_classes
    return teacher_pairs(teacher, s["pairs"], _default_grid(teacher.schedule, s["teacher_steps"]),
                         generator=torch.Generator().manual_seed(s["seed"]), shape=shape, class_labels=labels)


def distill_rectified(run: _Run, teacher, shape: tuple):
    """Rectified Diffusion (Wang et al. 2024, arXiv 2410.07303): the teacher retrained on its own pairs, same
    schedule and prediction type; the student samples with K DDIM steps on ``_default_grid``."""
    from .methods.distill.rectified import RectifiedDiffusionLoss

    s = run.s
    loss_fn = RectifiedDiffusionLoss(teacher.schedule, teacher.prediction, scale_input=teacher.scale_input,
                                     sigma_data=teacher.sigma_data)
    net = run.fit("rectified", _fresh_copy(teacher.net), loss_fn, _pairs(teacher, s, shape),
                  {"what": "Rectified Diffusion on the teacher's pairs"})
    student = loss_fn.student(net)
    return student, {"sampler": "ddim", "steps": s["steps"], "ts": _default_grid(teacher.schedule, s["steps"]).tolist()}


def distill_reflow(run: _Run, teacher, shape: tuple):
    """Reflow (Liu et al. 2022, arXiv 2209.03003): a velocity network on the flow schedule x_t = (1 - t) x_0 +
    t x_T regressed on x_T - x_0 of the teacher's pairs (fresh weights unless the teacher is a flow velocity
    model); the student samples with K uniform Euler steps from t = 1."""
    import torch

    from .methods.distill.rectified import ReflowLoss, _reinit

    s = run.s
    loss_fn = ReflowLoss()
    start = teacher.net if teacher.schedule.kind == "flow" and teacher.prediction == "velocity" else \
        _reinit(teacher.net, s["seed"])
    net = run.fit("reflow", _fresh_copy(start), loss_fn, _pairs(teacher, s, shape),
                  {"what": "reflow (flow schedule, velocity) on the teacher's pairs"})
    student = loss_fn.student(net)
    ts = torch.linspace(1.0, 0.0, s["steps"] + 1, dtype=torch.float64)
    return student, {"sampler": "euler", "steps": s["steps"], "ts": ts.tolist()}


# ------------------------------------------------------------------------------------------ command


def run_distill(args) -> int:
    """``diffusekit distill``; returns the exit status (130 / 143 after Ctrl-C / SIGTERM, with a checkpoint)."""
    import torch

    from .cli import load_denoiser
    from .core import NetworkDenoiser
    from .data import load_dataset
    from .io import atomic_write_json
    from .methods.distill.checkpoint import save_student
    from .training.checkpoint import META_FILE
    from .training.trainer import TrainingInterrupted

    from .train_cli import launch_rank
    from .training import distributed

    out = Path(args.out)
    if args.checkpoint_every is None or args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0; got {args.checkpoint_every}")
    # under torchrun / accelerate launch every rank trains its shard of each stage; rank 0 checks --out and writes
    is_main = launch_rank() == 0
    saved = _check_folder(out, resume=args.resume, overwrite=args.overwrite) if is_main else None
    if args.resume and not is_main:
        saved = json.loads((out / RUN_FILE).read_text())["settings"]
    s = _settings(args, saved)
    if args.resume and (out / META_FILE).is_file():
        if is_main:
            print(f"{out} already holds the finished student; sample it with `diffusekit sample --model {out}`")
        return 0
    with user_input(f"--teacher {s['teacher']}: "):
        teacher = load_denoiser(s["teacher"])
    if not isinstance(teacher, NetworkDenoiser):
        raise UserError(f"--teacher {s['teacher']}: a {type(teacher).__name__} cannot teach; the teacher must be a "
                        "diffusion network (a trained checkpoint, a zoo model or a network student)")
    conditional = teacher.num_classes is not None
    with user_input("--data: "):
        data_cfg = dict(s["data"]) if isinstance(s["data"], dict) else _teacher_data(s["teacher"], teacher, s["data"])
        dataset = load_dataset(data_cfg["name"], "train", n=data_cfg.get("n"), **(data_cfg.get("options") or {}))
    if conditional and dataset.y is None:
        raise UserError(f"--data {data_cfg['name']}: the teacher is class-conditional but this dataset has no labels")
    net_cfg = getattr(teacher.net, "config", None) or {}
    if net_cfg.get("name") == "mlp" and tuple(dataset.x.shape[1:]) != (net_cfg.get("dim"),) or \
            net_cfg.get("image_size") not in (None, dataset.x.shape[-1]):
        raise UserError(f"--data {data_cfg['name']}: items of shape {tuple(dataset.x.shape[1:])} do not fit the "
                        "teacher's network")
    s["data"] = data_cfg
    with user_input(f"--method {s['method']}: "):
        _check_grids(s, teacher)
    if not args.resume and is_main:
        if args.overwrite and out.exists():
            _clear_run(out)
        atomic_write_json(out / RUN_FILE, {"format": "diffusekit.distill", "settings": s})
    distributed.init_distributed()  # a no-op without torchrun
    run = _Run(out, s, progress=not args.no_progress and sys.stderr.isatty(), checkpoint_every=args.checkpoint_every)
    data = (dataset.x, dataset.y) if conditional else (dataset.x,)
    torch.manual_seed(s["seed"])
    try:
        if s["method"] in ("progressive", "prodiff"):
            student, native = distill_progressive(run, teacher, data,
                                                  loss="snr_trunc" if s["method"] == "progressive" else "l1")
        elif s["method"] == "consistency":
            student, native = distill_consistency(run, teacher, data)
        elif s["method"] == "slam":
            student, native = distill_slam(run, teacher, data)
        elif s["method"] == "boot":
            student, native = distill_boot(run, teacher, tuple(dataset.x.shape[1:]))
        elif s["method"] == "rectified":
            student, native = distill_rectified(run, teacher, tuple(dataset.x.shape[1:]))
        else:
            student, native = distill_reflow(run, teacher, tuple(dataset.x.shape[1:]))
    except TrainingInterrupted as stop:
        if is_main:
            print(f"interrupted: {stop}; continue with `diffusekit distill --out {out} --resume`", file=sys.stderr)
        interrupted = stop.exit_code
    else:
        interrupted = None
    if interrupted is not None:  # outside the except block: its traceback (and the stage's trainer) is freed
        distributed.cleanup()
        return interrupted
    if is_main:
        save_student(out, student, native, method=s["method"], teacher=s["teacher"],
                     step=s["train_steps"], extra={"settings": s, "train_seconds": run.train_seconds})
    distributed.barrier()  # leave the process group together, once the student is written
    distributed.cleanup()
    if not is_main:
        return 0
    print(f"distilled {s['teacher']} with {s['method']} into a {native['steps']}-step student ({native['sampler']}) "
          f"in {run.train_seconds:.0f} s of training; sample it with `diffusekit sample --model {out}`")
    return 0
