"""Evaluation metrics: distribution distances, per-image quality, and digits FD/accuracy."""

from .digits import DigitsClassifier, class_accuracy, digits_fd, digits_features, train_digits_classifier
from .distances import (
    frechet_distance,
    gaussian_frechet_distance,
    gmm_nll,
    mmd_rbf,
    mode_coverage,
    sliced_wasserstein,
)
from .judge import digits_judge, judge_accuracy, judge_predict
from .image import gradient_excess_kurtosis, psnr, ssim

__all__ = [
    "sliced_wasserstein",
    "mmd_rbf",
    "mode_coverage",
    "gmm_nll",
    "frechet_distance",
    "gaussian_frechet_distance",
    "psnr",
    "ssim",
    "gradient_excess_kurtosis",
    "DigitsClassifier",
    "train_digits_classifier",
    "digits_features",
    "digits_fd",
    "class_accuracy",
    "digits_judge",
    "judge_accuracy",
    "judge_predict",
]
