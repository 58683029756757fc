"""``TrainConfig``: the trainer's hyperparameters, validated, JSON round-trippable.

Values may come from a YAML file, so :meth:`TrainConfig.from_dict` accepts what YAML gives for a
number written as ``1e-3`` (PyYAML reads it as the string ``"1e-3"``) but no string for a boolean.
Every mistake is a :class:`~diffusekit.errors.UserError` naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

__all__ = ["DEFAULT_CHECKPOINT_EVERY", "LOSS_NOISES", "PRECISIONS", "TRAJECTORY_FIELDS", "TrainConfig"]

# Steps between checkpoints for ``diffusekit train`` when the user does not choose: at the digits UNet's
# ~20 steps/s an interruption loses under half a minute, and a save costs well under a second.
DEFAULT_CHECKPOINT_EVERY = 500

# Fields whose change between the checkpointed run and the resumed one breaks exactness.
TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "betas", "warmup_steps", "grad_clip", "ema_decay", "seed",
                     "grad_accum_steps", "loss_noise", "precision")
LOSS_NOISES = ("per_rank", "per_example")
PRECISIONS = ("fp32", "bf16", "fp16")
BOOL_FIELDS = ("progress", "channels_last", "compile")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, *, low: float, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high == math.inf else "]"
        raise UserError(f"{name} must be a finite number in {lo}{low}, {high}{hi}, got {value!r}")


def _number_from_text(value: Any) -> Any:
    """``"1e-3"`` -> 0.001 and ``"100"`` -> 100 (YAML 1.1 reads exponents without a dot as strings)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return value


@dataclass
class TrainConfig:
    """Hyperparameters of :class:`~diffusekit.training.Trainer` (JSON-serialisable via ``to_dict``).

    ``steps``: total optimizer steps of the run (a resumed run continues up to it).
    ``batch_size``: GLOBAL batch size (split evenly over DDP ranks).
    ``lr``, ``weight_decay``, ``betas``: AdamW. ``warmup_steps``: linear warmup length.
    ``grad_clip``: max global grad L2 norm (None: no clipping; the norm is still logged).
    ``ema_decay``: EMA decay in [0, 1) (None: no EMA model).
    ``seed``: seeds the trainer-owned generators (data order, loss noise).
    ``log_every``: steps per ``log.jsonl`` record. ``eval_every``: steps between
    ``eval_fn`` calls (0: never). ``checkpoint_every``: steps between checkpoints
    (0: only at the end and on SIGINT/SIGTERM). ``max_seconds``: wall-clock budget of one ``fit()`` call;
    the step during which it runs out is completed, a checkpoint written and
    ``stopped_early`` recorded. ``progress``: show a tqdm bar on stderr.
    """

    steps: int
    batch_size: int
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 0
    max_seconds: float | None = None
    progress: bool = True
    grad_accum_steps: int = 1
    loss_noise: str = "per_rank"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, low=0.0, low_open=True)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        if not isinstance(self.betas, Sequence) or isinstance(self.betas, str) or len(self.betas) != 2:
            raise UserError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        self.betas = tuple(self.betas)
        for i, b in enumerate(self.betas):
            _check_float(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.ema_decay is not None:
            _check_float("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UserError(f"seed must be an int, got {self.seed!r}")
        _check_int("log_every", self.log_every, 1)
        _check_int("eval_every", self.eval_every, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.max_seconds is not None:
            _check_float("max_seconds", self.max_seconds, low=0.0, low_open=True)
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _check_int("grad_accum_steps", self.grad_accum_steps, 1)
        if self.loss_noise not in LOSS_NOISES:
            raise UserError(f"loss_noise must be one of {', '.join(LOSS_NOISES)}, got {self.loss_noise!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        """Plain-JSON dict (``betas`` as a list)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        """Inverse of :meth:`to_dict`, also for hand-written YAML: numbers written as text (``lr: 1e-3``)
        are read as numbers; unknown keys, a missing ``steps``/``batch_size`` or a non-mapping raise
        UserError naming the allowed keys."""
        known = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, Mapping):
            raise UserError(f"the train config must be a mapping of {', '.join(known)}; got {d!r}")
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UserError(f"unknown TrainConfig fields {unknown}; allowed: {', '.join(known)}")
        missing = [k for k in ("steps", "batch_size") if k not in d]
        if missing:
            raise UserError(f"the train config needs {' and '.join(missing)}")
        values = {}
        for key, value in d.items():
            if key == "betas" and isinstance(value, Sequence) and not isinstance(value, str):
                value = [_number_from_text(b) for b in value]
            elif key not in BOOL_FIELDS and key not in ("loss_noise", "precision"):
                value = _number_from_text(value)
            values[key] = value
        return cls(**values)
