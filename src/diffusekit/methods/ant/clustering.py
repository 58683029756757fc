"""Interval clustering of diffusion timesteps into k tasks (ANT, Go et al. 2023, arXiv 2306.00354, Sec. 4.1).

ANT treats each denoising timestep as a task and groups the timesteps 0..n-1 into k *contiguous* intervals that
are then trained as k tasks. An interval [l, r] is scored against its centre c(l, r) = round((l + r + 1) / 2)
(c = l for a single timestep; the official SNR clustering rounds half to even, its TAS clustering takes the
floor) by a centre-referenced cost

    cost(l, r) = sum_{i=l..r} M[c(l, r), i],

with M[c, i] = |v_i - v_c| for per-timestep values v (the paper's SNR cost; we recommend log-SNR, see below) or
M[c, i] = -TAS[c, i] for a task-affinity matrix (the task-affinity cost). The clustering minimises the summed
cost by the dynamic program

    D[i, 0] = cost(0, i),   D[i, j] = min_{j-1 <= L < i} D[L, j-1] + cost(L+1, i),

O(k n^2), with backtracking of the argmin L to recover the intervals.

Pitfall: on raw SNR (which spans ~10^4 over a linear-beta schedule) the |v_i - v_c| cost is dominated by the
first few timesteps, so the DP spends most intervals there (linear betas, k = 5: [0], [1], [2-6], [7-21],
[22-999]; with floor centres [0], [1], [2-4], [5-17], [18-999]); on log-SNR the intervals are balanced
([0-152], [153-392], [393-622], [623-821], [822-999]). The released ANT training scripts use uniform intervals.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CENTRE_ROUNDINGS", "METHODS", "centre_referenced_cost", "cluster_timesteps", "interval_centres",
           "interval_cost", "log_snr_values", "snr_cost", "snr_values", "tas_cost", "uniform_intervals"]

METHODS = ("dp", "uniform")


CENTRE_ROUNDINGS = ("half_even", "floor")


def interval_centres(n: int, rounding: str = "half_even") -> np.ndarray:
    """(n, n) int array of interval centres c(l, r) = round((l + r + 1) / 2) for r >= l (``rounding``:
    ``"half_even"`` like Python's round, or ``"floor"``), with c(l, l) = l; entries below the diagonal are 0."""
    if rounding not in CENTRE_ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(CENTRE_ROUNDINGS)}, got {rounding!r}")
    lo, hi = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    if rounding == "floor":
        centre = (lo + hi + 1) // 2
    else:
        centre = np.round((lo + hi + 1) / 2.0).astype(np.int64)  # numpy rounds half to even, like Python
    centre = np.where(lo == hi, lo, centre)
    return np.where(hi >= lo, centre, 0)


