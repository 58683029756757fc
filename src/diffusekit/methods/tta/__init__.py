"""Test-time adaptation (issue 13): the harness (``base``), the BatchNorm source model (``source``) and the methods
TENT, the open-set filter, PETAL, DDA, SDA and DiffTPT, each in its own module."""

from .base import SourceModel, StreamResult, TestTimeAdapter, classification_metrics, rejection_auroc, run_stream
from .source import BNDigitsClassifier, bn_affine_parameters, train_bn_classifier

__all__ = ["BNDigitsClassifier", "SourceModel", "StreamResult", "TestTimeAdapter", "bn_affine_parameters",
           "classification_metrics", "rejection_auroc", "run_stream", "train_bn_classifier"]
