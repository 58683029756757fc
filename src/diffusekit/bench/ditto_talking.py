"""Ditto (Li et al. 2024, arXiv 2411.19509) at CPU scale: motion-space vs pixel-space diffusion for talking faces.

Data: ``domains.video.talking_faces`` (a cartoon face with 7 explicit motion parameters driven by the espeak-ng
speech corpus, frozen renderer), talks of 96 frames at 25 fps; test talks use held-out utterances. Both models get
the same audio features (8 log-mel bands + phoneme class, 25 fps), the same reference (the talk's first motion frame
/ its rendered frame), the same loss (x0-prediction, cosine schedule, audio dropout 0.1), optimizer steps and batch
size, and the same sampler (DDIM from t = 1 to 0, CFG w = 2, learned null audio):

* ``motion``: ``methods.ditto_talking`` (transformer over 32-frame motion windows, streamed with overlap 8 and
  cross-fade) and the renderer;
* ``pixel``: ``methods.ditto_talking_pixel`` (a UNet over each 32 x 32 frame with the reference frame as a channel and
  cross-attention to the audio of frames i - 2 .. i + 2).

Metrics on the test talks (every frame of both methods goes through the same pixel measure):
* ``sync``: Pearson correlation of ``mouth_opening_from_frames`` on the generated frames with the same measure on the
  true frames; ``sync_energy``: with the (unlagged) 300-3000 Hz energy gate of the audio;
* ``jitter``: mean |frame_{i+1} - frame_i| over pixels, relative to the true frames' (1 = as smooth as the truth);
* ``ms_per_frame`` and ``rtf`` (wall seconds per second of 25 fps video, sampling + rendering, all talks batched);
  ``first_frame_s``: seconds from the request until the first frame is rendered, one talk (motion: the first window
  must be sampled; pixel: one frame); ``mflops_per_frame``: network FLOPs per generated frame per NFE (both CFG
  passes), counted by ``torch.utils.flop_counter`` (deterministic, unlike the wall times);
* ``seam_ratio`` (motion only): frame-to-frame motion change at the window seams / elsewhere (and the same for
  windows cut end to end, ``seam_ratio_hard_cuts``); ``sync_mismatched_audio``: sync when each talk is driven by
  another talk's audio (the floor).
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch

from ..domains.video.talking_faces import FPS, mouth_opening_from_frames, render_faces, talking_faces
from ..methods.ditto_talking import (MotionModel, iter_stream_motion, sample_motion, seam_ratio, stream_motion,
                                     train_motion_diffusion, window_generator)
from ..methods.ditto_talking_pixel import PixelModel, audio_context, sample_frames, train_pixel_diffusion
from . import bench_progress, register_bench

BUDGETS = {True: {"repeats": 1, "test_talks": 3, "steps": 150, "batch_size": 16, "width": 32, "depth": 2,
                  "base_channels": 8, "sample_steps": (2, 5), "pixel_steps": (2,), "guidance": 2.0},
           False: {"repeats": 2, "test_talks": 8, "steps": 800, "batch_size": 16, "width": 64, "depth": 3,
                   "base_channels": 16, "sample_steps": (1, 2, 5, 10), "pixel_steps": (1, 2, 5, 10),
                   "guidance": 2.0}}


def network_mflops_per_frame(net, example: dict, frames: int) -> float:
    """Network MFLOPs of one NFE with CFG (a batch of 2) divided by the ``frames`` it produces."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = {k: torch.cat([v, v]) for k, v in example.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(batch["x"], torch.zeros(2), batch["audio"], batch["reference"], torch.ones(2))
    return counter.get_total_flops() / 1e6 / frames


def jitter(frames: torch.Tensor) -> float:
    """Mean |frame_{i+1} - frame_i| over pixels of (N, T, 1, H, W) clips."""
    return float((frames[:, 1:] - frames[:, :-1]).abs().mean())


