"""Adaptation with a few labelled site images: fine-tuning chosen by cross-validation, and a
temperature refitted on the site (``cxrlab adapt --labels N``).

Which part of the network to fine-tune is chosen among :data:`SCOPES` by stratified K-fold
cross-validation on the labelled images alone (never on the site's test part): each scope is
fine-tuned on K-1 folds and predicts the held-out fold, a temperature is fitted on its
out-of-fold probabilities, and the scope with the lowest out-of-fold NLL wins (ties go to the
smaller change). The chosen scope is then fine-tuned on every labelled image, and the
temperature of its out-of-fold probabilities becomes the adapted run's calibration, so that
the temperature is never fitted on the images the final model trained on.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..evaluation.calibration import apply_temperature, fit_temperature, nll
from ..freeze import apply_freeze, parse_freeze
from ..shift.reference import calibrated_probs

__all__ = ["SCOPES", "FineTuneSettings", "ScopeChoice", "choose_scope", "draw_labelled",
           "fine_tune"]  # fmt: skip

#: What ``--scope`` may fine-tune, as a freezing policy (:mod:`cxrlab.freeze`): ``none``
#: (only the temperature is refitted), ``head`` (the classifier), ``last`` (the last quarter
#: of the blocks and the head) or ``all``; in the order ties are broken.
SCOPES: dict[str, str | None] = {"none": None, "head": "head", "last": "0.75", "all": "none"}


@dataclass(frozen=True)
class FineTuneSettings:
    """How the labelled images fine-tune a model. Fixed, not tuned on any site: AdamW with a
    learning rate ten times larger for the head, ``epochs`` passes over the images (at least
    ``min_steps`` steps), BatchNorm statistics kept (a few images per batch cannot estimate
    them), no augmentation, so that the frozen part of the network runs once per image (as
    ``train``'s feature cache does) and only the scope trains."""

    epochs: int = 20
    min_steps: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    folds: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScopeChoice:
    """The scope chosen by cross-validation, each scope's out-of-fold scores, and the
    chosen scope's temperature (fitted on its out-of-fold probabilities)."""

    scope: str
    temperature: float
    folds: int
    table: dict[str, dict[str, float]]  # scope -> nll, accuracy, temperature


def draw_labelled(y: np.ndarray, n: int, seed: int, classes: list[str]) -> np.ndarray:
    """Positions of ``n`` images of each class present in ``y`` (model class indices; -1:
    unlabelled), drawn without replacement by ``seed``; sorted.

    Raises:
        DataError: no labelled image at all, or a class with fewer than ``n`` images.
    """
    rng = np.random.default_rng(seed)
    present = np.unique(y[y >= 0])
    if not len(present):
        raise DataError(f"--labels {n}: the site's images carry no class the model knows")
    out: list[int] = []
    for c in present:
        idx = np.flatnonzero(y == c)
        if len(idx) < n:
            raise DataError(
                f"--labels {n}: the site's adaptation pool holds only {len(idx)} image(s) of "
                f"{classes[c]}; give at most {len(idx)} per class, or more site images"
            )
        out.extend(rng.choice(idx, n, replace=False).tolist())
    return np.sort(np.array(out, dtype=np.int64))


def _cut(model: Any, scope: str, images: np.ndarray, device: str,
         batch_size: int = 64) -> tuple[nn.Module, torch.Tensor]:  # fmt: skip
    """Freeze all but ``scope`` and return the module that trains it with its inputs: the
    frozen prefix's outputs for ``images`` (computed once) where the model can be cut, else
    the whole model and the images themselves."""
    from ..engine.features import TrainableRest, prefix_features

    policy = SCOPES[scope]
    assert policy is not None
    apply_freeze(model, policy)
    model.eval().to(device)
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    n_frozen = parse_freeze(policy).frozen_units(len(model.units))
    if n_frozen:
        parts = [prefix_features(model, n_frozen, x[k : k + batch_size].to(device))
                 for k in range(0, len(x), batch_size)]  # fmt: skip
        if parts and parts[0] is not None:
            return TrainableRest(model, n_frozen).eval(), torch.cat(parts).cpu()  # type: ignore[arg-type]
    return model, x


def _train(model: Any, module: nn.Module, x: torch.Tensor, y: np.ndarray,
           settings: FineTuneSettings, seed: int, device: str) -> int:  # fmt: skip
    """Train ``model``'s trainable parameters through ``module`` on inputs ``x``."""
    head = set(model.head)
    named = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in head], "lr": settings.head_lr}]
    if body := [p for n, p in named if n not in head]:
        groups.append({"params": body, "lr": settings.lr})
    opt = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    g = torch.Generator().manual_seed(seed)
    bs = min(settings.batch_size, len(y))
    steps = max(settings.min_steps, settings.epochs * math.ceil(len(y) / bs))
    targets = torch.as_tensor(y, dtype=torch.long)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < bs:
            order = torch.cat([order, torch.randperm(len(y), generator=g)])
        idx, order = order[:bs], order[bs:]
        loss = F.cross_entropy(module(x[idx].to(device)), targets[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps


def _thaw(model: Any) -> None:
    for p in model.net.parameters():
        p.requires_grad_(True)
    model.set_frozen_modules([])
    model.eval()


def fine_tune(
    model: Any,
    images: np.ndarray,
    y: np.ndarray,
    scope: str,
    settings: FineTuneSettings = FineTuneSettings(),
    *,
    seed: int = 0,
    device: str = "cpu",
) -> int:
    """Fine-tune ``model`` (a :class:`~cxrlab.models.CxrClassifier`) in place on ``(N, H, W)``
    uint8 ``images`` with labels ``y``, training only ``scope``; returns the steps taken."""
    if scope not in SCOPES:
        raise ConfigError(f"Unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if SCOPES[scope] is None or not len(y):
        return 0
    try:
        module, x = _cut(model, scope, images, device)
        return _train(model, module, x, y, settings, seed, device)
    finally:
        _thaw(model)


def choose_scope(
    model: Any,
    images: np.ndarray,
    y: np.ndarray,
    *,
    scopes: tuple[str, ...] = tuple(SCOPES),
    settings: FineTuneSettings = FineTuneSettings(),
    temperature: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> ScopeChoice:
    """Cross-validate each of ``scopes`` on the labelled ``images`` (see the module
    docstring); ``model`` is left as it came. Each temperature is fitted with the run's own
    ``temperature`` as its prior (:func:`~cxrlab.evaluation.calibration.fit_temperature`).

    Raises:
        ConfigError: fewer than two labelled images of some class (nothing to hold out).
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise ConfigError(
            "Choosing what to fine-tune needs at least 2 labelled images per class "
            "(cross-validation); give --labels 2 or more, or name the scope with --scope"
        )
    k = min(settings.folds, smallest)
    state = copy.deepcopy(model.state_dict())
    folds = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    table: dict[str, dict[str, float]] = {}
    try:
        for scope in scopes:
            model.load_state_dict(state)  # each scope starts from the model as it came
            if SCOPES[scope] is None:
                oof = calibrated_probs(model, images, 1.0, device=device)
            else:
                oof = np.zeros((len(y), _n_classes(model)), np.float32)
                module, x = _cut(model, scope, images, device)
                for fold, (fit, held) in enumerate(folds):
                    model.load_state_dict(state)
                    _train(model, module, x[fit], y[fit], settings, seed * 1000 + fold, device)
                    with torch.no_grad():
                        oof[held] = module(x[held].to(device)).float().softmax(1).cpu().numpy()
            t = fit_temperature(oof, y, prior=temperature)
            p = apply_temperature(oof, t)
            table[scope] = {"nll": nll(p, y), "accuracy": float((p.argmax(1) == y).mean()),
                            "temperature": t}  # fmt: skip
    finally:
        _thaw(model)
        model.load_state_dict(state)
    best = min(scopes, key=lambda s: (round(table[s]["nll"], 4), scopes.index(s)))
    return ScopeChoice(best, table[best]["temperature"], k, table)


def _n_classes(model: Any) -> int:
    return int(model.net.get_parameter(model.head[-1]).shape[0])
