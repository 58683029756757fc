"""Zoo recipe of ``events_ezaudio``: EzAudio (arXiv 2409.10819) on the pitched sound-event clips.

The asset holds two ``methods.ezaudio_net.EzAudioDiT`` networks trained on the same clips, steps and seed:
``masked.*`` with EzAudio's masked-latent training (the model the CLI inpaints with) and ``baseline.*`` without
masking (the replacement-inpainting baseline of ``bench ezaudio --quick`` and of the tests). ``load_events_ezaudio``
returns an ``EzAudioModel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EZAUDIO_NET = {"hidden_size": 96, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0, "adapter_rank": 8}
EZAUDIO_BUDGETS = {"full": {"steps": 2500, "clips": 768, "eval_clips": 24},
                   "quick": {"steps": 4, "clips": 32, "eval_clips": 3}}
EZAUDIO_TRAIN = {"batch_size": 32, "lr": 1e-3, "seed": 0, "ema_decay": 0.999}


@dataclass
class EzAudioModel:
    """The loaded ``events_ezaudio`` asset: ``denoiser`` (masked-trained, for inpainting and text-to-audio),
    ``baseline`` (same net trained without masking), ``frames`` per clip and ``seconds_per_frame``."""

    denoiser: object
    baseline: object
    frames: int
    seconds_per_frame: float
    meta: dict = field(default_factory=dict)


def train_part(part: str, kind: str = "full", progress: bool = False):
    """Train one of the asset's two nets: ``part`` "masked" (EzAudio's masked-latent training) or "baseline"
    (unmasked); same clips, steps and seed. Returns (denoiser, info)."""
    import torch

    from ..methods.ezaudio import train_ezaudio
    from ..methods.ezaudio_eval import training_data

    if part not in ("masked", "baseline"):
        raise ValueError(f"part must be 'masked' or 'baseline'; got {part!r}")
    torch.set_num_threads(1)
    b = EZAUDIO_BUDGETS[kind]
    images, captions, _ = training_data(b["clips"], seed=0)
    return train_ezaudio(images, captions, steps=b["steps"], masked=part == "masked", net_options=EZAUDIO_NET,
                         progress=progress, **EZAUDIO_TRAIN)


def write_events_ezaudio(masked, baseline, infos: list[dict], kind: str, assets_dir: Path) -> dict:
    """Evaluate middle-gap inpainting on held-out clips and write the asset (weights stored as float16, loaded
    back as float32), the metrics in its manifest."""
    import torch

    from ..methods.ezaudio_eval import evaluate_inpainting, inpainting_clips
    from . import write_asset

    b = EZAUDIO_BUDGETS[kind]
    real, held_captions, events = inpainting_clips(b["eval_clips"], seed=1)
    scores, _ = evaluate_inpainting(masked, baseline, real, held_captions, events)
    state = {f"masked.{k}": v.to(torch.float16) for k, v in masked.net.state_dict().items()}
    state.update({f"baseline.{k}": v.to(torch.float16) for k, v in baseline.net.state_dict().items()})
    meta = {"kind": "ezaudio", "net": {**masked.net.config}, "schedule": masked.schedule.config()["name"],
            "training": {**EZAUDIO_TRAIN, "steps": b["steps"], "clips": b["clips"], "data": "pitched_clips seed 0",
                         "masking": {"mask_prob": 0.25, "ratio": [0.25, 1.0], "span": 4}, "caption_dropout": 0.1,
                         "budget": kind, "stored_dtype": "float16"},
            "training_seconds": sum(i["seconds"] for i in infos), "parts": {"masked": infos[0], "baseline": infos[1]},
            "metrics": {"middle_gap_inpainting": scores, "eval_clips": b["eval_clips"], "steps": 25, "guidance": 3.0},
            "loader": "diffusekit.zoo.recipes_ezaudio:load_events_ezaudio"}
    return write_asset("events_ezaudio", state, meta, assets_dir)


def build_events_ezaudio(budget: dict, assets_dir: Path, progress: bool) -> dict:
    """Train both nets (``EZAUDIO_BUDGETS[kind]``) one after the other, then ``write_events_ezaudio``."""
    kind = "quick" if budget.get("kind") == "quick" else "full"
    masked, info_m = train_part("masked", kind, progress)
    baseline, info_u = train_part("baseline", kind, progress)
    return write_events_ezaudio(masked, baseline, [info_m, info_u], kind, assets_dir)


def load_events_ezaudio(state: dict, meta: dict) -> EzAudioModel:
    """``EzAudioModel`` from the asset's two state dicts (``masked.*``, ``baseline.*``)."""
    from ..domains.audio.text2audio import FRAME_SECONDS
    from ..methods.ezaudio import ezaudio_denoiser
    from ..methods.ezaudio_net import EzAudioDiT

    config = {k: v for k, v in meta["net"].items() if k != "name"}
    nets = {}
    for part in ("masked", "baseline"):
        net = EzAudioDiT(**config)
        net.load_state_dict({k[len(part) + 1:]: v.float() for k, v in state.items() if k.startswith(part + ".")})
        nets[part] = ezaudio_denoiser(net, seed=meta["training"]["seed"])
    return EzAudioModel(nets["masked"], nets["baseline"], int(config["frames"]), FRAME_SECONDS, meta)
