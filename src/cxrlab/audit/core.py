"""``cxrlab audit``: how much of a model's score comes from the lungs, and from elsewhere.

:func:`run_audit` loads a finished run, the images it is audited on (its own test split, or
another dataset) and their lung masks where the dataset has them, and runs:

1. **copies**: test images that copy a training or validation image (exact or near copies;
   see :mod:`cxrlab.data.dedup`), and the accuracy with and without them. On another
   dataset, copies of the run's training images are left out of every number.
2. **lungs**: the same images with the lungs removed (mean and noise fill) and with only the
   lungs left (:func:`~cxrlab.audit.checks.lungs_removed`). Needs masks.
3. **cam**: the share of Grad-CAM mass inside the lungs, per class. Needs masks.
4. **probes**: how well acquisition alone predicts the class (:mod:`cxrlab.audit.probes`).
5. **source**: with images of several sources, how well a linear probe on the model's
   penultimate features predicts their source, beside the class alone (lower is better).
6. **external**: on another dataset, metrics over the classes it has and where the images
   of each of its classes went.

It writes ``audit.json`` (every number), ``audit.md`` (one line per check, then tables) and
figures to ``out``. The run folder and its metrics are never changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import PreparedData, prepare_data
from ..data.dedup import near_duplicates, signatures
from ..data.prepare import lung_mask_files
from ..engine import load_run_model
from ..engine.evaluate import run_tta
from ..engine.rundir import run_data, run_preparation
from ..engine.runtime import resolve_device, run_precision
from ..errors import ConfigError
from ..evaluation import classification_metrics
from ..evaluation.external import find_overlap, match_classes, routing
from ..evaluation.intervals import wilson_interval
from ..utils import atomic_write_text, write_json
from . import figures
from .checks import cam_in_lungs, chance_accuracy, lungs_removed, penultimate_features, predict
from .probes import acquisition_probes, source_probe

__all__ = ["CHECKS", "AuditResult", "run_audit"]

CHECKS = ("copies", "lungs", "cam", "probes", "source")


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
        seed: seed of the noise fill, the Grad-CAM subset and the probes' folds.
        masks_from: a lung segmenter run whose masks the lung checks use where the data has
            none (a run trained with ``--masks-from`` always uses its own segmenter).

    Raises:
        CheckpointError: the run folder is not a finished run, or the dataset has classes the
            model does not know and the class map does not place.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ConfigError(f"Unknown audit check(s) {unknown}; choose from {', '.join(CHECKS)}")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "audit"
    model, card = load_run_model(run_dir)
    classes = list(card["classes"])
    # masks: the segmenter the run trained with, else the one asked for, else the files
    prep = run_preparation(card, masks_from)
    size, lungs_mode, provider = prep["image_size"], prep["lungs"], prep["mask_provider"]
    root = data if data is not None else run_data(card)
    prepared = prepare_data(
        root,
        split_file=None if split == "all" else run_dir / "split.csv",
        holdout_all=split == "all",
        progress=progress,
        **(prep | {"doubtful": "skip"} if split == "all" else prep),
    )
    matching = match_classes(prepared.classes, classes, class_map, where=f"the model in {run_dir}")
    rows = np.array(prepared.split.indices(split), dtype=np.int64)
    records = [prepared.split.records[i] for i in rows]
    images = prepared.images.array
    external = prepared.report.fingerprint() != card["data"]["data_hash"]
    dev = resolve_device(device)
    amp = run_precision(card, dev)
    model.to(dev)

    report: dict[str, Any] = {
        "run": str(run_dir),
        "model": card["model"],
        "weights": card["weights"],
        "trained_with_lungs": lungs_mode,
        "data": str(prepared.report.root),
        "data_hash": prepared.report.fingerprint(),
        "split": split,
        "external": external,
        "class_matching": matching,
        "checks": {},
    }
    if not external and split in ("train", "all"):
        report["note"] = (
            f"The {split} split includes the images the model was trained on: its scores here "
            "are not test scores (the probes, which look at the data, are unaffected)."
        )
    # ---- copies of training images: left out on another dataset, reported on the run's own
    excluded: set[str] = set()
    if external:
        whole = prepared.whole_images(progress).array  # copies are of whole radiographs
        overlap = find_overlap(run_dir, card, records, whole[rows], progress=progress)
        excluded = overlap.paths(("train", "val"))
        copies: dict[str, Any] = overlap.to_dict() | {"excluded": len(excluded)}
        copies["finding"] = (
            f"{overlap.summary()}; {len(excluded)} image(s) copying training or validation "
            "images are left out of every number below."
        )
    elif "copies" in checks:
        found = _own_copies(images, prepared.split, rows)
        copies = {
            "n_with_copy": len(found),
            "pairs": {
                records[int(k)].path: [prepared.split.records[j].path for j in v]
                for k, v in found.items()
            },
        }
    scored = np.array(
        [
            k
            for k, r in enumerate(records)
            if matching[r.label] is not None and r.path not in excluded
        ],
        dtype=int,
    )
    if not len(scored):
        raise ConfigError("No audited image can be scored (every class unscored or a copy)")
    y_all = np.array(
        [classes.index(matching[r.label]) if matching[r.label] else -1 for r in records]
    )
    tta = run_tta(card)
    probs = predict(model, images[rows], dev, amp, batch_size, tta)
    y = y_all[scored]
    normal = classification_metrics(y, probs[scored], classes)
    report["normal"] = {
        k: normal[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")
    }
    report["normal"]["accuracy_ci"] = wilson_interval(round(normal["accuracy"] * len(y)), len(y))
    report["normal"]["chance"] = chance_accuracy(y)
    report["routing"] = routing([r.label for r in records], probs.argmax(1), classes)
    if external:
        report["checks"]["copies"] = copies
    elif "copies" in checks:
        right = probs.argmax(1) == y_all
        has = np.array([str(k) in found for k in range(len(records))])
        with_copy = right[has & (y_all >= 0)]
        without = right[~has & (y_all >= 0)]
        copies["accuracy_with_copy"] = float(with_copy.mean()) if len(with_copy) else None
        copies["accuracy_without_copy"] = float(without.mean()) if len(without) else None
        copies["accuracy_without_copy_ci"] = wilson_interval(int(without.sum()), len(without))
        copies["finding"] = (
            f"{len(found)} of {len(records)} {split} images copy a training or validation image "
            "(exact or near copies)"
            + (
                f"; accuracy {copies['accuracy_with_copy']:.3f} on them and "
                f"{copies['accuracy_without_copy']:.3f} on the rest"
                if found
                else ""
            )
            + "."
        )
        report["checks"]["copies"] = copies

    files: dict[str, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    # ---- lungs removed / lungs only, and where Grad-CAM looks: both need masks
    wants_masks = [c for c in ("lungs", "cam") if c in checks]
    if wants_masks:
        # the masks the data was prepared with (cut to the lungs' boxes with --lungs crop),
        # else the segmenter's or the mask files
        masks = prepared.masks
        if masks is None:
            read = provider or lung_mask_files
            masks = read(prepared.report.root, prepared.split.records, size, progress)
        valid = masks.valid[rows][scored]
        use = scored[valid]
        why = None
        if lungs_mode in ("remove", "only"):
            why = (
                f"the model was trained with lungs {lungs_mode}: it never saw the lungs "
                "the check would hide"
            )
        elif not len(use):
            why = f"needs lung masks; {masks.summary()}"
        missing_note = (
            f"{len(scored) - len(use)} scored image(s) without a valid mask left "
            f"out ({masks.summary()})"
            if len(use) < len(scored)
            else ""
        )
        m_imgs = images[rows[use]] if len(use) else None
        m_masks = masks.array[rows[use]] if len(use) else None
        yy = y_all[use]
        if "lungs" in checks:
            if why:
                report["checks"]["lungs"] = {"skipped": why}
            else:
                res = lungs_removed(
                    model,
                    m_imgs,
                    m_masks,
                    yy,
                    dev,
                    amp,
                    seeds=rows[use] + seed,
                    batch_size=batch_size,
                )
                res["note"] = missing_note
                report["checks"]["lungs"] = res
                files["lungs"] = figures.plot_lungs(res, out / "lungs.png")
                files["lung_examples"] = figures.plot_lung_examples(
                    m_imgs, m_masks, [classes[c] for c in yy], out / "lung_examples.png"
                )
        if "cam" in checks:
            if why:
                report["checks"]["cam"] = {"skipped": why}
            else:
                cam = cam_in_lungs(model, m_imgs, m_masks, yy, classes, limit=cam_images, seed=seed)
                model.to(dev)
                if "skipped" not in cam:
                    labels = [classes[c] for c in yy]
                    files["cam_outside"] = figures.plot_cam_outside(
                        m_imgs,
                        m_masks,
                        cam,
                        labels,
                        [classes[p] for p in cam["predicted"]],
                        out / "cam_outside.png",
                    )
                    files["cam_shares"] = figures.plot_cam_shares(
                        cam, classes, yy, out / "cam_shares.png"
                    )
                    cam = {k: v for k, v in cam.items() if k != "maps"}
                    cam["rows"] = [records[use[r]].path for r in cam["rows"]]
                report["checks"]["cam"] = cam
    # ---- acquisition probes: the dataset, not the model
    if "probes" in checks:
        keep = [k for k, r in enumerate(records) if r.path not in excluded]
        probes = acquisition_probes(
            images[rows[keep]],
            [records[k].label for k in keep],
            prepared.report.root,
            [records[k].path for k in keep],
            seed=seed,
        )
        if "skipped" not in probes:
            best = max(probes["probes"].items(), key=lambda kv: kv[1]["balanced_accuracy"])
            probes["finding"] = (
                f"From acquisition alone a linear probe tells the {len(probes['classes'])} "
                f"classes apart with balanced accuracy up to {best[1]['balanced_accuracy']:.3f} "
                f"[{best[1]['ci'][0]:.3f}, {best[1]['ci'][1]:.3f}] ({best[0]}; chance "
                f"{probes['chance']:.3f}; "
                + ", ".join(
                    f"{k} {v['balanced_accuracy']:.2f}" for k, v in probes["probes"].items()
                )
                + f"; {probes['n']} images)."
            )
            files["probes"] = figures.plot_probes(probes, out / "probes.png")
        report["checks"]["probes"] = probes
    if "source" in checks:
        keep = [k for k, r in enumerate(records) if r.path not in excluded]
        report["checks"]["source"] = _source_check(model, images[rows[keep]], prepared,
                                                   rows[keep], dev, seed)  # fmt: skip
    if external:
        present = sorted({classes[c] for c in y}, key=classes.index)
        report["checks"]["external"] = {
            "classes_present": present,
            "finding": (
                f"On {len(y)} images of another dataset ({', '.join(present)} of the model's "
                f"{len(classes)} classes), accuracy {normal['accuracy']:.3f} "
                f"[{report['normal']['accuracy_ci'][0]:.3f}, "
                f"{report['normal']['accuracy_ci'][1]:.3f}] and balanced accuracy "
                f"{normal['balanced_accuracy']:.3f}; where each class went is in the table."
            ),
        }
    files["json"] = out / "audit.json"
    files["markdown"] = out / "audit.md"
    write_json(files["json"], report)
    result = AuditResult(out, report, files)
    atomic_write_text(files["markdown"], audit_markdown(result))
    return result


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
    lungs = r["checks"].get("lungs", {})
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
            kept = "n/a" if not np.isfinite(v["retained"]) else f"{v['retained'] * 100:.0f} %"
            lines.append(
                f"| {name} | {v['accuracy']:.3f} [{v['accuracy_ci'][0]:.3f}, "
                f"{v['accuracy_ci'][1]:.3f}] | {v['balanced_accuracy']:.3f} | {kept} | "
                f"{v['agreement_with_original'] * 100:.0f} % |"
            )
        if lungs.get("note"):
            lines += ["", lungs["note"]]
        lines += ["", "![lungs](lungs.png)", "", "![examples](lung_examples.png)", ""]
    cam = r["checks"].get("cam", {})
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
    probes = r["checks"].get("probes", {})
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
    source = r["checks"].get("source", {})
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
    return "\n".join(lines) + "\n"