def motion_rows(model: MotionModel, test, steps_list, guidance: float, true_mouth: np.ndarray) -> tuple[dict, dict]:
    """Metrics of motion-space diffusion per sampling-step count, and the generated frames (for the figures); the
    controls: ``seam_ratio_hard_cuts`` (windows end to end, no cross-fade, the talk's reference for every window)
    and ``sync_mismatched_audio`` (each talk driven by another talk's audio)."""
    audio, ref = torch.from_numpy(test.audio), torch.from_numpy(test.motion[:, 0])
    rows, frames = {}, {}
    for steps in bench_progress(steps_list, desc="ditto_talking: motion"):
        t0 = time.perf_counter()
        motion = stream_motion(model, audio, ref, steps=steps, guidance=guidance, seed=0)
        video = torch.stack([test.frames(i, motion[i].numpy()) for i in range(len(test))])
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()

        def window_fn(a, r, k, steps=steps):
            return sample_motion(model, a, r, steps=steps, guidance=guidance, generator=window_generator(0, k))

        first = next(iter_stream_motion(window_fn, audio[:1], ref[:1], window=model.window))
        render_faces(first[0, :1].numpy(), test.appearances[int(test.speaker[0])])
        first_s = time.perf_counter() - t0
        mouth_corr = np.corrcoef(motion[..., 0].ravel(), test.motion[..., 0].ravel())[0, 1]
        cuts = stream_motion(model, audio, ref, steps=steps, guidance=guidance, seed=0, overlap=0,
                             carry_reference=False)
        other = stream_motion(model, audio.roll(1, dims=0), ref, steps=steps, guidance=guidance, seed=0)
        other_video = torch.stack([test.frames(i, other[i].numpy()) for i in range(len(test))])
        rows[steps] = {"seconds": seconds, "first_frame_s": first_s, "seam_ratio": seam_ratio(motion),
                       "seam_ratio_hard_cuts": seam_ratio(cuts, overlap=0), "motion_mouth_corr": float(mouth_corr),
                       "sync_mismatched_audio": float(np.corrcoef(mouth_opening_from_frames(other_video).ravel(),
                                                                  true_mouth)[0, 1])}
        frames[steps] = video
    return rows, frames


