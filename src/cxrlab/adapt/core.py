"""Unlabelled adaptation of a finished run to a site (see the package docstring)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import run_files
from ..errors import CheckpointError, ConfigError, DataError
from ..shift.reference import calibrated_probs
from ..utils import write_json
from .labelled import SCOPES, FineTuneSettings, choose_scope, draw_labelled, fine_tune

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "AdaptResult",
    "adapt_batchnorm",
    "adapt_run",
    "em_priors",
    "tent",
]

#: The unlabelled adaptation methods (see the package docstring); ``none`` only with labels.
METHODS = ("none", "bn", "prior", "bn+prior", "tent", "tent+prior")
#: The method ``cxrlab adapt`` uses unless told: chosen on the held-out sources' validation
#: splits, where no method helped at every source and the class priors lost least at worst
#: (0, -7 and +1.5 points; AdaBN -18, +12 and -2; docs/shift.md).
DEFAULT_METHOD = "prior"


@dataclass(frozen=True)
class AdaptResult:
    """An adapted run: its folder and what ``adaptation.json`` holds."""

    run_dir: Path
    record: dict[str, Any]


def adapt_batchnorm(
    model: nn.Module, images: np.ndarray, *, batch_size: int = 64, device: str = "cpu"
) -> int:
    """AdaBN: reset every BatchNorm layer's running mean and variance and estimate them
    again, as a plain average over ``(N, H, W)`` uint8 ``images`` (weights untouched);
    returns how many layers there were (0: nothing to adapt)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not len(images):
        return 0
    momenta = [m.momentum for m in bns]
    model.eval().to(device)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.array(images[start : start + batch_size], np.uint8))
                model(x[:, None].to(device))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()
    return len(bns)


def tent(
    model: nn.Module,
    images: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> int:
    """TENT (Wang et al. 2021) as a saved model can carry it: AdaBN on ``images`` first, then
    the BatchNorm layers' scales and shifts trained to lower the entropy of the predictions on
    them (Adam, ``epochs`` passes), with the statistics AdaBN estimated held fixed (TENT uses
    each batch's own; a saved model must predict one image at a time). Returns the steps
    taken (0: no BatchNorm)."""
    if not adapt_batchnorm(model, images, batch_size=batch_size, device=device):
        return 0
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    params = [p for m in bns for p in (m.weight, m.bias) if p is not None]
    if not params:
        return 0
    grads = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    steps = 0
    model.eval().to(device)
    try:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=g).numpy()
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.array(images[order[start : start + batch_size]]))
                logits = model(x[:, None].to(device)).float()
                loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
    finally:
        for p, wanted in grads.items():
            p.requires_grad_(wanted)
        model.eval()
    return steps


def em_priors(
    probs: np.ndarray, prior: np.ndarray, *, iters: int = 1000, tol: float = 1e-8
) -> np.ndarray:
    """The class priors of the images behind ``probs`` (``(N, K)``, calibrated to ``prior``)
    by expectation-maximisation (Saerens et al. 2002)."""
    p = np.asarray(probs, np.float64)
    prior = np.asarray(prior, np.float64)
    q = prior.copy()
    for _ in range(iters):
        w = p * (q / prior)
        w /= w.sum(1, keepdims=True)
        new = w.mean(0)
        if np.abs(new - q).max() < tol:
            return new
        q = new
    return q


def _bias(model: Any) -> torch.Tensor:
    """The classifier head's bias."""
    name = next((n for n in model.head if n.endswith(".bias")), None)
    if name is None:
        raise CheckpointError("The model's classifier has no bias for the class priors")
    return model.net.get_parameter(name)


def _test_probs(model: Any, images: np.ndarray, temperature: float, device: str) -> np.ndarray:
    """The site test part's calibrated probabilities (none when the test part is empty)."""
    if not len(images):
        return np.zeros((0, 0), np.float32)
    return calibrated_probs(model, images, temperature, device=device)


@dataclass(frozen=True)
class _Labelled:
    """The labelled site images adaptation fine-tunes on (a subset of the pool)."""

    images: np.ndarray
    y: np.ndarray
    scope: str  # "auto" or one of labelled.SCOPES
    seed: int
    settings: FineTuneSettings


