"""``cxrlab segment predict``: lung masks for a dataset that has none.

The output folder is a masked copy of the dataset's layout that every mask-aware command
reads: each image is linked (not copied) at its own relative path, inside an ``images``
folder, and its mask is written beside it in ``masks/<stem>.png`` (0 and 255, at the image's
own size). Each mask is post-processed (:func:`~cxrlab.segment.masks.clean_mask`) and judged
(:func:`~cxrlab.segment.masks.judge_mask`); a doubtful mask is not put beside its image
unless asked (``doubtful="keep"``), so mask-aware commands count that image as having no
valid mask instead of silently using a bad one. ``masks.csv`` lists every image with its
verdict, ``segmenter.json`` names the segmenter that made the masks, and ``preview.png`` shows
a few images of each class with their mask's outline.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data import decoded_images, load_gray8, scan_dataset
from ..errors import ConfigError, DataError
from ..utils import atomic_write_text, write_json
from .evaluate import predict_probs
from .masks import clean_mask, judge_mask
from .model import load_segmenter

__all__ = ["predict_masks"]


def _targets(rel: str) -> tuple[Path, Path]:
    """Where an image's link and its mask go, relative to the output folder."""
    p = Path(rel)
    folder = p.parent if p.parent.name.lower() == "images" else p.parent / "images"
    return folder / p.name, folder.parent / "masks" / f"{p.stem}.png"


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
        verdict = "ok" if line["ok"] else "doubtful"
        ax.set_title(f"{records[i].label[:18]}\n{verdict}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def predict_masks(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    doubtful: Literal["skip", "keep"] = "skip",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Write lung masks for every image of ``data`` into ``out`` (see the module docstring).

    Returns:
        ``{"written", "doubtful", "images", "out"}``: counts, and the doubtful images with
        their reasons.

    Raises:
        ConfigError: ``out`` is the dataset itself, or ``doubtful`` is not skip/keep.
        CheckpointError: ``run_dir`` is not a segmenter run.
    """
    if doubtful not in ("skip", "keep"):
        raise ConfigError(f"doubtful must be skip or keep, got {doubtful!r}")
    model, card = load_segmenter(run_dir)
    size = card.image_size
    report = scan_dataset(data, progress=progress)
    out = Path(out)
    if out.resolve() == report.root.resolve():
        raise ConfigError("--out must be a new folder, not the dataset itself")
    records = sorted(report.records, key=lambda r: r.path)
    if not records:
        raise DataError(f"{report.root} has no valid images to segment")
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
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(lines[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(lines)
    atomic_write_text(out / "masks.csv", buf.getvalue())
    write_json(out / "segmenter.json", {"run": str(Path(run_dir).resolve()),
                                        "card": card.created, "doubtful": doubtful,
                                        "encoder": card.encoder, "test": card.test})  # fmt: skip
    _preview(report.root, records, lines, out / "preview.png")
    written = sum(1 for ln in lines if ln["mask"])
    return {"written": written, "doubtful": bad, "images": len(records), "out": str(out)}