def pixel_rows(model: PixelModel, test, steps_list, guidance: float) -> tuple[dict, dict]:
    """Metrics of pixel-space diffusion per sampling-step count, and the generated frames."""
    rows, frames = {}, {}
    contexts = torch.cat([audio_context(test.audio[i]) for i in range(len(test))])
    t_len = test.audio.shape[1]
    refs = torch.cat([test.frames(i)[:1].expand(t_len, -1, -1, -1) for i in range(len(test))])
    for steps in bench_progress(steps_list, desc="ditto_talking: pixel"):
        t0 = time.perf_counter()
        video = sample_frames(model, contexts, refs, steps=steps, guidance=guidance,
                              generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        sample_frames(model, contexts[:1], refs[:1], steps=steps, guidance=guidance,
                      generator=torch.Generator().manual_seed(0))
        rows[steps] = {"seconds": seconds, "first_frame_s": time.perf_counter() - t0}
        frames[steps] = video.reshape(len(test), t_len, *video.shape[1:])
    return rows, frames


def add_sync(row: dict, video: torch.Tensor, true_mouth: np.ndarray, energy: np.ndarray, true_jitter: float) -> None:
    """Fill sync, sync_energy, jitter, ms_per_frame and rtf of a row from its generated (N, T, 1, H, W) video."""
    mouth = mouth_opening_from_frames(video).ravel()
    n_frames = video.shape[0] * video.shape[1]
    row.update(sync=float(np.corrcoef(mouth, true_mouth)[0, 1]), sync_energy=float(np.corrcoef(mouth, energy)[0, 1]),
               jitter=jitter(video) / true_jitter, ms_per_frame=1000 * row["seconds"] / n_frames,
               rtf=row["seconds"] / (n_frames / FPS))


def gif_bytes(clips: list[torch.Tensor], *, scale: int = 3, fps: float = FPS) -> bytes:
    """Clips (T, 1, H, W) in [-1, 1] side by side, upscaled, as looping GIF bytes (Pillow)."""
    from PIL import Image

    strip = torch.cat([c[:, 0] for c in clips], dim=2)
    strip = strip.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    images = [Image.fromarray(((f.numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)) for f in strip]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0)
    return buffer.getvalue()


def run_ditto_talking(quick: bool) -> tuple[dict, object]:
    """The bench (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = BUDGETS[quick]
    torch.manual_seed(0)
    train = talking_faces("train", repeats=b["repeats"])
    test = talking_faces("test")
    test = test.subset(np.arange(min(b["test_talks"], len(test))))
    motion_model, motion_info = train_motion_diffusion(train.motion, train.audio, steps=b["steps"],
                                                       batch_size=b["batch_size"], width=b["width"], depth=b["depth"])
    pixel_model, pixel_info = train_pixel_diffusion(train, steps=b["steps"], batch_size=b["batch_size"],
                                                    base_channels=b["base_channels"])
    true_video = torch.stack([test.frames(i) for i in range(len(test))])
    true_mouth = mouth_opening_from_frames(true_video).ravel()
    energy, true_jitter = test.vowel_energy.ravel(), jitter(true_video)
    m_rows, m_frames = motion_rows(motion_model, test, b["sample_steps"], b["guidance"], true_mouth)
    p_rows, p_frames = pixel_rows(pixel_model, test, b["pixel_steps"], b["guidance"])
    w = motion_model.window
    flops = {"motion": network_mflops_per_frame(motion_model.net, {"x": torch.zeros(1, w, 7),
                                                                  "audio": torch.zeros(1, w, 16),
                                                                  "reference": torch.zeros(1, 7)}, w),
             "pixel": network_mflops_per_frame(pixel_model.net, {"x": torch.zeros(1, 1, 32, 32),
                                                                "audio": torch.zeros(1, 5, 16),
                                                                "reference": torch.zeros(1, 1, 32, 32)}, 1)}
    table = {}
    for name, rows, frames in (("motion", m_rows, m_frames), ("pixel", p_rows, p_frames)):
        for steps, row in rows.items():
            add_sync(row, frames[steps], true_mouth, energy, true_jitter)
            row["mflops_per_frame_nfe"] = flops[name]
            table[f"{name}_steps={steps}"] = row
    table["true"] = {"sync": 1.0, "sync_energy": float(np.corrcoef(true_mouth, energy)[0, 1]), "jitter": 1.0}
    common = max(set(m_rows) & set(p_rows))
    mr, pr = table[f"motion_steps={common}"], table[f"pixel_steps={common}"]
    summary = (f"Ditto talking faces, {b['steps']} training steps each, DDIM {common} steps CFG 2: lip-sync "
               f"(pixel mouth measure vs truth) motion-space {mr['sync']:.3f} vs pixel-space {pr['sync']:.3f}; "
               f"{mr['ms_per_frame']:.2f} vs {pr['ms_per_frame']:.1f} ms/frame (RTF {mr['rtf']:.3f} vs "
               f"{pr['rtf']:.2f}), first frame {mr['first_frame_s'] * 1000:.0f} vs "
               f"{pr['first_frame_s'] * 1000:.0f} ms, "
               f"{flops['motion']:.2f} vs {flops['pixel']:.1f} MFLOP/frame/NFE; frame jitter x{mr['jitter']:.2f} vs "
               f"x{pr['jitter']:.2f} of the truth; streaming seam ratio {mr['seam_ratio']:.2f}")

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for name, rows in (("motion", m_rows), ("pixel", p_rows)):
        steps = sorted(rows)
        axes[0].plot(steps, [table[f"{name}_steps={s}"]["sync"] for s in steps], "o-", label=f"{name}-space")
        axes[1].semilogy(steps, [table[f"{name}_steps={s}"]["ms_per_frame"] for s in steps], "o-",
                         label=f"{name}-space")
    axes[0].set(xlabel="DDIM steps", ylabel="lip-sync correlation", title="sync (pixel mouth measure vs truth)")
    axes[1].set(xlabel="DDIM steps", ylabel="ms per frame", title="time per frame (CPU, batched)")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    axes[2].plot(true_mouth[:96], "k", label="true")
    axes[2].plot(mouth_opening_from_frames(m_frames[common][0]), label="motion-space")
    axes[2].plot(mouth_opening_from_frames(p_frames[common][0]), label="pixel-space", alpha=0.7)
    axes[2].set(xlabel="frame (25 fps)", ylabel="mouth opening (pixels)", title="test talk 0")
    axes[2].legend(fontsize=7)
    picks = list(range(0, 96, 12))
    rows_img = [torch.cat([v[0, i, 0] for i in picks], dim=1) for v in (true_video, m_frames[common],
                                                                         p_frames[common])]
    axes[3].imshow(torch.cat(rows_img, dim=0).numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[3].set_title("true / motion-space / pixel-space (every 12th frame)", fontsize=8)
    axes[3].axis("off")
    fig.tight_layout()
    files = {"ditto_talking_example.gif": gif_bytes([true_video[0], m_frames[common][0], p_frames[common][0]])}
    result = {"summary": summary, "table": table, "mflops_per_frame_nfe": flops,
              "train": {"motion": motion_info, "pixel": pixel_info}, "test_frames": int(true_mouth.size),
              "budgets": {k: list(v) if isinstance(v, tuple) else v for k, v in b.items()}, "files": files}
    return result, fig


@register_bench("ditto_talking", "Ditto talking faces: motion-space vs pixel-space diffusion (sync, latency, RTF)")
def run(quick: bool) -> tuple[dict, object]:
    return run_ditto_talking(quick)
