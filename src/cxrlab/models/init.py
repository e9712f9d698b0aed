"""Initialisations derived from pretrained weights: statistics transfer and transfusion.

Raghu et al. ("Transfusion", NeurIPS 2019) and Matsoukas et al. (CVPR 2022) separate what
pretraining hands over into the *scale* of the weights and the *features* themselves:

``stats``
    Statistics transfer (ST, Raghu's "Mean Var init"): every tensor of the backbone is
    redrawn i.i.d. from a normal with the mean and standard deviation of the pretrained
    tensor. Convolution and linear weights and biases, and also any other free parameter
    (a ViT's position embedding and class token; Matsoukas' code leaves those two pretrained
    under "ST", which lets features leak through). Normalisation layers (BatchNorm,
    LayerNorm, GroupNorm) are reset to their fresh state (weight 1, bias 0, running
    statistics 0/1).
``imagenet:K``
    Transfusion: the first ``K`` units (the stem and blocks that the freezing policies
    count) keep their pretrained weights, the units above them get statistics transfer.
    ``imagenet:0`` is ``stats``; ``imagenet:N`` for a model of N units is ``imagenet``.

The classifier head is always fresh. The draw uses its own generator seeded from the run's
seed, so it is reproducible and independent of anything else the run draws.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["InitReport", "WeightsSpec", "parse_weights", "statistics_transfer"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_SEED_SALT = 0x5EED_57A7  # keeps the draw apart from torch.manual_seed(seed) streams


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``--weights`` value.

    Attributes:
        kind: ``imagenet``, ``none``, ``stats``, ``transfusion``, ``file`` or
            ``pretrained`` (a ``cxrlab pretrain`` run's backbone).
        keep: for ``transfusion``, how many leading units keep their pretrained weights.
        path: for ``file``, the weights file; for ``pretrained``, the pretraining run.
    """

    kind: str
    keep: int = 0
    path: str = ""

    @property
    def pretrained(self) -> bool:
        """Whether building the model needs the ImageNet weights."""
        return self.kind in ("imagenet", "stats", "transfusion")


def parse_weights(text: str) -> WeightsSpec:
    """Parse ``imagenet``, ``none``, ``stats``, ``imagenet:K``, ``pretrained:RUN`` or a file
    path."""
    s = str(text).strip()
    if s in ("imagenet", "none", "stats"):
        return WeightsSpec(s)
    if s.startswith("pretrained:"):
        run = s.removeprefix("pretrained:")
        if not run:
            raise ConfigError(
                "weights='pretrained:' (--weights): give the folder of a 'cxrlab pretrain' run "
                "(pretrained:runs/pretrain)"
            )
        return WeightsSpec("pretrained", path=run)
    if m := re.fullmatch(r"imagenet:(\d+)", s):
        return WeightsSpec("transfusion", keep=int(m.group(1)))
    if s.startswith("imagenet:"):
        raise ConfigError(
            f"weights={s!r} (--weights {s}): after 'imagenet:' give how many leading units "
            "keep their pretrained weights (imagenet:4)"
        )
    return WeightsSpec("file", path=s)


@dataclass
class InitReport:
    """What an initialisation redrew, for the model card."""

    method: str
    seed: int
    pretrained_units: list[str]  # units left with their pretrained weights
    redrawn_units: list[str]  # units whose tensors were drawn from pretrained statistics
    redrawn: dict[str, int] = field(default_factory=dict)  # kind -> number of tensors
    other_redrawn: list[str] = field(default_factory=list)  # free parameters, by name
    norms_reset: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.redrawn.items()))
        kept = f"{len(self.pretrained_units)} units pretrained, " if self.pretrained_units else ""
        return (
            f"{self.method} (seed {self.seed}): {kept}{len(self.redrawn_units)} units redrawn "
            f"({kinds or 'no tensors'}; {self.norms_reset} normalisation layers reset)"
        )


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


@torch.no_grad()
def statistics_transfer(
    net: nn.Module,
    unit_names: list[str],
    units: list[list[str]],
    *,
    keep: int = 0,
    seed: int = 0,
) -> InitReport:
    """Redraw the units of ``net`` above the first ``keep`` from their own statistics.

    ``units`` are the parameter names of each unit (see :mod:`cxrlab.models.registry`);
    parameters outside every unit (the classifier head) are not touched.

    Raises:
        ConfigError: ``keep`` is larger than the number of units.
    """
    if not 0 <= keep <= len(units):
        raise ConfigError(
            f"weights='imagenet:{keep}' (--weights): this model has {len(units)} units "
            f"({unit_names[0]} ... {unit_names[-1]}); choose 0..{len(units)}"
        )
    gen = torch.Generator().manual_seed(_SEED_SALT + int(seed))
    params = dict(net.named_parameters())
    modules = dict(net.named_modules())
    report = InitReport(
        method="statistics transfer" if keep == 0 else f"transfusion (first {keep} units kept)",
        seed=int(seed),
        pretrained_units=unit_names[:keep],
        redrawn_units=unit_names[keep:],
    )
    redraw = [name for group in units[keep:] for name in group]
    norms_done: set[str] = set()
    for name in redraw:
        owner = modules.get(_owner(name))
        if isinstance(owner, _NORMS):
            if _owner(name) not in norms_done:
                norms_done.add(_owner(name))
                owner.reset_parameters()  # weight 1, bias 0 (and running stats for BN)
            continue
        p = params[name]
        kind = type(owner).__name__.lower() if owner is not None else "parameter"
        if isinstance(owner, nn.modules.conv._ConvNd):
            kind = "conv"
        elif isinstance(owner, (nn.Linear, nn.MultiheadAttention)):  # attention projections
            kind = "linear"
        else:  # a free tensor: position embedding, class token, layer scale
            kind = "other"
            report.other_redrawn.append(name)
        flat = p.detach().float().flatten()
        mean = float(flat.mean())
        std = float(flat.std(unbiased=False)) if flat.numel() > 1 else 0.0
        draw = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean
        p.copy_(draw.to(p.dtype))
        report.redrawn[kind] = report.redrawn.get(kind, 0) + 1
    report.norms_reset = len(norms_done)
    return report
