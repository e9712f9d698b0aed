"""Synthetic chest X-ray phantoms: a four-class dataset that needs no download.

Each image is drawn procedurally: a thorax, two lung fields with diaphragm domes, a heart
shadow, spine, ribs and clavicles, faint vascular markings, and one class-specific finding
whose strength varies from obvious to barely visible:

* ``Normal``: clear lungs.
* ``COVID``: bilateral, peripheral, lower-zone ground-glass opacities (several hazy blobs
  along the outer lung margins of both lungs).
* ``Lung_Opacity``: a focal lobar consolidation (one dense, sharply bounded region in one
  lung).
* ``Viral Pneumonia``: a diffuse perihilar interstitial pattern (streaks and reticular
  texture radiating from both hila).

Nuisances that carry no label information (exposure, gamma, noise, small rotations and
shifts, an "L"/"R" text marker in a random corner) keep the task from being trivial. The
images are written in the Kaggle layout of the COVID-19 Radiography Database, so every
command treats them exactly like the real data. Generation is deterministic by seed.

Audits need data whose truth is known. ``masks=True`` writes each phantom's lung mask
(``<Class>/masks/<name>.png``, as the Kaggle release does); every finding lies inside it, so
on clean phantoms nothing outside the lungs tells the classes apart. ``shortcut="marker"``
plants a class-dependent burned-in label outside the lungs (a bright tag whose position along
the top edge depends on the class, like one hospital's text label on all its images of one
class): a model can then score without looking at the lungs at all.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from ..errors import DataError
from ..utils import usable_cpus
from .layout import COVID_RADIOGRAPHY_CLASSES

__all__ = [
    "SHORTCUTS",
    "draw_phantom",
    "draw_phantom_with_mask",
    "draw_phantom_with_masks",
    "write_synthetic_dataset",
]

DATASET_DIRNAME = "COVID-19_Radiography_Dataset"
#: Shortcuts ``write_synthetic_dataset`` can plant.
SHORTCUTS = ("marker",)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, edge: float = 0.03
) -> np.ndarray:
    """Soft-edged filled ellipse in ``[0, 1]``."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return _sigmoid((1.0 - r) / edge)


def _blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in ``[-1, 1]``: random values on a coarse grid, bicubic-upsampled."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float64)


