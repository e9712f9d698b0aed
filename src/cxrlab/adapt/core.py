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

from ..errors import CheckpointError, ConfigError, DataError
from ..shift.reference import calibrated_probs
from ..utils import write_json

__all__ = [
    "ADAPT_FILE",
    "DEFAULT_METHOD",
    "METHODS",
    "AdaptResult",
    "adapt_batchnorm",
    "adapt_run",
    "em_priors",
]

#: The unlabelled adaptation methods (see the package docstring).
METHODS = ("bn", "prior", "bn+prior")
#: The method ``cxrlab adapt`` uses unless told: chosen on held-out validation data, where
#: AdaBN on a small site pool of two classes hurt and the class priors did not (docs/shift.md).
DEFAULT_METHOD = "prior"
#: What an adapted run writes beside its card: the site, the method, before and after.
ADAPT_FILE = "adaptation.json"
#: The site's pool/test manifest in the adapted run's folder.
SITE_SPLIT_FILE = "site_split.csv"


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


def _adapt(model: Any, pool: np.ndarray, method: str, temperature: float,
           source_prior: np.ndarray | None, device: str) -> dict[str, Any]:  # fmt: skip
    """Adapt ``model`` in place with the site's ``pool`` images (the only site images
    adaptation reads); what changed."""
    changed: dict[str, Any] = {}
    if "bn" in method:
        changed["batchnorm_layers"] = adapt_batchnorm(model, pool, device=device)
    if "prior" in method:
        assert source_prior is not None
        q = em_priors(calibrated_probs(model, pool, temperature, device=device), source_prior)
        shift = temperature * np.log(np.clip(q, 1e-12, None) / source_prior)
        with torch.no_grad():
            _bias(model).add_(torch.as_tensor(shift, dtype=torch.float32))
        changed["priors"] = {"run": source_prior.tolist(), "site": q.tolist()}
    return changed


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
        labels: labelled images per class (only 0 is built so far).
        method: ``bn``, ``prior`` or ``bn+prior``.
        test_share: the share of the site (drawn by ``split_seed``, patients and copies kept
            together) that adaptation never reads and the scores are computed on.

    Raises:
        CheckpointError: not one finished run folder (an ONNX export, an ensemble, a run
            still training); the site is the run's own data.
        ConfigError: ``labels`` above 0, an unknown method, a ``test_share`` outside (0, 1),
            ``out`` not empty.
        DataError: no site image left to adapt with once copies and the run's patients are
            left out.
    """
    from ..engine.card import AdaptationRecord
    from ..engine.rundir import load_run_model, save_model
    from ..engine.scoring import open_run
    from ..shift.reference import reference
    from ..shift.report import model_labels, prepare_site

    run_dir, out = Path(run_dir), Path(out)
    if run_dir.is_file() or run_dir.suffix == ".onnx":
        raise CheckpointError(
            f"{run_dir} is a file: adapt needs a run folder (an exported model cannot be "
            "adapted; adapt the run, then export it)"
        )
    if labels:
        raise ConfigError(
            f"--labels {labels}: adaptation with labelled site images is not built yet; "
            "--labels 0 adapts with the site's unlabelled images"
        )
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}")
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
    y_test = np.array([-1 if to_label[site.split.records[i].label] is None
                       else to_label[site.split.records[i].label] for i in test])  # fmt: skip
    before = _site_metrics(_test_probs(model, images[test], t, device), y_test, run.classes)
    source = (reference(run_dir, device=device, progress=progress).val.probs.mean(0)
              if "prior" in method else None)  # fmt: skip
    changed = _adapt(model, images[pool], method, t, source, device)
    after = _site_metrics(_test_probs(model, images[test], t, device), y_test, run.classes)
    pool_paths = [site.split.records[i].path for i in pool]
    record = AdaptationRecord(
        parent=str(run_dir.resolve()), parent_created=card.created, site=str(site.report.root),
        site_hash=site.report.fingerprint(), method=method, labels=0, pool=len(pool),
        test=len(test), split_seed=split_seed, test_share=test_share, changed=changed,
    )  # fmt: skip
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, card.replace(created=now, adaptation=record))
    shutil.copy(run.split_file, out / "split.csv")
    site.split.save(out / SITE_SPLIT_FILE)
    result = {
        "adaptation": record.to_dict(),
        "left_out": {"copies": len(seen.copies), "patients": len(seen.patients)},
        "pool_images": pool_paths,
        "site_test": {"before": before, "after": after},
    }
    write_json(out / ADAPT_FILE, result)
    _write_metrics(out, progress)
    return AdaptResult(out, result)


def _write_metrics(out: Path, progress: bool) -> None:
    """The adapted run's ``metrics.json``: its parent's test split, scored by the adapted
    model (what adapting to the site cost at home)."""
    from ..engine.evaluate import evaluate_run

    evaluate_run(out, split="test", out=out / "metrics.json", progress=progress)
