"""Dataset shift: does new data look like a run's, and how will the run do there?

A model fails at a hospital it never saw, and fails silently: its answers there look as
confident as anywhere. This package gives every finished run a way to say so:

* :mod:`.signals`: per-image scores (feature Mahalanobis and k-NN distances, the acquisition
  signature's distance, the model's confidence) with thresholds at a keep rate;
* :mod:`.reference`: what a run keeps to judge new images without its training data;
* :mod:`.batch`: two-sample tests of a set of images, its class mix, and its accuracy
  estimated without labels;
* :mod:`.report`: ``cxrlab shift``.
"""

from .batch import TESTS, class_mix, estimated_accuracy, ks_test, mmd_test
from .reference import DEFAULT_KEEP, Detector, Reference, reference
from .report import format_shift, shift_report, write_shift_report
from .signals import SIGNALS, KnnDistance, Mahalanobis, detection_auroc

__all__ = [
    "DEFAULT_KEEP",
    "SIGNALS",
    "TESTS",
    "Detector",
    "KnnDistance",
    "Mahalanobis",
    "Reference",
    "class_mix",
    "detection_auroc",
    "estimated_accuracy",
    "format_shift",
    "ks_test",
    "mmd_test",
    "reference",
    "shift_report",
    "write_shift_report",
]
