"""Figures the CLI and benches write: image grids and loss curves (written atomically through ``diffusekit.io``)."""

from __future__ import annotations

import os

import numpy as np
import torch

# re-exported: older code imports the atomic writers from here
from .io import atomic_write_bytes, atomic_write_json, default_file_mode  # noqa: F401


def _save_figure(fig, path: str | os.PathLike) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def image_grid(x: torch.Tensor, nrow: int, *, pad: int = 1, value_range=(-1.0, 1.0)) -> np.ndarray:
    """Tile images (N, C, H, W) into one uint8 array (rows of ``nrow`` images), grey or RGB."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W); got {tuple(x.shape)}")
    lo, hi = value_range
    x = ((x.detach().float().cpu().clamp(lo, hi) - lo) / (hi - lo)).numpy()
    n, c, h, w = x.shape
    ncol = -(-n // nrow)
    grid = np.ones((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = x[i]
    grid = (grid * 255).round().astype(np.uint8)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_grid(x: torch.Tensor, path, nrow: int, *, scale: int = 6, value_range=(-1.0, 1.0)) -> None:
    """Save an image grid as PNG, upscaled by ``scale`` with nearest-neighbour so small digits stay crisp."""
    import io

    from PIL import Image

    img = Image.fromarray(image_grid(x, nrow, value_range=value_range))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_loss_plot(losses, path, *, title: str = "training loss", window: int = 50) -> None:
    """Per-step loss (faint) and its moving average over ``window`` steps; log-scale y unless a loss is <= 0 (the
    interpolant objectives are a quadratic minus a constant, so they go negative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(losses, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="per step")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=1.8, label=f"moving average ({window})")
    if len(losses) and np.all(losses > 0):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, path)


def save_scatter(points: dict, path, *, title: str = "", lim: float | None = None) -> None:
    """Side-by-side 2-D scatter plots, one per entry of ``points`` (name -> (N, 2) tensor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3.2), squeeze=False)
    for ax, (name, p) in zip(axes[0], points.items()):
        p = torch.as_tensor(p).detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def grouped_psnr_bars(ax, table: dict, groups, methods, *, labels=None) -> None:
    """Grouped bar chart of ``table[group][method]["psnr"]``: one group of bars per task, one bar per method,
    centred on the group's tick; ``labels`` maps a method to its legend label (default: the method name)."""
    groups, methods = list(groups), list(methods)
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        offset = (j - (len(methods) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(groups))], [table[g][method]["psnr"] for g in groups], width,
               label=(labels or {}).get(method, method))
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def figure_to_rgb(fig) -> np.ndarray:
    """Render a matplotlib figure to an (H, W, 3) uint8 array (one animation frame); the figure stays open."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_gif(frames, path, *, fps: float = 10.0) -> None:
    """Write frames ((H, W, 3) or (H, W) uint8 arrays, all the same size) as a looping GIF, atomically.

    Used for episode and video animations in the docs; Pillow does the encoding (no extra dependency).
    """
    import io as _io

    from PIL import Image

    from .io import atomic_write_bytes

    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    if any(f.dtype != np.uint8 or f.shape != frames[0].shape or f.ndim not in (2, 3) for f in frames):
        raise ValueError("save_gif frames must be uint8 arrays of one shape, (H, W) or (H, W, 3)")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    images = [Image.fromarray(f) for f in frames]
    buffer = _io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0)
    atomic_write_bytes(path, buffer.getvalue())
