"""``cxrlab audit``: how much of a model's score comes from the lungs, and from elsewhere.

:func:`run_audit` loads a finished run, the images it is audited on (its own test split, or
another dataset) and their lung masks where the dataset has them, and runs:

1. **copies**: test images that copy a training or validation image (exact or near copies;
   see :mod:`cxrlab.data.dedup`), and the accuracy with and without them. On another
   dataset, copies of the run's training images are left out of every number.
2. **lungs**: the same images with the lungs removed (mean and noise fill) and with only the
   lungs left (:func:`~cxrlab.audit.checks.lungs_removed`). Needs masks.
3. **cam**: the share of Grad-CAM mass inside the lungs, per class. Needs masks.
4. **infection**: on correctly classified images with an infection mask beside them
   (COVID-QU-Ex's ``infection masks/``), whether Grad-CAM lands on the infection: its mass
   on the infection against the infection's share of the lungs (1 = chance), and whether its
   peak falls there (:func:`~cxrlab.audit.checks.cam_on_infection`). Needs infection masks.
5. **probes**: how well acquisition alone predicts the class (:mod:`cxrlab.audit.probes`).
6. **source**: with images of several sources, how well a linear probe on the model's
   penultimate features predicts their source, beside the class alone (lower is better).
7. **external**: on another dataset, metrics over the classes it has and where the images
   of each of its classes went.

It writes ``audit.json`` (every number), ``audit.md`` (one line per check, then tables) and
figures to ``out``. The run folder and its metrics are never changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import run_files
from ..data import PreparedData
from ..data.dedup import near_duplicates, signatures
from ..data.masks import decoded_masks
from ..data.prepare import lung_mask_files
from ..errors import ConfigError
from ..evaluation import classification_metrics
from ..evaluation.intervals import wilson_interval
from ..evaluation.other_data import match_classes, routing
from ..runs import load_run_model
from ..runs.card import RunCard
from ..runs.evaluate import scored_positions
from ..runs.scoring import ScoringRun, open_run
from ..runtime import resolve_device, run_precision
from ..utils import atomic_write_text, write_json
from . import audit_figures
from .checks import (
    cam_in_lungs,
    cam_on_infection,
    chance_accuracy,
    lungs_removed,
    penultimate_features,
    predict,
)
from .probes import acquisition_probes, source_probe

__all__ = ["CHECKS", "AuditResult", "run_audit"]

CHECKS = ("copies", "lungs", "cam", "infection", "probes", "source")


@dataclass(frozen=True)
class AuditResult:
    """What :func:`run_audit` found and wrote."""

    out: Path
    report: dict[str, Any]  # the content of audit.json
    files: dict[str, Path]

    @property
    def findings(self) -> dict[str, str]:
        """One line per check (``skipped: ...`` for checks that could not run)."""
        return {
            k: v.get("finding") or f"skipped: {v.get('skipped', '')}"
            for k, v in self.report["checks"].items()
        }


def _own_copies(images: np.ndarray, split: Any, rows: np.ndarray) -> dict[str, list[int]]:
    """Per audited row (by position), the train/val rows it copies exactly or nearly."""
    pool = np.array([i for i, s in enumerate(split.assignment) if s in ("train", "val")])
    out: dict[str, list[int]] = {}
    if not len(pool):
        return out
    hashes = {}
    for i in pool:
        hashes.setdefault(split.records[i].hash, int(i))
    for k, r in enumerate(rows):
        if split.records[r].hash in hashes:
            out.setdefault(str(k), []).append(hashes[split.records[r].hash])
    for k, j, _, _ in near_duplicates(signatures(images[rows]), signatures(images[pool])):
        if int(pool[j]) not in out.get(str(k), []):
            out.setdefault(str(k), []).append(int(pool[j]))
    return out


@dataclass
class _Audited:
    """A run and the images it is audited on: what every check reads."""

    run_dir: Path
    model: Any
    card: RunCard
    run: ScoringRun
    classes: list[str]
    prepared: PreparedData
    rows: np.ndarray  # the audited images' rows in ``prepared``
    records: list[Any]
    matching: dict[str, str | None]
    external: bool  # another dataset than the run's own
    lungs_mode: str
    mask_provider: Any
    device: torch.device
    amp: Any

    @property
    def images(self) -> np.ndarray:
        return self.prepared.images.array

    @cached_property
    def labels(self) -> np.ndarray:
        """Each audited image's model class index, ``-1`` where it is not scored."""
        m = self.matching
        return np.array([self.classes.index(m[r.label]) if m[r.label] else -1
                         for r in self.records])  # fmt: skip