def _adapt(model: Any, pool: np.ndarray, method: str, temperature: float,
           source_prior: np.ndarray | None, device: str,
           labelled: _Labelled | None = None) -> tuple[dict[str, Any], float]:  # fmt: skip
    """Adapt ``model`` in place with the site's ``pool`` images (the only site images
    adaptation reads; ``labelled`` is drawn from them): statistics, then fine-tuning, then
    priors. Returns what changed and the adapted model's temperature."""
    changed: dict[str, Any] = {}
    if method.startswith("bn"):
        changed["batchnorm_layers"] = adapt_batchnorm(model, pool, device=device)
    if method.startswith("tent"):
        changed["tent_steps"] = tent(model, pool, device=device)
    if labelled is not None:
        temperature, changed["fine_tune"] = _fine_tune(model, labelled, temperature, device)
    if "prior" in method:
        if labelled is not None:  # the prior the refitted probabilities carry
            probs = calibrated_probs(model, labelled.images, temperature, device=device)
            source_prior = np.clip(probs.mean(0), 1e-6, None)
        assert source_prior is not None
        q = em_priors(calibrated_probs(model, pool, temperature, device=device), source_prior)
        shift = temperature * np.log(np.clip(q, 1e-12, None) / source_prior)
        with torch.no_grad():
            _bias(model).add_(torch.as_tensor(shift, dtype=torch.float32))
        changed["priors"] = {"run": source_prior.tolist(), "site": q.tolist()}
    return changed, temperature


def _fine_tune(model: Any, labelled: _Labelled, temperature: float,
               device: str) -> tuple[float, dict[str, Any]]:  # fmt: skip
    """Choose the scope (unless named), fine-tune it on every labelled image and refit the
    temperature on out-of-fold probabilities; the new temperature and the record."""
    auto = labelled.scope == "auto"
    choice = None
    # a named scope with one image per class has nothing to cross-validate (the run's own
    # temperature stays); choosing one without it is refused by choose_scope
    if auto or np.bincount(labelled.y)[np.unique(labelled.y)].min() >= 2:
        choice = choose_scope(model, labelled.images, labelled.y,
                              scopes=tuple(SCOPES) if auto else (labelled.scope,),
                              settings=labelled.settings, temperature=temperature,
                              seed=labelled.seed, device=device)  # fmt: skip
    scope = choice.scope if choice else labelled.scope
    steps = fine_tune(model, labelled.images, labelled.y, scope, labelled.settings,
                      seed=labelled.seed, device=device)  # fmt: skip
    new_t = choice.temperature if choice else temperature
    record = {"scope": scope, "steps": steps, "temperature": new_t,
              "folds": choice.folds if choice else 0, "cv": choice.table if choice else {},
              "settings": labelled.settings.to_dict()}  # fmt: skip
    return new_t, record


def _site_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any] | None:
    from ..evaluation import classification_metrics

    keep = y >= 0
    if not keep.any():
        return None
    m = classification_metrics(y[keep], probs[keep], classes)
    return {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "ece", "nll")
            if k in m}  # fmt: skip


