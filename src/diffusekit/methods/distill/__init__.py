"""Few-step generation by training: distillation of a many-step teacher into a few-step student (issue 10).

What exists:

* :mod:`.progressive` -- progressive distillation (Salimans & Ho 2022, arXiv 2202.00512): rounds N -> N/2 ->
  ... -> 1 on nested grids, the two-teacher-DDIM-step target x~ in closed form, truncated-SNR weighting
  max(SNR, 1) in x space, student initialised from the teacher, trained by the generic ``Trainer``; and
  ProDiff's variant (Huang et al. 2022, arXiv 2207.06389): one round N -> N/2 on the teacher's grid with an
  L1 loss on x0. Shared primitives: ``ddim_step`` (per-sample times) and ``progressive_target``.

Still to come (not in this module yet): consistency distillation / consistency training and SLAM, BOOT,
rectified flow / reflow and Rectified Diffusion, TAD-SR, PSO, DITTO-2's distilled surrogate, the
``diffusekit distill`` CLI, ``diffusekit bench distill`` and a distilled student in the zoo.
"""

from .progressive import (LOSSES, DistillRound, ProgressiveDistillationLoss, ddim_step, distill_round,
                          prodiff_distill, progressive_distill, progressive_target, truncated_snr_weight)

__all__ = ["LOSSES", "DistillRound", "ProgressiveDistillationLoss", "ddim_step", "distill_round",
           "prodiff_distill", "progressive_distill", "progressive_target", "truncated_snr_weight"]
