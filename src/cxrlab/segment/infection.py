"""An infection segmenter's masks against reference infection masks, and its severity.

Each image's predicted infection is cleaned as every command cleans it
(:func:`~cxrlab.segment.masks.clean_infection`: inside the lungs, specks dropped) and scored
against its reference. By default the *reference* lung masks are the lungs, so the numbers
describe the infection segmenter alone; given a lung segmenter's masks (``used_lungs``), the
predicted infection and its shares are taken inside *those* lungs, as ``segment predict``
would, while the true shares stay the reference's: the whole chain, as a user gets it. An
image whose predicted lung mask is doubtful gets no predicted share (counted, not guessed).

- on images with infection: Dice and IoU;
- on images whose reference mask is empty (COVID-QU-Ex annotated COVID-19 infection only, so
  its Normal *and* Non-COVID pneumonia images have empty masks: an opacity there is "no
  infection" by the reference, and a segmenter that marks a non-COVID pneumonia's opacity is
  counted wrong): the false-positive area, the share of the lungs called infected;
- on every image: the infected share of the lungs and the extent grade 0-8
  (:mod:`~cxrlab.segment.severity`), predicted against true, as a Spearman correlation and a
  quadratically weighted kappa.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data import PreparedData
from ..data.masks import DecodedMasks
from .masks import clean_infection
from .metrics import describe, dice, iou
from .severity import NONE_BELOW, severity

__all__ = ["FP_AIM", "FP_SHARE", "score_infection", "summarise_infection"]

#: The false-positive area aimed under on an image without infection (share of the lungs):
#: the severity grade's "none".
FP_AIM = NONE_BELOW
#: The share of images without infection that must stay under :data:`FP_AIM` for training
#: to choose an epoch by its Dice on the images with infection.
FP_SHARE = 0.9


def score_infection(
    probs: np.ndarray,
    data: PreparedData,
    infection: DecodedMasks,
    lungs: DecodedMasks,
    rows: Sequence[int],
    used_lungs: DecodedMasks | None = None,
) -> list[dict[str, Any]]:
    """Per image of ``rows`` (``probs[k]`` for ``rows[k]``): path, class, whether its
    reference has infection, Dice, IoU, the true and predicted infected share of the lungs
    (``fp_area`` too where the reference is empty) and grades. Rows whose reference lung mask
    is not valid get Dice and IoU on the whole image and no shares; ``used_lungs``: the lungs
    the prediction is kept in (default: the reference's; see the module docstring)."""
    out = []
    used = lungs if used_lungs is None else used_lungs
    for prob, i in zip(probs, rows):
        rec = data.split.records[i]
        ref = infection.array[i] != 0
        lung = lungs.array[i] if lungs.status[i] == "ok" else None
        mine = used.array[i] if used.status[i] == "ok" else None
        pred = clean_infection(prob, mine if used_lungs is not None else lung) != 0
        row: dict[str, Any] = {
            "path": rec.path, "label": rec.label, "row": int(i), "infected": bool(ref.any()),
            "dice": dice(pred, ref), "iou": iou(pred, ref),
        }  # fmt: skip
        if lung is not None:
            true = severity(lung, ref, check=False)
            got = severity(mine, pred, check=False) if mine is not None else None
            share = None if got is None else got.infection_fraction
            row |= {
                "true_fraction": true.infection_fraction,
                "pred_fraction": share,
                "fp_area": None if ref.any() else share,
                "true_grade": true.grade,
                "pred_grade": None if got is None else got.grade,
                "lungs": ("ok" if true.ok else true.reason) if mine is not None
                else f"predicted lungs {used.status[i]}",
            }  # fmt: skip
        else:
            row |= {"true_fraction": None, "pred_fraction": None, "fp_area": None,
                    "true_grade": None, "pred_grade": None,
                    "lungs": f"no reference lung mask ({lungs.status[i]})"}  # fmt: skip
        out.append(row)
    return out


def _block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    infected = [r for r in rows if r["infected"]]
    empty = [r for r in rows if not r["infected"] and r["fp_area"] is not None]
    both = [r for r in rows if r["true_fraction"] is not None and r["pred_fraction"] is not None]
    fp = [r["fp_area"] for r in empty]
    out: dict[str, Any] = {
        "n": len(rows),
        "n_infected": len(infected),
        "dice": describe([r["dice"] for r in infected]),
        "iou": describe([r["iou"] for r in infected]),
        "fp_area": describe(fp),
        "fp_under_aim": float(np.mean([v < FP_AIM for v in fp])) if fp else None,
        "fp_none": float(np.mean([v == 0 for v in fp])) if fp else None,
        "spearman": None,
        "spearman_infected": None,
        "kappa": None,
        "grade_exact": None,
        "grade_within_1": None,
    }
    true = np.array([r["true_fraction"] for r in both], dtype=np.float64)
    pred = np.array([r["pred_fraction"] for r in both], dtype=np.float64)
    if len(both) > 2 and np.ptp(true) > 0 and np.ptp(pred) > 0:
        out["spearman"] = float(spearmanr(true, pred).statistic)
    sick = [r for r in both if r["infected"]]
    t2 = np.array([r["true_fraction"] for r in sick])
    p2 = np.array([r["pred_fraction"] for r in sick])
    if len(sick) > 2 and np.ptp(t2) > 0 and np.ptp(p2) > 0:
        out["spearman_infected"] = float(spearmanr(t2, p2).statistic)
    graded = [r for r in both if r["true_grade"] is not None and r["pred_grade"] is not None]
    if graded:
        tg = np.array([r["true_grade"] for r in graded])
        pg = np.array([r["pred_grade"] for r in graded])
        if len(set(tg)) > 1:  # one true grade (a class without infection): kappa says nothing
            out["kappa"] = float(
                cohen_kappa_score(tg, pg, weights="quadratic", labels=list(range(9)))
            )
        out["grade_exact"] = float((tg == pg).mean())
        out["grade_within_1"] = float((np.abs(tg - pg) <= 1).mean())
    return out


def summarise_infection(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Every number of the module docstring, overall and per class (``dice`` is over the
    images with infection, ``fp_area`` over those without)."""
    by_class: dict[str, list] = defaultdict(list)
    for r in scores:
        by_class[r["label"]].append(r)
    return {"overall": _block(scores), "per_class": {c: _block(v) for c, v in by_class.items()},
            "images": scores}  # fmt: skip
