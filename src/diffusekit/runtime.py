"""Process-wide runtime settings for the command line, chosen once at start-up: torch's intra-op thread
count and the OpenMP wait policy.

Why this matters: torch parallelises each operator over its OpenMP threads, and every operator ends in a
barrier. The networks here are small (8 x 8 digits at batch 128: thousands of short operators per second),
so a thread that has lost its core to another process holds up the others at every barrier, and with
OpenMP's default *active* wait policy the waiting threads spin and take CPU time from that very thread.
With one other CPU-bound process on a 2-core machine, two torch threads on the one free core slowed the
demo from 12-14 to about 1 optimizer step per second.

The choice (:func:`configure_threads`):

1. ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: a waiting thread sleeps instead of spinning. It is
   read once when OpenMP starts, so it is set in ``os.environ`` before anything imports torch (the CLI
   calls ``configure_threads()`` first, and ``diffusekit.cli`` imports torch only inside commands).
2. Threads = the cores this process may run on (CPU affinity, and a cgroup CPU quota where one is set)
   minus the cores that other processes keep busy, measured from ``/proc/stat`` over 0.1 s at start-up,
   rounded to the nearest integer and at least 1. On an idle machine that is every core; with a core
   taken, the threads fit the cores that are free, so a busy machine costs time in proportion (the
   free share of the machine) instead of a collapse.
3. ``OMP_NUM_THREADS`` set by the user wins (``make test`` sets 1), and nothing is measured.

Measured figures (demo network, batch 128, medians) are in ``configure_threads``' docstring.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

__all__ = ["ThreadGovernor", "available_cores", "busy_cores", "choose_threads", "configure_threads",
           "next_threads"]

_chosen: int | None = None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity set, capped by a cgroup (v2 or v1) CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPU quota in cores from ``cpu.max`` (v2) or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (v1)."""
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from ``/proc/stat``; busy excludes idle and iowait."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total = sum(values)
        times[int(name[3:])] = (total - values[3] - values[4], total)
    return times


def busy_cores(window: float = 0.1) -> float | None:
    """Cores of this process's affinity set kept busy by other processes, averaged over ``window`` seconds
    (this process sleeps meanwhile, so it does not count itself). None where ``/proc/stat`` is unreadable."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    try:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
    except (OSError, ValueError):
        return None
    busy = 0.0
    for cpu, (b1, t1) in after.items():
        if cpu not in before or (allowed is not None and cpu not in allowed):
            continue
        b0, t0 = before[cpu]
        if t1 > t0:
            busy += (b1 - b0) / (t1 - t0)
    return busy


def choose_threads(cores: int, busy: float | None) -> int:
    """Threads for ``cores`` usable cores of which ``busy`` are taken: ``round(cores - busy)``, in [1, cores]."""
    if busy is None:
        return cores
    return max(1, min(cores, int(math.floor(cores - busy + 0.5))))


def next_threads(cores: int, current: int, busy: float, up_margin: float = 0.3) -> int:
    """The thread count after ``current`` when other processes keep ``busy`` cores busy: fewer threads as
    soon as ``choose_threads`` says so, more only when ``choose_threads(cores, busy + up_margin)`` does."""
    threads = choose_threads(cores, busy)
    if threads > current:
        threads = max(current, choose_threads(cores, busy + up_margin))
    return threads


def configure_threads() -> int:
    """Set the OpenMP wait policy and torch's intra-op thread count for this process; returns the count.

    See the module docstring for the reasoning. Call it before anything imports torch (the wait policy
    is read once, when OpenMP starts); later calls return the first choice. ``OMP_NUM_THREADS`` in the
    environment is respected as given.
    """
    global _chosen
    if _chosen is not None:
        return _chosen
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    requested = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) > 0:
        _chosen = int(requested)
    else:
        _chosen = choose_threads(available_cores(), busy_cores())
    if "torch" in sys.modules or _chosen != available_cores():
        import torch

        if torch.get_num_threads() != _chosen:
            torch.set_num_threads(_chosen)
    return _chosen


class ThreadGovernor:
    """Re-fits torch's thread count to the cores other processes leave free, for long loops.

    Each call measures, since the previous call, the CPU time spent on this process's cores (``/proc/stat``)
    less this process's own CPU time: what other processes used, in cores. It then sets torch's
    intra-op threads to ``choose_threads(cores, other)`` and returns the count. A process that starts on an
    idle machine and meets a CPU-bound neighbour halfway drops to the free core at the next call instead
    of collapsing, and takes the second core back when the neighbour ends. Removing a thread follows
    ``choose_threads``; adding one needs ``up_margin`` more free core (a second core at most 20% busy),
    because a thread too many costs far more than one too few (measured here: 5-70x slower, against about 1.5x) and
    our own threads, competing for the cores, depress the load we measure. Call it from the thread that
    runs torch (OpenMP thread counts are per calling thread), every second or so: calls less than
    ``min_window`` seconds apart keep the current count. Does nothing where ``OMP_NUM_THREADS`` is set or
    ``/proc/stat`` is unreadable.
    """

    def __init__(self, min_window: float = 0.5, up_margin: float = 0.3):
        self.min_window = float(min_window)
        self.up_margin = float(up_margin)
        self.cores = available_cores()
        self.enabled = not os.environ.get("OMP_NUM_THREADS", "").strip()
        self.history: list[tuple[float, int]] = []  # (other processes' busy cores, threads chosen)
        self._mark = self._snapshot() if self.enabled else None

    def _snapshot(self) -> tuple[float, float, int] | None:
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            allowed = None
        try:
            times = _cpu_times()
        except (OSError, ValueError):
            return None
        busy = sum(b for cpu, (b, _) in times.items() if allowed is None or cpu in allowed)
        return time.monotonic(), time.process_time(), busy

    def __call__(self) -> int:
        import torch

        current = torch.get_num_threads()
        if not self.enabled or self._mark is None:
            return current
        now = self._snapshot()
        if now is None:
            return current
        elapsed = now[0] - self._mark[0]
        if elapsed < self.min_window:
            return current
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        used = (now[2] - self._mark[2]) / ticks  # CPU seconds on our cores, all processes
        own = now[1] - self._mark[1]
        other = max(0.0, used - own) / elapsed
        self._mark = now
        threads = next_threads(self.cores, current, other, self.up_margin)
        if threads != current:
            torch.set_num_threads(threads)
        self.history.append((round(other, 3), threads))
        return threads
