"""Lung masks: found beside the images, checked, resized once, and applied to images.

Masks are matched to images by file name in a sibling folder of the images' folder::

    COVID-19_Radiography_Dataset/COVID/images/COVID-1.png      Kaggle release
    COVID-19_Radiography_Dataset/COVID/masks/COVID-1.png       (256 px masks, 299 px images)
    Infection Segmentation Data/Train/COVID-19/images/x.png    COVID-QU-Ex
    Infection Segmentation Data/Train/COVID-19/lung masks/x.png
    Infection Segmentation Data/Train/COVID-19/infection masks/x.png

Every mask is checked before use. A missing, unreadable or empty mask, one that covers the
whole image, or one whose aspect ratio differs from its image's ("wrong size") marks its
image as *without a valid mask*; mask files with no image beside them are listed as extra.
An empty *infection* mask is valid: it says the image has no infection (COVID-QU-Ex gives
its Normal and Non-COVID images empty ones), so only a missing, unreadable or misshapen one
marks an image as without.
Nothing is silently used: :class:`DecodedMasks` carries the reason for every image, and
callers either refuse (training with ``--lungs``) or report how many images a check left out.

A mask of another size but the same shape (the Kaggle release's 256 px masks of 299 px
images) is resized to the image's cache size like the image itself (the whole image squashed
to a square), bilinearly, then thresholded at half.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError
from ..utils import cache_dir, hash_strings
from .cache import read_memmap, write_memmap
from .imageio import ImageReadError, load_gray8
from .scan import ImageRecord

__all__ = [
    "CROP_MARGIN",
    "LUNG_MODES",
    "MASK_KINDS",
    "DecodedMasks",
    "apply_lung_mask",
    "apply_lungs",
    "crop_boxes",
    "crop_to_lungs",
    "decoded_masks",
    "find_mask_files",
]

_CACHE_VERSION = 2  # 2: an empty infection mask is valid
#: Folder names (lower case) that hold each kind of mask, beside an ``images`` folder.
MASK_KINDS: dict[str, tuple[str, ...]] = {
    "lung": ("masks", "mask", "lung masks", "lung_masks", "lungmasks", "lung-masks"),
    "infection": ("infection masks", "infection_masks", "infection-masks"),
}
#: What ``--lungs`` can do to an image: keep it, remove the lungs, keep only the lungs, or
#: crop it to the lungs' bounding box.
LUNG_MODES = ("keep", "remove", "only", "crop")
#: The margin ``crop`` adds around the lungs' bounding box, as a share of the image side.
CROP_MARGIN = 0.05
#: A lung box narrower or lower than this share of the image is not cropped to.
MIN_CROP = 0.2
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _mask_dirs(image_dir: Path, kind: str) -> list[Path]:
    names = MASK_KINDS[kind]
    try:
        return sorted(
            Path(e.path)
            for e in os.scandir(image_dir.parent)
            if e.is_dir() and e.name.lower() in names
        )
    except OSError:
        return []


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, or absolute when outside it (a linked image's mask)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _find_in(folder: Path, image: Path, kind: str, listing: dict[Path, dict[str, str]],
             root: Path) -> str | None:  # fmt: skip
    """The mask of ``image`` in the mask folders beside ``folder`` (relative to ``root``)."""
    for mdir in _mask_dirs(folder, kind):
        if mdir not in listing:
            try:
                listing[mdir] = {e.name: e.name for e in os.scandir(mdir) if e.is_file()}
            except OSError:
                listing[mdir] = {}
        names = listing[mdir]
        stem = image.stem
        name = (
            image.name
            if image.name in names
            else next((stem + s for s in _IMAGE_SUFFIXES if stem + s in names), None)
        )
        if name is not None:
            return _relative(mdir / name, root)
    return None


def find_mask_files(
    root: Path, records: Sequence[ImageRecord], kind: str = "lung"
) -> tuple[list[str | None], list[str]]:
    """The mask file of each record (relative to ``root``, or ``None``) and the extra masks.

    Only images inside an ``images`` folder can have masks (a flat layout has nowhere to put
    them). A mask has the image's file name, or its stem with another image extension.

    Returns:
        ``(paths, extra)``: ``paths[i]`` for ``records[i]``; ``extra`` lists mask files in the
        mask folders that no image of ``records``' folders matches.
    """
    if kind not in MASK_KINDS:
        raise DataError(f"Unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    root = Path(root)
    listing: dict[Path, dict[str, str]] = {}  # mask folder -> {file name: name}
    out: list[str | None] = []
    by_folder: dict[Path, set[str]] = {}
    for rec in records:
        image = root / rec.path
        # beside the image, then (a linked image: a view of several sources, or the folder
        # 'segment predict' writes) beside its original
        candidates = [image] + ([image.resolve()] if image.is_symlink() else [])
        found = None
        for k, candidate in enumerate(candidates):
            folder = candidate.parent
            if folder.name.lower() != "images":
                continue
            found = _find_in(folder, candidate, kind, listing, root)
            if k == 0 or found is not None:  # an original's other masks are not extra here
                by_folder.setdefault(folder, set()).add(candidate.name)
            if found is not None:
                break
        out.append(found)
    used = {p for p in out if p}
    extra = []
    for folder in by_folder:
        for mdir in _mask_dirs(folder, kind):
            for name in sorted(listing.get(mdir, {})):
                rel = _relative(mdir / name, root)
                if rel not in used and not name.startswith("."):
                    extra.append(rel)
    return out, sorted(extra)


@dataclass(frozen=True)
class DecodedMasks:
    """Masks at the image cache's size, row-aligned with the records they were made for.

    Attributes:
        array: ``(N, size, size)`` uint8, 1 inside the mask, 0 outside (all 0 where a row
            has no valid mask).
        status: ``"ok"`` or the reason a row has no valid mask.
        files: each row's mask file (relative to the dataset root) or ``None``.
        extra: mask files with no image beside them.
        kind: ``lung`` or ``infection``.
        key: content key (changes with the images, the masks and the size).
    """

    array: np.ndarray
    status: tuple[str, ...]
    files: tuple[str | None, ...]
    extra: tuple[str, ...]
    kind: str
    key: str
    size: int

    @property
    def valid(self) -> np.ndarray:
        """``(N,)`` bool: rows with a usable mask."""
        return np.array([s == "ok" for s in self.status], dtype=bool)

    def problems(self) -> dict[str, int]:
        """How many rows have no valid mask, by reason (reasons without the numbers)."""
        out: dict[str, int] = {}
        for s in self.status:
            if s != "ok":
                reason = s.split(" (")[0]
                out[reason] = out.get(reason, 0) + 1
        return out

    def summary(self) -> str:
        """One line: how many images have a valid mask, and why the others do not."""
        n, ok = len(self.status), int(self.valid.sum())
        text = f"{ok} of {n} images have a valid {self.kind} mask"
        if ok < n:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in self.problems().items()) + ")"
        if self.extra:
            text += f"; {len(self.extra)} mask file(s) have no image (first: {self.extra[0]})"
        return text

    def take(self, rows: Sequence[int] | np.ndarray) -> DecodedMasks:
        """The masks of ``rows``, in that order (a new key: derived caches tell them apart)."""
        rows = np.asarray(rows, dtype=np.int64)
        return DecodedMasks(
            np.ascontiguousarray(self.array[rows]),
            tuple(self.status[r] for r in rows),
            tuple(self.files[r] for r in rows),
            self.extra, self.kind,
            hash_strings([self.key, "rows", *map(str, rows.tolist())]), self.size,
        )  # fmt: skip

    def require(self, rows: Sequence[int] | np.ndarray, why: str) -> None:
        """Raise :class:`DataError` unless every row in ``rows`` has a valid mask."""
        rows = np.asarray(rows, dtype=np.int64)
        bad = [int(r) for r in rows if self.status[int(r)] != "ok"]
        if bad:
            first = bad[0]
            raise DataError(
                f"{why} needs a valid {self.kind} mask for every image, but {len(bad)} of "
                f"{len(rows)} have none ({self.files[first] or 'no mask file'} for row "
                f"{first}: {self.status[first]}); {self.summary()}. --doubtful skip leaves "
                "those images out instead"
            )


def _check_mask(
    root: Path, rec: ImageRecord, rel: str | None, size: int, kind: str = "lung"
) -> tuple[str, np.ndarray]:
    """Read, check and resize one mask: ``(status, (size, size) uint8 0/1)``."""
    may_be_empty = kind == "infection"
    empty = np.zeros((size, size), np.uint8)
    if rel is None:
        return "missing (no mask file with the image's name)", empty
    try:
        mask = load_gray8(root / rel)
    except ImageReadError as e:
        return f"unreadable ({e.reason})", empty
    mh, mw = mask.shape
    if abs(mw / mh - rec.width / rec.height) > 0.02:
        return f"wrong size ({mw}x{mh} mask for a {rec.width}x{rec.height} image)", empty
    binary = mask >= 128
    if not binary.any():
        return ("ok", empty) if may_be_empty else ("empty (no pixel inside the mask)", empty)
    if binary.mean() > 0.98:
        return "covers the whole image", empty
    img = Image.fromarray((binary * 255).astype(np.uint8))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    out = (np.asarray(img) >= 128).astype(np.uint8)
    if not out.any() and not may_be_empty:
        return "empty after resizing", empty
    return "ok", out


def _stat_key(root: Path, rel: str | None) -> str:
    if rel is None:
        return "-"
    try:
        st = (root / rel).stat()
    except OSError:
        return f"{rel}:gone"
    return f"{rel}:{st.st_size}:{st.st_mtime_ns}"


def decoded_masks(
    root: str | os.PathLike[str],
    records: Sequence[ImageRecord],
    size: int,
    kind: str = "lung",
    *,
    progress: bool = True,
) -> DecodedMasks:
    """The masks of ``records`` at ``size`` px, checked, built once and cached.

    The cache lives beside the decoded-image cache and is keyed by the images' content, the
    mask files (path, size, modification time) and the size, so a changed mask is re-read.
    """
    root = Path(root)
    files, extra = find_mask_files(root, records, kind)
    key = hash_strings(
        [f"masks-v{_CACHE_VERSION}", kind, str(size)]
        + [f"{r.hash}|{_stat_key(root, m)}" for r, m in zip(records, files)]
    )
    path = cache_dir() / "images" / f"{key}-{len(records)}x{size}x{size}.{kind}-mask.u8"
    shape = (len(records), size, size)
    status: list[str] = []
    if (arr := read_memmap(path, shape)) is not None:
        try:
            status = list(json.loads(path.with_suffix(".json").read_text())["status"])
        except (OSError, ValueError, KeyError):
            arr = None
    if arr is None or len(status) != len(records):
        status = []
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            jobs = pool.map(
                lambda i: _check_mask(root, records[i], files[i], size, kind), range(len(records))
            )
            bar = tqdm(
                jobs,
                total=len(records),
                desc=f"Reading {kind} masks",
                unit="mask",
                disable=not progress or None,
                leave=False,
            )

            def rows() -> Iterator[np.ndarray]:
                for state, mask in bar:
                    status.append(state)
                    yield mask

            arr = write_memmap(path, shape, rows(), lambda: {"kind": kind, "status": status})
    return DecodedMasks(arr, tuple(status), tuple(files), tuple(extra), kind, key, size)


def apply_lung_mask(
    images: np.ndarray,
    masks: np.ndarray,
    mode: str,
    fill: str = "mean",
    seeds: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Hide the lungs (``remove``) or everything but the lungs (``only``) of a batch.

    The hidden pixels are filled from the *visible* ones, never from the hidden ones: a fill
    that depended on the lungs (the whole image's mean, say) would leak what was removed.

    Args:
        images: ``(B, H, W)`` uint8.
        masks: ``(B, H, W)`` 0/1 (1 = lung).
        mode: ``remove`` (lungs hidden), ``only`` (everything outside the lungs hidden) or
            ``keep`` (returned unchanged).
        fill: ``mean`` (the mean of the visible pixels) or ``noise`` (Gaussian noise with the
            visible pixels' mean and standard deviation, clipped to 0..255).
        seeds: one seed per image for ``noise`` (default: the row index), so a fill is the
            same every time it is drawn.

    Returns:
        ``(B, H, W)`` uint8, a new array.
    """
    if mode not in LUNG_MODES:
        raise DataError(f"Unknown lung mode {mode!r}; choose one of {', '.join(LUNG_MODES)}")
    if fill not in ("mean", "noise"):
        raise DataError(f"Unknown fill {fill!r}; choose mean or noise")
    out = np.array(images, dtype=np.uint8, copy=True)
    if mode == "keep":
        return out
    hidden = np.asarray(masks, dtype=bool)
    if mode == "only":
        hidden = ~hidden
    seeds = np.arange(len(out)) if seeds is None else np.asarray(seeds)
    for i in range(len(out)):
        h = hidden[i]
        visible = out[i][~h]
        if not h.any():
            continue
        mean = float(visible.mean()) if visible.size else 0.0
        if fill == "mean":
            out[i][h] = np.uint8(round(mean))
        else:
            sd = float(visible.std()) if visible.size else 0.0
            rng = np.random.default_rng([int(seeds[i]), 7919])
            noise = rng.normal(mean, sd, int(h.sum()))
            out[i][h] = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
    return out


