"""Zoo recipe ``events_makeanaudio2``: the two Make-An-Audio 2 models of ``bench makeanaudio2`` in one file.

Make-An-Audio 2 (Huang et al. 2023, arXiv 2305.18474; ``methods.makeanaudio2``): an in-context DiT over compact mel
frames with two frozen text encoders, trained on two-event clips with (a) plain + structured captions and (b) the
baseline's unordered captions, at the full bench's budget (1024 clips, 1500 AdamW steps, lr 2e-3, batch 16, v
prediction). Weights are stored under the prefixes ``structured.`` / ``unordered.`` (network) and
``<arm>.plain_encoder.`` / ``<arm>.structured_encoder.`` (the frozen encoders, stored rather than re-seeded so the
file does not depend on torch's initialisation), in float16 (2.4 MB; loaded back into float32 modules).
``bench makeanaudio2 --quick`` evaluates these models instead of training undertrained ones;
``zoo.load("events_makeanaudio2")`` returns ``{"structured": DualCaptionDenoiser, "unordered": DualCaptionDenoiser}``.
"""

from __future__ import annotations

from pathlib import Path

ARMS = ("structured", "unordered")
BUDGETS = {"full": {"train_clips": 1024, "steps": 1500, "test_clips": 32, "sample_steps": 10},
           "quick": {"train_clips": 32, "steps": 4, "test_clips": 4, "sample_steps": 2}}
LR, BATCH_SIZE, SEED = 2e-3, 16, 0


def build_events_makeanaudio2(budget: dict, assets_dir: Path, progress: bool) -> dict:
    """Train both arms as the full bench does, measure event-order accuracy at CFG w = 3, write the asset."""
    from ..bench.makeanaudio2 import captions_for, two_event_frames
    from ..methods.makeanaudio2 import FrameEventClassifier, event_order_correct, sample_mel_frames, train_makeanaudio2
    from . import write_asset

    size = BUDGETS[budget["kind"]]
    clips, frames = two_event_frames(size["train_clips"], seed=0)
    classifier = FrameEventClassifier().fit(frames, [c.events for c in clips])
    test_clips, test_frames = two_event_frames(size["test_clips"], seed=1)
    orders = [(c.events[0].kind, c.events[1].kind) for c in test_clips]
    state, nets, metrics, seconds = {}, {}, {}, 0.0
    for arm in ARMS:
        denoiser, info = train_makeanaudio2(frames, *captions_for(clips, arm), steps=size["steps"],
                                            batch_size=BATCH_SIZE, lr=LR, seed=SEED, progress=progress)
        seconds += info["seconds"]
        gen = sample_mel_frames(denoiser, *captions_for(test_clips, arm), guidance=3.0, steps=size["sample_steps"])
        metrics[f"{arm} order accuracy, w=3, DDIM {size['sample_steps']}"] = float(
            event_order_correct(classifier, gen, orders).mean())
        nets[arm] = dict(denoiser.net.config)
        for prefix, module in (("", denoiser.net), ("plain_encoder.", denoiser.plain_encoder),
                               ("structured_encoder.", denoiser.structured_encoder)):
            state.update({f"{arm}.{prefix}{k}": v.half() if v.is_floating_point() else v  # float16 on disk
                          for k, v in module.state_dict().items()})
        encoder_config = dict(denoiser.plain_encoder.config)
        schedule, prediction = denoiser.schedule.config(), denoiser.prediction
    meta = {"kind": "text_to_audio_pair", "net": nets, "text_encoder": encoder_config, "schedule": schedule,
            "prediction": prediction, "training": {**size, "lr": LR, "batch_size": BATCH_SIZE, "seed": SEED},
            "training_seconds": seconds, "metrics": metrics,
            "loader": "diffusekit.zoo.recipes_makeanaudio2:load_events_makeanaudio2"}
    return write_asset("events_makeanaudio2", state, meta, assets_dir)


def load_events_makeanaudio2(state: dict, meta: dict) -> dict:
    """``{"structured": ..., "unordered": ...}`` ``DualCaptionDenoiser``s in eval mode."""
    from ..core import schedule_from_config
    from ..domains.audio.text2audio import audio_tokenizer
    from ..methods.makeanaudio2 import DualCaptionDenoiser, InContextDiT
    from ..nets.text import TextEncoder

    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    out = {}
    for arm in ARMS:
        cfg = {k: v for k, v in meta["net"][arm].items() if k != "name"}
        net = InContextDiT(**cfg)
        encoders = []
        for which in ("plain_encoder", "structured_encoder"):
            encoder = TextEncoder(**{k: v for k, v in meta["text_encoder"].items() if k != "name"})
            encoder.load_state_dict(part(f"{arm}.{which}."))
            encoders.append(encoder.eval().requires_grad_(False))
        net.load_state_dict({k: v for k, v in part(f"{arm}.").items() if not k.startswith(("plain_encoder.",
                                                                                           "structured_encoder."))})
        out[arm] = DualCaptionDenoiser(net.eval(), schedule_from_config(meta["schedule"]), meta["prediction"],
                                       tokenizer=audio_tokenizer(), plain_encoder=encoders[0],
                                       structured_encoder=encoders[1])
    return out
