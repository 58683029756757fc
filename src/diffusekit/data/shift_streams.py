"""Distribution-shift streams for test-time adaptation (issue 13): single domain, continual, class-sorted, open-set.

Source data are the clean 8 x 8 digits (``load_dataset("digits")``); every target stream is built from the digits
*test* split, corrupted by :func:`diffusekit.data.corruptions.corrupt` (ImageNet-C-style, Hendrycks & Dietterich
2019, arXiv 1903.12261), and cut into batches that an adapter sees once, in order (the online protocol of TENT,
Wang et al. 2021, arXiv 2006.10726):

* :func:`single_stream`: one corruption at one severity, i.i.d. order (``order="iid"``) or sorted by label
  (``order="sorted"``, the non-i.i.d. setting where batch statistics carry the label and TENT collapses).
* :func:`continual_stream`: the lifelong setting of CoTTA (Wang et al. 2022, arXiv 2203.13591): the corruptions in a
  fixed cycle, ``cycles`` times over, never reset; the domain of every sample is recorded.
* :func:`open_set_stream`: the setting of Lee et al. 2023 (arXiv 2308.06879): a source trained on digits 0-4 meets
  a stream where a fraction ``unknown_fraction`` of the samples are unknowns (label -1): digits 5-9 and natural
  8 x 8 grey patches of scikit-image's bundled photographs (``load_dataset("patches", size=8)``), corrupted like
  the known samples.

The test split has only 360 images, so a stream of ``repeats`` > 1 passes draws each pass with its own corruption
seed (new noise for the random corruptions; the deterministic ones, e.g. contrast, repeat exactly) and its own
shuffle. Everything is deterministic from ``seed``: the same arguments give bit-identical batches, and the global
RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .corruptions import SEVERITIES, available_corruptions, corrupt

__all__ = ["ShiftStream", "single_stream", "continual_stream", "open_set_stream", "CONTINUAL_CYCLE", "ORDERS",
           "check_corruption", "check_severity", "check_batch_size"]

#: The cycle of the continual stream: one corruption from each ImageNet-C family (noise, blur, digital, weather-
#: like), in this order; the control note's CPU experiment names noise, blur, contrast and JPEG.
CONTINUAL_CYCLE = ("gaussian_noise", "defocus_blur", "contrast", "jpeg", "impulse_noise", "pixelate")
ORDERS = ("iid", "sorted")
UNKNOWN_LABEL = -1


@dataclass
class ShiftStream:
    """A target stream: images ``x`` (N, 1, 8, 8) in [-1, 1], labels ``y`` (N,) (-1 = open-set unknown) and the
    domain name of every sample, served in order as batches of ``batch_size`` (the last one may be smaller)."""

    x: torch.Tensor
    y: torch.Tensor
    domains: list[str]
    batch_size: int
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, self.x.shape[0], self.batch_size):
            yield self.x[s: s + self.batch_size], self.y[s: s + self.batch_size]

    def batch_domains(self) -> list[str]:
        """The domain of each batch's first sample (batches of the continual stream lie inside one domain when
        ``batch_size`` divides the images per domain)."""
        return [self.domains[s] for s in range(0, self.x.shape[0], self.batch_size)]

    def with_batch_size(self, batch_size: int) -> "ShiftStream":
        """The same samples in the same order, cut into batches of another size."""
        return ShiftStream(self.x, self.y, self.domains, check_batch_size(batch_size), dict(self.info))


def check_corruption(name: str) -> str:
    """``name`` if it is a corruption of :mod:`.corruptions`, else ValueError listing them."""
    if name not in available_corruptions():
        raise ValueError(f"unknown shift {name!r}; available: {', '.join(available_corruptions())}")
    return name


def check_severity(severity) -> int:
    """``severity`` as an int in 1..5, else ValueError."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


