"""Zoo recipe of ``moving_digits_cbb``: a Consecutive Brownian Bridge (Lyu et al. 2024, arXiv 2405.05953) frame
interpolator for 24 x 24 one-digit moving-digit clips (``methods.bridge``), pixel space.

Training: triplets (frame i - g, i, i + g), g in {1, 2}, of 600 train clips (1-4 px of motion between the two
neighbours), the small UNet of ``methods.bridge.training.CBB_NET`` (base 16, mults (1, 2)), AdamW lr 2e-3, batch 64,
1000 steps (full) or 5 (quick, a smoke test). Metrics: PSNR / SSIM / across-seed std to the true middle frame of 96
gap-1 test triplets at 1, 5 and 10 steps, and linear blending for reference. ``zoo.load("moving_digits_cbb")`` returns
a ready :class:`~diffusekit.methods.bridge.CBBInterpolator`.
"""

from __future__ import annotations

from pathlib import Path

CBB_BUDGETS = {"full": {"train_clips": 600, "steps": 1000}, "quick": {"train_clips": 20, "steps": 5}}
DEFAULT_STEPS = 10


def build_moving_digits_cbb(budget: dict, assets_dir: Path, progress: bool) -> dict:
    from ..methods.bridge import (CBB_NET, ConsecutiveBrownianBridge, interpolation_scores, linear_blend,
                                  moving_digit_triplets, train_cbb)
    from . import write_asset

    b = CBB_BUDGETS[budget.get("kind", "full")]
    prev, mid, nxt = moving_digit_triplets(b["train_clips"], seed=0, split="train", gaps=(1, 2))
    cbb = ConsecutiveBrownianBridge(1000)
    net, info = train_cbb(cbb, prev, mid, nxt, steps=b["steps"], batch_size=64, lr=2e-3, progress=progress)
    ty, tx, tz = (v[:96] for v in moving_digit_triplets(64, seed=1, split="test", gaps=(1,)))
    metrics = {"blend": interpolation_scores(lambda g: linear_blend(ty, tz), tx, seeds=range(1))}
    for steps in (1, 5, 10):
        metrics[f"cbb@{steps}"] = interpolation_scores(
            lambda g, steps=steps: cbb.sample(net, ty, tz, steps, generator=g), tx, seeds=range(4))
    meta = {"kind": "cbb_interpolator", "net": {**CBB_NET, "channel_mult": list(CBB_NET["channel_mult"]),
                                                "channels": 1, "image_size": 24},
            "process": cbb.config, "default_steps": DEFAULT_STEPS, "eta": 1.0,
            "training": {"train_clips": b["train_clips"], "gaps": [1, 2], "triplets": len(prev),
                         "steps": info["steps"], "batch_size": 64, "lr": 2e-3, "seed": 0,
                         "data": "moving_digits train split, 8 frames, 24 x 24"},
            "training_seconds": info["seconds"], "metrics": metrics,
            "loader": "diffusekit.zoo.recipes_cbb:load_moving_digits_cbb"}
    return write_asset("moving_digits_cbb", net.state_dict(), meta, assets_dir)


def load_moving_digits_cbb(state: dict, meta: dict):
    """The shipped interpolator: :class:`CBBInterpolator` over the net and its process."""
    from ..methods.bridge import CBBInterpolator, ConsecutiveBrownianBridge, make_interpolation_net

    cfg = dict(meta["net"])
    channels, image_size = int(cfg.pop("channels")), int(cfg.pop("image_size"))
    net = make_interpolation_net(3, channels=channels, image_size=image_size, **cfg)
    net.load_state_dict(state)
    process = meta["process"]
    cbb = ConsecutiveBrownianBridge(int(process["num_timesteps"]), max_var=float(process["max_var"]),
                                    max_loss_weight=float(process.get("max_loss_weight", 5.0)))
    return CBBInterpolator(net.eval(), cbb, frame_shape=(channels, image_size, image_size),
                           default_steps=int(meta.get("default_steps", DEFAULT_STEPS)), eta=float(meta.get("eta", 1.0)))
