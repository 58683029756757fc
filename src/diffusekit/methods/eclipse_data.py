"""Training pairs and subject images for λ-ECLIPSE on the captioned digits (``data.captioned``).

A training example of the λ-ECLIPSE prior (Patel et al. 2024, arXiv 2402.05195, §3) is a target image, its caption
and one subject image per subject word; the paper cuts the subjects out of the target image. Here a subject is
the SAME 8 x 8 source digit as the target's slot, drawn alone and centred (``render_subjects``) in a random colour
and stroke, so the prior has to take identity from the subject and colour, stroke and position from the words.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.captioned import (ATTRIBUTE_KEYS, COLOURS, POSITIONS, THICKNESSES, CaptionedDigits, attribute_row,
                              caption_for, render, source_digits)
from .eclipse import subject_slots

__all__ = ["single_digit_attributes", "render_subjects", "mention_order", "eclipse_pairs", "embed_images"]

_LEFT_FIRST_TEMPLATES = (0, 2)  # "{A} on the left and {B} on the right", "{A} to the left of {B}"


def single_digit_attributes(digit, colour, thickness, source) -> dict[str, torch.Tensor]:
    """Attribute rows (``data.captioned`` encoding) of single centred digits; arguments are int sequences."""
    digit = torch.as_tensor(digit, dtype=torch.long).reshape(-1)
    n = len(digit)
    attrs = {k: torch.full((n,), -1, dtype=torch.long) for k in ATTRIBUTE_KEYS}
    attrs["num_digits"][:] = 1
    attrs["digit_0"], attrs["position_0"] = digit, torch.full((n,), POSITIONS.index("centre"), dtype=torch.long)
    attrs["colour_0"] = torch.as_tensor(colour, dtype=torch.long).reshape(-1)
    attrs["thickness_0"] = torch.as_tensor(thickness, dtype=torch.long).reshape(-1)
    attrs["source_0"] = torch.as_tensor(source, dtype=torch.long).reshape(-1)
    return attrs


def render_subjects(source, colour, thickness, split: str = "train", size: int = 24) -> torch.Tensor:
    """Subject images (N, 3, size, size) in [-1, 1]: source digits ``source`` (indices into the split's 8 x 8
    digits) drawn alone, centred, in ``colour`` / ``thickness`` (indices into COLOURS / THICKNESSES)."""
    src_x, src_y = source_digits(split)
    source = torch.as_tensor(source, dtype=torch.long).reshape(-1)
    return render(single_digit_attributes(src_y[source], colour, thickness, source), src_x, size)


def mention_order(row: dict, template: int) -> list[int]:
    """The slots (0 = left / only digit, 1 = right) in the order ``caption_for(row, template)`` names them."""
    if row["num_digits"] == 1:
        return [0]
    return [0, 1] if template in _LEFT_FIRST_TEMPLATES else [1, 0]


@torch.no_grad()
def embed_images(clip, images: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Frozen CLIP image embeddings (N, E) of images (N, 3, S, S), in chunks."""
    return torch.cat([clip.encode_image(images[i:i + chunk]) for i in range(0, len(images), chunk)])


@torch.no_grad()
def eclipse_pairs(data: CaptionedDigits, clip, *, seed: int = 0, plain_fraction: float = 0.2,
                  max_len: int = 24) -> dict[str, torch.Tensor]:
    """Prior training tensors for the examples of ``data`` (a captioned split; its subjects come from the same split).

    Per example: a caption (random template / phrase / thin-wording, as ``random_caption``), its tokens and mask
    (``max_len``), ``slots`` (B, L) (``subject_slots``; all -1 for a ``plain_fraction`` of examples, which keep their
    digit words), ``subjects`` (B, 2, E) the CLIP embeddings of the subject images in mention order (zeros when
    absent), ``z_img`` (B, E) of the target image and ``z_txt`` (B, E) of the caption with its words.
    """
    rng = np.random.default_rng(seed)
    split = data.info.get("split", "train")
    n = len(data)
    captions, subject_rows = [], []  # subject_rows: (example, mention index, source, colour, thickness)
    for i in range(n):
        row = attribute_row(data.attributes, i)
        template, phrase, explicit = int(rng.integers(4)), int(rng.integers(3)), bool(rng.random() < 0.5)
        captions.append(caption_for(row, template, phrase, explicit))
        for s, k in enumerate(mention_order(row, template)):
            subject_rows.append((i, s, row[f"source_{k}"], int(rng.integers(len(COLOURS))),
                                 int(rng.integers(len(THICKNESSES)))))
    rows = np.asarray(subject_rows)
    subject_images = render_subjects(rows[:, 2], rows[:, 3], rows[:, 4], split, data.images.shape[-1])
    z_subject = embed_images(clip, subject_images)
    subjects = torch.zeros(n, 2, z_subject.shape[1])
    subjects[torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])] = z_subject
    tokens, mask = clip.tokenizer.encode(captions, max_len=max_len)
    slots = subject_slots(tokens, clip.tokenizer)
    plain = torch.from_numpy(rng.random(n) < plain_fraction)
    slots[plain] = -1
    z_txt = torch.cat([clip.encode_text(tokens[i:i + 1000], mask[i:i + 1000]) for i in range(0, n, 1000)])
    return {"tokens": tokens, "mask": mask, "slots": slots, "subjects": subjects,
            "z_img": embed_images(clip, data.images), "z_txt": z_txt, "captions": captions}