def check_batch_size(batch_size) -> int:
    """``batch_size`` as a positive int, else ValueError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _test_digits(classes: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from . import load_dataset

    test = load_dataset("digits", "test")
    if classes is None:
        return test.x, test.y
    keep = torch.isin(test.y, torch.as_tensor(list(classes)))
    return test.x[keep], test.y[keep]


def _pass_seed(seed: int, index: int) -> int:
    """The corruption seed of pass ``index`` (distinct per pass, stable across processes)."""
    return int(seed) * 7919 + index


def _sorted_order(y: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Indices sorting ``y`` ascending, ties (and unknowns, label -1, which come first) in a seeded random order."""
    tiebreak = rng.permutation(len(y))
    return torch.from_numpy(np.lexsort((tiebreak, y.numpy())).astype(np.int64))


def single_stream(corruption: str, severity: int, *, batch_size: int = 64, order: str = "iid", repeats: int = 1,
                  n: int | None = None, seed: int = 0,
                  data: tuple[torch.Tensor, torch.Tensor] | None = None) -> ShiftStream:
    """The digits test split under one corruption at one severity, ``repeats`` passes, in ``order``.

    ``order="iid"``: each pass shuffled; ``order="sorted"``: all passes pooled and sorted by label (class-sorted,
    non-i.i.d.: a batch holds one or two classes). ``n``: keep only the first ``n`` images of the stream.
    ``data``: other labelled images (N, C, H, W) in [-1, 1] instead of the digits test split (e.g. the captioned RGB
    digits of DiffTPT); the corruptions scale their spatial parameters with the image side.
    """
    check_corruption(corruption)
    severity = check_severity(severity)
    batch_size = check_batch_size(batch_size)
    repeats = _positive("repeats", repeats)
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; available: {', '.join(ORDERS)}")
    if data is None:
        x0, y0 = _test_digits()
    else:
        x0, y0 = data
        if x0.ndim != 4 or y0.shape != x0.shape[:1]:
            raise ValueError(f"data must be images (N, C, H, W) and labels (N,), got {tuple(x0.shape)} and "
                             f"{tuple(y0.shape)}")
    rng = np.random.default_rng([int(seed), 11])
    xs, ys = [], []
    for r in range(repeats):
        perm = torch.from_numpy(rng.permutation(len(y0)))
        xs.append(corrupt(x0[perm], corruption, severity, seed=_pass_seed(seed, r)))
        ys.append(y0[perm])
    x, y = torch.cat(xs), torch.cat(ys)
    if order == "sorted":
        idx = _sorted_order(y, rng)
        x, y = x[idx], y[idx]
    if n is not None:
        n = _positive("n", n)
        x, y = x[:n], y[:n]
    name = f"{corruption}-{severity}"
    return ShiftStream(x, y, [name] * len(y), batch_size,
                       {"kind": "single", "corruption": corruption, "severity": severity, "order": order,
                        "repeats": repeats, "seed": int(seed), "data": "digits" if data is None else "custom"})


def continual_stream(corruptions: Sequence[str] = CONTINUAL_CYCLE, severity: int = 5, *, cycles: int = 10,
                     images_per_domain: int = 200, batch_size: int = 50, seed: int = 0) -> ShiftStream:
    """The lifelong stream: for cycle 1..``cycles``, for each corruption in ``corruptions`` (in that order),
    ``images_per_domain`` freshly shuffled test digits under that corruption (a new corruption seed per visit).

    ``domains[i]`` is ``"<corruption>-<severity>"`` of sample i; ``info["visits"]`` lists (cycle, corruption) in
    stream order. The adapter is never told where a domain starts (no reset).
    """
    corruptions = [check_corruption(c) for c in corruptions]
    if not corruptions:
        raise ValueError("corruptions must name at least one corruption")
    severity = check_severity(severity)
    batch_size = check_batch_size(batch_size)
    cycles = _positive("cycles", cycles)
    x0, y0 = _test_digits()
    images_per_domain = _positive("images_per_domain", images_per_domain)
    if images_per_domain > len(y0):
        raise ValueError(f"images_per_domain must be at most {len(y0)} (the digits test split), got "
                         f"{images_per_domain}")
    rng = np.random.default_rng([int(seed), 13])
    xs, ys, domains, visits = [], [], [], []
    for cycle in range(cycles):
        for k, name in enumerate(corruptions):
            perm = torch.from_numpy(rng.permutation(len(y0))[:images_per_domain])
            xs.append(corrupt(x0[perm], name, severity, seed=_pass_seed(seed, cycle * len(corruptions) + k)))
            ys.append(y0[perm])
            domains += [f"{name}-{severity}"] * images_per_domain
            visits.append((cycle, name))
    return ShiftStream(torch.cat(xs), torch.cat(ys), domains, batch_size,
                       {"kind": "continual", "corruptions": list(corruptions), "severity": severity,
                        "cycles": cycles, "images_per_domain": images_per_domain, "visits": visits,
                        "seed": int(seed)})


