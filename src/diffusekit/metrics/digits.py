"""A small CNN on 8x8 digits used as a feature extractor for Frechet distance and accuracy.

The classifier plays the role Inception-v3 plays for FID (Heusel et al. 2017), scaled to
sklearn's 8x8 digits: ``digits_fd`` is the Frechet distance between Gaussians fitted to its
penultimate features. Inputs are (B, 1, 8, 8) in [-1, 1] (background -1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distances import frechet_distance

__all__ = [
    "DigitsClassifier",
    "train_digits_classifier",
    "digits_features",
    "digits_fd",
    "class_accuracy",
]


def _check_digits(name: str, x) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a tensor of shape (N, 1, 8, 8), got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"{name} must have shape (N, 1, 8, 8) with values in [-1, 1], got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    return x


def _check_labels(name: str, y, n: int, num_classes: int) -> torch.Tensor:
    if not torch.is_tensor(y):
        y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got shape {tuple(y.shape)}")
    if n > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}], got range [{int(y.min())}, {int(y.max())}]")
    return y.long()


class DigitsClassifier(nn.Module):
    """CNN for (B, 1, 8, 8) digits in [-1, 1].

    conv3x3(1->c) SiLU conv3x3(c->c) SiLU maxpool2 (4x4) conv3x3(c->2c) SiLU
    conv3x3(2c->2c) SiLU maxpool2 (2x2) flatten (8c) Linear(8c->feature_dim) SiLU
    = features (B, feature_dim); dropout; Linear(feature_dim->num_classes) = logits.
    """

    def __init__(self, channels: int = 32, feature_dim: int = 64, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        for name, v in (("channels", channels), ("feature_dim", feature_dim), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.config = {"channels": channels, "feature_dim": feature_dim, "num_classes": num_classes,
                       "dropout": float(dropout)}
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * c, feature_dim), nn.SiLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim)."""
        _check_digits("x", x)
        return self.body(x.to(self.head.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.dropout(self.features(x)))


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1, fill: float = -1.0) -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift]^2,
    filling uncovered pixels with ``fill`` (the background value)."""
    b, _, h, w = x.shape
    k = 2 * max_shift + 1
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    off = torch.randint(0, k, (b, 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(k):
        for dx in range(k):
            sel = (off[:, 0] == dy) & (off[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    return out


def train_digits_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    augment: bool = True,
    batch_size: int = 64,
    lr: float = 2e-3,
    noise_std: float = 0.05,
) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` with Adam and cross-entropy; returns it in eval mode.

    Augmentation (if ``augment``): independent random +-1 pixel shifts (background-filled)
    and additive Gaussian pixel noise of std ``noise_std``, so that features are robust on
    generated samples. The learning rate follows a cosine decay to 0 over all steps.
    Deterministic given ``seed`` (the global torch RNG is left untouched).

    Args: x (N, 1, 8, 8) in [-1, 1]; y (N,) integer labels in [0, 9]; epochs >= 1.
    """
    x = _check_digits("x", x).detach().float()
    y = _check_labels("y", y, x.shape[0], 10)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if x.shape[0] < 1:
        raise ValueError("x must contain at least one image")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = DigitsClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps_per_epoch = -(-x.shape[0] // batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * s / (epochs * steps_per_epoch))).item())
        )
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=gen)
            for s in range(0, x.shape[0], batch_size):
                idx = perm[s : s + batch_size]
                xb, yb = x[idx], y[idx]
                if augment:
                    xb = _random_shift(xb, gen)
                    if noise_std > 0:
                        xb = xb + noise_std * torch.randn(xb.shape, generator=gen)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


@torch.no_grad()
def digits_features(x: torch.Tensor, classifier: DigitsClassifier, *, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate classifier features of digits, in eval mode: (N, 1, 8, 8) -> (N, feature_dim) float32 CPU."""
    x = _check_digits("x", x)
    was_training = classifier.training
    classifier.eval()
    dev = next(classifier.parameters()).device
    try:
        out = [classifier.features(x[s : s + batch_size].to(dev)).float().cpu()
               for s in range(0, x.shape[0], batch_size)]
    finally:
        classifier.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, classifier.head.in_features)


def digits_fd(samples: torch.Tensor, reference: torch.Tensor, *, classifier: DigitsClassifier) -> float:
    """Frechet distance between classifier features of ``samples`` and ``reference``
    (both (N, 1, 8, 8) in [-1, 1], N >= 2); see :func:`frechet_distance`. The value is
    biased upwards for small N, so compare numbers computed with equal sample counts."""
    return frechet_distance(digits_features(samples, classifier), digits_features(reference, classifier))


@torch.no_grad()
def class_accuracy(samples: torch.Tensor, labels: torch.Tensor, *, classifier: DigitsClassifier) -> float:
    """Fraction of ``samples`` (N, 1, 8, 8) whose predicted class (argmax of logits, eval
    mode) equals ``labels`` (N,)."""
    samples = _check_digits("samples", samples)
    labels = _check_labels("labels", labels, samples.shape[0], classifier.head.out_features)
    if samples.shape[0] == 0:
        raise ValueError("samples must contain at least one image")
    was_training = classifier.training
    classifier.eval()
    dev = next(classifier.parameters()).device
    try:
        pred = torch.cat([classifier(samples[s : s + 1024].to(dev)).argmax(1).cpu()
                          for s in range(0, samples.shape[0], 1024)])
    finally:
        classifier.train(was_training)
    return float((pred == labels.cpu()).double().mean())
