"""ProDiff: progressive fast diffusion for text-to-speech (Huang et al., ACM MM 2022, arXiv 2207.06389).

``model``: FastSpeech-style phoneme encoder + duration predictor + length regulator conditioning an x0-predicting
WaveNet mel denoiser; ``training``: the teacher's masked-L1 x0 loss on its 4-step grid and the knowledge-distillation
round N -> N/2 on the two-teacher-DDIM-step target (reusing ``methods.distill.progressive.progressive_target``);
``synthesis``: sampling from text, Griffin-Lim, mel L1, f0 error (cents), real-time factor. Data plumbing lives in
``diffusekit.domains.audio.tts``.

Deviations from the paper, at CPU scale: 64 mels at 16 kHz and Griffin-Lim instead of 80 mels and HiFi-GAN; a small
encoder without the pitch/energy variance adaptor (voice, rate and pitch settings are embedded instead); every model
samples with deterministic DDIM on its grid (ProDiff samples the student ancestrally); ProDiff's code calls the
student at the time index shifted by one student step, here the student is called at the step's own start time t.
"""

from .model import DurationPredictor, PhonemeEncoder, ProDiffTTS, WaveNetDenoiser, regulated_condition
from .synthesis import SAMPLERS, f0_cents_error, mel_l1, real_time_factor, synthesize, vocode
from .training import (PREDICTIONS, TIME_SAMPLING, DistilledTTS, ProDiffDistillationLoss, ProDiffTeacherLoss,
                       crop_frames, distill_student, masked_l1, prodiff_denoiser, train_teacher)

__all__ = ["DistilledTTS", "DurationPredictor", "PhonemeEncoder", "ProDiffDistillationLoss", "ProDiffTTS",
           "ProDiffTeacherLoss", "PREDICTIONS", "SAMPLERS", "TIME_SAMPLING", "WaveNetDenoiser", "crop_frames",
           "distill_student", "f0_cents_error", "masked_l1", "mel_l1", "prodiff_denoiser", "real_time_factor",
           "regulated_condition", "synthesize", "train_teacher", "vocode"]
