"""Adapt a finished run to a new site with the site's own images.

``cxrlab adapt RUN --data SITE --out NEW_RUN`` splits the site (patients kept together) into
a *pool* that adaptation may read and a *test* part it never reads, adapts the run's model
with the pool's unlabelled images, and writes a new run folder that every command reads like
any other: its card records the parent run, the site, its hash, the method and what it
changed; ``adaptation.json`` scores the parent and the adapted model on the site's test part.

Unlabelled methods (``--method``, applied first):

* ``bn``: AdaBN (Li et al. 2016): every BatchNorm layer's running statistics re-estimated on
  the pool's images; weights unchanged.
* ``tent``: ``bn``, then TENT (Wang et al. 2021): BatchNorm's scales and shifts trained to
  lower the entropy of the predictions on the pool (with the statistics ``bn`` estimated).
* ``prior``: the site's class priors re-estimated by EM (Saerens et al. 2002) from the
  calibrated probabilities of the pool, written into the classifier's bias (``T log(q / p)``
  with ``p`` the run's own prior on its validation images), so that predicted probabilities
  follow the site's class mix; applied last.
* ``bn+prior``, ``tent+prior``: both; ``none``: nothing (with labels only).

The default is ``prior`` (:data:`~cxrlab.adapt.core.DEFAULT_METHOD`), chosen on held-out
validation data: on the children a run never trained on, AdaBN from a pool of a few dozen
images of two classes cost accuracy and calibration, and the priors did not (docs/shift.md).

Labelled adaptation (``--labels N``, :mod:`cxrlab.adapt.labelled`): N images per class drawn
from the pool by ``--seed``; the part to fine-tune (none, the head, the last quarter of the
blocks, or all) chosen by cross-validation on those images alone, fine-tuned on all of them,
and a temperature refitted on their out-of-fold probabilities becomes the run's calibration.
With ``prior``, the priors are then re-estimated against the mean calibrated prediction on
the labelled images.
"""

from .core import (
    DEFAULT_METHOD,
    METHODS,
    AdaptResult,
    adapt_batchnorm,
    adapt_run,
    em_priors,
    tent,
)
from .labelled import SCOPES, FineTuneSettings, choose_scope, draw_labelled, fine_tune

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "SCOPES",
    "AdaptResult",
    "FineTuneSettings",
    "adapt_batchnorm",
    "adapt_run",
    "choose_scope",
    "draw_labelled",
    "em_priors",
    "fine_tune",
    "tent",
]
