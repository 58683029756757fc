"""Few-step generation by training: distillation of a many-step teacher into a few-step student (issue 10).

* :mod:`.progressive` -- progressive distillation (Salimans & Ho 2022, arXiv 2202.00512), rounds N -> N/2 ->
  ... -> 1 with the two-teacher-DDIM-step target and truncated-SNR weighting; ProDiff's variant (Huang et al.
  2022, arXiv 2207.06389): one round N -> N/2 with an L1 loss on x0.
* :mod:`.consistency` -- consistency distillation and training (Song et al. 2023, arXiv 2303.01469):
  ``ConsistencyDenoiser`` (exact boundary), Heun/DDIM teacher step, EMA target, N(k) curriculum, multistep
  sampling.
* :mod:`.slam` -- SLAM (Xu et al. 2024, arXiv 2404.13903): consistency distillation on sub-path linear
  interpolations with a gamma embedding (``GammaConditionedNet``, zero-initialised, zoo weights unchanged).
* :mod:`.boot` -- BOOT (Gu et al. 2023, arXiv 2306.05544): data-free bootstrapped distillation of a one-step
  generator on the signal ODE.
* :mod:`.rectified` -- rectified flow / reflow and its k-step distillation (Liu et al. 2022, arXiv 2209.03003)
  and Rectified Diffusion (Wang et al. 2024, arXiv 2410.07303), both on unconditional or class-conditional
  teacher pairs; straightness and excess length.
* :mod:`.tadsr` -- TAD-SR (He et al. 2024, arXiv 2408.07476): a one-step super-resolution student of the
  ResShift teacher with high-frequency-weighted score distillation and a time-aware discriminator.
* :mod:`.pso` -- PSO (Miao et al. 2024, arXiv 2410.03190): pairwise sample optimisation of a few-step student
  toward a target set, with naive diffusion-loss fine-tuning as the baseline.
* :mod:`.checkpoint` -- student checkpoints with their native sampling (``diffusekit distill`` writes them,
  ``diffusekit sample`` runs them at their own step count); :mod:`.samplers` registers the ``consistency``
  (multistep) and ``one_step`` samplers when imported.

DITTO-2's distilled surrogate lives in ``methods.ditto.ditto2(student=...)``. Figures: ``docs/methods.md``,
``docs/benchmarks.md`` (``bench distill``, ``bench tadsr``, ``bench pso``, ``bench ditto2``).
"""

from .boot import BootGenerator, BootLoss, boot_distill
from .consistency import (ConsistencyDenoiser, ConsistencyDistillationLoss, ConsistencyTrainingLoss,
                          consistency_distill, consistency_grid, consistency_sample, consistency_train, ct_mu,
                          ct_num_points, teacher_step)
from .progressive import (LOSSES, DistillRound, ProgressiveDistillationLoss, ddim_step, distill_round,
                          prodiff_distill, progressive_distill, progressive_target, truncated_snr_weight)
from .pso import NaiveFinetuneLoss, PairwiseSampleOptimizationLoss, naive_finetune, pso_finetune
from .rectified import (RD_LOSSES, RectifiedDiffusionLoss, RectifiedResult, ReflowKStepLoss, ReflowLoss,
                        excess_length, ode_trajectory, rectified_diffusion, reflow, reflow_distill_k_step,
                        straightness, teacher_pairs)
from .slam import GammaConditionedNet, SlamDenoiser, SlamDistillationLoss, slam_distill
from .tadsr import TimeAwareDiscriminator, tadsr_distill, tadsr_sample

__all__ = ["RD_LOSSES", "RectifiedDiffusionLoss", "RectifiedResult", "ReflowLoss", "ReflowKStepLoss",
           "excess_length", "ode_trajectory", "rectified_diffusion", "reflow", "reflow_distill_k_step",
           "straightness", "teacher_pairs", "ConsistencyDenoiser", "ConsistencyDistillationLoss",
           "ConsistencyTrainingLoss", "consistency_distill", "consistency_grid", "consistency_sample",
           "consistency_train", "ct_mu", "ct_num_points", "teacher_step", "LOSSES", "DistillRound",
           "ProgressiveDistillationLoss", "ddim_step", "distill_round", "prodiff_distill", "progressive_distill",
           "progressive_target", "truncated_snr_weight", "GammaConditionedNet", "SlamDenoiser",
           "SlamDistillationLoss", "slam_distill", "BootGenerator", "BootLoss", "boot_distill",
           "TimeAwareDiscriminator", "tadsr_distill", "tadsr_sample", "PairwiseSampleOptimizationLoss",
           "NaiveFinetuneLoss", "pso_finetune", "naive_finetune"]