def draw_phantom(label: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Draw one phantom of class ``label`` as a ``(size, size)`` uint8 image.

    Args:
        label: one of ``COVID``, ``Lung_Opacity``, ``Normal``, ``Viral Pneumonia``.
        rng: the random generator; the image is a pure function of its state.
        size: side length in pixels.
    """
    return draw_phantom_with_mask(label, rng, size)[0]


#: The weakest finding a phantom gets, on a 0..1 scale (1: every finding at full strength).
MIN_SEVERITY = 0.25


def _plant_marker(img: Image.Image, label: str) -> None:
    """A bright burned-in tag on the top edge whose position depends on the class."""
    size = img.width
    k = COVID_RADIOGRAPHY_CLASSES.index(label)
    x0, w = size * (0.1 + 0.22 * k), size * 0.12
    ImageDraw.Draw(img).rectangle((x0, size * 0.025, x0 + w, size * 0.085), fill=240)


def draw_phantom_with_mask(
    label: str,
    rng: np.random.Generator,
    size: int = 256,
    shortcut: str | None = None,
    min_severity: float = MIN_SEVERITY,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom and its lung mask: ``(image, mask)`` (:func:`draw_phantom_with_masks`
    without the infection)."""
    return draw_phantom_with_masks(label, rng, size, shortcut, min_severity)[:2]


def draw_phantom_with_masks(
    label: str,
    rng: np.random.Generator,
    size: int = 256,
    shortcut: str | None = None,
    min_severity: float = MIN_SEVERITY,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom, its lung mask and its infection mask: ``(image, lungs, infection)``, each
    ``(size, size)`` uint8.

    The mask is 255 inside the lung fields (slightly generously drawn, so every finding lies
    inside it) and 0 elsewhere, rotated with the image. ``shortcut="marker"`` plants a
    class-dependent tag outside the lungs. ``min_severity`` (0..1) raises the weakest
    finding (1: every finding at full strength; tests use it for an easy task). The image
    with the defaults is exactly :func:`draw_phantom`'s for the same generator state.

    The infection mask is 255 where a COVID phantom's ground-glass blobs are at least 30 % of
    their full strength (empty for every other class, as COVID-QU-Ex annotates COVID-19
    infection only), rotated with the image.
    """
    if label not in COVID_RADIOGRAPHY_CLASSES:
        raise DataError(f"Unknown phantom class {label!r}; choose from {COVID_RADIOGRAPHY_CLASSES}")
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise DataError(f"Unknown shortcut {shortcut!r}; choose from {', '.join(SHORTCUTS)}")
    # Findings draw from their own stream, so the same seed gives the same patient (anatomy,
    # exposure, noise) with or without a finding: the class is the only difference.
    frng = np.random.default_rng(rng.integers(0, 2**63))
    lin = np.linspace(-1, 1, size)
    x, y = np.meshgrid(lin, lin)  # (H, W); y grows downwards, x to the image's right
    s = rng.uniform(0.9, 1.05)
    x = (x - rng.uniform(-0.05, 0.05)) / s
    y = (y - rng.uniform(-0.05, 0.05)) / s
    img, lungs, lung_masks = _anatomy(rng, x, y, size)
    # Severity: from obvious to nearly invisible, so the task is learnable but not trivial.
    sev = frng.uniform(min_severity, 1.0) ** 1.5
    finding = _finding(label, frng, x, y, lungs, lung_masks, size, sev)
    img += finding
    infection = finding >= 0.3 * _COVID_STRENGTH * sev if label == "COVID" else None
    return _acquire(img, lungs, rng, size, label, shortcut, infection)


def _anatomy(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, float, float]]]:
    """A healthy chest: ``(image, soft lung fields, per lung (field, centre x, half-width))``."""
    img = np.full_like(x, 0.06)
    body = _ellipse(x, y, 0, 0.08, 0.86, 1.0, edge=0.04)
    img += 0.42 * body

    # Lungs: ellipses cut by diaphragm domes (soft), darker than soft tissue.
    lungs = np.zeros_like(x)
    lung_masks = []
    for side in (-1, 1):
        cx = side * rng.uniform(0.36, 0.40)
        ax, ay = rng.uniform(0.25, 0.29), rng.uniform(0.55, 0.62)
        dome = 0.42 + rng.uniform(-0.04, 0.04) - 0.22 * ((x - cx) / ax) ** 2
        m = _ellipse(x, y, cx, -0.08, ax, ay) * _sigmoid((dome - y) / 0.02)
        lung_masks.append((m, cx, ax))
        lungs = np.maximum(lungs, m)
    img -= 0.30 * lungs

    # Mediastinum and spine, heart shadow over the patient's left (image right).
    img += 0.18 * _sigmoid((0.09 - np.abs(x)) / 0.02) * body
    img += 0.15 * _ellipse(x, y, rng.uniform(0.08, 0.14), 0.22, rng.uniform(0.24, 0.3), 0.22, 0.06)

    # Ribs: bright curved bands over both hemithoraces; clavicles at the top. The terms that
    # do not change from rib to rib are computed once (the same numbers, several times faster).
    ax = np.abs(x)
    rib_shape = 0.35 * ax**1.6 - 0.05 * ax
    rib_field = body * (ax > 0.08)
    for k in range(9):
        y0 = -0.62 + k * 0.12 + rng.uniform(-0.01, 0.01)
        rib = y0 + rib_shape
        img += 0.07 * np.exp(-0.5 * ((y - rib) / 0.018) ** 2) * rib_field
    for side in (-1, 1):
        clav = -0.72 + 0.18 * ax - 0.02 * side
        img += 0.10 * np.exp(-0.5 * ((y - clav) / 0.022) ** 2) * (ax < 0.6) * (side * x > 0)

    # Faint vascular markings in every class, so "has streaks" alone is not a finding.
    vessels = _smooth_noise(rng, size, 24)
    img += 0.025 * np.abs(vessels) * lungs
    return img, lungs, lung_masks


#: The contrast of a COVID phantom's ground-glass blobs at full severity.
_COVID_STRENGTH = 0.16


def _finding(label: str, frng: np.random.Generator, x: np.ndarray, y: np.ndarray,
             lungs: np.ndarray, lung_masks: list[tuple[np.ndarray, float, float]],
             size: int, sev: float) -> np.ndarray:  # fmt: skip
    """The class's finding at severity ``sev``, inside the lung fields (zero for Normal)."""
    finding = np.zeros_like(x)
    if label == "COVID":  # peripheral ground-glass blobs, both lungs
        for m, cx, ax in lung_masks:
            side = np.sign(cx)
            for _ in range(frng.integers(3, 6)):
                bx = cx + side * ax * frng.uniform(0.45, 0.85)
                by = frng.uniform(-0.1, 0.35)
                finding += (
                    frng.uniform(0.6, 1.0)
                    * _blob(x, y, bx, by, frng.uniform(0.06, 0.11), frng.uniform(0.07, 0.14))
                    * m
                )
        finding = _COVID_STRENGTH * sev * np.minimum(finding, 1.5)
    elif label == "Lung_Opacity":  # one dense textured region in one lung
        m, cx, ax = lung_masks[frng.integers(0, 2)]
        by = frng.choice([-0.4, -0.1, 0.2]) + frng.uniform(-0.05, 0.05)
        region = _ellipse(
            x,
            y,
            cx + frng.uniform(-0.08, 0.08),
            by,
            frng.uniform(0.14, 0.22),
            frng.uniform(0.14, 0.2),
            edge=0.06,
        )
        texture = 0.85 + 0.15 * _smooth_noise(frng, size, 16)
        finding = 0.30 * sev * region * texture * m
    elif label == "Viral Pneumonia":  # perihilar streaks and reticular texture
        pattern = np.zeros_like(x)
        for m, cx, _ in lung_masks:
            hx, hy = cx * 0.55, -0.05
            ang = np.arctan2(y - hy, x - hx)
            dist = np.hypot(x - hx, y - hy)
            streaks = np.abs(np.sin(ang * frng.integers(9, 15) + frng.uniform(0, np.pi)))
            pattern += (streaks**6) * np.exp(-dist / 0.3) * m
        reticular = np.clip(_smooth_noise(frng, size, 40), 0, None)
        perihilar = np.exp(-np.abs(x) / 0.35) * lungs
        finding = 0.14 * sev * (pattern + 0.8 * reticular * perihilar)
    return finding


def _acquire(img: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, size: int,
             label: str, shortcut: str | None, infection: np.ndarray | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Acquisition nuisances (exposure, noise, rotation, the side marker), and the lung and
    infection masks rotated with the image: ``(image, lungs, infection)`` uint8."""
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)
    img += rng.normal(0, rng.uniform(0.008, 0.03), img.shape)
    out = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    angle = rng.uniform(-5, 5)
    out = out.rotate(angle, resample=Image.BILINEAR, fillcolor=int(0.06 * 255))
    # findings are weighted by the soft lung fields: a low threshold keeps all of them inside
    mask = Image.fromarray(((lungs > 0.05) * 255).astype(np.uint8))
    mask = mask.rotate(angle, resample=Image.NEAREST, fillcolor=0)
    sick = np.zeros((size, size), np.uint8)
    if infection is not None:
        sick = Image.fromarray((infection * 255).astype(np.uint8))
        sick = np.asarray(sick.rotate(angle, resample=Image.NEAREST, fillcolor=0)) & np.asarray(
            mask
        )
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, size // 14))
    corner = rng.integers(0, 4)
    px = size * (0.05 if corner % 2 == 0 else 0.88)
    py = size * (0.04 if corner < 2 else 0.88)
    draw.text((px, py), "LR"[rng.integers(0, 2)], fill=235, font=font)
    if shortcut == "marker":
        _plant_marker(out, label)
    return np.asarray(out, dtype=np.uint8), np.asarray(mask, dtype=np.uint8), sick


#: Below this many images per process, starting processes costs more than it saves.
_PER_WORKER = 100


def _draw_and_save(job: tuple) -> int:
    """Draw phantom ``i`` of class number ``ci`` and write it (and its mask): one job of
    :func:`write_synthetic_dataset`, run in a worker process for large sets."""
    root, ci, i, seed, size, shortcut, min_severity, masks = job
    cls = COVID_RADIOGRAPHY_CLASSES[ci]
    rng = np.random.default_rng([seed, ci, i])
    image, mask, infection = draw_phantom_with_masks(cls, rng, size, shortcut, min_severity)
    Image.fromarray(image).save(root / cls / "images" / f"{cls}-{i}.png")
    if masks:
        Image.fromarray(mask).save(root / cls / "masks" / f"{cls}-{i}.png")
    if masks == "infection":
        Image.fromarray(infection).save(root / cls / "infection masks" / f"{cls}-{i}.png")
    return 1


def write_synthetic_dataset(
    out: str | os.PathLike[str],
    per_class: int = 100,
    seed: int = 0,
    size: int = 256,
    *,
    masks: bool | Literal["infection"] = False,
    shortcut: str | None = None,
    min_severity: float = MIN_SEVERITY,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write a phantom dataset in the Kaggle layout and return the dataset folder.

    The folder is ``OUT/COVID-19_Radiography_Dataset/<Class>/images/<Class>-<n>.png``. The
    same ``per_class``, ``seed``, ``size`` and ``shortcut`` give byte-identical files.

    Args:
        masks: also write each image's lung mask to ``<Class>/masks/<Class>-<n>.png``;
            ``"infection"``: its infection mask too, to ``<Class>/infection masks/`` (empty
            but for COVID, as in COVID-QU-Ex).
        shortcut: ``"marker"`` plants a class-dependent tag outside the lungs.
        min_severity: the weakest finding, 0..1 (default 0.25: from barely visible to obvious).
        workers: processes that draw (default: one per CPU core, at most 8; one for small
            sets). Each image has its own generator, so the files do not depend on it.

    Example:
        >>> root = write_synthetic_dataset("data/phantoms", per_class=50)  # doctest: +SKIP
    """
    if per_class < 1:
        raise DataError(f"--per-class must be at least 1, got {per_class}")
    if size < 32:
        raise DataError(f"Phantom size must be at least 32 pixels, got {size}")
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise DataError(f"Unknown shortcut {shortcut!r}; choose from {', '.join(SHORTCUTS)}")
    if not 0 <= min_severity <= 1:
        raise DataError(f"min_severity must be between 0 and 1, got {min_severity}")
    root = Path(out) / DATASET_DIRNAME
    for cls in COVID_RADIOGRAPHY_CLASSES:
        kinds = ("images", "masks", "infection masks")[: 1 + bool(masks) + (masks == "infection")]
        for kind in kinds:
            (root / cls / kind).mkdir(parents=True, exist_ok=True)
    jobs = [
        (root, ci, i, seed, size, shortcut, min_severity, masks)
        for ci in range(len(COVID_RADIOGRAPHY_CLASSES))
        for i in range(1, per_class + 1)
    ]
    workers = min(workers or usable_cpus(), 8, max(1, len(jobs) // _PER_WORKER))
    bar = tqdm(total=len(jobs), desc="Drawing phantoms", unit="img",
               disable=not progress or None, leave=False)  # fmt: skip
    with bar:
        if workers == 1:
            for job in jobs:
                bar.update(_draw_and_save(job))
        else:  # every image has its own generator, so the files do not depend on the split
            context = multiprocessing.get_context("spawn")  # safe beside torch's threads
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                for n in pool.map(_draw_and_save, jobs, chunksize=16):
                    bar.update(n)
    planted = f", shortcut={shortcut}" if shortcut else ""
    if min_severity != MIN_SEVERITY:
        planted += f", min_severity={min_severity:g}"
    (root / "README.md").write_text(
        "Synthetic chest X-ray phantoms made by `cxrlab data synth` "
        f"(per_class={per_class}, seed={seed}, size={size}{planted}). Not real patient data.\n"
    )
    return root