KNOWN_CLASSES = (0, 1, 2, 3, 4)
UNKNOWN_DIGITS = (5, 6, 7, 8, 9)


def open_set_stream(corruption: str, severity: int, *, unknown_fraction: float = 0.5,
                    natural_fraction: float = 0.5, batch_size: int = 64, repeats: int = 1,
                    seed: int = 0) -> ShiftStream:
    """Known digits 0-4 (labels 0-4) mixed i.i.d. with unknowns (label -1), all under one corruption.

    With K known samples (``repeats`` passes over the test digits 0-4), the stream holds
    U = round(K f / (1 - f)) unknowns, f = ``unknown_fraction`` in [0, 1): a share ``natural_fraction`` of them are
    natural 8 x 8 grey patches (crops of ``skimage.data`` photographs, test images, scaled to [-1, 1]) and the
    rest test digits 5-9 (drawn with replacement across passes). ``domains`` marks "known", "unknown_digit" and
    "natural_patch".
    """
    from . import load_dataset

    check_corruption(corruption)
    severity = check_severity(severity)
    batch_size = check_batch_size(batch_size)
    repeats = _positive("repeats", repeats)
    for name, value in (("unknown_fraction", unknown_fraction), ("natural_fraction", natural_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if unknown_fraction >= 1.0:
        raise ValueError(f"unknown_fraction must be below 1 (some known samples), got {unknown_fraction!r}")
    rng = np.random.default_rng([int(seed), 17])
    xk, yk = _test_digits(KNOWN_CLASSES)
    xu, _ = _test_digits(UNKNOWN_DIGITS)
    known = len(yk) * repeats
    unknown = int(round(known * unknown_fraction / (1.0 - unknown_fraction)))
    natural = int(round(unknown * natural_fraction))
    digits = unknown - natural
    perms = [torch.from_numpy(rng.permutation(len(yk))) for _ in range(repeats)]
    x_known = torch.cat([xk[p] for p in perms])
    y_known = torch.cat([yk[p] for p in perms])
    x_digit = xu[torch.from_numpy(rng.integers(0, len(xu), size=digits))]
    x_patch = load_dataset("patches", "test", n=max(natural, 1), seed=int(seed), size=8).x[:natural]
    x = torch.cat([x_known, x_digit, x_patch.to(x_known.dtype)])
    y = torch.cat([y_known, torch.full((unknown,), UNKNOWN_LABEL, dtype=y_known.dtype)])
    kinds = ["known"] * known + ["unknown_digit"] * digits + ["natural_patch"] * natural
    order = torch.from_numpy(rng.permutation(len(y)))
    x = corrupt(x[order], corruption, severity, seed=_pass_seed(seed, 0))
    y = y[order]
    domains = [kinds[i] for i in order.tolist()]
    return ShiftStream(x, y, domains, batch_size,
                       {"kind": "open_set", "corruption": corruption, "severity": severity,
                        "unknown_fraction": float(unknown_fraction), "natural_fraction": float(natural_fraction),
                        "known": known, "unknown": unknown, "natural_patches": natural, "repeats": repeats,
                        "seed": int(seed)})
