"""Test-time adaptation (issue 13): the harness (``base``), the BatchNorm source model (``source``) and the methods
TENT (``tent``), the open-set wisdom-of-crowds filter (``open_set``), PETAL (``petal``), DDA (``dda``), SDA
(``sda``) and DiffTPT / TPT (``difftpt``), each in its own module and all reachable by name through
``registry.build_method``."""

from .base import SourceModel, StreamResult, TestTimeAdapter, classification_metrics, rejection_auroc, run_stream
from .open_set import OpenSetFilter
from .registry import available_methods, build_method
from .source import BNDigitsClassifier, bn_affine_parameters, train_bn_classifier
from .tent import Tent, use_batch_statistics

__all__ = ["BNDigitsClassifier", "OpenSetFilter", "SourceModel", "StreamResult", "TestTimeAdapter", "Tent",
           "available_methods", "bn_affine_parameters", "build_method", "classification_metrics", "rejection_auroc",
           "run_stream", "train_bn_classifier", "use_batch_statistics"]
