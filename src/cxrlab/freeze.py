"""Freezing policies: which of a model's ordered blocks train.

Every model in the registry is a stem, then N blocks (residual or transformer), then a
classifier head (see :mod:`cxrlab.models.registry`). A policy freezes a prefix of that list:

==========  ===============================================================================
``none``    train everything
``head``    train only the classifier head (the whole backbone is frozen)
``0.5``     freeze the first ``floor(0.5 * (N + 1))`` units (stem counts as one); any
            fraction in (0, 1) works, e.g. ``0.75``
``last:K``  train only the last K blocks and the head (``last:4`` for the original ViT)
==========  ===============================================================================

Frozen BatchNorm layers keep their ImageNet running statistics by default: the frozen units
are held in eval mode even while the model trains (``bn="frozen"``). With ``bn="update"`` they
follow ``model.train()`` and their statistics adapt to X-rays while their weights stay fixed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError
from .models.classifier import CxrClassifier

__all__ = ["BN_MODES", "FreezePolicy", "FreezeReport", "apply_freeze", "parse_freeze"]

BN_MODES = ("frozen", "update")


@dataclass(frozen=True)
class FreezePolicy:
    """A parsed ``--freeze`` value."""

    kind: str  # "none" | "head" | "fraction" | "last"
    value: float = 0.0

    def __str__(self) -> str:
        if self.kind == "fraction":
            return f"{self.value:g}"
        if self.kind == "last":
            return f"last:{int(self.value)}"
        return self.kind

    def frozen_units(self, n_units: int) -> int:
        """How many leading units this policy freezes in a model with ``n_units``."""
        if self.kind == "none":
            return 0
        if self.kind == "head":
            return n_units
        if self.kind == "fraction":
            return math.floor(self.value * n_units)
        k = int(self.value)
        if k > n_units:
            raise ConfigError(
                f"freeze='last:{k}' (--freeze last:{k}) asks for more blocks than the model has "
                f"({n_units}, stem included)"
            )
        return n_units - k


def parse_freeze(text: str | float | FreezePolicy) -> FreezePolicy:
    """Parse ``none``, ``head``, a fraction like ``0.5`` or ``last:K``."""
    if isinstance(text, FreezePolicy):
        return text
    s = str(text).strip().lower()
    if s in ("none", "head"):
        return FreezePolicy(s)
    if m := re.fullmatch(r"last:(\d+)", s):
        return FreezePolicy("last", int(m.group(1)))
    try:
        f = float(s)
    except ValueError:
        f = -1.0
    if 0.0 < f < 1.0:
        return FreezePolicy("fraction", f)
    if f == 0.0:
        return FreezePolicy("none")
    raise ConfigError(
        "freeze (--freeze) must be none, head, a fraction in (0, 1) such as 0.5, or last:K; "
        f"got {text!r}"
    )


@dataclass(frozen=True)
class FreezeReport:
    """What :func:`apply_freeze` did, for the console and the model card."""

    policy: str
    bn: str
    frozen_units: list[str]
    trainable_units: list[str]
    trainable_params: int
    total_params: int

    def summary(self) -> str:
        pct = 100.0 * self.trainable_params / max(1, self.total_params)
        frozen = (
            f"{self.frozen_units[0]}..{self.frozen_units[-1]}" if self.frozen_units else "nothing"
        )
        return (
            f"freeze={self.policy}: frozen {len(self.frozen_units)} of "
            f"{len(self.frozen_units) + len(self.trainable_units)} blocks ({frozen}); "
            f"trainable {self.trainable_params:,} of {self.total_params:,} parameters "
            f"({pct:.1f}%); frozen BatchNorm: {self.bn}"
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _owned_modules(net: nn.Module, params: set[str]) -> list[nn.Module]:
    """The largest submodules of ``net`` whose parameters all lie in ``params``."""
    out: list[nn.Module] = []
    taken: list[str] = []
    for name, module in net.named_modules():
        if not name or any(name.startswith(t + ".") for t in taken):
            continue
        names = [f"{name}.{n}" for n, _ in module.named_parameters()]
        if names and all(n in params for n in names):
            out.append(module)
            taken.append(name)
    return out


def apply_freeze(
    model: CxrClassifier, policy: str | FreezePolicy = "none", bn: str = "frozen"
) -> FreezeReport:
    """Set ``requires_grad`` by ``policy`` and keep frozen units in eval mode if ``bn="frozen"``.

    Example:
        >>> from cxrlab.models import create_model
        >>> model = create_model("resnet18", 4, weights="none")
        >>> apply_freeze(model, "0.5").frozen_units
        ['stem', 'layer1.0', 'layer1.1', 'layer2.0']
    """
    policy = parse_freeze(policy)
    if bn not in BN_MODES:
        raise ConfigError(
            f"freeze_bn (--freeze-bn) must be one of {', '.join(BN_MODES)}, got {bn!r}"
        )
    n_frozen = policy.frozen_units(len(model.units))
    frozen_params = {p for unit in model.units[:n_frozen] for p in unit}
    for name, param in model.net.named_parameters():
        param.requires_grad_(name not in frozen_params)
    model.set_frozen_modules(_owned_modules(model.net, frozen_params) if bn == "frozen" else [])
    total = sum(p.numel() for p in model.net.parameters())
    trainable = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    return FreezeReport(
        policy=str(policy),
        bn=bn,
        frozen_units=model.unit_names[:n_frozen],
        trainable_units=model.unit_names[n_frozen:],
        trainable_params=trainable,
        total_params=total,
    )
