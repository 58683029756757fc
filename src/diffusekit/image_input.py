"""Reading one user image for a command (``--first-frame``, ``--subject``, ``translate --input x.png``).

``read_image(path, flag=..., side=..., grey=...)`` returns a float32 tensor (C, H, W) in [-1, 1] (pixel / 127.5 - 1),
converted to grey (C = 1) or RGB (C = 3) and box-resized to ``side`` x ``side`` when given; a missing or unreadable
file is a UserError naming the flag, so the command ends in one ``error:`` line before any work.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def read_image(path: str | Path, *, flag: str, side: int | None = None, grey: bool | None = None,
               what: str = "image"):
    """(C, H, W) float32 in [-1, 1]; ``grey=None`` keeps one channel for single-channel files, else RGB."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as img:
            if grey is None:
                grey = img.mode in ("L", "1", "I", "F")
            img = img.convert("L" if grey else "RGB")
            if side is not None and img.size != (side, side):
                img = img.resize((side, side), Image.BOX)
            arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{flag} {path}: not a readable {what} ({err})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))
