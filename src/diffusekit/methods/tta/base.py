"""The shared harness of test-time adaptation: the adapter contract, the metrics and the online stream loop.

Test-time adaptation (TTA) sees the target data once, as a stream of unlabelled batches, and must predict each
batch when it arrives; an adapter may update itself on that batch (TENT, PETAL, the open-set filter) or leave
every weight untouched (DDA, SDA's second stage). The protocol is the online one of TENT (Wang et al. 2021,
arXiv 2006.10726): predictions for batch b use what was learned from batches 1..b, and labels are used only for
scoring.

An adapter is any object with

    predict(x: Tensor (B, C, H, W)) -> logits (B, K)   # may update the adapter's state on this batch
    reset() -> None                                    # back to the source state (episodic TTA, new streams)

Metrics per batch, on the samples whose label is known (label >= 0; open-set unknowns carry label -1):

    error = mean[argmax p != y],   Brier = mean sum_k (p_k - 1[k = y])^2,   NLL = mean -log p_y,

and, for open-set streams, the rejection AUROC of the maximum softmax probability (unknowns should score lower).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

__all__ = ["TestTimeAdapter", "SourceModel", "classification_metrics", "rejection_auroc", "StreamResult",
           "run_stream"]


@runtime_checkable
class TestTimeAdapter(Protocol):
    """The contract every TTA method implements (see the module docstring)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor: ...

    def reset(self) -> None: ...


class SourceModel:
    """The no-adaptation baseline: the source classifier in eval mode (running BatchNorm statistics)."""

    name = "source"

    def __init__(self, classifier: torch.nn.Module):
        self.classifier = classifier.eval()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def reset(self) -> None:
        pass


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Error, Brier score and NLL of ``logits`` (B, K) on the samples with ``labels`` >= 0, with their count.

    Brier = mean_i sum_k (p_ik - 1[k = y_i])^2 (the multi-class score PETAL reports, in [0, 2]);
    NLL = mean_i -log p_{i, y_i}. Returns NaNs when no sample is labelled.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, K) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    known = labels >= 0
    n = int(known.sum())
    if n == 0:
        return {"error": float("nan"), "brier": float("nan"), "nll": float("nan"), "count": 0}
    logp = F.log_softmax(logits[known].double(), dim=1)
    y = labels[known].long()
    p = logp.exp()
    onehot = F.one_hot(y, logits.shape[1]).double()
    return {"error": float((logp.argmax(1) != y).double().mean()),
            "brier": float(((p - onehot) ** 2).sum(1).mean()),
            "nll": float(-logp.gather(1, y[:, None]).mean()),
            "count": n}


def rejection_auroc(scores: torch.Tensor, is_unknown: torch.Tensor) -> float:
    """AUROC of telling unknowns from knowns by a low ``score`` (e.g. max softmax probability):
    P(score_unknown < score_known) + P(tie)/2, by the Mann-Whitney statistic. NaN without both groups."""
    unknown, known = scores[is_unknown].double(), scores[~is_unknown].double()
    if unknown.numel() == 0 or known.numel() == 0:
        return float("nan")
    less = (unknown[:, None] < known[None, :]).double().mean()
    ties = (unknown[:, None] == known[None, :]).double().mean()
    return float(less + 0.5 * ties)


@dataclass
class StreamResult:
    """Per-batch metrics of one pass over a stream, and the pooled totals (weighted by labelled samples)."""

    batches: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0

    def totals(self) -> dict:
        """Pooled error / Brier / NLL over every labelled sample, seconds per image and, for open-set streams,
        the rejection AUROC over all batches."""
        count = sum(b["count"] for b in self.batches)
        out = {"images": self.images, "seconds_per_image": self.seconds / max(1, self.images)}
        for key in ("error", "brier", "nll"):
            out[key] = (sum(b[key] * b["count"] for b in self.batches if b["count"]) / count) if count else float("nan")
        scores = [b["_scores"] for b in self.batches]
        unknown = [b["_unknown"] for b in self.batches]
        if any(u.any() for u in unknown):
            out["rejection_auroc"] = rejection_auroc(torch.cat(scores), torch.cat(unknown))
            out["unknown_fraction"] = float(torch.cat(unknown).double().mean())
        return out

    def to_json(self) -> dict:
        """Totals plus the per-batch rows, without the private score tensors."""
        rows = [{k: v for k, v in b.items() if not k.startswith("_")} for b in self.batches]
        return {**self.totals(), "batches": rows}


def run_stream(adapter: TestTimeAdapter, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
               progress=None) -> StreamResult:
    """Feed ``batches`` of (x, labels) to ``adapter.predict`` in order, scoring each prediction on arrival.

    ``progress``: an optional callable ``progress(batch_index, running_error)`` (the CLI's bar) called after each
    batch. Seconds are the adapter's own time (prediction plus any update), summed over the stream.
    """
    result = StreamResult()
    wrong = seen = 0
    for i, (x, labels) in enumerate(batches):
        t0 = time.perf_counter()
        logits = adapter.predict(x)
        result.seconds += time.perf_counter() - t0
        logits = logits.detach()
        row = classification_metrics(logits, labels)
        row["index"] = i
        row["size"] = int(x.shape[0])
        row["_scores"] = F.softmax(logits.double(), 1).max(1).values
        row["_unknown"] = labels < 0
        result.batches.append(row)
        result.images += int(x.shape[0])
        if row["count"]:
            wrong += row["error"] * row["count"]
            seen += row["count"]
        if progress is not None:
            progress(i, wrong / seen if seen else float("nan"))
    return result
