"""Open-set test-time adaptation by the "wisdom of crowds" filter (Lee, Das, Choo, Choi; ICCV 2023, arXiv 2308.06879).

Entropy minimisation on a stream with unknown-class samples (or any samples the model gets wrong) makes those
samples confidently wrong and drags the whole model with them. Lee et al. observe that, while adapting, the
confidence of most ("the crowd") samples in their original prediction rises; a sample whose confidence in that
class *drops* under the adapted model is likely harmful. The filter therefore keeps, per batch,

    S = { i : p_theta(c_i | x_i) >= p_0(c_i | x_i) },   c_i = argmax_k p_0(k | x_i),

where p_0 is the frozen original (source) model and p_theta the adapted one, and minimises

    L = (1/|S|) sum_{i in S} H(p_theta(. | x_i)) - alpha * H( (1/B) sum_{i=1..B} p_theta(. | x_i) ),

the entropy of the kept samples minus alpha times the entropy of the batch-mean prediction (a diversity term that
stops collapse onto one class). The marginal term runs over the whole batch, as in the public reimplementation
(gaozhengqing/UniEnt, ``cifar/ostta.py``; no official code), where p_0 is the source copy under the same
batch-statistics normalisation as the adapted model. An empty S contributes 0 (only the diversity term acts),
where the reimplementation would take the mean of nothing (NaN).

:class:`OpenSetFilter` wraps any entropy-based adapter that offers ``adapt_step(x, loss_fn)`` and
``source_logits(x)`` (:class:`~diffusekit.methods.tta.tent.EntropyAdapter` and its subclasses: TENT here, and in
principle any method that minimises an entropy of the same logits).
"""

from __future__ import annotations

import torch

from .tent import softmax_entropy

__all__ = ["OpenSetFilter", "crowd_selection", "filtered_entropy_loss", "OPEN_SET_DEFAULTS"]

#: alpha in {1, 0.5, 0.2, 0.1} in the paper's sweeps; 0.5 is the reimplementation's CIFAR default.
OPEN_SET_DEFAULTS = {"alpha": 0.5}


def crowd_selection(adapted_logits: torch.Tensor, source_logits: torch.Tensor) -> torch.Tensor:
    """Boolean mask (B,) of the kept samples: p_adapt(c | x) >= p_0(c | x), c = argmax p_0 (arXiv 2308.06879)."""
    if adapted_logits.shape != source_logits.shape or adapted_logits.ndim != 2:
        raise ValueError(f"adapted and source logits must both be (B, K), got {tuple(adapted_logits.shape)} and "
                         f"{tuple(source_logits.shape)}")
    p0 = source_logits.softmax(1)
    c = p0.argmax(1, keepdim=True)
    return adapted_logits.softmax(1).gather(1, c).squeeze(1) >= p0.gather(1, c).squeeze(1)


def filtered_entropy_loss(adapted_logits: torch.Tensor, source_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """L = mean_{i in S} H(p_theta(.|x_i)) - alpha * H(mean_i p_theta(.|x_i)), S = :func:`crowd_selection`."""
    keep = crowd_selection(adapted_logits.detach(), source_logits)
    entropy = softmax_entropy(adapted_logits)
    kept = entropy[keep].mean() if bool(keep.any()) else entropy.sum() * 0.0
    mean_p = adapted_logits.softmax(1).mean(0)
    marginal = -(mean_p * torch.log(mean_p.clamp_min(1e-30))).sum()
    return kept - alpha * marginal


class OpenSetFilter:
    """The wisdom-of-crowds filter around an entropy-based adapter (see the module docstring).

    ``predict(x)``: p_0 from ``base.source_logits(x)``, then one ``base.adapt_step`` on
    :func:`filtered_entropy_loss`; returns the logits of that step's forward. ``last_kept`` holds the mask of the
    latest batch. ``reset()`` resets the base adapter.
    """

    def __init__(self, base, *, alpha: float = OPEN_SET_DEFAULTS["alpha"]):
        for attr in ("adapt_step", "source_logits", "reset"):
            if not callable(getattr(base, attr, None)):
                raise ValueError(f"the open-set filter wraps an entropy-based adapter with adapt_step, source_logits "
                                 f"and reset; {type(base).__name__} has no {attr}()")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        self.base, self.alpha = base, float(alpha)
        self.name = f"{getattr(base, 'name', type(base).__name__.lower())}+filter"
        self.last_kept: torch.Tensor | None = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        source = self.base.source_logits(x)

        def loss(logits):
            self.last_kept = crowd_selection(logits.detach(), source)
            return filtered_entropy_loss(logits, source, self.alpha)

        return self.base.adapt_step(x, loss)

    def reset(self) -> None:
        self.base.reset()
        self.last_kept = None
