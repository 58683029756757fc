"""Zoo recipe of ``moving_digits_video``: a class- and first-frame-conditional factorised 3-D UNet on moving digits.

The net is ``domains.video.nets.FactorisedUNet3D`` (base 16 channels, levels 16 / 8 px, temporal attention at the
8 x 8 level) trained with ``methods.video_diffusion.VideoDiffusionLoss`` (v prediction, linear VP schedule, label
dropout 0.1 for classifier-free guidance, first-frame dropout 0.5) on 8-frame 16 x 16 clips of one bouncing 8 x 8
digit. The build evaluates it with ``domains.video.metrics`` against held-out real clips at guidance 1 and 2 and
records the better (by class accuracy) as the recommended scale. ``zoo.load("moving_digits_video")`` returns a
``methods.video_diffusion.VideoModel`` (``.sample(labels, first_frame=..., steps=..., sampler=..., seed=...)``).
"""

from __future__ import annotations

from pathlib import Path

import torch

VIDEO_BUDGETS = {"full": {"steps": 1200, "train_clips": 2048, "eval_clips": 30, "feature_steps": 300},
                 "quick": {"steps": 3, "train_clips": 32, "eval_clips": 4, "feature_steps": 2}}
DATA = {"frames": 8, "canvas": 16, "digit_size": 8}
NET = {"name": "unet3d", "in_channels": 1, "image_size": 16, "num_classes": 10, "first_frame": True,
       "base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
       "temporal_resolutions": [8], "num_heads": 4, "max_frames": 32}
SCHEDULE = ("linear", 1000)


def build_moving_digits_video(budget: dict, assets_dir: Path, progress: bool) -> dict:
    from ..core import VPDiscrete
    from ..domains.video.metrics import train_video_feature_net, video_report
    from ..domains.video.moving_digits import MovingDigitsConfig, moving_digits
    from ..domains.video.nets import build_video_net
    from ..methods.video_diffusion import VideoDiffusionLoss, VideoModel, train_video_net
    from . import load, write_asset

    b = VIDEO_BUDGETS[budget.get("kind", "full")]
    config = MovingDigitsConfig(**DATA)
    train = moving_digits(b["train_clips"], seed=0, split="train", config=config)
    test = moving_digits(b["eval_clips"], seed=0, split="test", config=config)
    schedule = VPDiscrete.named(*SCHEDULE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_video_net(NET)
    loss = VideoDiffusionLoss(schedule, "v", label_dropout=0.1, first_frame_dropout=0.5)
    denoiser, info = train_video_net(net, loss, train.videos, train.labels, steps=b["steps"], batch_size=8,
                                     lr=2e-3, seed=0, ema_decay=0.995, progress=progress)
    classifier = load("digits_classifier")
    feature_net = train_video_feature_net(train.videos, train.labels, train.direction[:, 0], steps=b["feature_steps"],
                                          batch_size=32, seed=0)
    labels = torch.arange(b["eval_clips"]) % 10
    metrics = {}
    for w in (1.0, 2.0):
        clips = VideoModel(denoiser, frames=DATA["frames"], guidance=w).sample(labels, steps=20, seed=0)
        metrics[f"guidance_{w:g}"] = video_report(clips, labels, test.videos, classifier=classifier,
                                                  feature_net=feature_net)
    first = VideoModel(denoiser, frames=DATA["frames"]).sample(test.labels, first_frame=test.videos[:, 0], steps=20)
    metrics["first_frame_mse"] = float(((first[:, 0] - test.videos[:, 0]) ** 2).mean())
    metrics["first_frame_conditioned"] = video_report(first, test.labels, test.videos, classifier=classifier,
                                                      feature_net=feature_net)
    guidance = max((1.0, 2.0), key=lambda w: metrics[f"guidance_{w:g}"]["class_accuracy"])
    meta = {"kind": "video_denoiser", "net": NET, "schedule": schedule.config(),
            "loss": loss.config() | {"schedule": None}, "data": DATA, "frames": DATA["frames"], "shared_noise": 0.0,
            "guidance": guidance, "training": {"steps": b["steps"], "batch_size": 8, "lr": 2e-3, "ema_decay": 0.995,
                                               "train_clips": b["train_clips"], "seed": 0},
            "training_seconds": info["seconds"], "metrics": metrics, "eval": "DDIM 20 uniform steps, held-out clips",
            "loader": "diffusekit.zoo.recipes_video:load_moving_digits_video"}
    return write_asset("moving_digits_video", denoiser.net.state_dict(), meta, assets_dir)


def load_moving_digits_video(state: dict, meta: dict):
    """The ``VideoModel`` of the asset (eval mode, float32, CPU)."""
    from ..core import NetworkDenoiser, schedule_from_config
    from ..domains.video.nets import build_video_net
    from ..methods.video_diffusion import VideoModel

    net = build_video_net(meta["net"])
    net.load_state_dict(state)
    denoiser = NetworkDenoiser(net.eval(), schedule_from_config(meta["schedule"]), meta["loss"]["prediction"])
    return VideoModel(denoiser, frames=meta["frames"], shared_noise=meta["shared_noise"], guidance=meta["guidance"])
