"""``diffusekit train``: a diffusion model on a bundled dataset, from a YAML config and/or flags.

A YAML config has up to five sections, each optional, and flags override single fields:

    data:     {name: digits, n: null, options: {}}
    net:      {name: unet, base_channels: 32, ...}       # default: MLP for vectors, UNet for images/signals
    schedule: {name: vp_discrete, beta_schedule: linear, num_train_timesteps: 1000}
    loss:     {prediction: eps, weighting: uniform, label_dropout: 0.1}
    train:    {steps: 2000, batch_size: 128, lr: 0.002, ...}   # TrainConfig fields
    conditional: true                                     # train on the dataset's class labels

The output folder gets ``checkpoint.safetensors`` + ``checkpoint.json`` (resumable with ``--resume``),
``log.jsonl``, ``config.yaml`` and ``loss.png``. Under ``torchrun`` every rank trains on its shard.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

SECTIONS = ("data", "net", "schedule", "loss", "train", "conditional")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (see `diffusekit.train_cli`)")
    p.add_argument("--out", required=True, help="output folder (checkpoint, log, plots)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--data", default=None, help="dataset name (default digits)")
    p.add_argument("--num-examples", type=int, default=None, help="number of training examples (default: dataset's)")
    p.add_argument("--net", default=None, choices=["mlp", "unet"], help="network family")
    p.add_argument("--schedule", default=None, choices=["vp_discrete", "vp_linear", "ve", "flow"])
    p.add_argument("--prediction", default=None, help="eps, x0, v, score, velocity, edm")
    p.add_argument("--weighting", default=None, help="uniform, min_snr, edm")
    p.add_argument("--label-dropout", type=float, default=None, help="null-label probability (CFG training)")
    p.add_argument("--conditional", action="store_true", default=None, help="condition on class labels")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None, help="wall-clock budget")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")


def _load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path} must hold a mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
    return cfg


def resolve_config(args) -> dict:
    """Merge YAML and flags into one complete config dict."""
    cfg = _load_yaml(args.config) if args.config else {}
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    data = cfg.setdefault("data", {})
    if args.data is not None:
        data["name"] = args.data
    if args.num_examples is not None:
        data["n"] = args.num_examples
    data.setdefault("name", "digits")
    if args.conditional is not None:
        cfg["conditional"] = True
    if args.net is not None and cfg.get("net", {}).get("name") != args.net:
        cfg["net"] = {"name": args.net}
    if args.schedule is not None:
        cfg["schedule"] = {"name": args.schedule}
    cfg.setdefault("schedule", {"name": "vp_discrete", "beta_schedule": "linear", "num_train_timesteps": 1000})
    loss = cfg.setdefault("loss", {})
    for key in ("prediction", "weighting", "label_dropout"):
        if getattr(args, key) is not None:
            loss[key] = getattr(args, key)
    loss.setdefault("prediction", "eps")
    train = cfg.setdefault("train", {})
    for key in ("steps", "batch_size", "lr", "warmup_steps", "ema_decay", "seed", "max_seconds", "checkpoint_every"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    train.setdefault("steps", 2000)
    train.setdefault("batch_size", 128)
    if args.no_progress:
        train["progress"] = False
    return cfg


def default_net(x_shape: tuple, num_classes: int | None, net: dict | None) -> dict:
    """Fill a net config from the data shape: MLP for (N, D), UNet for (N, C, H, W) or (N, C, L)."""
    net = dict(net or {})
    family = net.get("name") or ("mlp" if len(x_shape) == 2 else "unet")
    if family == "mlp":
        if len(x_shape) != 2:
            raise ValueError(f"the mlp net takes vectors (N, D); this data has shape {x_shape}; use --net unet")
        base = {"name": "mlp", "dim": x_shape[1]}
    else:
        if len(x_shape) not in (3, 4):
            raise ValueError(f"the unet takes images (N, C, H, W) or signals (N, C, L); this data has shape {x_shape}")
        base = {"name": "unet", "in_channels": x_shape[1], "dims": len(x_shape) - 2, "image_size": x_shape[-1]}
    merged = {**base, **net}
    if merged["name"] == "unet" and "attention_resolutions" not in net:
        # attention at the lowest resolution, whatever the data size
        merged["attention_resolutions"] = [x_shape[-1] // 2 ** (len(merged.get("channel_mult", (1, 2))) - 1)]
    merged["num_classes"] = num_classes
    return merged


def run_train(args) -> str:
    import torch

    from .core import schedule_from_config
    from .data import load_dataset
    from .nets import build_net, count_parameters
    from .plotting import atomic_write_bytes, save_loss_plot
    from .training import distributed
    from .training.losses import DiffusionLoss
    from .training.trainer import TrainConfig, Trainer

    cfg = resolve_config(args)
    out = Path(args.out)
    if (out / "checkpoint.json").exists() and not args.resume:
        raise ValueError(f"--out {out} already holds a checkpoint; pass --resume to continue it or choose another "
                         "folder")
    if args.resume and not (out / "checkpoint.json").exists():
        raise ValueError(f"--resume: no checkpoint in {out}")
    data_cfg = cfg["data"]
    dataset = load_dataset(data_cfg["name"], "train", n=data_cfg.get("n"), **(data_cfg.get("options") or {}))
    conditional = bool(cfg.get("conditional"))
    if conditional and dataset.y is None:
        raise ValueError(f"--conditional: dataset {data_cfg['name']!r} has no labels")
    num_classes = dataset.info.get("num_classes") if conditional else None
    cfg["net"] = default_net(tuple(dataset.x.shape), num_classes, cfg.get("net"))
    schedule = schedule_from_config(cfg["schedule"])
    cfg["schedule"] = schedule.config()
    loss = DiffusionLoss(schedule, **cfg["loss"])
    train_config = TrainConfig.from_dict(cfg["train"])
    distributed.init_distributed()
    torch.manual_seed(train_config.seed)
    net = build_net(cfg["net"])
    tensors = (dataset.x, dataset.y) if conditional else (dataset.x,)
    trainer = Trainer(net, loss, tensors, train_config, out_dir=out,
                      extra_config={"schedule": cfg["schedule"], "loss": cfg["loss"], "data": data_cfg})
    if args.resume:
        trainer.resume(out)
    history = trainer.fit()
    if distributed.is_main_process():
        shown = {**cfg, "schedule": {k: v for k, v in cfg["schedule"].items() if k != "betas"}}
        atomic_write_bytes(out / "config.yaml", yaml.safe_dump(shown, sort_keys=False).encode())
        save_loss_plot(history["loss"], out / "loss.png", title=f"{data_cfg['name']}: {cfg['net']['name']}")
    distributed.cleanup()
    tail = history["loss"][-50:]
    return (f"trained {count_parameters(net):,}-parameter {cfg['net']['name']} on {data_cfg['name']} to step "
            f"{history['step']} in {history['seconds']:.0f} s (final loss {sum(tail) / max(1, len(tail)):.4f}); "
            f"checkpoint in {out}")
