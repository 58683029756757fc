"""``bench video``: per-frame 2-D UNet vs factorised 3-D UNet vs video DiT, each with and without joint image-video
training, on class-conditional moving-digit generation ("Video Diffusion Models: A Survey", Melnik et al. 2024, arXiv
2405.03150; the 3-D UNet and joint training of Ho et al. 2022, arXiv 2204.03458).

Data: 8-frame 16 x 16 clips of one 8 x 8 digit moving at 1-2 px/frame and bouncing (``moving_digits``). The video set
is small (``train_clips``); joint training adds ``images_per_clip`` same-class single frames per clip from a larger
image set (frames of other clips), masked out of the temporal attention; "+shared" trains and samples with cross-frame
mixed noise (PYoCo, arXiv 2305.10474; a = 0.9). Every net is class-conditional (label dropout
0.1), v prediction (Salimans & Ho 2022, arXiv 2202.00512; at these budgets eps-prediction samples are still noise
after 120 steps while v gives digit-like blobs) on the linear VP schedule, AdamW 2e-3, the same batch and the same
number of steps; sampling is DDIM on a uniform grid with x0 clipped to [-1, 1], conditional model (no guidance), one
seed per clip.

Metrics (``domains.video.metrics``) on ``eval_clips`` generated clips (labels cycling 0-9) against as many real
held-out clips: FVD in the features of our 3-D conv clip classifier (trained here on real clips), per-frame digits FD
(zoo digits classifier on centroid crops), identity consistency (frames agreeing with the clip's majority label),
class accuracy of the frames, motion smoothness (mean centroid acceleration, px/frame^2), parameters, training and
sampling seconds. The ``real`` row measures held-out real clips the same way (the ceiling / reference).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import bench_progress, register_bench

CANVAS = dict(frames=8, canvas=16, digit_size=8)
BUDGETS = {True: {"train_clips": 256, "image_clips": 512, "images_per_clip": 4, "steps": 120, "batch_size": 8,
                  "eval_clips": 30, "sample_steps": 8, "feature_steps": 40,
                  "variants": ("per_frame_2d", "unet3d")},
           False: {"train_clips": 256, "image_clips": 2048, "images_per_clip": 4, "steps": 800, "batch_size": 8,
                   "eval_clips": 50, "sample_steps": 20, "feature_steps": 300,
                   "variants": ("per_frame_2d", "per_frame_2d+joint", "per_frame_2d+shared", "unet3d", "unet3d+joint",
                                "video_dit", "video_dit+joint")}}
SHARED_NOISE = 0.9  # the "+shared" variants: cross-frame mixed noise in training and sampling (PYoCo)


def video_net(kind: str, *, first_frame: bool = False):
    """The bench's nets (no spatial attention; the 3-D UNet's temporal attention at the 8 x 8 level):
    ``per_frame_2d`` (44k parameters), ``unet3d`` (51k) or ``video_dit`` (161k, but the cheapest per step: 4 x 4
    patches give 16 tokens per frame)."""
    from ..domains.video.nets import FactorisedUNet3D, PerFrameUNet, VideoDiT

    common = {"image_size": CANVAS["canvas"], "num_classes": 10, "first_frame": first_frame}
    if kind == "per_frame_2d":
        return PerFrameUNet(base_channels=8, num_heads=2, attention_resolutions=(), **common)
    if kind == "unet3d":
        return FactorisedUNet3D(base_channels=8, num_heads=2, attention_resolutions=(), temporal_resolutions=(8,),
                                **common)
    if kind == "video_dit":
        return VideoDiT(patch_size=4, hidden_size=48, depth=3, num_heads=4, mlp_ratio=2.0, **common)
    raise ValueError(f"unknown bench video net {kind!r}")


def bench_data(b: dict):
    """(train clips, image set (frames of other clips) with labels, held-out real reference clips, a second held-out
    real set for the ``real`` row)."""
    from ..domains.video.moving_digits import MovingDigitsConfig, moving_digits

    config = MovingDigitsConfig(**CANVAS)
    train = moving_digits(b["train_clips"], seed=0, split="train", config=config)
    extra = moving_digits(b["image_clips"], seed=1, split="train", config=config)
    pick = torch.from_numpy(np.random.default_rng(0).integers(0, CANVAS["frames"], size=len(extra)))
    images = extra.videos[torch.arange(len(extra)), pick]  # (M, 1, H, W): one frame of each extra clip
    test = moving_digits(b["eval_clips"], seed=0, split="test", config=config)
    other = moving_digits(b["eval_clips"], seed=1, split="test", config=config)
    return train, (images, extra.labels), test, other


def run_video(quick: bool) -> tuple[dict, object]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..core import VPDiscrete
    from ..domains.video.cli_sample import clip_frames, contact_sheet_png, gif_bytes
    from ..domains.video.metrics import train_video_feature_net, video_report
    from ..methods.video_diffusion import VideoDiffusionLoss, sample_videos, train_video_net

    torch.set_num_threads(1)
    b = BUDGETS[quick]
    train, (images, image_labels), test, other = bench_data(b)
    classifier = zoo.load("digits_classifier")
    feature_net = train_video_feature_net(train.videos, train.labels, train.direction[:, 0], steps=b["feature_steps"],
                                          batch_size=32, seed=0)
    labels = torch.arange(b["eval_clips"]) % 10
    table = {"real": video_report(other.videos, other.labels, test.videos, classifier=classifier,
                                  feature_net=feature_net)}
    schedule = VPDiscrete.named("linear", 1000)
    shown, files = {}, {}
    for variant in bench_progress(b["variants"], desc="video: nets"):
        kind, joint = variant.split("+")[0], variant.endswith("+joint")
        shared = SHARED_NOISE if variant.endswith("+shared") else 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = video_net(kind)
        loss = VideoDiffusionLoss(schedule, "v", label_dropout=0.1, images=images if joint else None,
                                  image_labels=image_labels if joint else None,
                                  images_per_clip=b["images_per_clip"] if joint else 0, shared_noise=shared)
        denoiser, info = train_video_net(net, loss, train.videos, train.labels, steps=b["steps"],
                                         batch_size=b["batch_size"], seed=0)
        t0 = time.perf_counter()
        clips = sample_videos(denoiser, labels, frames=CANVAS["frames"], steps=b["sample_steps"], seed=0,
                              shared_noise=shared)
        sample_seconds = time.perf_counter() - t0
        row = video_report(clips, labels, test.videos, classifier=classifier, feature_net=feature_net)
        row.update(params=sum(p.numel() for p in net.parameters()), train_seconds=info["seconds"],
                   sample_seconds=sample_seconds, final_loss=info["final_loss"])
        table[variant] = row
        shown[variant] = clips[:4]
        files[f"video_{variant.replace('+', '_')}.gif"] = gif_bytes(clip_frames(clips[:10]), fps=4)
    files["video_real.gif"] = gif_bytes(clip_frames(test.videos[:10]), fps=4)
    files["video_contact_sheet.png"] = contact_sheet_png(torch.cat([v[:2] for v in shown.values()]))

    two_d, three_d = table["per_frame_2d"], table["unet3d"]
    summary = (f"video ({b['steps']} steps each): identity consistency per-frame 2-D {two_d['consistency']:.2f} vs "
               f"3-D UNet {three_d['consistency']:.2f}; smoothness (centroid accel., px/frame^2, real "
               f"{table['real']['smoothness']:.2f}) {two_d['smoothness']:.2f} vs {three_d['smoothness']:.2f}; FVD "
               f"{two_d['fvd']:.1f} vs {three_d['fvd']:.1f}")
    if "video_dit" in table:
        summary += f"; DiT consistency {table['video_dit']['consistency']:.2f}, FVD {table['video_dit']['fvd']:.1f}"
    if "per_frame_2d+shared" in table:
        summary += (f"; per-frame 2-D with shared noise a={SHARED_NOISE}: smoothness "
                    f"{table['per_frame_2d+shared']['smoothness']:.2f}, consistency "
                    f"{table['per_frame_2d+shared']['consistency']:.2f}")
    for kind in ("per_frame_2d", "unet3d", "video_dit"):
        if f"{kind}+joint" in table:
            summary += (f"; {kind} + joint images: frame FD {table[kind]['frame_fd']:.0f} -> "
                        f"{table[kind + '+joint']['frame_fd']:.0f}")

    names = list(table)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, metric in zip(axes.flat, ("fvd", "frame_fd", "consistency", "class_accuracy", "smoothness")):
        ax.bar(np.arange(len(names)), [table[n][metric] for n in names],
               color=["grey"] + [f"C{i}" for i in range(len(names) - 1)])
        ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
    strip = torch.cat([torch.cat(list(v[:2]), dim=-1) for v in shown.values()], dim=-2)  # (T, 1, rows H, 2 W)
    axes.flat[5].imshow(torch.cat(list(strip[::2]), dim=-1)[0].numpy(), cmap="gray", vmin=-1, vmax=1)
    axes.flat[5].set_title("frames 0, 2, 4, 6 of two clips per net (rows: " + ", ".join(shown) + ")", fontsize=6)
    axes.flat[5].axis("off")
    fig.tight_layout()
    result = {"summary": summary, "table": table, "budgets": {k: list(v) if isinstance(v, tuple) else v
                                                              for k, v in b.items()},
              "data": CANVAS, "files": files}
    return result, fig


@register_bench("video", "video diffusion: per-frame 2-D vs factorised 3-D UNet vs video DiT, +- joint image training")
def run(quick: bool) -> tuple[dict, object]:
    return run_video(quick)
