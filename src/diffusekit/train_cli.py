"""``diffusekit train``: a diffusion model on a bundled dataset or your own data, from a YAML config and/or flags.

A YAML config has up to eight entries, each optional, and flags override single fields:

    data:     {name: digits, n: null, options: {}}       # or folder:PATH / npz:PATH / csv:PATH (data.user)
    net:      {name: unet, base_channels: 32, ...}       # default: MLP for vectors, UNet for images/signals
    schedule: {name: vp_discrete, beta_schedule: linear, num_train_timesteps: 1000}
    loss:     {prediction: eps, weighting: uniform, label_dropout: 0.1}
    train:    {steps: 2000, batch_size: 128, lr: 0.002, grad_accum_steps: 1, precision: fp32, ...}  # TrainConfig
    conditional: true                                     # train on the dataset's class labels
    objective: {name: cfm, coupling: ot}                  # diffusion (default), cfm or interpolant; see
    latent: runs/ae                                       #   train_objectives (latent: an autoencoder folder)

The output folder gets ``config.yaml`` (the resolved config, written before training starts),
``checkpoint.safetensors`` + ``checkpoint.json`` (every ``checkpoint_every`` steps, at the end, and on
Ctrl-C / SIGTERM), ``log.jsonl`` and ``loss.png``. ``diffusekit train --out DIR --resume`` continues the
run from its checkpoint with the saved ``config.yaml``; flags given with it override single fields (e.g.
``--steps`` to train longer). A folder that holds other files is refused unless ``--overwrite``. Under
``torchrun`` (or ``accelerate launch``, see docs/distributed.md) every rank trains on its shard and rank 0
writes; new runs use per-example loss noise (``train.loss_noise``), so a checkpoint resumes at any world size.
``--device`` is a property of the machine, not of the run: it is not saved in config.yaml.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

import yaml

from .errors import UserError, user_input

SECTIONS = ("data", "net", "schedule", "loss", "train", "conditional", "objective", "latent")
DATA_KEYS = ("name", "n", "options")
CONFIG_FILE = "config.yaml"
DEFAULT_STEPS = 2000
DEFAULT_BATCH_SIZE = 128


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .data import available_datasets
    from .nets import NETS
    from .runtime import DEVICES
    from .training.config import DEFAULT_CHECKPOINT_EVERY, PRECISIONS, TrainConfig

    d = TrainConfig(steps=1, batch_size=1)
    p.add_argument("--config", default=None, help="YAML config (sections: " + ", ".join(SECTIONS) + "; see "
                   "`diffusekit.train_cli`); flags override its fields")
    p.add_argument("--out", required=True, help="output folder (config.yaml, checkpoint, log.jsonl, loss.png)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its saved config.yaml (or --config); "
                        "other flags override single fields, e.g. --steps to train longer")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out folder that already holds files (replaces its run files)")
    p.add_argument("--data", default=None, help="dataset, one of: " + ", ".join(available_datasets())
                   + "; or your own: folder:PATH (PNG/JPEG, class subfolders -> labels), npz:PATH (x, optional y), "
                   "csv:PATH (series windows) (default: digits)")
    p.add_argument("--size", type=int, default=None,
                   help="image side length for folder: data (center crop, then resize); sets data option size "
                        "(default: keep the images' common size)")
    p.add_argument("--num-examples", type=int, default=None,
                   help="number of training examples (default: the dataset's own)")
    p.add_argument("--net", "--backbone", dest="net", default=None,
                   help="network family, one of: " + ", ".join(sorted(NETS)) + " (default: mlp for vectors, unet for "
                   "images and signals)")
    from .train_objectives import COUPLINGS, OBJECTIVES

    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="what to train: a diffusion model, conditional flow matching (cfm) or a stochastic "
                        "interpolant (default: diffusion; options in the config's objective section)")
    p.add_argument("--coupling", default=None, choices=COUPLINGS,
                   help="cfm coupling of noise and data: independent (I-CFM), ot (exact minibatch OT, POT), sb "
                        "(entropic OT), target (Lipman FM), vp (default: independent)")
    p.add_argument("--latent", default=None,
                   help="folder of a trained autoencoder: train the diffusion model in its latent space "
                        "(sampling decodes)")
    p.add_argument("--schedule", default=None, choices=["vp_discrete", "vp_linear", "ve", "sub_vp", "flow"],
                   help="noise schedule (default: vp_discrete, linear betas, 1000 steps)")
    p.add_argument("--prediction", default=None, help="eps, x0, v, score, velocity or edm (default: eps)")
    p.add_argument("--weighting", default=None, help="loss weighting: uniform, min_snr or edm (default: uniform)")
    p.add_argument("--label-dropout", type=float, default=None,
                   help="null-label probability for classifier-free guidance training (default: 0)")
    p.add_argument("--conditional", action="store_true", default=None, help="condition on the class labels")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default: {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=None, help=f"global batch size (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate (default: {d.lr:g})")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"linear learning-rate warmup steps (default: {d.warmup_steps})")
    p.add_argument("--ema-decay", type=float, default=None, help=f"EMA decay (default: {d.ema_decay})")
    p.add_argument("--seed", type=int, default=None, help=f"seed of data order and loss noise (default: {d.seed})")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget; stops early with a checkpoint (default: none)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"steps between checkpoints; 0: only at the end and on Ctrl-C/SIGTERM "
                        f"(default: {DEFAULT_CHECKPOINT_EVERY})")
    p.add_argument("--grad-accum-steps", type=int, default=None,
                   help="split each rank's share of the (global) --batch-size into this many micro-batches "
                        f"(default: {d.grad_accum_steps})")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: cuda, else mps, else cpu (not saved with the run)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help=f"autocast precision of the forward pass (default: {d.precision})")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="channels-last memory format for image networks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------- config


def _load_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{what} {path} must hold a mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown config section {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
    return cfg


def resolve_config(args) -> dict:
    """Merge the YAML (``--config``, or the run's saved config.yaml with ``--resume``) and the flags."""
    if args.config:
        cfg = _load_yaml(Path(args.config), "--config")
    elif args.resume and (Path(args.out) / CONFIG_FILE).is_file():
        cfg = _load_yaml(Path(args.out) / CONFIG_FILE, "saved config")
    else:
        cfg = {}
    for name in ("data", "net", "schedule", "loss", "train"):
        if cfg.get(name) is not None and not isinstance(cfg[name], dict):
            raise UserError(f"config section {name!r} must be a mapping ({_section_keys(name)}); got {cfg[name]!r}")
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items() if v is not None}
    data = cfg.setdefault("data", {})
    if args.data is not None:
        data["name"] = args.data
    if args.num_examples is not None:
        data["n"] = args.num_examples
    if getattr(args, "size", None) is not None:
        data["options"] = {**(data.get("options") or {}), "size": args.size}
    data.setdefault("name", "digits")
    if args.conditional is not None:
        cfg["conditional"] = True
    net_name = args.net.replace("-", "_") if args.net is not None else None  # --backbone diffusers-unet2d
    if net_name is not None and cfg.get("net", {}).get("name") != net_name:
        cfg["net"] = {"name": net_name}
    if args.schedule is not None:
        cfg["schedule"] = {"name": args.schedule}
    loss = cfg.setdefault("loss", {})
    for key in ("prediction", "weighting", "label_dropout"):
        if getattr(args, key) is not None:
            loss[key] = getattr(args, key)
    from .train_objectives import resolve_objective

    resolve_objective(cfg, args)
    if cfg["objective"]["name"] == "diffusion":
        cfg.setdefault("schedule", {"name": "vp_discrete", "beta_schedule": "linear", "num_train_timesteps": 1000})
        loss.setdefault("prediction", "eps")
    train = cfg.setdefault("train", {})
    for key in ("steps", "batch_size", "lr", "warmup_steps", "ema_decay", "seed", "max_seconds", "checkpoint_every",
                "grad_accum_steps", "precision", "compile", "channels_last"):
        if getattr(args, key, None) is not None:
            train[key] = getattr(args, key)
    from .training.config import DEFAULT_CHECKPOINT_EVERY

    train.setdefault("steps", DEFAULT_STEPS)
    train.setdefault("batch_size", DEFAULT_BATCH_SIZE)
    train.setdefault("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
    if not args.resume:  # a run saved before per-example noise existed keeps the noise it was trained with
        train.setdefault("loss_noise", "per_example")
    if args.no_progress:
        train["progress"] = False
    check_config(cfg)
    return cfg


def _section_keys(name: str, net_name: str | None = None) -> str:
    from .training.config import TrainConfig

    if name == "data":
        return ", ".join(DATA_KEYS)
    if name == "loss":
        return ", ".join(_loss_keys())
    if name == "train":
        return ", ".join(TrainConfig.__dataclass_fields__)
    if name == "net":
        return ", ".join(["name", *_net_keys(net_name)]) if net_name else "name and the network's options"
    return "name and the schedule's options"


def _loss_keys() -> list[str]:
    from .training.losses import DiffusionLoss

    return [k for k in inspect.signature(DiffusionLoss).parameters if k != "schedule"]


def _net_keys(name: str) -> list[str]:
    from .nets import NETS

    return list(inspect.signature(NETS[name]).parameters) if name in NETS else []


def _number_from_text(value):
    """YAML 1.1 reads ``1e-3`` as a string; numbers written so are read as numbers."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value.strip())
            except ValueError:
                pass
    return value


def _check_options(section: str, options: dict, signature_of, allowed: list[str]) -> None:
    """Unknown keys, and strings where the default is a boolean, are one-line errors; numeric text -> number."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"unknown {section} option {unknown[0]!r}; allowed: {', '.join(allowed)}")
    params = inspect.signature(signature_of).parameters if signature_of is not None else {}
    for key, value in list(options.items()):
        default = params[key].default if key in params else None
        if isinstance(default, bool) or params.get(key) is not None and "bool" in str(params[key].annotation):
            if value is not None and not isinstance(value, bool):
                raise UserError(f"{section} option {key!r} must be true or false; got {value!r}")
        elif key != "name":
            options[key] = _number_from_text(value)


def check_config(cfg: dict) -> None:
    """Check keys and value kinds of every section before anything is built (one-line UserErrors)."""
    from .nets import NETS
    from .training.losses import DiffusionLoss

    unknown = sorted(set(cfg["data"]) - set(DATA_KEYS))
    if unknown:
        raise UserError(f"unknown data option {unknown[0]!r}; allowed: {', '.join(DATA_KEYS)}")
    if cfg["data"].get("options") is not None and not isinstance(cfg["data"]["options"], dict):
        raise UserError(f"data options must be a mapping; got {cfg['data']['options']!r}")
    if "conditional" in cfg and not isinstance(cfg["conditional"], bool):
        raise UserError(f"conditional must be true or false; got {cfg['conditional']!r}")
    if cfg["objective"]["name"] == "diffusion":
        _check_options("loss", cfg["loss"], DiffusionLoss, _loss_keys())
    net = cfg.get("net")
    if net:
        name = net.get("name")
        if name is not None and name not in NETS:
            raise UserError(f"unknown net name {name!r}; allowed: {', '.join(sorted(NETS))}")
        if name is not None:
            _check_options(f"{name} net", net, NETS[name], ["name", *_net_keys(name)])


def default_net(x_shape: tuple, num_classes: int | None, net: dict | None) -> dict:
    """Fill a net config from the data shape: MLP for (N, D), UNet for (N, C, H, W) or (N, C, L); another
    registered family (e.g. a diffusers backbone) gets whichever of ``in_channels``, ``image_size`` /
    ``sample_size`` and ``num_classes`` its constructor takes."""
    net = dict(net or {})
    family = net.get("name") or ("mlp" if len(x_shape) == 2 else "unet")
    if family not in ("mlp", "unet"):
        keys = _net_keys(family)
        if len(x_shape) != 4 and not (len(x_shape) == 3 and "dims" in keys):
            signals = " or signals (N, C, L)" if "dims" in keys else ""
            raise UserError(f"the {family} net takes images (N, C, H, W){signals}; this data has shape {x_shape}")
        shape_keys = {"in_channels": x_shape[1], "out_channels": x_shape[1], "image_size": x_shape[-1],
                      "sample_size": x_shape[-1]}
        if "dims" in keys:
            shape_keys["dims"] = len(x_shape) - 2
        merged = {"name": family, **{k: v for k, v in shape_keys.items() if k in keys}, **net}
        if num_classes is not None and "num_classes" not in keys:
            raise UserError(f"the {family} net takes no class labels; train it without --conditional")
        if "num_classes" in keys:
            merged["num_classes"] = num_classes
        _check_options(f"{family} net", merged, None, ["name", *keys])
        return merged
    if family == "mlp":
        if len(x_shape) != 2:
            raise UserError(f"the mlp net takes vectors (N, D); this data has shape {x_shape}; use --net unet")
        base = {"name": "mlp", "dim": x_shape[1]}
    else:
        if len(x_shape) not in (3, 4):
            raise UserError(f"the unet takes images (N, C, H, W) or signals (N, C, L); this data has shape {x_shape}")
        base = {"name": "unet", "in_channels": x_shape[1], "dims": len(x_shape) - 2, "image_size": x_shape[-1]}
    merged = {**base, **net}
    if merged["name"] == "unet" and "attention_resolutions" not in net:
        # attention at the lowest resolution, whatever the data size
        merged["attention_resolutions"] = [x_shape[-1] // 2 ** (len(merged.get("channel_mult", (1, 2))) - 1)]
    merged["num_classes"] = num_classes
    _check_options(f"{merged['name']} net", merged, None, ["name", *_net_keys(merged["name"])])
    return merged


# -------------------------------------------------------------------------------------- output folder


def check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Before any work: ``--out`` must be creatable, and hold either nothing, this run (``--resume``) or
    files the user agreed to replace (``--overwrite``)."""
    from .io import check_output_dir
    from .training.checkpoint import META_FILE
    from .training.state import sweep_orphans

    check_output_dir(out, what="--out")
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite starts a new one; pass only one")
    has_checkpoint = (out / META_FILE).exists()
    if resume and not has_checkpoint:
        raise UserError(f"--resume: no checkpoint in {out}")
    if not out.exists():
        return
    sweep_orphans(out)  # temporary files of a killed run (kill -9) are neither "other files" nor worth keeping
    if resume:
        return
    if has_checkpoint and not overwrite:
        raise UserError(f"--out {out} already holds a checkpoint; pass --resume to continue it, --overwrite to "
                        "start again, or choose another folder")
    others = sorted(p.name for p in out.iterdir())
    if others and not overwrite:
        raise UserError(f"--out {out} already holds files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}"
                        "); pass --overwrite to write the run there anyway, or choose another folder")


def clear_run_files(out: Path) -> None:
    """``--overwrite``: remove an earlier run's files (only those), so nothing of it mixes with the new run."""
    from .training.state import RUN_FILES

    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _saved_config(cfg: dict) -> dict:
    """What config.yaml holds: the resolved config without run-local settings (progress) or long arrays."""
    train = {k: v for k, v in cfg["train"].items() if k != "progress"}
    if "schedule" not in cfg:
        return {**cfg, "train": train}
    schedule = {k: v for k, v in cfg["schedule"].items() if k != "betas"}
    return {**cfg, "schedule": schedule, "train": train}


# ------------------------------------------------------------------------------------------------ run


def launch_rank() -> int:
    """This process's rank as torchrun set it (readable before and after the process group exists)."""
    value = os.environ.get("RANK", "")
    return int(value) if value.strip().isdigit() else 0



def run_train(args) -> str | None:
    """Train as the flags say; returns the summary line (None on DDP ranks other than 0).

    Raises UserError for anything wrong in the input (before training starts), TrainingDivergedError,
    and TrainingInterrupted on SIGINT/SIGTERM (after the checkpoint is written).
    """
    import torch

    from .core import schedule_from_config
    from .data import load_dataset
    from .io import atomic_write_text
    from .nets import build_net, count_parameters
    from .plotting import save_loss_plot
    from .runtime import ThreadGovernor, resolve_device
    from .training import distributed
    from .training.config import TrainConfig
    from .train_objectives import (autoencoder_net, build_autoencoder, build_objective, encode_latents,
                                   finish_autoencoder, source_tensor)
    from .training.trainer import Trainer

    out = Path(args.out)
    where = f"--config {args.config}: " if args.config else ""
    with user_input(where):
        cfg = resolve_config(args)
    is_main = launch_rank() == 0
    if is_main:
        check_run_folder(out, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    elif args.resume and not (out / "checkpoint.json").exists():
        raise UserError(f"--resume: no checkpoint in {out}")
    with user_input(where):
        data_cfg = cfg["data"]
        dataset = load_dataset(data_cfg["name"], "train", n=data_cfg.get("n"), **(data_cfg.get("options") or {}))
        conditional = bool(cfg.get("conditional"))
        if conditional and dataset.y is None:
            raise UserError(f"--conditional: dataset {data_cfg['name']!r} has no labels")
        num_classes = dataset.info.get("num_classes") if conditional else None
        x = encode_latents(cfg, dataset.x)  # the dataset itself without a latent: section
        autoencoder = cfg["objective"]["name"] == "autoencoder"
        if autoencoder:
            cfg["net"] = autoencoder_net(cfg, tuple(x.shape))
        else:
            cfg["net"] = default_net(tuple(x.shape), num_classes, cfg.get("net"))
        schedule = None
        if "schedule" in cfg:
            schedule = schedule_from_config(cfg["schedule"])
            cfg["schedule"] = schedule.config()
        loss, objective_extra = build_objective(cfg, schedule, conditional=conditional)
        train_config = TrainConfig.from_dict(cfg["train"])
        x0 = source_tensor(cfg, x, train_config.seed + 1)  # data -> data: independent draws of the source dataset
        cfg["train"] = {k: v for k, v in train_config.to_dict().items() if k in cfg["train"]}  # "1e-3" -> 0.001
        make_net = (lambda: build_autoencoder(cfg["net"])) if autoencoder else (lambda: build_net(cfg["net"]))
        make_net()  # the options are checked before DDP starts
        device = resolve_device(getattr(args, "device", "auto"))
        if train_config.compile:
            from .runtime import compile_unavailable_reason

            reason = compile_unavailable_reason(device)
            if reason is not None:
                raise UserError(f"--compile: {reason}; run without --compile")
    if is_main and getattr(args, "overwrite", False):  # only once the new run's input is known to be good
        clear_run_files(out)
    distributed.init_distributed(backend="nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(train_config.seed)
    net = make_net()
    tensors = (x0, x) if x0 is not None else (x, dataset.y) if conditional else (x,)
    with user_input(kinds=(ValueError,)):  # e.g. a batch larger than the dataset, or not divisible by the ranks
        trainer = Trainer(net, loss, tensors, train_config, out_dir=out,
                          extra_config={**objective_extra, "data": data_cfg},
                          thread_governor=ThreadGovernor(),
                          network_device=device if device.type != "cpu" else None)
    if args.resume:
        trainer.resume(out)
    if distributed.is_main_process():
        atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(_saved_config(cfg), sort_keys=False))
    finished = False
    try:
        history = trainer.fit()
        finished = True
        if autoencoder and history["step"] >= train_config.steps:  # a finished first stage gets its latent scale
            scale = finish_autoencoder(trainer, x)
            trainer.save(out)  # every rank calls it; rank 0 writes
            if distributed.is_main_process():
                print(f"latent scale factor {scale:.4g} fitted on the training images", file=sys.stderr)
    finally:
        if distributed.is_main_process() and trainer._loss_history:
            save_loss_plot(trainer._loss_history, out / "loss.png", title=f"{data_cfg['name']}: {cfg['net']['name']}")
        if finished:  # leave the process group together: a rank that exits while another still talks to it can
            distributed.barrier()  # abort the gloo transport of the other (after an error, do not wait)
        trainer = None  # its DDP wrapper must go before the process group (see distributed.cleanup)
        distributed.cleanup()
    if not is_main:
        return None
    tail = history["loss"][-50:]
    return (f"trained {count_parameters(net):,}-parameter {cfg['net']['name']} on {data_cfg['name']} to step "
            f"{history['step']} in {history['seconds']:.0f} s (final loss {sum(tail) / max(1, len(tail)):.4f}); "
            f"checkpoint in {out}")
