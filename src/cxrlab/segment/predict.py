"""``cxrlab segment predict``: lung or infection masks for a dataset that has none.

The output folder is a masked copy of the dataset's layout that every mask-aware command
reads: each image is linked (not copied) at its own relative path, inside an ``images``
folder, and its mask is written beside it in ``masks/<stem>.png`` (0 and 255, at the image's
own size). Each mask is post-processed (:func:`~cxrlab.segment.masks.clean_mask`) and judged
(:func:`~cxrlab.segment.masks.judge_mask`); a doubtful mask is not put beside its image
unless asked (``doubtful="keep"``), so mask-aware commands count that image as having no
valid mask instead of silently using a bad one. ``masks.csv`` lists every image with its
verdict, ``segmenter.json`` names the segmenter that made the masks, and ``preview.png`` shows
a few images of each class with their mask's outline.

An infection segmenter needs the lungs (its masks are kept inside them, and severity is a
share of them): a lung segmenter's (``lungs=RUN``), whose masks are then written too, or the
dataset's own lung masks. Each image's infection mask goes to ``infection masks/<stem>.png``
beside its ``masks/``, and ``severity.csv`` has one row per image: the infected share of both
lungs and of each, and the RALE-style extent grade 0-8 (:mod:`~cxrlab.segment.severity`). An
image whose lung mask is doubtful or missing gets no numbers, and its row says why (with
``doubtful="keep"``, a doubtful mask's numbers are given and the row still says so).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data import decoded_images, decoded_masks, load_gray8, scan_dataset
from ..errors import ConfigError, DataError
from ..utils import atomic_write_rows, write_json
from .card import SegmenterCard
from .evaluate import predict_probs
from .masks import clean_infection, clean_mask, judge_mask
from .model import LungSegmenter, load_segmenter
from .severity import Severity, severity

__all__ = ["predict_masks"]


def _targets(rel: str, kind: str = "masks") -> tuple[Path, Path]:
    """Where an image's link and its mask (in a ``kind`` folder) go, relative to the output
    folder."""
    p = Path(rel)
    folder = p.parent if p.parent.name.lower() == "images" else p.parent / "images"
    return folder / p.name, folder.parent / kind / f"{p.stem}.png"


def _save_mask(mask: np.ndarray, width: int, height: int, path: Path) -> None:
    """A 0/1 mask at the image's own size (bilinear, thresholded at half), as 0 and 255."""
    img = Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255)
    if img.size != (width, height):
        img = Image.fromarray(((np.asarray(img.resize((width, height), Image.BILINEAR)) >= 128)
                               * 255).astype(np.uint8))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # a file system without links
        shutil.copy2(src, dst)


def _preview(root: Path, records: list, lines: list[dict[str, Any]], path: Path,
             per_class: int = 3) -> None:  # fmt: skip
    """A few images of each class with their mask's outline (red: doubtful)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen: list[int] = []
    for label in sorted({r.label for r in records}):
        chosen += [i for i, r in enumerate(records) if r.label == label][:per_class]
    cols = min(len(chosen), 6)
    nrows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.5 * nrows), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
        ax.imshow(load_gray8(root / records[i].path), cmap="gray")
        line = lines[i]
        mask_file = path.parent / (line["mask"] or "")
        if line["mask"] and mask_file.is_file():
            mask = np.asarray(Image.open(mask_file)) > 0
            ax.contour(mask, levels=[0.5], colors="lime" if line["ok"] else "red",
                       linewidths=0.8)  # fmt: skip
        sick_file = path.parent / (line.get("infection_mask") or "")
        if line.get("infection_mask") and sick_file.is_file():
            sick = np.asarray(Image.open(sick_file)) > 0
            if sick.any():
                ax.imshow(np.ma.masked_where(~sick, sick), cmap="autumn", alpha=0.45,
                          vmin=0, vmax=1)  # fmt: skip
        verdict = "ok" if line["ok"] else "doubtful"
        if "grade" in line:
            verdict = f"grade {line['grade']}" if line["grade"] != "" else "lungs doubtful"
        ax.set_title(f"{records[i].label[:18]}\n{verdict}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def predict_masks(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    lungs: str | os.PathLike[str] | None = None,
    doubtful: Literal["skip", "keep"] = "skip",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Write masks for every image of ``data`` into ``out`` (see the module docstring).

    Args:
        lungs: for an infection segmenter, a lung segmenter run (default: the dataset's
            own lung masks).

    Returns:
        ``{"written", "doubtful", "images", "out"}``: counts, and the doubtful images with
        their reasons (an infection segmenter's: ``"severity"``, the grades' counts, too).

    Raises:
        ConfigError: ``out`` is the dataset itself, ``doubtful`` is not skip/keep, or
            ``lungs`` given to a lung segmenter.
        CheckpointError: ``run_dir`` is not a segmenter run, or ``lungs`` not a lung one.
        DataError: no images, or (infection) no lungs to keep the infection in.
    """
    if doubtful not in ("skip", "keep"):
        raise ConfigError(f"doubtful must be skip or keep, got {doubtful!r}")
    model, card = load_segmenter(run_dir)
    if card.target == "lungs" and lungs is not None:
        raise ConfigError(f"{run_dir} segments the lungs itself: --lungs is for an infection "
                          "segmenter")  # fmt: skip
    size = card.image_size
    report = scan_dataset(data, progress=progress)
    out = Path(out)
    if out.resolve() == report.root.resolve():
        raise ConfigError("--out must be a new folder, not the dataset itself")
    records = sorted(report.records, key=lambda r: r.path)
    if not records:
        raise DataError(f"{report.root} has no valid images to segment")
    if card.target == "infection":
        return _predict_infection(model, card, run_dir, report.root, records, out, lungs,
                                  doubtful, batch_size, progress)  # fmt: skip
    images = decoded_images(report.root, records, size, progress=progress)
    rows, lines, bad = list(range(len(records))), [], []
    for start in tqdm(range(0, len(rows), 64), desc="Segmenting", unit="batch", leave=False,
                      disable=not progress or None):  # fmt: skip
        chunk = rows[start : start + 64]
        for i, prob in zip(chunk, predict_probs(model, images.array, chunk, batch_size)):
            rec = records[i]
            full = Image.fromarray(prob).resize((rec.width, rec.height), Image.BILINEAR)
            prob_full = np.asarray(full, dtype=np.float32)
            # judged at the segmenter's own size, as wherever its masks are used; drawn at
            # the image's size
            verdict = judge_mask(clean_mask(prob), prob)
            mask = clean_mask(prob_full)
            image_at, mask_at = _targets(rec.path)
            _link(report.root / rec.path, out / image_at)
            use = verdict.ok or doubtful == "keep"
            if use:
                (out / mask_at).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * 255).save(out / mask_at)
            if not verdict.ok:
                bad.append({"path": rec.path, "reasons": "; ".join(verdict.reasons)})
            lines.append({"path": image_at.as_posix(), "mask": mask_at.as_posix() if use else "",
                          **verdict.to_dict(), "reasons": "; ".join(verdict.reasons)})  # fmt: skip
    atomic_write_rows(out / "masks.csv", lines)
    write_json(out / "segmenter.json", {"run": str(Path(run_dir).resolve()),
                                        "card": card.created, "doubtful": doubtful,
                                        "encoder": card.encoder, "test": card.test})  # fmt: skip
    _preview(report.root, records, lines, out / "preview.png")
    written = sum(1 for ln in lines if ln["mask"])
    return {"written": written, "doubtful": bad, "images": len(records), "out": str(out)}


