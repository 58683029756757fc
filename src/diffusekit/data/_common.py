"""Shared pieces of :mod:`diffusekit.data`: the :class:`DatasetSplit` container, seed derivation and
argument checks.

Kept apart from ``__init__`` so that the dataset modules can import it without a circular import.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: The split names every dataset accepts.
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass
class DatasetSplit:
    """One split of a bundled dataset.

    Attributes:
        name: the dataset's registry name (e.g. ``"moons"``).
        x: the examples, a float32 tensor whose first axis indexes examples. Toys are ``(N, D)``,
            images ``(N, C, H, W)`` and time series ``(N, 1, window)``.
        y: int64 labels of shape ``(N,)``, or ``None`` for unlabelled datasets.
        info: metadata. Every dataset sets ``split``, ``seed``, ``options``, ``value_range`` (a
            ``(low, high)`` tuple the values are guaranteed to lie in, or ``None`` if unbounded) and
            ``num_classes`` (``None`` when unlabelled); the module docs list the extra keys.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor | None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.float32:
            raise ValueError(f"DatasetSplit.x must be a float32 tensor; got {_describe(self.x)}")
        if self.x.ndim < 1:
            raise ValueError("DatasetSplit.x must have a leading example axis; got a 0-d tensor")
        if self.y is not None:
            if not isinstance(self.y, torch.Tensor) or self.y.dtype != torch.int64:
                raise ValueError(f"DatasetSplit.y must be an int64 tensor or None; got {_describe(self.y)}")
            if self.y.shape != (self.x.shape[0],):
                raise ValueError(
                    f"DatasetSplit.y must have shape ({self.x.shape[0]},) to match x; got {tuple(self.y.shape)}"
                )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        y = "None" if self.y is None else f"int64{tuple(self.y.shape)}"
        split = self.info.get("split", "?")
        return f"DatasetSplit(name={self.name!r}, split={split!r}, x=float32{tuple(self.x.shape)}, y={y})"


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {obj.dtype} tensor"
    return type(obj).__name__


def derive_seed(seed: int, dataset: str, split: str) -> int:
    """A 64-bit seed that depends on ``seed``, the dataset name and the split.

    Different datasets and the two splits of one dataset therefore never share a random stream,
    and the result is the same on every platform and Python run (it does not use ``hash``).
    """
    entropy = [int(seed), zlib.crc32(dataset.encode("utf-8")), SPLITS.index(split)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def torch_generator(seed: int, dataset: str, split: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, dataset, split))
    return g


def numpy_generator(seed: int, dataset: str, split: str) -> np.random.Generator:
    """A ``numpy.random.Generator`` seeded with :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, dataset, split))


# ---------------------------------------------------------------------------------------------
# argument checks (all raise ValueError with a one-line message)
# ---------------------------------------------------------------------------------------------


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in ``[low, high]`` (``high=None``: no upper bound)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = int(value)
        ok = value >= low and (high is None or value <= high)
    if not ok:
        allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return value


def check_float(name: str, value: Any, low: float = 0.0) -> float:
    """Return ``value`` as a float if it is a finite real number ``>= low``."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and value >= low
    if not ok:
        raise ValueError(f"{name} must be a finite number >= {low}; got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (numpy bools accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_n_available(n: int | None, available: int, what: str) -> int:
    """Resolve ``n`` (``None`` = all) against the ``available`` examples of ``what``."""
    if n is None:
        return available
    if n > available:
        raise ValueError(f"n={n} exceeds the {available} examples in {what}; allowed: 1..{available} or None")
    return n
