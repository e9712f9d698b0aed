"""``cxrlab segment evaluate``: Dice, IoU and HD95 per image, per class, and the worst images.

Every predicted mask is first post-processed as every command does (two largest components,
holes filled: :func:`~cxrlab.segment.masks.clean_mask`), so the numbers describe the masks a
user gets. Images without a valid reference mask are left out and counted, and so are
images that copy (exactly or nearly) one the segmenter trained on or chose its epoch by
(:func:`copies_of_seen`; only its training images when its validation split is scored,
none when its training split is). An infection
segmenter is scored as :mod:`~cxrlab.segment.infection` describes (Dice on images with
infection, the false-positive area on those without, the infected share and grade).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import run_files
from ..data import PreparedData, decoded_masks, prepare_data
from ..data.masks import DecodedMasks
from ..errors import CheckpointError
from ..evaluation.other_data import find_overlap
from ..utils import atomic_write_rows, write_json
from .card import TARGETS
from .infection import score_infection, summarise_infection
from .masks import clean_infection, clean_mask, judge_mask
from .metrics import describe, mask_scores
from .model import LungSegmenter, load_segmenter, predict_probs

__all__ = [
    "copies_of_seen",
    "evaluate_segmenter",
    "predict_probs",
    "score_masks",
    "summarise_scores",
]


def score_masks(model: LungSegmenter, data: PreparedData, masks: DecodedMasks,
                rows: Sequence[int], batch_size: int = 16) -> list[dict[str, Any]]:  # fmt: skip
    """Per image: path, class, Dice, IoU, HD95 (pixels at the model's input size) and the
    mask's verdict."""
    probs = predict_probs(model, data.images.array, rows, batch_size)
    out = []
    for prob, i in zip(probs, rows):
        clean = clean_mask(prob)
        rec = data.split.records[i]
        verdict = judge_mask(clean, prob)
        out.append({"path": rec.path, "label": rec.label, "row": int(i),
                    **mask_scores(clean, masks.array[i]), "ok": verdict.ok,
                    "reasons": "; ".join(verdict.reasons)})  # fmt: skip
    return out


def summarise_scores(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std, minimum and median of each metric, overall and per class; HD95 where it is
    defined (its ``n`` says over how many images)."""

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "n": len(rows),
            "dice": describe([r["dice"] for r in rows]),
            "iou": describe([r["iou"] for r in rows]),
            "hd95": describe([r["hd95"] for r in rows if r["hd95"] is not None]),
            "doubtful": sum(not r["ok"] for r in rows),
        }

    by_class: dict[str, list] = defaultdict(list)
    for r in scores:
        by_class[r["label"]].append(r)
    return {"overall": block(scores), "per_class": {c: block(v) for c, v in by_class.items()},
            "images": scores}  # fmt: skip


def plot_worst(scores: list[dict[str, Any]], data: PreparedData, masks: DecodedMasks,
               probs: dict[int, np.ndarray], out: Path, n: int = 8,
               lungs: DecodedMasks | None = None) -> Path | None:  # fmt: skip
    """The ``n`` images with the lowest Dice: the X-ray, the reference outline (green) and
    the predicted one (red); of infection (``lungs``: the reference lungs it is kept in,
    whose outline is drawn in blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = sorted(scores, key=lambda r: r["dice"])[:n]
    if not worst:
        return None
    fig, axes = plt.subplots(1, len(worst), figsize=(2.4 * len(worst), 2.9), dpi=110,
                             squeeze=False)  # fmt: skip
    for ax, r in zip(axes[0], worst):
        i = r["row"]
        ax.imshow(data.images.array[i], cmap="gray")
        if lungs is None:
            pred = clean_mask(probs[i])
        else:
            lung = lungs.array[i] if lungs.status[i] == "ok" else None
            pred = clean_infection(probs[i], lung)
            if lung is not None:
                ax.contour(lung, levels=[0.5], colors="deepskyblue", linewidths=0.6)
        for mask, colour in ((masks.array[i], "lime"), (pred, "red")):
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{r['label']}\nDice {r['dice']:.3f}", fontsize=7)
        ax.axis("off")
    what = "lungs" if lungs is None else "infection (lungs: blue)"
    fig.suptitle(f"Lowest Dice: reference (green) and predicted {what} (red)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def copies_of_seen(split_file: Path, root: str | os.PathLike[str], prepared: PreparedData,
                   rows: Sequence[int], splits: Sequence[str], *,
                   progress: bool = False) -> tuple[set[int], dict[str, Any]]:  # fmt: skip
    """The rows of ``prepared`` (the set being scored) that copy, exactly or nearly, one of a
    segmenter's images of ``splits`` (its ``split_file``, its images under ``root``), found
    as a classifier's external scores find them
    (:func:`~cxrlab.evaluation.other_data.find_overlap`); and what ``metrics.json`` records
    of them (how many exact, how many near, and why near copies were not looked for, if
    they were not). A score on such an image is not a score on an unseen image."""
    rows = list(rows)
    records = prepared.split.records
    found = find_overlap(split_file, root, prepared.images.size, [records[i] for i in rows],
                         prepared.images.array[rows], splits=splits,
                         progress=progress)  # fmt: skip
    paths = found.paths(tuple(splits))
    record = {"exact": len({e for e, *_ in found.exact}), "near": len({n for n, *_ in found.near}),
              "note": found.note}  # fmt: skip
    return {i for i in rows if records[i].path in paths}, record


def evaluate_segmenter(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    lungs: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """A segmenter's masks against the reference masks of a dataset (lungs, or infection
    with the reference lungs beside it).

    Args:
        run_dir: a folder written by ``cxrlab segment train``.
        data: a dataset with masks of the segmenter's target (default: the one it trained
            on, with its split).
        split: ``test``/``val``/``train`` of the run's split, or ``all`` (every image).
        out: where ``metrics.json``, ``per_image.csv`` and ``worst.png`` go (default
            ``<run>/evaluation-<split>``, or ``<run>/evaluation-<split>-predicted-lungs``).
        lungs: an infection segmenter's: a lung segmenter run whose masks it is kept in
            (default: the reference lung masks; see :mod:`~cxrlab.segment.infection`).

    Raises:
        CheckpointError: not a segmenter run, or no image of the split has a reference mask.
    """
    run_dir = Path(run_dir)
    model, card = load_segmenter(run_dir)
    size = card.image_size
    if data is None and card.data is None:
        raise CheckpointError(f"{run_dir} has not finished training: give the data (--data)")
    root = data if data is not None else card.data.root  # type: ignore[union-attr]
    if split == "all":
        prepared = prepare_data(root, holdout_all=True, image_size=size, progress=progress)
    else:
        prepared = prepare_data(root, split_file=run_dir / run_files.SPLIT, image_size=size,
                                progress=progress)  # fmt: skip
    kind = TARGETS[card.target]
    masks = decoded_masks(prepared.report.root, prepared.split.records, size, kind,
                          progress=progress)  # fmt: skip
    rows = [i for i in prepared.split.indices(split) if masks.status[i] == "ok"]
    # what it trained on or chose its epoch by; its training split is scored by request
    seen, copies = set(), {"exact": 0, "near": 0, "note": ""}
    if split != "train":
        seen, copies = copies_of_seen(
            run_dir / run_files.SPLIT, card.data.root if card.data is not None else "",
            prepared, rows, ("train",) if split == "val" else ("train", "val"),
            progress=progress)  # fmt: skip
    rows = [i for i in rows if i not in seen]
    if not rows:
        raise CheckpointError(
            f"No {split} image of {prepared.report.root} has a valid {kind} mask to compare "
            f"with, once copies of the images it trained on are left out ({masks.summary()}; "
            f"{len(seen)} copies)"
        )
    if kind == "lung" and lungs is not None:
        raise CheckpointError(f"{run_dir} segments the lungs: --lungs is for an infection "
                              "segmenter")  # fmt: skip
    ref_lungs = used = None
    if kind == "lung":
        scores = score_masks(model, prepared, masks, rows, batch_size)
        result = summarise_scores(scores)
        keys = ["path", "label", "dice", "iou", "hd95", "ok", "reasons"]
    else:
        ref_lungs = decoded_masks(prepared.report.root, prepared.split.records, size, "lung",
                                  progress=progress)  # fmt: skip
        if lungs is not None:
            from .apply import predicted_masks

            used = predicted_masks(prepared.report.root, prepared.split.records, size, lungs,
                                   progress=progress)  # fmt: skip
        context = (used or ref_lungs).array  # the lungs it is kept in, if it takes them in
        probs_all = predict_probs(model, prepared.images.array, rows, batch_size, context)
        scores = score_infection(probs_all, prepared, masks, ref_lungs, rows, used)
        result = summarise_infection(scores)
        keys = ["path", "label", "infected", "dice", "iou", "true_fraction", "pred_fraction",
                "fp_area", "true_grade", "pred_grade", "lungs"]  # fmt: skip
    left_out = len(prepared.split.indices(split)) - len(rows) - len(seen)
    result.update({"split": split, "data_root": str(prepared.report.root), "target": card.target,
                   "left_out_without_mask": left_out, "left_out_copies": copies,
                   "lungs": str(lungs) if lungs is not None else "reference"})  # fmt: skip
    suffix = "-predicted-lungs" if lungs is not None else ""
    folder = Path(out) if out is not None else run_dir / f"evaluation-{split}{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / run_files.METRICS, {k: v for k, v in result.items() if k != "images"})
    atomic_write_rows(folder / "per_image.csv", scores, keys, extrasaction="ignore")
    # the worst lungs, or the worst infection among images that have some
    pool = scores if ref_lungs is None else [r for r in scores if r["infected"]] or scores
    worst = sorted(pool, key=lambda r: r["dice"])[:8]
    worst_rows = [r["row"] for r in worst]
    context = None if ref_lungs is None else (used or ref_lungs).array
    probs = dict(zip(worst_rows, predict_probs(model, prepared.images.array, worst_rows,
                                               lungs=context)))  # fmt: skip
    plot_worst(worst, prepared, masks, probs, folder / "worst.png", lungs=used or ref_lungs)
    result["files"] = {"metrics": str(folder / run_files.METRICS),
                       "per_image": str(folder / "per_image.csv"),
                       "worst": str(folder / "worst.png")}  # fmt: skip
    return result