@dataclass
class _Copies:
    """Copies of training images among the audited ones, found before anything is scored."""

    excluded: set[str]  # on another dataset: left out of every number
    found: dict[str, list[int]]  # on the run's own data: per audited position, its copies
    overlap: Any = None  # on another dataset: the overlap found
    patients: int = 0  # on another dataset: images left out as other images of seen patients

    def kept(self, records: Sequence[Any]) -> np.ndarray:
        """Positions of the audited images that are not left out as copies."""
        return np.array([k for k, r in enumerate(records) if r.path not in self.excluded],
                        dtype=int)  # fmt: skip


def _open(run_dir: Path, data: Any, split: str, class_map: dict[str, str] | None,
          masks_from: Any, device: str, progress: bool) -> _Audited:  # fmt: skip
    """Load the run and prepare the images as the run was trained (size, lungs mode; masks
    from the segmenter the run trained with, else the one asked for, else the files)."""
    model, card = load_run_model(run_dir)
    run = open_run(run_dir)
    prep = run.preparation(masks_from)  # the segmenter's masks serve the lung checks too
    prepared = run.prepare(data, split, preparation=prep, progress=progress)
    matching = match_classes(prepared.classes, run.classes, class_map,
                             where=f"the model in {run_dir}")  # fmt: skip
    rows = np.array(prepared.split.indices(split), dtype=np.int64)
    dev = resolve_device(device)
    model.to(dev)
    return _Audited(
        run_dir, model, card, run, run.classes, prepared, rows,
        [prepared.split.records[i] for i in rows], matching,
        not run.is_own_data(prepared), run.lungs,
        prep.mask_provider, dev,
        run_precision(card.training.precision, dev),
    )  # fmt: skip


def _header(a: _Audited, split: str) -> dict[str, Any]:
    report: dict[str, Any] = {
        "run": str(a.run_dir),
        "model": a.card.model,
        "weights": a.card.weights,
        "trained_with_lungs": a.lungs_mode,
        "data": str(a.prepared.report.root),
        "data_hash": a.prepared.report.fingerprint(),
        "split": split,
        "external": a.external,
        "class_matching": a.matching,
        "checks": {},
    }
    if not a.external and split in ("train", "all"):
        report["note"] = (
            f"The {split} split includes the images the model was trained on: its scores here "
            "are not test scores (the probes, which look at the data, are unaffected)."
        )
    return report


def _find_copies(a: _Audited, checks: Sequence[str], progress: bool) -> _Copies:
    """On another dataset, copies of the run's training images (left out of every number);
    on its own, audited images that copy a training or validation image."""
    if a.external:  # copies, and other images of patients the run saw
        seen = a.run.not_held_out(a.prepared, a.rows, progress=progress)
        return _Copies(seen.paths, {}, seen.overlap, len(seen.patients))
    found = _own_copies(a.images, a.prepared.split, a.rows) if "copies" in checks else {}
    return _Copies(set(), found)


def _scored(a: _Audited, copies: _Copies) -> np.ndarray:
    """Positions of the audited images that are scored: a model class, not a copy."""
    found = scored_positions(a.records, a.matching, copies.excluded, a.prepared)
    return np.array(found, dtype=int)


