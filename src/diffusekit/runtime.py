"""Process-wide runtime settings for the command line: torch's intra-op thread count, chosen at start-up,
and a governor that re-fits it during long loops; and the device / precision helpers behind ``--device``,
``--precision``, ``--compile`` and ``--channels-last`` (end of the module).

Why this matters: torch parallelises each operator over its OpenMP threads, and every operator ends in a
barrier. The networks here are small (8 x 8 digits at batch 128: thousands of short operators per second),
so a thread that has lost its core to another process holds up the others at every barrier. With one other
CPU-bound process on a 2-core machine, two torch threads on the one free core ran the demo at about 1
optimizer step per second.

Measured on the 2-core machine, demo net (``zoo.recipes.DEMO_NET``), batch 128, medians of side-by-side
runs, steps/s:

    threads, OpenMP wait policy       idle     one CPU-bound process running
    2, default (spin, then sleep)     40-42    7-15  (0.3-9 with other loads too)
    2, OMP_WAIT_POLICY=PASSIVE        20       3-7
    1                                 29-31    29-30

So the rule is: never more threads than free cores, and no wait-policy change. One thread on the free core
loses nothing to a neighbour; PASSIVE does not prevent the collapse (3-7 steps/s) and halves the speed of
two threads on idle cores (every operator's barrier becomes a sleep and a wake-up), so it is not set
(a user's ``OMP_WAIT_POLICY`` is still honoured by OpenMP).

* :func:`configure_threads` (called first by the CLI): threads = the cores this process may run on (CPU
  affinity, and a cgroup CPU quota where one is set) minus the cores other processes keep busy, measured
  from ``/proc/stat`` over 0.1 s, rounded, at least 1. ``OMP_NUM_THREADS`` set by the user wins
  (``make test`` sets 1), and nothing is measured.
* :class:`ThreadGovernor`: long loops (the demo's training) call it every few steps; it drops a thread as
  soon as another process takes a core, and adds one back when a core is free again.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

__all__ = ["DEVICES", "PRECISIONS", "ThreadGovernor", "autocast", "autocast_dtype", "available_cores", "busy_cores",
           "choose_threads", "compile_module", "compile_unavailable_reason", "configure_threads", "grad_scaler",
           "device_network", "next_threads", "prepare_denoiser", "resolve_device", "to_channels_last"]

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


def _allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on (its affinity set), or None where that cannot be read."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None


def busy_cores(window: float = 0.1) -> float | None:
    """Cores of this process's affinity set kept busy by other processes, averaged over ``window`` seconds
    (this process sleeps meanwhile, so it does not count itself). None where ``/proc/stat`` is unreadable."""
    allowed = _allowed_cpus()
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
    """Set torch's intra-op thread count for this process to the free cores; returns the count.

    See the module docstring for the reasoning and figures. Later calls return the first choice.
    ``OMP_NUM_THREADS`` in the environment is respected as given. Torch is imported only where the count
    differs from torch's own default (every core), so ``diffusekit --help`` stays fast.
    """
    global _chosen
    if _chosen is not None:
        return _chosen
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


def _run_delay() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (``/proc/self/task/*/schedstat``)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            total += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


class ThreadGovernor:
    """Re-fits torch's thread count to the cores other processes leave free, for long loops.

    Each call looks at the time since the previous call and measures two things: ``other``, the CPU time
    spent on this process's cores (``/proc/stat``) less this process's own, in cores; and ``wait``, the
    fraction of that time our threads spent runnable but without a core (the scheduler's run delay,
    ``/proc/self/task/*/schedstat``), per thread. Then:

    * ``wait`` above ``max_wait`` (default 0.1) with more than one thread: our threads fight over cores, so
      drop one thread, and wait ``backoff`` seconds (doubling on each repeat, up to 2 minutes) before
      adding one again;
    * otherwise ``next_threads(cores, current, other, up_margin)``: fewer threads as soon as others take
      a core, more only for a core that is nearly free (``up_margin``).

    A thread too many costs far more than one too few (measured here, demo net on 2 cores: two threads
    sharing one free core ran 2-100x slower than one thread; one thread where two fit, 1.4x), so adding is the
    cautious direction; while our threads occupy every core, the others' load we measure is depressed,
    which the run delay makes up for. A process that starts on an idle machine and meets a CPU-bound
    neighbour halfway drops to the free core within a call or two, and takes the second core back when
    the neighbour ends. Call it from the thread that runs torch (OpenMP thread counts are per calling
    thread), about every half second: calls less than ``min_window`` seconds apart keep the current count.
    Does nothing where ``OMP_NUM_THREADS`` is set or ``/proc/stat`` is unreadable.
    """

    def __init__(self, min_window: float = 0.5, up_margin: float = 0.3, max_wait: float = 0.1,
                 backoff: float = 5.0):
        self.min_window = float(min_window)
        self.up_margin = float(up_margin)
        self.max_wait = float(max_wait)
        self.backoff = float(backoff)
        self.cores = available_cores()
        self.enabled = not os.environ.get("OMP_NUM_THREADS", "").strip()
        self.history: list[tuple[float, float, int]] = []  # (others' busy cores, our wait fraction, threads)
        self._no_more_until = 0.0
        self._mark = self._snapshot() if self.enabled else None

    def _snapshot(self) -> tuple[float, float, int, float] | None:
        allowed = _allowed_cpus()
        try:
            times = _cpu_times()
        except (OSError, ValueError):
            return None
        busy = sum(b for cpu, (b, _) in times.items() if allowed is None or cpu in allowed)
        return time.monotonic(), time.process_time(), busy, _run_delay() or 0.0

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
        wait = max(0.0, now[3] - self._mark[3]) / elapsed / current
        self._mark = now
        if current > 1 and wait > self.max_wait:
            threads = min(current - 1, choose_threads(self.cores, other))
            self._no_more_until = now[0] + self.backoff
            self.backoff = min(2 * self.backoff, 120.0)
        else:
            threads = next_threads(self.cores, current, other, self.up_margin)
            if threads > current and now[0] < self._no_more_until:
                threads = current
        if threads != current:
            torch.set_num_threads(threads)
        self.history.append((round(other, 3), round(wait, 3), threads))
        return threads


# ------------------------------------------------------------------------------------ devices and precision
#
# ``diffusekit train`` and ``diffusekit sample`` take ``--device``, ``--precision``, ``--compile`` and
# ``--channels-last``; everything is off by default, and the defaults (auto device on a CPU-only machine,
# fp32, eager, contiguous) are the exact paths the rest of the project is tested on.

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(name: str = "auto"):
    """The ``torch.device`` for ``--device NAME``: ``auto`` is CUDA when available, then MPS, then the CPU.

    Under ``torchrun`` CUDA means this process's GPU, ``cuda:LOCAL_RANK``. Asking for a device torch
    cannot see is a one-line :class:`~diffusekit.errors.UserError`.
    """
    import torch

    from .errors import UserError

    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}; got {name!r}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device cuda: this torch build ({torch.__version__}) sees no CUDA device; "
                            "use --device cpu or --device auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count())
    if name == "mps" and not has_mps:
        raise UserError("--device mps: this torch build sees no Apple MPS device; use --device cpu or --device auto")
    return torch.device(name)


def autocast_dtype(precision: str):
    """The autocast dtype of ``precision`` (None for ``fp32``: no autocast)."""
    import torch

    from .errors import UserError

    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, precision: str):
    """``torch.autocast`` for ``precision`` on ``device`` (a null context for ``fp32``).

    Inside it matrix products and convolutions run in bf16 / fp16 while weights, reductions and the
    sampler's or optimizer's arithmetic stay fp32 (mixed precision, Micikevicius et al. 2018,
    arXiv 1710.03740). bf16 autocast on the CPU is a real path and is what the CPU tests exercise.
    """
    import contextlib

    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device, precision: str):
    """A dynamic loss scaler for fp16 training (None otherwise): the loss is multiplied by S before
    ``backward``, gradients divided by S before the update; a step whose gradients overflow is skipped and
    S halved, and S doubles after 2000 clean steps (arXiv 1710.03740, section 3.2)."""
    import torch

    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def compile_unavailable_reason(device) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` here (None when it can).

    Inductor compiles C++ for the CPU (it needs a C++ compiler: ``$CXX``, ``g++``, ``c++`` or ``clang++``)
    and Triton kernels for CUDA (it needs the ``triton`` package).
    """
    import importlib.util
    import shutil

    import torch

    kind = torch.device(device).type
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if kind == "cuda":
        return None if importlib.util.find_spec("triton") else "torch.compile on CUDA needs the triton package"
    if kind == "cpu":
        candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in candidates):
            return "torch.compile on the CPU needs a C++ compiler (g++, c++ or clang++ on PATH, or $CXX)"
        return None
    return f"torch.compile is not supported on {kind} by this project"


def compile_module(module, device):
    """``torch.compile(module)``, or a one-line UserError saying why it cannot run on ``device`` here.

    The compiled module computes the same function; the first calls are slow (compilation).
    """
    import torch

    from .errors import UserError

    reason = compile_unavailable_reason(device)
    if reason is not None:
        raise UserError(f"--compile: {reason}; run without --compile")
    return torch.compile(module)


def to_channels_last(x):
    """``x`` in channels-last memory format when it is a 4-D tensor (images), else ``x`` unchanged."""
    import torch

    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


_DEVICE_NETWORK_CLASS = None


def device_network(net, device, precision: str = "fp32", *, channels_last: bool = False, home="cpu"):
    """``net`` moved to ``device``, behind a boundary: inputs arrive on ``home`` (the CPU, where the schedules,
    samplers and losses compute), the network runs on ``device`` under :func:`autocast` for ``precision``
    (channels-last inputs when asked) and its output goes back to ``home`` in the input's dtype.

    Only the network needs the accelerator; schedule tables and sampler arithmetic (float64) stay on the
    CPU, so every sampler and loss works unchanged on any device. ``.config`` is the network's own.
    """
    import torch

    global _DEVICE_NETWORK_CLASS
    if _DEVICE_NETWORK_CLASS is None:
        class DeviceNetwork(torch.nn.Module):
            """See :func:`device_network`."""

            def __init__(self, inner, device, precision, channels_last, home):
                super().__init__()
                self.inner = inner
                self.device, self.home = torch.device(device), torch.device(home)
                self.precision, self.channels_last = precision, channels_last

            @property
            def config(self):
                return getattr(self.inner, "config", None)

            def forward(self, x, t, **cond):
                dtype = x.dtype
                x = x.to(self.device)
                if self.channels_last:
                    x = to_channels_last(x)
                cond = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
                with autocast(self.device, self.precision):
                    out = self.inner(x, t.to(self.device), **cond)
                return out.to(device=self.home, dtype=dtype)

        _DEVICE_NETWORK_CLASS = DeviceNetwork
    autocast_dtype(precision)  # checks the name
    device = torch.device(device)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return _DEVICE_NETWORK_CLASS(net, device, precision, channels_last, home)


def prepare_denoiser(denoiser, device, precision: str = "fp32", *, compile: bool = False,
                     channels_last: bool = False):
    """A sampling-ready copy of ``denoiser`` whose network runs on ``device`` under autocast for ``precision``
    (channels-last and ``torch.compile`` when asked), behind :func:`device_network`'s boundary.

    The sampler keeps working on the CPU in x's dtype (fp32 / fp64): only the network sees the device and
    bf16 / fp16, and its output is cast back. A denoiser without a ``.net`` module (e.g. a function
    denoiser) can only run with the defaults (CPU, fp32, eager).
    """
    import copy

    import torch

    from .errors import UserError

    device = torch.device(device)
    net = getattr(denoiser, "net", None)
    if device.type == "cpu" and precision == "fp32" and not compile and not channels_last:
        return denoiser
    if not isinstance(net, torch.nn.Module):
        raise UserError(f"--device/--precision/--compile/--channels-last need a network model; "
                        f"{type(denoiser).__name__} has none; sample it with the defaults")
    prepared = copy.copy(denoiser)  # the caller's denoiser (e.g. a cached zoo model) keeps its network
    boundary = device_network(copy.deepcopy(net), device, precision, channels_last=channels_last)
    if compile:
        boundary.inner = compile_module(boundary.inner, device)
    prepared.net = boundary
    return prepared