def crop_boxes(masks: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """``(B, 4)`` ``(top, bottom, left, right)`` boxes: each mask's lung bounding box grown by
    ``margin`` of the image side on every side (clipped to the image).

    Raises:
        DataError: a mask is empty, or its box is narrower or lower than :data:`MIN_CROP` of
            the image (cropping to it would keep next to nothing).
    """
    m = np.asarray(masks, dtype=bool)
    _, h, w = m.shape
    boxes = np.zeros((len(m), 4), dtype=np.int64)
    for i, mask in enumerate(m):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if (
            not len(rows)
            or (rows[-1] - rows[0] + 1) < MIN_CROP * h
            or (cols[-1] - cols[0] + 1) < MIN_CROP * w
        ):
            raise DataError(
                f"Row {i}'s lung mask is empty or covers less than {MIN_CROP:.0%} of the image "
                "in height or width: --lungs crop will not crop to it"
            )
        dy, dx = round(margin * h), round(margin * w)
        boxes[i] = (max(0, rows[0] - dy), min(h, rows[-1] + 1 + dy),
                    max(0, cols[0] - dx), min(w, cols[-1] + 1 + dx))  # fmt: skip
    return boxes


def crop_to_lungs(images: np.ndarray, boxes: np.ndarray, *, nearest: bool = False) -> np.ndarray:
    """Each image cut to its box (:func:`crop_boxes`) and resized back to its size
    (bilinear; ``nearest`` for masks)."""
    out = np.empty_like(np.asarray(images, dtype=np.uint8))
    method = Image.NEAREST if nearest else Image.BILINEAR
    for i, (img, (top, bottom, left, right)) in enumerate(zip(images, boxes)):
        h, w = img.shape
        part = Image.fromarray(np.ascontiguousarray(img[top:bottom, left:right], dtype=np.uint8))
        out[i] = np.asarray(part.resize((w, h), method))
    return out


def apply_lungs(images: np.ndarray, masks: np.ndarray, lungs: str) -> np.ndarray:
    """What ``--lungs`` does to a batch of ``(B, H, W)`` uint8 images, given their 0/1 lung
    masks: ``keep`` (a copy), ``remove`` or ``only`` (filled with the visible pixels' mean,
    :func:`apply_lung_mask`) or ``crop`` (:func:`crop_boxes`, :func:`crop_to_lungs`).

    Raises:
        DataError: ``crop`` of a mask that is empty or too small to crop to.
    """
    if lungs == "crop":
        return crop_to_lungs(images, crop_boxes(masks))
    return apply_lung_mask(images, masks, lungs, "mean")
