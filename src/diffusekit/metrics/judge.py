"""An independent judge of digit classes: an RBF support-vector machine on raw pixels.

Guidance, PPAP, FIND and DITTO all push samples *up the gradient* of the CNN ``digits_classifier``, so
scoring their samples with that same network rewards adversarial pixel patterns as readily as real digits:
the figure is optimistic by construction. The judge here shares nothing with that network: a different
model family (kernel SVM, Cortes & Vapnik 1995, Machine Learning 20; RBF kernel exp(-gamma ||x - x'||^2)
with scikit-learn's ``gamma="scale"`` = 1 / (D Var[x])), no gradients are ever taken through it, and it is
trained here, deterministically, on the digits train split (test accuracy ~0.99). A sample that fools the
CNN without looking like the digit is unlikely to also land on the right side of the SVM's margin.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .digits import _check_digits, _check_labels

__all__ = ["digits_judge", "judge_accuracy", "judge_predict"]

JUDGE_C = 10.0


@functools.lru_cache(maxsize=1)
def digits_judge():
    """The fitted scikit-learn ``SVC`` (RBF, C = 10, gamma = "scale") on the digits train split (cached)."""
    from sklearn.svm import SVC

    from ..data import load_dataset

    train = load_dataset("digits", "train")
    return SVC(C=JUDGE_C, kernel="rbf", gamma="scale").fit(train.x.flatten(1).double().numpy(), train.y.numpy())


def judge_predict(samples: torch.Tensor) -> torch.Tensor:
    """Judge's class predictions (N,) for digits (N, 1, 8, 8); values are clipped to [-1, 1] first."""
    samples = _check_digits("samples", samples)
    if samples.shape[0] == 0:
        raise ValueError("samples must contain at least one image")
    flat = samples.detach().cpu().clamp(-1, 1).flatten(1).double().numpy()
    return torch.from_numpy(np.asarray(digits_judge().predict(flat), dtype=np.int64))


def judge_accuracy(samples: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``samples`` whose judged class equals ``labels`` (N,)."""
    samples = _check_digits("samples", samples)
    labels = _check_labels("labels", labels, samples.shape[0], 10)
    return float((judge_predict(samples) == labels.cpu()).double().mean())