def centre_referenced_cost(pairwise, rounding: str = "half_even") -> np.ndarray:
    """Cost matrix C[l, r] = sum_{i=l..r} M[c(l, r), i] (r >= l; +inf below the diagonal) of a pairwise matrix
    M (n, n), c(l, r) the interval centre (``interval_centres(n, rounding)``). Exact for any M, via row prefix
    sums: with P[c, i] = sum_{m<=i} M[c, m], C[l, r] = P[c, r] - P[c, l-1]. O(n^2) time and memory."""
    m = np.asarray(pairwise, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"pairwise must be a non-empty square matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("pairwise must be finite")
    n = m.shape[0]
    prefix = np.concatenate([np.zeros((n, 1)), np.cumsum(m, axis=1)], axis=1)  # (n, n + 1): P[c, i+1]
    centre = interval_centres(n, rounding)
    lo, hi = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    cost = prefix[centre, hi + 1] - prefix[centre, lo]
    return np.where(hi >= lo, cost, np.inf)


def snr_cost(values, rounding: str = "half_even") -> np.ndarray:
    """SNR cost matrix of ANT: C[l, r] = sum_{i=l..r} |v_i - v_c(l, r)| for per-timestep values v (n,). Pass
    log-SNR (``log_snr_values``) for balanced intervals, raw SNR (``snr_values``) to see the pitfall."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("values must be a non-empty finite 1-D array")
    return centre_referenced_cost(np.abs(v[None, :] - v[:, None]), rounding)


def tas_cost(tas, rounding: str = "floor") -> np.ndarray:
    """Task-affinity cost matrix of ANT: C[l, r] = -sum_{i=l..r} TAS[c(l, r), i] for a task-affinity matrix
    TAS (n, n) (``task_affinity``): intervals whose members' gradients agree with the centre's are cheap
    (a single timestep costs -TAS[i, i] = -1)."""
    return centre_referenced_cost(-np.asarray(tas, dtype=np.float64), rounding)


def snr_values(schedule, timesteps=None) -> np.ndarray:
    """SNR(t) = alpha_t^2 / sigma_t^2 at the integer timesteps of a discrete schedule (default: all)."""
    n = schedule.timesteps if timesteps is None else torch.as_tensor(timesteps)
    return schedule.snr(schedule.t_of_timestep(n)).numpy()


def log_snr_values(schedule, timesteps=None) -> np.ndarray:
    """log SNR(t) = 2 lambda_t at the integer timesteps of a discrete schedule (default: all)."""
    n = schedule.timesteps if timesteps is None else torch.as_tensor(timesteps)
    return (2.0 * schedule.lam(schedule.t_of_timestep(n))).numpy()


def uniform_intervals(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous intervals of (nearly) equal length covering 0..n-1: [floor(j n / k), floor((j+1) n / k) - 1]."""
    _check_k(n, k)
    edges = [(j * n) // k for j in range(k + 1)]
    return [(edges[j], edges[j + 1] - 1) for j in range(k)]


def interval_cost(cost: np.ndarray, intervals) -> float:
    """Summed cost sum_j C[l_j, r_j] of a list of inclusive intervals."""
    return float(sum(cost[lo, hi] for lo, hi in intervals))


def _check_k(n: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k (the number of intervals) must be an int in [1, {n}], got {k!r}")


def cluster_timesteps(cost_or_values, k: int, method: str = "dp") -> list[tuple[int, int]]:
    """k contiguous intervals [(l_0, r_0), ..., (l_{k-1}, r_{k-1})] (inclusive, l_0 = 0, r_{k-1} = n - 1,
    l_{j+1} = r_j + 1) of the timesteps 0..n-1 (ANT interval clustering, arXiv 2306.00354, Sec. 4.1).

    ``cost_or_values``: an (n, n) cost matrix C[l, r] (``snr_cost``, ``tas_cost``), or an (n,) vector of
    per-timestep values, clustered with ``snr_cost`` (pass log-SNR). ``method="dp"``: the exact minimiser of
    sum_j C[l_j, r_j] by the dynamic program D[i, j] = min_L D[L, j-1] + C[L+1, i] (O(k n^2); ties go to the
    smallest L); ``"uniform"``: ``uniform_intervals`` (the costs are then unused).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    arr = np.asarray(cost_or_values, dtype=np.float64)
    if arr.ndim == 1:
        cost = snr_cost(arr) if method == "dp" else None
        n = arr.shape[0]
    elif arr.ndim == 2 and arr.shape[0] == arr.shape[1] and arr.shape[0] > 0:
        cost, n = arr, arr.shape[0]
    else:
        raise ValueError(f"cost_or_values must be an (n,) vector or an (n, n) cost matrix, got shape {arr.shape}")
    _check_k(n, k)
    if method == "uniform":
        return uniform_intervals(n, k)
    upper = np.triu(np.ones((n, n), dtype=bool))
    if np.isnan(cost).any() or not np.all(np.isfinite(cost[upper])):
        raise ValueError("the cost matrix must be finite on and above its diagonal")
    # D[i, j]: best cost of covering 0..i with j + 1 intervals; back[i, j]: the end L of interval j's predecessor
    dp = np.full((n, k), np.inf)
    back = np.zeros((n, k), dtype=np.int64)
    dp[:, 0] = cost[0, :]
    ends = np.arange(n)
    for j in range(1, k):
        # cand[L, i] = D[L, j-1] + C[L+1, i] for L < i (C is +inf where L + 1 > i)
        cand = dp[:-1, j - 1][:, None] + np.where(ends[None, :] >= ends[1:, None], cost[1:, :], np.inf)
        best = np.argmin(cand, axis=0)
        dp[1:, j] = cand[best[1:], ends[1:]]
        back[:, j] = best
    intervals = []
    hi = n - 1
    for j in range(k - 1, 0, -1):
        lo_prev = int(back[hi, j])
        intervals.append((lo_prev + 1, hi))
        hi = lo_prev
    intervals.append((0, hi))
    return intervals[::-1]
