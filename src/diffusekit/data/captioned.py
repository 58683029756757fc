"""Captioned compositional digits: RGB canvases holding one or two coloured sklearn digits, with templated captions.

Each image is an ``S x S`` RGB canvas (default S = 24, black background) holding one digit in the centre or two
digits, one on the left and one on the right. A digit is an 8 x 8 sklearn digit (``load_dataset("digits", split)``)
upscaled to ``S // 2`` pixels (bilinear), drawn *thin* (as is) or *thick* (grey-level dilation: a 2 x 2 max-pool of
the upscaled intensity) and tinted with one of :data:`COLOURS`. Captions are templated English
("a thick red 3 on the left and a thin blue 7 on the right", "a 5 in green", "thick cyan digit 2"), several
templates and word orders; an unspoken thickness means *thin*. :func:`parse_caption` inverts every template.

Splits (images from the digits split in brackets):

* ``train`` (digits train): no digit in any image has a (digit, colour) pair of :data:`HELDOUT_PAIRS`.
* ``test`` (digits test): the same attribute distribution as ``train``, on unseen digit images.
* ``heldout`` (digits test): the first (left or only) digit always has a held-out (digit, colour) pair, the
  second digit any pair: compositional generalisation to attribute combinations never seen in training.

Attributes (``CaptionedDigits.attributes``, int64 of shape (N,), -1 where a slot is empty): ``num_digits``
(1 or 2) and per slot k in {0, 1}: ``digit_k`` (0..9), ``colour_k`` (index in :data:`COLOURS`), ``thickness_k``
(index in :data:`THICKNESSES`), ``position_k`` (index in :data:`POSITIONS`; slot 0 is the left digit of a pair)
and ``source_k`` (index of the 8 x 8 digit image in the source split), which makes :func:`render` exact.
Everything is a deterministic function of ``(split, n, size, seed)``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["COLOURS", "COLOUR_RGB", "THICKNESSES", "POSITIONS", "HELDOUT_PAIRS", "CAPTION_SPLITS", "DEFAULT_N",
           "ATTRIBUTE_KEYS", "CaptionedDigits", "make_captioned_digits", "caption_for", "random_caption",
           "parse_caption", "attribute_row", "render", "source_digits"]

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
#: RGB in [0, 1] of each colour in :data:`COLOURS`.
COLOUR_RGB: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0),
    (1.0, 1.0, 1.0))
THICKNESSES: tuple[str, ...] = ("thin", "thick")
POSITIONS: tuple[str, ...] = ("left", "right", "centre")
#: (digit, colour name) pairs that never occur in ``train``/``test`` and lead every ``heldout`` image:
#: digit d with colour ``COLOURS[3 d mod 7]``, so each digit and each colour is held out at least once.
HELDOUT_PAIRS: tuple[tuple[int, str], ...] = tuple((d, COLOURS[(3 * d) % len(COLOURS)]) for d in range(10))
CAPTION_SPLITS: tuple[str, ...] = ("train", "test", "heldout")
DEFAULT_N = {"train": 10_000, "test": 2_000, "heldout": 1_000}
ATTRIBUTE_KEYS: tuple[str, ...] = ("num_digits",) + tuple(
    f"{a}_{k}" for k in (0, 1) for a in ("digit", "colour", "thickness", "position", "source"))

_LEFT, _RIGHT, _CENTRE = range(3)
_HELDOUT_SET = {(d, COLOURS.index(c)) for d, c in HELDOUT_PAIRS}
# Two-digit arrangements ({A} = the left digit's phrase, {B} = the right one's) and digit phrases.
_PAIR_TEMPLATES = ("{A} on the left and {B} on the right", "{B} on the right and {A} on the left",
                   "{A} to the left of {B}", "{B} to the right of {A}")
_PHRASE_TEMPLATES = ("a {t}{c} {d}", "a {d} in {t}{c}", "{t}{c} digit {d}")


@dataclass
class CaptionedDigits:
    """One split: ``images`` float32 (N, 3, S, S) in [-1, 1], ``captions`` (N strings), ``attributes``
    (:data:`ATTRIBUTE_KEYS` -> int64 (N,), -1 for an empty slot) and ``info`` (split, seed, size, n)."""

    images: torch.Tensor
    captions: list[str]
    attributes: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index) -> "CaptionedDigits":
        """The examples at ``index`` (a slice, LongTensor or list of ints), as a new ``CaptionedDigits``."""
        idx = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index).long()
        return CaptionedDigits(self.images[idx], [self.captions[i] for i in idx.tolist()],
                               {k: v[idx] for k, v in self.attributes.items()}, dict(self.info))


def source_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 x 8 source digits of a captioned split: (images (M, 1, 8, 8) in [-1, 1], labels (M,))."""
    from . import load_dataset

    if split not in CAPTION_SPLITS:
        raise ValueError(f"unknown split {split!r} for captioned digits; allowed: {', '.join(CAPTION_SPLITS)}")
    d = load_dataset("digits", "train" if split == "train" else "test")
    return d.x, d.y