def _predict_infection(model: LungSegmenter, card: SegmenterCard, run_dir: Any, root: Path,
                       records: list, out: Path, lungs_run: Any, doubtful: str,
                       batch_size: int, progress: bool) -> dict[str, Any]:  # fmt: skip
    """Infection masks and ``severity.csv`` (see the module docstring)."""
    size = card.image_size
    if lungs_run is not None:
        from .apply import predicted_masks, segmenter_id

        lung = predicted_masks(root, records, size, lungs_run, progress=progress)
        lung_source: dict[str, Any] = {"segmenter": segmenter_id(lungs_run)}
    else:
        lung = decoded_masks(root, records, size, "lung", progress=progress)
        if not lung.valid.any():
            raise DataError(
                f"{root} has no valid lung masks beside its images ({lung.summary()}): an "
                "infection segmenter needs the lungs; give a lung segmenter (--lungs RUN)"
            )
        lung_source = {"files": lung.summary()}
    images = decoded_images(root, records, size, progress=progress)
    lines: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = []
    grades: dict[str, int] = {}
    for start in tqdm(range(0, len(records), 64), desc="Segmenting infection", unit="batch",
                      leave=False, disable=not progress or None):  # fmt: skip
        chunk = list(range(start, min(start + 64, len(records))))
        probs = predict_probs(model, images.array, chunk, batch_size, lung.array)
        for i, prob in zip(chunk, probs):
            rec = records[i]
            image_at, sick_at = _targets(rec.path, "infection masks")
            _link(root / rec.path, out / image_at)
            status = lung.status[i]
            use = status == "ok" or (doubtful == "keep" and status.startswith("doubtful"))
            line: dict[str, Any] = {"path": image_at.as_posix(), "label": rec.label}
            if not use:
                bad.append({"path": rec.path, "reasons": status})
                empty = {"lungs": status, "mask": "", "infection_mask": "", "ok": False}
                lines.append(line | Severity.missing(status).to_row() | empty)
                continue
            lung_mask = lung.array[i]
            sick = clean_infection(prob, lung_mask)
            # a doubtful mask kept on request: its numbers, and the row says so
            sev = severity(lung_mask, sick, check=status == "ok")
            row = sev.to_row()
            if status != "ok":
                row["lungs"] = status
            if not sev.ok or status != "ok":
                bad.append({"path": rec.path, "reasons": row["lungs"]})
            _save_mask(sick, rec.width, rec.height, out / sick_at)
            mask_at = ""
            if lungs_run is not None:
                _, lung_at = _targets(rec.path)
                _save_mask(lung_mask, rec.width, rec.height, out / lung_at)
                mask_at = lung_at.as_posix()
            if row["grade"] != "":
                grades[str(row["grade"])] = grades.get(str(row["grade"]), 0) + 1
            lines.append(line | row | {"mask": mask_at, "infection_mask": sick_at.as_posix(),
                                       "ok": status == "ok" and sev.ok})  # fmt: skip
    atomic_write_rows(out / "severity.csv", lines)
    write_json(out / "segmenter.json", {"run": str(Path(run_dir).resolve()),
                                        "card": card.created, "target": card.target,
                                        "lungs": lung_source, "doubtful": doubtful,
                                        "encoder": card.encoder, "test": card.test})  # fmt: skip
    _preview(root, records, lines, out / "preview.png")
    written = sum(1 for ln in lines if ln["infection_mask"])
    return {"written": written, "doubtful": bad, "images": len(records), "out": str(out),
            "severity": dict(sorted(grades.items(), key=lambda kv: int(kv[0])))}  # fmt: skip
