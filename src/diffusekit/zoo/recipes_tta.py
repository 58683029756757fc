"""Zoo recipes of the test-time adaptation source models (``methods.tta.source``).

* ``digits_bn_classifier``: :class:`BNDigitsClassifier` on all ten classes of the clean digits train split.
* ``digits04_bn_classifier``: the same on digits 0-4 only, the source of the open-set streams (5-9 are unknowns).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import load_dataset
from ..data.corruptions import available_corruptions, corrupt

TTA_BUDGETS = {"full": {"bn_classifier_epochs": 30}, "quick": {"bn_classifier_epochs": 1}}


def _build_bn_classifier(name: str, classes: int, budget: dict, assets_dir: Path) -> dict:
    from ..methods.tta.source import train_bn_classifier
    from . import write_asset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    keep, keep_test = train.y < classes, test.y < classes
    t0 = time.perf_counter()
    model = train_bn_classifier(train.x[keep], train.y[keep], num_classes=classes,
                                epochs=budget["bn_classifier_epochs"], seed=0)
    seconds = time.perf_counter() - t0
    x, y = test.x[keep_test], test.y[keep_test]
    with torch.no_grad():
        metrics = {"test_error": float((model(x).argmax(1) != y).double().mean())}
        metrics["severity5_error"] = {c: float((model(corrupt(x, c, 5, seed=0)).argmax(1) != y).double().mean())
                                      for c in available_corruptions()}
    meta = {"kind": "bn_classifier", "net": dict(model.config),
            "training": {"epochs": budget["bn_classifier_epochs"], "seed": 0,
                         "data": f"clean digits train split, classes 0-{classes - 1}", "augment": "+-1 px shifts"},
            "training_seconds": seconds, "metrics": metrics}
    return write_asset(name, model.state_dict(), meta, assets_dir)


def build_digits_bn_classifier(budget: dict, assets_dir: Path, progress: bool) -> dict:
    return _build_bn_classifier("digits_bn_classifier", 10, budget, assets_dir)


def build_digits04_bn_classifier(budget: dict, assets_dir: Path, progress: bool) -> dict:
    return _build_bn_classifier("digits04_bn_classifier", 5, budget, assets_dir)


def load_bn_classifier(state: dict, meta: dict):
    from ..methods.tta.source import BNDigitsClassifier

    model = BNDigitsClassifier(**meta["net"])
    model.load_state_dict(state)
    return model.eval()