def attribute_row(attributes: dict[str, torch.Tensor], i: int) -> dict[str, int]:
    """Example ``i`` of an attribute dict as plain ints."""
    return {k: int(v[i]) for k, v in attributes.items()}


def _phrase(row: dict, k: int, phrase: int, explicit_thin: bool) -> str:
    thick = THICKNESSES[row[f"thickness_{k}"]]
    t = f"{thick} " if thick != "thin" or explicit_thin else ""
    return _PHRASE_TEMPLATES[phrase].format(t=t, c=COLOURS[row[f"colour_{k}"]], d=row[f"digit_{k}"])


def caption_for(row: dict, template: int = 0, phrase: int = 0, explicit_thin: bool = True) -> str:
    """The caption of one attribute row (a dict as from :func:`attribute_row`).

    ``template`` picks the two-digit arrangement (0..3; ignored for one digit), ``phrase`` the digit phrase (0..2),
    ``explicit_thin`` whether a thin digit says "thin". The defaults give the canonical caption, e.g.
    "a thick red 3 on the left and a thin blue 7 on the right" or "a thin green 5".
    """
    if not 0 <= template < len(_PAIR_TEMPLATES) or not 0 <= phrase < len(_PHRASE_TEMPLATES):
        raise ValueError(f"template must be in 0..{len(_PAIR_TEMPLATES) - 1} and phrase in "
                         f"0..{len(_PHRASE_TEMPLATES) - 1}; got {template}, {phrase}")
    if row["num_digits"] == 1:
        return _phrase(row, 0, phrase, explicit_thin)
    if row["num_digits"] != 2:
        raise ValueError(f"num_digits must be 1 or 2; got {row['num_digits']}")
    left, right = (0, 1) if row["position_0"] == _LEFT else (1, 0)
    return _PAIR_TEMPLATES[template].format(A=_phrase(row, left, phrase, explicit_thin),
                                            B=_phrase(row, right, phrase, explicit_thin))


def random_caption(row: dict, rng: np.random.Generator) -> str:
    """:func:`caption_for` with a template, phrase and thin-wording drawn uniformly from ``rng``."""
    template, phrase, explicit = rng.integers(len(_PAIR_TEMPLATES)), rng.integers(len(_PHRASE_TEMPLATES)), rng.random()
    return caption_for(row, int(template), int(phrase), bool(explicit < 0.5))


def _parse_phrase(text: str) -> tuple[int, int, int]:
    words = re.findall(r"[a-z0-9]+", text)
    digits = [w for w in words if len(w) == 1 and w.isdigit()]
    colours = [w for w in words if w in COLOURS]
    if len(digits) != 1 or len(colours) != 1:
        raise ValueError(f"cannot parse digit phrase {text!r}: need exactly one digit and one colour")
    return int(digits[0]), COLOURS.index(colours[0]), THICKNESSES.index("thick" if "thick" in words else "thin")


def parse_caption(caption: str) -> dict[str, int]:
    """Attributes (without ``source_k``) of a caption written by any template of :func:`caption_for`."""
    text = " ".join(caption.lower().split())
    row = {k: -1 for k in ATTRIBUTE_KEYS if not k.startswith("source")}
    if " to the left of " in text:
        left, right = text.split(" to the left of ")
    elif " to the right of " in text:
        right, left = text.split(" to the right of ")
    elif " and " in text:
        parts = dict((p.rsplit(" on the ", 1)[1], p.rsplit(" on the ", 1)[0]) for p in text.split(" and ")
                     if " on the " in p)
        if set(parts) != {"left", "right"}:
            raise ValueError(f"cannot parse caption {caption!r}: need one digit on the left and one on the right")
        left, right = parts["left"], parts["right"]
    else:
        row["num_digits"] = 1
        row["digit_0"], row["colour_0"], row["thickness_0"] = _parse_phrase(text)
        row["position_0"] = _CENTRE
        return row
    row["num_digits"] = 2
    for k, (part, pos) in enumerate(((left, _LEFT), (right, _RIGHT))):
        row[f"digit_{k}"], row[f"colour_{k}"], row[f"thickness_{k}"] = _parse_phrase(part)
        row[f"position_{k}"] = pos
    return row


