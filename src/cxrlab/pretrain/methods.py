"""Self-supervised methods: a backbone, heads and a loss on two views of each image.

The heads, losses and momentum updates are `lightly <https://docs.lightly.ai>`_'s (tested
against direct computations in ``tests/test_pretrain.py``); what is ours is the wiring.

``simsiam``
    Chen & He 2021: projection and prediction heads, a stop-gradient on the other view's
    projection, negative cosine similarity. No negatives and no momentum encoder, so it
    trains with the small batches a 2-core CPU affords (the paper reports it stable down to
    batch 64; collapse is watched, see :func:`embedding_spread`).
``byol``
    Grill et al. 2020: the same prediction-against-target idea, the target a momentum copy
    of the backbone and projection whose momentum rises from ``momentum`` to 1 over training
    (cosine).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["BYOL", "METHODS", "SelfSupervised", "SimSiam", "embedding_spread", "require_lightly"]


def require_lightly() -> None:
    """Fail in one line when lightly (the ``pretrain`` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("lightly") is None:
        raise ConfigError(
            "cxrlab pretrain needs lightly (its heads and losses): pip install 'cxrlab[pretrain]'"
        )


def embedding_spread(z: torch.Tensor) -> float:
    """How far ``(B, D)`` embeddings are from collapse: the mean per-dimension standard
    deviation of the L2-normalised embeddings, times sqrt(D) (lightly's
    ``std_of_l2_normalized``, Chen & He 2021's collapse check). 0 = every image gets the
    same embedding; about 1 = spread like an isotropic Gaussian."""
    from lightly.utils.debug import std_of_l2_normalized

    return float(std_of_l2_normalized(z.detach().float())) * math.sqrt(z.shape[1])


class SelfSupervised(nn.Module):
    """A backbone (``(B, 1, H, W)`` uint8 -> ``(B, F)`` features) with the heads of a method.

    :meth:`step` returns the loss of one batch of two views and the first view's projection
    (for :func:`embedding_spread`); ``progress`` in [0, 1] is how far training is (BYOL's
    momentum follows it).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def step(self, x1: torch.Tensor, x2: torch.Tensor,
             progress: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        raise NotImplementedError


class SimSiam(SelfSupervised):
    def __init__(self, backbone: nn.Module, feat_dim: int, proj_dim: int = 256,
                 hidden_dim: int = 1024, momentum: float = 0.0) -> None:  # fmt: skip
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        super().__init__(backbone)
        self.projection = SimSiamProjectionHead(feat_dim, hidden_dim, proj_dim)
        # the predictor's bottleneck: a quarter of its output, as in the paper (2048 -> 512)
        self.prediction = SimSiamPredictionHead(proj_dim, max(1, proj_dim // 4), proj_dim)
        self.criterion = NegativeCosineSimilarity()

    def step(self, x1: torch.Tensor, x2: torch.Tensor,
             progress: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        z1, z2 = self.projection(self.backbone(x1)), self.projection(self.backbone(x2))
        p1, p2 = self.prediction(z1), self.prediction(z2)
        loss = 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))
        return loss, z1.detach()


class BYOL(SelfSupervised):
    def __init__(self, backbone: nn.Module, feat_dim: int, proj_dim: int = 256,
                 hidden_dim: int = 1024, momentum: float = 0.99) -> None:  # fmt: skip
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__(backbone)
        self.projection = BYOLProjectionHead(feat_dim, hidden_dim, proj_dim)
        self.prediction = BYOLPredictionHead(proj_dim, hidden_dim, proj_dim)
        self.backbone_target = copy.deepcopy(backbone)
        self.projection_target = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.backbone_target)
        deactivate_requires_grad(self.projection_target)
        self.base_momentum = momentum
        self.criterion = NegativeCosineSimilarity()

    def momentum_at(self, progress: float) -> float:
        """The target's momentum: ``base_momentum`` at the start, 1 at the end (cosine)."""
        from lightly.utils.scheduler import cosine_schedule

        return cosine_schedule(round(progress * 10_000), 10_000, self.base_momentum, 1.0)

    def step(self, x1: torch.Tensor, x2: torch.Tensor,
             progress: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        from lightly.models.utils import update_momentum

        m = self.momentum_at(progress)
        update_momentum(self.backbone, self.backbone_target, m)
        update_momentum(self.projection, self.projection_target, m)
        z1, z2 = self.projection(self.backbone(x1)), self.projection(self.backbone(x2))
        p1, p2 = self.prediction(z1), self.prediction(z2)
        with torch.no_grad():
            t1 = self.projection_target(self.backbone_target(x1))
            t2 = self.projection_target(self.backbone_target(x2))
        loss = 0.5 * (self.criterion(p1, t2) + self.criterion(p2, t1))
        return loss, z1.detach()


#: The methods ``cxrlab pretrain --method`` knows.
METHODS: dict[str, type[SelfSupervised]] = {"simsiam": SimSiam, "byol": BYOL}
