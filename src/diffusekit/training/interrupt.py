"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler, ``kill``, torchrun).

The first signal only sets a flag; the training loop finishes its step, checkpoints it and raises
:class:`TrainingInterrupted`. A second signal stops at once (atomic writes keep the previous checkpoint).
Under DDP the ranks agree on the flag every step, so they all stop after the same step.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from . import distributed as dist_utils

__all__ = ["STOP_SIGNALS", "SignalStop", "TrainingInterrupted"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped :meth:`Trainer.fit` at a step boundary.

    ``signum``: the signal; ``exit_code``: ``128 + signum`` (the shell's convention: 130 for Ctrl-C, 143
    for SIGTERM); ``step``: the last completed step; ``saved_to``: the checkpoint folder holding that step
    (None when the trainer has no ``out_dir``). A KeyboardInterrupt, so code that handles Ctrl-C still does.
    """

    def __init__(self, signum: int, step: int, saved_to: Path | None):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.step = step
        self.saved_to = saved_to
        where = f"checkpoint of step {step} saved in {saved_to}" if saved_to is not None else "nothing saved"
        super().__init__(f"{signal.Signals(self.signum).name} at step {step}; {where}")


class SignalStop:
    """A stop request set by SIGINT/SIGTERM while :meth:`catching` is active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def catching(self):
        """Install the handlers for the block (main thread only: Python allows handlers nowhere else, and
        elsewhere the signals keep their usual effect); the previous handlers come back afterwards."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.signum is not None:  # asked twice: stop now
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + signum)
            self.signum = signum

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, old in previous.items():
                signal.signal(s, old if old is not None else signal.SIG_DFL)

    def agreed(self, distributed: bool) -> int | None:
        """The stop signal if any rank got one (SIGTERM wins over SIGINT), the same on every rank."""
        if not distributed:
            return self.signum
        got = torch.tensor([float(self.signum == signal.SIGINT), float(self.signum == signal.SIGTERM)])
        got = dist_utils.all_reduce_sum(got)
        if got[1] > 0:
            return int(signal.SIGTERM)
        return int(signal.SIGINT) if got[0] > 0 else None