def adapt_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    class_map: dict[str, str] | None = None,
    labels: int = 0,
    method: str = DEFAULT_METHOD,
    scope: str = "auto",
    seed: int = 0,
    fine_tune_settings: FineTuneSettings | None = None,
    test_share: float = 0.5,
    split_seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> AdaptResult:
    """Adapt the run in ``run_dir`` to the site ``data`` and write the adapted run to
    ``out`` (see the package docstring).

    Args:
        data: the site's images: class folders (the test part is then scored before and
            after), or one folder of unlabelled images.
        class_map: site class -> model class (``-``: unscored); other classes match by name
            or stay unlabelled.
        labels: labelled images per class drawn from the pool by ``seed`` (0: none) and
            fine-tuned on (:mod:`cxrlab.adapt.labelled`).
        method: the unlabelled part (:data:`METHODS`); ``none`` only with labels.
        scope: what the labelled images fine-tune: ``auto`` (chosen by cross-validation on
            them), or one of ``none``, ``head``, ``last``, ``all``.
        seed: draws the labelled images and seeds the fine-tuning.
        fine_tune_settings: how to fine-tune (defaults: :class:`FineTuneSettings`).
        test_share: the share of the site (drawn by ``split_seed``, patients and copies kept
            together) that adaptation never reads and the scores are computed on.

    Raises:
        CheckpointError: not one finished run folder (an ONNX export, an ensemble, a run
            still training); the site is the run's own data.
        ConfigError: an unknown method or scope, ``labels`` below 0, nothing to do, a
            ``test_share`` outside (0, 1), ``out`` not empty.
        DataError: no site image left to adapt with once copies and the run's patients are
            left out; fewer than ``labels`` images of a class in the pool.
    """
    from ..runs.card import AdaptationRecord, Calibration
    from ..runs.folder import load_run_model, save_model
    from ..runs.scoring import open_run
    from ..shift.reference import reference
    from ..shift.report import model_labels, prepare_site

    run_dir, out = Path(run_dir), Path(out)
    if run_dir.is_file() or run_dir.suffix == ".onnx":
        raise CheckpointError(
            f"{run_dir} is a file: adapt needs a run folder (an exported model cannot be "
            "adapted; adapt the run, then export it)"
        )
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if scope != "auto" and scope not in SCOPES:
        raise ConfigError(f"Unknown scope {scope!r}; choose auto or one of {', '.join(SCOPES)}")
    if labels < 0:
        raise ConfigError(f"--labels must be 0 or more, got {labels}")
    if labels == 1 and scope == "auto":  # refused now, before the site is prepared
        raise ConfigError(
            "Choosing what to fine-tune (--scope auto) needs at least 2 labelled images per "
            "class (one held out in turn); give --labels 2 or more, or name a --scope"
        )
    if method == "none" and not labels:
        raise ConfigError("--method none with --labels 0 changes nothing; give labelled "
                          "images per class with --labels N, or an unlabelled method")  # fmt: skip
    if not 0 < test_share < 1:
        raise ConfigError(f"test_share must be in (0, 1), got {test_share}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new folder for the adapted run")
    run = open_run(run_dir)
    if run.ensemble or len(run.members) > 1:
        raise CheckpointError(f"{run_dir} is an ensemble; adapt each of its runs")
    site = prepare_site(run, data, run.preparation(), progress=progress,
                        ratios=(1 - test_share, 0.0, test_share), split_seed=split_seed,
                        split_source="stratified")  # fmt: skip
    if run.is_own_data(site):
        raise CheckpointError(f"{data} is the data {run_dir} trained on; give a site's images")
    rows = list(range(len(site.split.records)))
    seen = run.not_held_out(site, rows, progress=progress)

    def part(name: str) -> np.ndarray:
        kept = [i for i in site.split.indices(name) if site.split.records[i].path not in seen.paths]
        return np.array(kept, dtype=np.int64)

    pool, test = part("train"), part("test")
    if not len(pool):
        raise DataError(f"No image of {data} is left to adapt with once copies of {run_dir}'s "
                        "images and other images of its patients are left out")  # fmt: skip
    model, card = load_run_model(run_dir)
    t = card.temperature
    images = site.images.array
    to_label = model_labels(run.classes, site.classes, class_map)

    def truth(rows: np.ndarray) -> np.ndarray:
        names = [to_label[site.split.records[i].label] for i in rows]
        return np.array([-1 if c is None else c for c in names], dtype=np.int64)

    y_test = truth(test)
    labelled = None
    if labels:
        drawn = pool[draw_labelled(truth(pool), labels, seed, run.classes)]
        labelled = _Labelled(images[drawn], truth(drawn), scope, seed,
                             fine_tune_settings or FineTuneSettings())  # fmt: skip
    before = _site_metrics(_test_probs(model, images[test], t, device), y_test, run.classes)
    source = (reference(run_dir, device=device, progress=progress).val.probs.mean(0)
              if "prior" in method and not labels else None)  # fmt: skip
    changed, new_t = _adapt(model, images[pool], method, t, source, device, labelled)
    after = _site_metrics(_test_probs(model, images[test], new_t, device), y_test, run.classes)
    pool_paths = [site.split.records[i].path for i in pool]
    record = AdaptationRecord(
        parent=str(run_dir.resolve()), parent_created=card.created, site=str(site.report.root),
        site_hash=site.report.fingerprint(), method=method, labels=labels, pool=len(pool),
        test=len(test), split_seed=split_seed, test_share=test_share, changed=changed,
        scope=changed["fine_tune"]["scope"] if labels else "", draw_seed=seed,
        labelled_images=[] if not labels else [site.split.records[i].path for i in drawn],
    )  # fmt: skip
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    new_card = card.replace(created=now, adaptation=record)
    if labels:
        new_card = new_card.replace(calibration=Calibration(
            temperature=new_t, fitted_on="site: labelled images, out of fold"))  # fmt: skip
    save_model(out, model, new_card)
    shutil.copy(run.split_file, out / run_files.SPLIT)
    site.split.save(out / run_files.SITE_SPLIT)
    result = {
        "adaptation": record.to_dict(),
        "left_out": {
            "copies": len(seen.copies),
            "patients": len(seen.patients),
            "pretraining": len(seen.pretrained),
        },
        "pool_images": pool_paths,
        "site_test": {"before": before, "after": after},
    }
    write_json(out / run_files.ADAPTATION, result)
    _write_metrics(out, progress)
    return AdaptResult(out, result)


def _write_metrics(out: Path, progress: bool) -> None:
    """The adapted run's ``metrics.json``: its parent's test split, scored by the adapted
    model (what adapting to the site cost at home)."""
    from ..runs.evaluate import evaluate_run

    evaluate_run(out, split="test", out=out / run_files.METRICS, progress=progress)
