"""TENT: fully test-time adaptation by entropy minimisation (Wang, Shelhamer, Liu, Olshausen, Darrell; ICLR 2021,
arXiv 2006.10726).

The source classifier f_theta is copied; in the copy every BatchNorm layer normalises with the statistics of the
current test batch instead of its running (source) statistics,

    BN(h) = gamma * (h - mu_B) / sqrt(var_B + eps) + beta,   (mu_B, var_B) = mean and biased variance over the batch
                                                              (and the spatial positions) of each channel,

and only the affine parameters (gamma, beta) of those layers are trained, by one Adam step (lr 1e-3) per batch on
the mean Shannon entropy of the predictions,

    L(x_1..B) = (1/B) sum_i H(p_i),   H(p) = -sum_k p_k log p_k,   p_i = softmax(f_theta(x_i)).

Online protocol (the reference ``forward_and_adapt``): the logits returned for a batch are those of the forward
that computes the loss, i.e. before that batch's update. ``episodic=True`` restores the source parameters and a
fresh optimizer before every batch; :meth:`Tent.reset` does it on request. Every other parameter and buffer,
including the BatchNorm running statistics, stays bit-identical.

One departure, at batch size 1 only: a BatchNorm1d layer then sees a single value per channel, whose batch
variance is undefined (PyTorch refuses it), so such a layer keeps the source running statistics for that batch;
BatchNorm2d layers still normalise each image by its own spatial statistics, which is what makes TENT degrade at
batch size 1.

:class:`EntropyAdapter` is the shared machinery (copy, BatchNorm set-up, optimizer, reset, one gradient step on any
loss); :class:`Tent` is the method. The open-set filter (:mod:`.open_set`) wraps any :class:`EntropyAdapter`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .source import bn_affine_parameters

__all__ = ["BatchStatisticsNorm", "use_batch_statistics", "softmax_entropy", "EntropyAdapter", "Tent", "build",
           "build_filtered", "TENT_DEFAULTS"]

#: Recommended settings (the reference's CIFAR-10-C config: Adam lr 1e-3, betas (0.9, 0.999), one step per batch).
TENT_DEFAULTS = {"lr": 1e-3, "steps": 1, "episodic": False}


class BatchStatisticsNorm(nn.Module):
    """A BatchNorm layer that normalises with the current batch's statistics (TENT's test-time normalisation).

    y = gamma * (h - mu_B) / sqrt(var_B + eps) + beta with (mu_B, var_B) over every axis but the channel axis; the
    wrapped layer's (gamma, beta) are used (and trained) and its running statistics are neither used nor updated,
    except when the batch holds one value per channel (BatchNorm1d at batch size 1), where the batch variance is
    undefined and the running statistics normalise instead.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.bn = bn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if h.numel() // h.shape[1] > 1:
            return F.batch_norm(h, None, None, bn.weight, bn.bias, training=True, momentum=0.0, eps=bn.eps)
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, momentum=0.0,
                            eps=bn.eps)


def use_batch_statistics(model: nn.Module) -> nn.Module:
    """Replace (in place) every BatchNorm layer of ``model`` by a :class:`BatchStatisticsNorm` around it; returns
    ``model``. Raises ValueError when the model has no BatchNorm layer (TENT needs one)."""
    found = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, BatchStatisticsNorm(child))
                found = True
    if not found:
        raise ValueError("the classifier has no BatchNorm layer; TENT adapts BatchNorm affine parameters")
    return model


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) = -sum_k p_k log p_k per row of ``logits`` (B, K) -> (B,)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class EntropyAdapter:
    """The machinery of entropy-based test-time adaptation (TENT and its wrappers).

    Holds ``model``, a copy of the source classifier with batch-statistics BatchNorm whose BN affine parameters
    (and nothing else) require gradients, an Adam optimizer over them, and a snapshot of the source state for
    :meth:`reset`. :meth:`adapt_step` runs one forward, computes any loss of the logits, and takes one step;
    :meth:`source_logits` is the frozen source copy under the same normalisation (the "original model" of the
    open-set filter).
    """

    name = "entropy"

    def __init__(self, classifier: nn.Module, *, lr: float = TENT_DEFAULTS["lr"], steps: int = TENT_DEFAULTS["steps"],
                 episodic: bool = TENT_DEFAULTS["episodic"]):
        if not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"lr must be a number >= 0, got {lr!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.lr, self.steps, self.episodic = float(lr), steps, bool(episodic)
        model = copy.deepcopy(classifier).eval()
        self.params = bn_affine_parameters(model)
        if not self.params:
            raise ValueError("the classifier has no affine BatchNorm layer; TENT adapts BatchNorm affine parameters")
        use_batch_statistics(model)
        model.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self.model = model
        self.source = copy.deepcopy(model).requires_grad_(False)
        self._source_state = copy.deepcopy(model.state_dict())
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.params, lr=self.lr, betas=(0.9, 0.999))

    def reset(self) -> None:
        """Back to the source parameters and a fresh optimizer (no Adam moments)."""
        self.model.load_state_dict(self._source_state)
        self.optimizer = self._new_optimizer()

    @torch.no_grad()
    def source_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the unadapted source copy, with the same batch-statistics normalisation."""
        return self.source(x)

    def adapt_step(self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``self.steps`` times: logits = model(x), loss_fn(logits).backward(), one optimizer step; returns the
        (detached) logits of the first forward (the prediction of the online protocol)."""
        if self.episodic:
            self.reset()
        first = None
        with torch.enable_grad():
            for _ in range(self.steps):
                logits = self.model(x)
                loss = loss_fn(logits)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if first is None:
                    first = logits.detach()
        return first


class Tent(EntropyAdapter):
    """TENT (arXiv 2006.10726): one Adam step per batch on the mean softmax entropy of the BN-adapted model.

    ``predict(x)`` returns the logits of the forward used for the update (see the module docstring).
    """

    name = "tent"

    @staticmethod
    def loss(logits: torch.Tensor) -> torch.Tensor:
        """Mean entropy (1/B) sum_i H(softmax(logits_i)) (TENT eq. 1)."""
        return softmax_entropy(logits).mean()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt_step(x, self.loss)


def build(classifier: nn.Module, *, quick: bool = False, seed: int = 0, **overrides) -> Tent:
    """Factory of the TTA method contract: :class:`Tent` with :data:`TENT_DEFAULTS` (``overrides``: lr, steps,
    episodic). ``quick`` and ``seed`` change nothing (TENT has no preparation and no randomness)."""
    del quick, seed
    return Tent(classifier, **{**TENT_DEFAULTS, **overrides})


def build_filtered(classifier: nn.Module, *, quick: bool = False, seed: int = 0, alpha: float | None = None,
                   **overrides):
    """Factory of "tent+filter": TENT wrapped in the open-set wisdom-of-crowds filter (:mod:`.open_set`,
    arXiv 2308.06879) with its recommended alpha."""
    from .open_set import OPEN_SET_DEFAULTS, OpenSetFilter

    base = build(classifier, quick=quick, seed=seed, **overrides)
    return OpenSetFilter(base, alpha=OPEN_SET_DEFAULTS["alpha"] if alpha is None else alpha)
