"""Optimal boundary conditions for diffusion-ODE super-resolution (Ma, Yang, Yang, Fu, Liu; ICLR 2024,
arXiv 2305.15357), Monte-Carlo variant.

A conditional diffusion SR model sampled with a deterministic ODE solver (DDIM, eta = 0) is a map
x0 = h(x_T, y) from the boundary value x_T and the (upsampled) LR image y. The paper argues that a good
x_T is largely independent of y, so one shared x~_T is chosen once:

    draw K candidates x_T^k ~ N(0, I);
    score_k = mean_i metric(h(x_T^k, y_i), HR_i)    over a reference set {(y_i, HR_i)}, i = 1 .. N;
    x~_T = x_T^{argmax_k score_k}                    (metric = PSNR here; the paper uses LPIPS);

and reused for every new input (plug-and-play, no training). Each candidate is broadcast over the whole
reference batch; candidates are decoded in chunks of at most ``max_batch`` images per DDIM call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core import Denoiser, grid_uniform
from ..metrics import psnr
from ..samplers import sample_ddim

__all__ = ["obc_grid", "decode_with_boundary", "candidate_score_matrix", "select_boundary_condition",
           "sr_with_boundary"]


def obc_grid(denoiser: Denoiser, ts) -> torch.Tensor:
    """``ts`` as a time grid: an int is a uniform grid of that many steps from t_max to 0."""
    if isinstance(ts, int):
        if ts < 1:
            raise ValueError(f"number of steps must be >= 1; got {ts}")
        return grid_uniform(denoiser.schedule, ts, t_end=0.0)
    return torch.as_tensor(ts, dtype=torch.float64)


def _check_pair(hr: torch.Tensor | None, lr_up: torch.Tensor) -> None:
    if lr_up.dim() != 4:
        raise ValueError(f"lr_up must be (N, C, H, W); got shape {tuple(lr_up.shape)}")
    if lr_up.shape[0] < 1:
        raise ValueError("need at least one image")
    if hr is not None and hr.shape != lr_up.shape:
        raise ValueError(f"ref_hr {tuple(hr.shape)} and ref_lr_up {tuple(lr_up.shape)} must have the same shape")


@torch.no_grad()
def decode_with_boundary(denoiser: Denoiser, x_T: torch.Tensor, lr_up: torch.Tensor, ts) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from per-image boundary values x_T (N, C, H, W), conditioned on
    ``lr=lr_up``; output clamped to [-1, 1]."""
    if x_T.shape != lr_up.shape:
        raise ValueError(f"x_T {tuple(x_T.shape)} and lr_up {tuple(lr_up.shape)} must have the same shape")
    out = sample_ddim(denoiser, x_T.to(lr_up.dtype), obc_grid(denoiser, ts), eta=0.0, cond={"lr": lr_up})
    return out.clamp(-1, 1)


@torch.no_grad()
def candidate_score_matrix(denoiser: Denoiser, candidates: torch.Tensor, hr: torch.Tensor, lr_up: torch.Tensor,
                           *, ts, metric: Callable = psnr, max_batch: int = 2048) -> torch.Tensor:
    """Scores (K, N): entry (k, i) = metric(h(candidates[k], lr_up[i]), hr[i])."""
    _check_pair(hr, lr_up)
    if candidates.dim() != 4 or candidates.shape[0] < 1:
        raise ValueError(f"candidates must be (K, C, H, W) with K >= 1; got shape {tuple(candidates.shape)}")
    if candidates.shape[1:] != lr_up.shape[1:]:
        raise ValueError(f"candidate shape {tuple(candidates.shape[1:])} does not match the images' "
                         f"{tuple(lr_up.shape[1:])}")
    k_total, n = candidates.shape[0], lr_up.shape[0]
    ts = obc_grid(denoiser, ts)
    chunk = max(1, int(max_batch) // n)
    rows = []
    for start in range(0, k_total, chunk):
        cand = candidates[start:start + chunk]
        kc = cand.shape[0]
        x_T = cand[:, None].expand(kc, n, *cand.shape[1:]).reshape(kc * n, *cand.shape[1:])
        lr = lr_up[None].expand(kc, *lr_up.shape).reshape(kc * n, *lr_up.shape[1:])
        ref = hr[None].expand(kc, *hr.shape).reshape(kc * n, *hr.shape[1:])
        out = decode_with_boundary(denoiser, x_T.contiguous(), lr.contiguous(), ts)
        rows.append(metric(out, ref).reshape(kc, n).to(torch.float64))
    return torch.cat(rows)


@torch.no_grad()
def select_boundary_condition(denoiser: Denoiser, candidates: torch.Tensor, ref_hr: torch.Tensor,
                              ref_lr_up: torch.Tensor, *, ts, metric: Callable = psnr,
                              higher_is_better: bool = True, max_batch: int = 2048) -> tuple[int, torch.Tensor]:
    """Monte-Carlo OBC: returns (best_index, scores (K,)), scores[k] = mean over the reference pairs of
    ``metric(DDIM(candidates[k], lr_up_i), hr_i)``; best = argmax (argmin if not ``higher_is_better``)."""
    scores = candidate_score_matrix(denoiser, candidates, ref_hr, ref_lr_up, ts=ts, metric=metric,
                                    max_batch=max_batch).mean(1)
    best = int(torch.argmax(scores) if higher_is_better else torch.argmin(scores))
    return best, scores


@torch.no_grad()
def sr_with_boundary(denoiser: Denoiser, x_T: torch.Tensor, lr_up: torch.Tensor, ts) -> torch.Tensor:
    """Super-resolve every image of ``lr_up`` (N, C, H, W) from the one shared boundary value x_T
    ((C, H, W) or (1, C, H, W)) with deterministic DDIM."""
    _check_pair(None, lr_up)
    if x_T.dim() == 4:
        if x_T.shape[0] != 1:
            raise ValueError(f"x_T must be one boundary value (C, H, W) or (1, C, H, W); got {tuple(x_T.shape)}")
        x_T = x_T[0]
    if x_T.shape != lr_up.shape[1:]:
        raise ValueError(f"x_T shape {tuple(x_T.shape)} does not match the images' {tuple(lr_up.shape[1:])}")
    return decode_with_boundary(denoiser, x_T[None].expand_as(lr_up).contiguous(), lr_up, ts)