def _normal(a: _Audited, probs: np.ndarray, scored: np.ndarray) -> dict[str, Any]:
    """The model's score on the audited images as they are."""
    y = a.labels[scored]
    m = classification_metrics(y, probs[scored], a.classes)
    out = {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")}
    out["accuracy_ci"] = wilson_interval(round(m["accuracy"] * len(y)), len(y))
    out["chance"] = chance_accuracy(y)
    return out


def _copies_check(a: _Audited, copies: _Copies, probs: np.ndarray, split: str) -> dict[str, Any]:
    if copies.overlap is not None:
        n_copies = len(copies.excluded) - copies.patients
        same = (f" and {copies.patients} other image(s) of patients the run saw"
                if copies.patients else "")  # fmt: skip
        return copies.overlap.to_dict() | {
            "excluded": len(copies.excluded),
            "excluded_patients": copies.patients,
            "finding": f"{copies.overlap.summary()}; {n_copies} image(s) copying training "
            f"or validation images{same} are left out of every number below.",
        }
    found, y_all = copies.found, a.labels
    right = probs.argmax(1) == y_all
    has = np.array([str(k) in found for k in range(len(a.records))])
    with_copy, without = right[has & (y_all >= 0)], right[~has & (y_all >= 0)]
    res: dict[str, Any] = {
        "n_with_copy": len(found),
        "pairs": {
            a.records[int(k)].path: [a.prepared.split.records[j].path for j in v]
            for k, v in found.items()
        },
        "accuracy_with_copy": float(with_copy.mean()) if len(with_copy) else None,
        "accuracy_without_copy": float(without.mean()) if len(without) else None,
        "accuracy_without_copy_ci": wilson_interval(int(without.sum()), len(without)),
    }
    res["finding"] = (
        f"{len(found)} of {len(a.records)} {split} images copy a training or validation image "
        "(exact or near copies)"
        + (f"; accuracy {res['accuracy_with_copy']:.3f} on them and "
           f"{res['accuracy_without_copy']:.3f} on the rest" if found else "")
        + "."
    )  # fmt: skip
    return res


#: A figure to draw once every check has run: (key in the result's files, file name, draw).
_Plot = tuple[str, str, Callable[[Path], Path]]


def _lung_masks(a: _Audited, progress: bool) -> tuple[Any, np.ndarray]:
    """The audited images' lung masks, and each audited image's row in them: the masks the
    data was prepared with (cut to the lungs' boxes with --lungs crop), else the
    segmenter's or the mask files (for the audited images only)."""
    if a.prepared.masks is not None:
        return a.prepared.masks, a.rows
    read = a.mask_provider or lung_mask_files
    masks = read(a.prepared.report.root, a.records, a.run.image_size, progress)
    return masks, np.arange(len(a.rows))


def _infection_check(a: _Audited, scored: np.ndarray, probs: np.ndarray,
                     cam_images: int | None, seed: int,
                     progress: bool) -> tuple[dict[str, Any], list[_Plot]]:  # fmt: skip
    """Grad-CAM on the infection, for correctly classified images with infection masks."""
    if a.lungs_mode != "keep":
        return {"skipped": f"the model was trained with lungs {a.lungs_mode}: infection masks "
                           "are drawn on whole images"}, []  # fmt: skip
    sick = decoded_masks(a.prepared.report.root, a.records, a.run.image_size, "infection",
                         progress=progress)  # fmt: skip
    has = np.array([k for k in scored if sick.status[k] == "ok" and sick.array[k].any()], int)
    if not len(has):
        return {"skipped": f"needs infection masks beside the images ({sick.summary()}; "
                           "none with infection among the scored images)"}, []  # fmt: skip
    right = has[probs[has].argmax(1) == a.labels[has]]
    lungs, at = _lung_masks(a, progress)
    lung = None
    if lungs.valid[at][right].all():
        lung = lungs.array[at[right]]
    imgs = a.images[a.rows[right]]
    res = cam_on_infection(a.model, imgs, sick.array[right], lung, limit=cam_images, seed=seed)
    a.model.to(a.device)
    res |= {"n_infected": len(has), "n_correct": len(right),
            "accuracy_infected": len(right) / len(has)}  # fmt: skip
    if "skipped" in res:
        return res, []
    maps, rows = res.pop("maps"), res["rows"]
    res["rows"] = [a.records[right[r]].path for r in rows]
    if lung is None:
        res["note"] = (
            "some images have no valid lung mask: chance is the infection's share of the image"
        )
    draw = (lambda p: audit_figures.plot_cam_infection(
        imgs[rows], sick.array[right][rows], maps, res["ratios"], p))  # fmt: skip
    return res, [("cam_infection", "cam_infection.png", draw)]


def _lung_checks(a: _Audited, checks: Sequence[str], scored: np.ndarray,
                 cam_images: int | None, batch_size: int, seed: int,
                 progress: bool) -> tuple[dict[str, Any], list[_Plot]]:  # fmt: skip
    """Lungs removed / lungs only, and where Grad-CAM looks: both need lung masks."""
    results: dict[str, Any] = {}
    plots: list[_Plot] = []
    # the masks the data was prepared with (cut to the lungs' boxes with --lungs crop), else
    # the segmenter's or the mask files
    if a.lungs_mode in ("remove", "only"):
        why = (f"the model was trained with lungs {a.lungs_mode}: it never saw the lungs the "
               "check would hide")  # fmt: skip
        return {c: {"skipped": why} for c in ("lungs", "cam") if c in checks}, plots
    masks, at = _lung_masks(a, progress)
    use = scored[masks.valid[at][scored]]
    if not len(use):
        why = f"needs lung masks; {masks.summary()}"
        return {c: {"skipped": why} for c in ("lungs", "cam") if c in checks}, plots
    imgs, lung = a.images[a.rows[use]], masks.array[at[use]]
    y = a.labels[use]
    labels = [a.classes[c] for c in y]
    if "lungs" in checks:
        res = lungs_removed(a.model, imgs, lung, y, a.device, a.amp, seeds=a.rows[use] + seed,
                            batch_size=batch_size)  # fmt: skip
        res["note"] = (f"{len(scored) - len(use)} scored image(s) without a valid mask left "
                       f"out ({masks.summary()})" if len(use) < len(scored) else "")  # fmt: skip
        results["lungs"] = res
        plots += [("lungs", "lungs.png", lambda p, r=res: audit_figures.plot_lungs(r, p)),
                  ("lung_examples", "lung_examples.png",
                   lambda p: audit_figures.plot_lung_examples(imgs, lung, labels, p))]  # fmt: skip
    if "cam" in checks:
        cam = cam_in_lungs(a.model, imgs, lung, y, a.classes, limit=cam_images, seed=seed)
        a.model.to(a.device)
        if "skipped" not in cam:
            maps = dict(cam)
            predicted = [a.classes[p] for p in cam["predicted"]]
            plots += [("cam_outside", "cam_outside.png", lambda p: audit_figures.plot_cam_outside(
                           imgs, lung, maps, labels, predicted, p)),
                      ("cam_shares", "cam_shares.png",
                       lambda p: audit_figures.plot_cam_shares(maps, a.classes, y, p))]  # fmt: skip
            cam = {k: v for k, v in cam.items() if k != "maps"}
            cam["rows"] = [a.records[use[r]].path for r in cam["rows"]]
        results["cam"] = cam
    return results, plots


def _probes_check(a: _Audited, copies: _Copies, seed: int) -> tuple[dict[str, Any], list[_Plot]]:
    """Acquisition probes: what the data alone tells of the class (not the model)."""
    keep = copies.kept(a.records)
    probes = acquisition_probes(a.images[a.rows[keep]], [a.records[k].label for k in keep],
                                a.prepared.report.root, [a.records[k].path for k in keep],
                                seed=seed)  # fmt: skip
    if "skipped" in probes:
        return probes, []
    best = max(probes["probes"].items(), key=lambda kv: kv[1]["balanced_accuracy"])
    probes["finding"] = (
        f"From acquisition alone a linear probe tells the {len(probes['classes'])} "
        f"classes apart with balanced accuracy up to {best[1]['balanced_accuracy']:.3f} "
        f"[{best[1]['ci'][0]:.3f}, {best[1]['ci'][1]:.3f}] ({best[0]}; chance "
        f"{probes['chance']:.3f}; "
        + ", ".join(f"{k} {v['balanced_accuracy']:.2f}" for k, v in probes["probes"].items())
        + f"; {probes['n']} images)."
    )
    return probes, [("probes", "probes.png", lambda p: audit_figures.plot_probes(probes, p))]


def _external_check(a: _Audited, normal: dict[str, Any], y: np.ndarray) -> dict[str, Any]:
    present = sorted({a.classes[c] for c in y}, key=a.classes.index)
    ci = normal["accuracy_ci"]
    return {
        "classes_present": present,
        "finding": (
            f"On {len(y)} images of another dataset ({', '.join(present)} of the model's "
            f"{len(a.classes)} classes), accuracy {normal['accuracy']:.3f} [{ci[0]:.3f}, "
            f"{ci[1]:.3f}] and balanced accuracy {normal['balanced_accuracy']:.3f}; where each "
            "class went is in the table."
        ),
    }


def _write(out: Path, report: dict[str, Any], plots: list[_Plot]) -> AuditResult:
    """Every file of the audit: its figures, ``audit.json`` and ``audit.md``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {key: draw(out / name) for key, name, draw in plots}
    files["json"] = out / run_files.AUDIT_JSON
    files["markdown"] = out / run_files.AUDIT_MD
    write_json(files["json"], report)
    result = AuditResult(out, report, files)
    atomic_write_text(files["markdown"], audit_markdown(result))
    return result


def run_audit(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    checks: Sequence[str] = CHECKS,
    class_map: dict[str, str] | None = None,
    cam_images: int | None = 200,
    batch_size: int = 64,
    device: str = "auto",
    seed: int = 0,
    masks_from: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit a finished run for shortcuts; see the module docstring for the checks.

    Args:
        run_dir: a folder written by ``cxrlab train`` (or a study cell).
        data: the dataset to audit on (default: the run's own).
        split: ``test``/``val``/``train`` of the run's split (checked against ``data``), or
            ``all`` (every image of ``data``: another dataset).
        out: where to write (default: ``<run_dir>/audit``).
        checks: a subset of :data:`CHECKS`.
        class_map: dataset class -> model class, ``"-"`` for unscored (see ``evaluate``).
        cam_images: Grad-CAM maps at most (spread over the classes; ``None``: all).
        batch_size: images per forward pass.
        device: where the model runs (``auto``, ``cpu``, ``cuda``, ``mps``).
        seed: seed of the noise fill, the Grad-CAM subset and the probes' folds.
        masks_from: a lung segmenter run whose masks the lung checks use where the data has
            none (a run trained with ``--masks-from`` always uses its own segmenter).
        progress: show progress bars.

    Raises:
        CheckpointError: the run folder is not a finished run, or the dataset has classes the
            model does not know and the class map does not place.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ConfigError(f"Unknown audit check(s) {unknown}; choose from {', '.join(CHECKS)}")
    run_dir = Path(run_dir)
    a = _open(run_dir, data, split, class_map, masks_from, device, progress)
    report = _header(a, split)
    copies = _find_copies(a, checks, progress)  # before anything is scored
    scored = _scored(a, copies)
    probs = predict(a.model, a.images[a.rows], a.device, a.amp, batch_size, a.card.tta)
    report["normal"] = _normal(a, probs, scored)
    report["routing"] = routing([r.label for r in a.records], probs.argmax(1), a.classes)
    plots: list[_Plot] = []
    if a.external or "copies" in checks:
        report["checks"]["copies"] = _copies_check(a, copies, probs, split)
    if "lungs" in checks or "cam" in checks:
        found, drawn = _lung_checks(a, checks, scored, cam_images, batch_size, seed,
                                    progress)  # fmt: skip
        report["checks"] |= found
        plots += drawn
    if "infection" in checks:
        report["checks"]["infection"], drawn = _infection_check(a, scored, probs, cam_images,
                                                                seed, progress)  # fmt: skip
        plots += drawn
    if "probes" in checks:
        report["checks"]["probes"], drawn = _probes_check(a, copies, seed)
        plots += drawn
    if "source" in checks:
        keep = copies.kept(a.records)
        report["checks"]["source"] = _source_check(a.model, a.images[a.rows[keep]], a.prepared,
                                                   a.rows[keep], a.device, seed)  # fmt: skip
    if a.external:
        report["checks"]["external"] = _external_check(a, report["normal"], a.labels[scored])
    return _write(Path(out) if out is not None else run_dir / run_files.AUDIT_DIR, report, plots)


def _source_check(model: Any, images: np.ndarray, prepared: PreparedData, rows: np.ndarray,
                  device: torch.device, seed: int) -> dict[str, Any]:  # fmt: skip
    """The source probe on the model's penultimate features (see :func:`source_probe`)."""
    split = prepared.split
    sources = [split.source_of(int(i)) for i in rows]
    if len(set(sources)) < 2:
        return {"skipped": "the images come from one source (train on several with --data "
                           "A --data B to probe what the model knows of them)"}  # fmt: skip
    features = penultimate_features(model, images, device)
    labels = [split.records[int(i)].label for i in rows]
    res = source_probe(features, sources, labels, seed=seed)
    if "skipped" not in res:
        res["finding"] = (
            f"A linear probe on the model's penultimate features tells the {len(res['sources'])}"
            f" sources apart with balanced accuracy {res['balanced_accuracy']:.3f} "
            f"[{res['ci'][0]:.3f}, {res['ci'][1]:.3f}] (chance {res['chance']:.3f}; the class "
            f"alone gives {res['from_class']:.3f}; {res['n']} images). Lower is better: the "
            "more the features tell the source beyond the class, the more a new source can move "
            "the model."
        )
    return res


_TITLES = {
    "copies": "Copies of training images",
    "lungs": "Lungs removed / lungs only",
    "cam": "Where the explanation falls",
    "infection": "Does it look at the infection",
    "probes": "Acquisition probes",
    "source": "Source probe",
    "external": "External data",
}


def audit_markdown(result: AuditResult) -> str:
    """``audit.md``: one line per check, then the tables behind them."""
    r = result.report
    n = r["normal"]
    lines = [
        f"# Shortcut audit: {r['model']} ({r['weights']})",
        "",
        f"Run `{r['run']}`, audited on `{r['data']}` ({r['split']} split"
        f"{', another dataset' if r['external'] else ''}). Normal score: accuracy "
        f"{n['accuracy']:.3f} [{n['accuracy_ci'][0]:.3f}, {n['accuracy_ci'][1]:.3f}] on "
        f"{n['n']} images (chance {n['chance']:.3f}), balanced accuracy "
        f"{n['balanced_accuracy']:.3f}, macro-F1 {n['macro_f1']:.3f}.",
        "",
    ]
    if r.get("note"):
        lines += [f"**Note:** {r['note']}", ""]
    for key, finding in result.findings.items():
        lines.append(f"- **{_TITLES.get(key, key)}**: {finding}")
    lines.append("")
    checks = r["checks"]
    lines += _lungs_markdown(checks.get("lungs", {})) + _cam_markdown(checks.get("cam", {}))
    lines += _probes_markdown(checks.get("probes", {})) + _source_markdown(checks.get("source", {}))
    lines += _routing_markdown(r)
    return "\n".join(lines) + "\n"


def _lungs_markdown(lungs: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "variants" in lungs:
        lines += [
            "## Lungs removed / lungs only",
            "",
            "| images | accuracy [95 % CI] | balanced accuracy | kept of above-chance "
            "accuracy | same answer as original |",
            "|---|---|---|---|---|",
        ]
        o = lungs["original"]
        lines.append(
            f"| original | {o['accuracy']:.3f} [{o['accuracy_ci'][0]:.3f}, "
            f"{o['accuracy_ci'][1]:.3f}] | {o['balanced_accuracy']:.3f} | 100 % | - |"
        )
        for name, v in lungs["variants"].items():
            kept = (
                "n/a"
                if v["retained"] is None or not np.isfinite(v["retained"])
                else f"{v['retained'] * 100:.0f} %"
            )
            lines.append(
                f"| {name} | {v['accuracy']:.3f} [{v['accuracy_ci'][0]:.3f}, "
                f"{v['accuracy_ci'][1]:.3f}] | {v['balanced_accuracy']:.3f} | {kept} | "
                f"{v['agreement_with_original'] * 100:.0f} % |"
            )
        if lungs.get("note"):
            lines += ["", lungs["note"]]
        lines += ["", "![lungs](lungs.png)", "", "![examples](lung_examples.png)", ""]
    return lines


def _cam_markdown(cam: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "per_class" in cam:
        lines += [
            "## Where the explanation falls",
            "",
            "| true class | images | Grad-CAM mass in the lungs [95 % CI] | lung area |",
            "|---|---|---|---|",
        ]
        for c, v in cam["per_class"].items():
            lines.append(
                f"| {c} | {v['n']} | {v['share'] * 100:.0f} % [{v['share_ci'][0] * 100:.0f}"
                f", {v['share_ci'][1] * 100:.0f}] | {v['lung_area'] * 100:.0f} % |"
            )
        lines += ["", "![shares](cam_shares.png)", "", "![outside](cam_outside.png)", ""]
    return lines


def _probes_markdown(probes: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "probes" in probes:
        lines += [
            "## Acquisition probes",
            "",
            "| probe | features | balanced accuracy [95 % CI] | per-class recall |",
            "|---|---|---|---|",
        ]
        for name, v in probes["probes"].items():
            recall = ", ".join(f"{c} {x:.2f}" for c, x in v["per_class_recall"].items())
            lines.append(
                f"| {name} | {v['features']} | {v['balanced_accuracy']:.3f} "
                f"[{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] | {recall} |"
            )
        lines += [
            "",
            f"Chance: {probes['chance']:.3f}. Logistic regression on standardised "
            f"features, {probes['folds']}-fold stratified cross-validation.",
            "",
            "![probes](probes.png)",
            "",
        ]
    return lines


def _source_markdown(source: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "balanced_accuracy" in source:
        recall = ", ".join(f"{c} {x:.2f}" for c, x in source["per_class_recall"].items())
        lines += [
            "## Source probe",
            "",
            f"Balanced accuracy {source['balanced_accuracy']:.3f} [{source['ci'][0]:.3f}, "
            f"{source['ci'][1]:.3f}] from {source['features']} penultimate features (chance "
            f"{source['chance']:.3f}; the class alone: {source['from_class']:.3f}); recall per "
            f"source: {recall}. Logistic regression on standardised features, "
            f"{source['folds']}-fold stratified cross-validation.",
            "",
        ]
    return lines


def _routing_markdown(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += [
        "## Where the images went",
        "",
        "| dataset class | " + " | ".join(next(iter(r["routing"].values()))) + " |",
        "|---|" + "---|" * len(next(iter(r["routing"].values()))),
    ]
    for label, row in r["routing"].items():
        total = sum(row.values())
        target = r["class_matching"].get(label)
        name = label + ("" if target == label else f" (as {target})" if target else " (unscored)")
        lines.append(
            f"| {name} | " + " | ".join(f"{v / total:.0%} ({v})" for v in row.values()) + " |"
        )
    return lines
