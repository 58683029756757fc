"""The source model of the test-time adaptation benchmark: a digits CNN with BatchNorm.

Test-time adaptation methods that work through normalisation statistics (TENT, Wang et al. 2021, arXiv
2006.10726; the open-set filter of Lee et al. 2023, arXiv 2308.06879; PETAL, Brahma & Rai 2023, arXiv
2303.15145) need a source classifier with BatchNorm layers, whose affine parameters (gamma, beta) are what they
adapt and whose running statistics are what the target batch replaces:

    BN(h) = gamma * (h - mu) / sqrt(var + eps) + beta,   (mu, var) = running (source) or batch (target) statistics.

:class:`BNDigitsClassifier` is the zoo's ``digits_bn_classifier`` (all ten classes) and
``digits04_bn_classifier`` (digits 0-4 only, the open-set source). It is trained on *clean* digits with +-1 pixel
shifts only (no noise augmentation), as a source model in the ImageNet-C protocol is: the corruptions are a
genuine shift for it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...metrics.digits import _check_digits, _check_labels, _random_shift

__all__ = ["BNDigitsClassifier", "train_bn_classifier", "bn_affine_parameters"]


class BNDigitsClassifier(nn.Module):
    """CNN with BatchNorm for (B, 1, 8, 8) digits in [-1, 1].

    [conv3x3 BN ReLU] x2 (c) maxpool -> [conv3x3 BN ReLU] x2 (2c) maxpool -> flatten (8c)
    -> Linear(8c, feature_dim) BN1d ReLU = features -> Linear(feature_dim, num_classes) = logits.
    """

    def __init__(self, channels: int = 32, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        for name, v in (("channels", channels), ("feature_dim", feature_dim), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.config = {"channels": channels, "feature_dim": feature_dim, "num_classes": num_classes}
        c = channels

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(1, c), *conv(c, c), nn.MaxPool2d(2),
            *conv(c, 2 * c), *conv(2 * c, 2 * c), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(8 * c, feature_dim, bias=False), nn.BatchNorm1d(feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim)."""
        _check_digits("x", x)
        return self.body(x.to(self.head.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.features(x))


def bn_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters (gamma, beta) of every BatchNorm layer of ``model``, in module order."""
    params = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            params += [m.weight, m.bias]
    return params


def train_bn_classifier(x: torch.Tensor, y: torch.Tensor, *, num_classes: int = 10, epochs: int = 30,
                        seed: int = 0, batch_size: int = 64, lr: float = 2e-3) -> BNDigitsClassifier:
    """Train a :class:`BNDigitsClassifier` on clean digits with Adam, cross-entropy and a cosine learning rate.

    Augmentation: independent random +-1 pixel shifts only. Deterministic given ``seed`` (global RNG untouched).
    Returns the model in eval mode (BatchNorm uses the running source statistics).
    """
    x = _check_digits("x", x).detach().float()
    y = _check_labels("y", y, x.shape[0], num_classes)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = BNDigitsClassifier(num_classes=num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        total = epochs * -(-x.shape[0] // batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * s
                                                                                                     / total)).item()))
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=gen)
            for s in range(0, x.shape[0], batch_size):
                idx = perm[s: s + batch_size]
                if idx.numel() < 2:  # BatchNorm needs two samples
                    continue
                loss = F.cross_entropy(model(_random_shift(x[idx], gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()