def render(attributes: dict[str, torch.Tensor], source: torch.Tensor, size: int = 24) -> torch.Tensor:
    """Images (N, 3, size, size) in [-1, 1] of the attribute rows, drawing slot k from ``source[source_k]``.

    ``source`` is the (M, 1, 8, 8) digit tensor in [-1, 1] of :func:`source_digits`. Per present slot: intensity
    ``(x + 1) / 2`` upscaled to ``size // 2`` (bilinear), dilated by a 2 x 2 max-pool if thick, times the colour's
    RGB, placed centred (one digit) or in the left / right half; the canvas is the pixelwise maximum, mapped to
    ``2 canvas - 1``.
    """
    n = int(attributes["num_digits"].shape[0])
    d, canvas = size // 2, torch.zeros(n, 3, size, size)
    top = (size - d) // 2
    offsets = {_LEFT: (top, 0), _RIGHT: (top, size - d), _CENTRE: (top, top)}
    rgb = torch.tensor(COLOUR_RGB, dtype=torch.float32)
    for k in (0, 1):
        present = attributes[f"digit_{k}"] >= 0
        if not present.any():
            continue
        idx = present.nonzero().squeeze(1)
        glyph = (source[attributes[f"source_{k}"][idx]].float() + 1) / 2
        glyph = F.interpolate(glyph, size=(d, d), mode="bilinear", align_corners=False)
        thick = (attributes[f"thickness_{k}"][idx] == THICKNESSES.index("thick")).view(-1, 1, 1, 1)
        dilated = F.max_pool2d(F.pad(glyph, (0, 1, 0, 1)), 2, stride=1)  # grey dilation by a 2 x 2 square
        glyph = torch.where(thick, dilated, glyph)
        tinted = glyph * rgb[attributes[f"colour_{k}"][idx]].view(-1, 3, 1, 1)  # (m, 3, d, d)
        for pos, (r, c) in offsets.items():
            sel = attributes[f"position_{k}"][idx] == pos
            if sel.any():
                rows = idx[sel]
                canvas[rows, :, r:r + d, c:c + d] = torch.maximum(canvas[rows, :, r:r + d, c:c + d], tinted[sel])
    return canvas * 2 - 1


def _split_rng(seed: int, split: str) -> np.random.Generator:
    entropy = [int(seed), zlib.crc32(b"captioned_digits"), CAPTION_SPLITS.index(split)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def make_captioned_digits(split: str = "train", n: int | None = None, size: int = 24, seed: int = 0
                          ) -> CaptionedDigits:
    """Generate a split of captioned compositional digits (see the module docstring); deterministic in all args.

    ``n`` defaults to :data:`DEFAULT_N` (10,000 / 2,000 / 1,000); ``size`` is the canvas side (even, >= 16).
    Raises ValueError for an unknown split or a bad ``n`` / ``size`` / ``seed``.
    """
    if split not in CAPTION_SPLITS:
        raise ValueError(f"unknown split {split!r} for captioned digits; allowed: {', '.join(CAPTION_SPLITS)}")
    n = DEFAULT_N[split] if n is None else n
    for name, value, low in (("n", n, 1), ("size", size, 16), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if size % 2:
        raise ValueError(f"size must be even (two digits of size // 2 side by side); got {size}")
    src_x, src_y = source_digits(split)
    by_label = [np.flatnonzero(src_y.numpy() == d) for d in range(10)]
    rng = _split_rng(seed, split)
    allowed = [(d, c) for d in range(10) for c in range(len(COLOURS)) if (d, c) not in _HELDOUT_SET]
    heldout = sorted(_HELDOUT_SET)
    attrs = {k: np.full(n, -1, dtype=np.int64) for k in ATTRIBUTE_KEYS}
    attrs["num_digits"] = rng.integers(1, 3, size=n)
    for k in (0, 1):
        present = attrs["num_digits"] > k
        pool = heldout if (split == "heldout" and k == 0) else (allowed if split != "heldout" else allowed + heldout)
        pairs = np.asarray(pool)[rng.integers(len(pool), size=n)]
        thickness = rng.integers(len(THICKNESSES), size=n)
        pick = rng.random(n)
        source = np.array([by_label[d][int(u * len(by_label[d]))] for d, u in zip(pairs[:, 0], pick)])
        if k == 0:
            position = np.where(attrs["num_digits"] == 1, _CENTRE, _LEFT)
        else:
            position = np.full(n, _RIGHT)
        for name, values in (("digit", pairs[:, 0]), ("colour", pairs[:, 1]), ("thickness", thickness),
                             ("position", position), ("source", source)):
            attrs[f"{name}_{k}"] = np.where(present, values, -1)
    attributes = {k: torch.from_numpy(v) for k, v in attrs.items()}
    captions = [random_caption(attribute_row(attributes, i), rng) for i in range(n)]
    images = render(attributes, src_x, size)
    info = {"split": split, "seed": seed, "size": size, "n": n, "value_range": (-1.0, 1.0),
            "heldout_pairs": HELDOUT_PAIRS}
    return CaptionedDigits(images, captions, attributes, info)
