"""Few-step generation by training: distillation of a many-step teacher into a few-step student (issue 10).

What exists:

* :mod:`.progressive` -- progressive distillation (Salimans & Ho 2022, arXiv 2202.00512): rounds N -> N/2 ->
  ... -> 1 on nested grids, the two-teacher-DDIM-step target x~ in closed form, truncated-SNR weighting
  max(SNR, 1) in x space, student initialised from the teacher, trained by the generic ``Trainer``; and
  ProDiff's variant (Huang et al. 2022, arXiv 2207.06389): one round N -> N/2 on the teacher's grid with an
  L1 loss on x0. Shared primitives: ``ddim_step`` (per-sample times) and ``progressive_target``.
* :mod:`.consistency` -- consistency distillation and consistency training (Song et al. 2023, arXiv
  2303.01469): ``ConsistencyDenoiser`` (f = c_skip x~ + c_out F in the VE noise level s = sigma/alpha of any
  schedule, exact boundary f(x~, s_min) = x~, a Denoiser), ``teacher_step`` (Heun / DDIM, per-sample times),
  ``consistency_grid`` (Karras, rho = 7), ``ConsistencyDistillationLoss`` / ``consistency_distill`` (EMA target,
  L2 or pseudo-Huber, student initialised from the teacher), ``ConsistencyTrainingLoss`` /
  ``consistency_train`` (N(k), mu(k) curriculum), ``consistency_sample`` (multistep, Alg. 1).
* :mod:`.rectified` -- rectified flow / reflow (Liu et al. 2022, arXiv 2209.03003) and Rectified Diffusion
  (Wang et al. 2024): ``teacher_pairs`` (deterministic DDIM (x_T, x_0)), ``ReflowLoss`` / ``reflow`` (flow
  schedule, velocity target x_T - x_0; student from a flow teacher or a fresh net), ``RectifiedDiffusionLoss`` /
  ``rectified_diffusion`` (the teacher's own schedule and prediction type with the paired noise; mse or
  pseudo-Huber), ``straightness`` (Liu et al.'s S, normalised), ``excess_length`` (speed-independent
  curvature), ``ode_trajectory``.

Still to come: SLAM (needs a network with a gamma input), BOOT, k-step distillation of a reflow model, TAD-SR,
PSO, DITTO-2's distilled surrogate, the ``diffusekit distill`` CLI, ``diffusekit bench distill`` and a distilled
student in the zoo.
"""

from .consistency import (ConsistencyDenoiser, ConsistencyDistillationLoss, ConsistencyTrainingLoss,
                          consistency_distill, consistency_grid, consistency_sample, consistency_train, ct_mu,
                          ct_num_points, teacher_step)
from .rectified import (RD_LOSSES, RectifiedDiffusionLoss, RectifiedResult, ReflowLoss, excess_length,
                        ode_trajectory, rectified_diffusion, reflow, straightness, teacher_pairs)
from .progressive import (LOSSES, DistillRound, ProgressiveDistillationLoss, ddim_step, distill_round,
                          prodiff_distill, progressive_distill, progressive_target, truncated_snr_weight)

__all__ = ["RD_LOSSES", "RectifiedDiffusionLoss", "RectifiedResult", "ReflowLoss", "excess_length",
           "ode_trajectory", "rectified_diffusion", "reflow", "straightness", "teacher_pairs",
           "ConsistencyDenoiser", "ConsistencyDistillationLoss", "ConsistencyTrainingLoss", "consistency_distill",
           "consistency_grid", "consistency_sample", "consistency_train", "ct_mu", "ct_num_points", "teacher_step",
           "LOSSES", "DistillRound", "ProgressiveDistillationLoss", "ddim_step", "distill_round",
           "prodiff_distill", "progressive_distill", "progressive_target", "truncated_snr_weight"]
