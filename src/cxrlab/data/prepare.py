"""One call from a dataset path to training-ready arrays: scan, split, decode once."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..utils import cache_dir
from .cache import DecodedImages, decoded_images, derived_images
from .dedup import MAX_GROUP, SIGNATURE_SIZE, copy_groups
from .masks import (
    CROP_MARGIN,
    LUNG_MODES,
    DecodedMasks,
    apply_lungs,
    crop_boxes,
    crop_to_lungs,
    decoded_masks,
)
from .patients import patient_ids
from .scan import ImageRecord, ScanReport, scan_dataset
from .split import Split, load_split, make_split
from .synth import DATASET_DIRNAME, write_synthetic_dataset

__all__ = [
    "DEMO_DATA",
    "DOUBTFUL",
    "SPLIT_SOURCES",
    "PreparedData",
    "demo_dataset",
    "lung_mask_files",
    "near_copy_groups",
    "prepare_data",
    "resolve_data",
]

#: Where a split comes from: the dataset's own folders when it has them (``auto``), always
#: its folders, or always a new stratified draw.
SPLIT_SOURCES = ("auto", "folders", "stratified")
#: What ``--lungs`` does with an image without a valid lung mask: ``refuse`` (stop with the
#: reason) or ``skip`` (leave it out before the split, and say how many).
DOUBTFUL = ("refuse", "skip")

#: The name that selects the embedded synthetic phantom dataset instead of a folder
#: (``phantoms:N`` for N phantoms per class, ``phantoms:N@SIZE`` drawn SIZE px wide).
DEMO_DATA = "phantoms"
_DEMO_PER_CLASS, _DEMO_SEED, _DEMO_SIZE = 150, 0, 256
#: Fewest phantoms per class a ``phantoms:N`` may ask for: a split needs some of each class
#: in validation and test.
_DEMO_MIN_PER_CLASS = 10
#: The sizes ``phantoms:N@SIZE`` may draw at: from the smallest input any config trains at
#: to where one phantom takes about half a second to draw.
_DEMO_MIN_SIZE, _DEMO_MAX_SIZE = 64, 1024


def demo_dataset(
    per_class: int = _DEMO_PER_CLASS, seed: int = _DEMO_SEED, size: int = _DEMO_SIZE
) -> Path:
    """The synthetic phantom dataset, generated into the cache folder on first use."""
    out = cache_dir() / "phantoms" / f"v1-n{per_class}-s{seed}-{size}px"
    done = out / ".complete"
    if not done.exists():
        write_synthetic_dataset(out, per_class=per_class, seed=seed, size=size)
        done.write_text("ok\n")
    return out / DATASET_DIRNAME


#: What ``data`` may be: a folder, the phantoms, or several sources (``[NAME=]PATH`` each).
DataSpec = str | os.PathLike[str] | Sequence[str] | None


def resolve_data(
    data: DataSpec, class_map: Sequence[str] = (), sources_csv: Sequence[str] = ()
) -> Path:
    """The dataset folder ``data`` names: a path as it is; ``None`` or ``"phantoms"`` the
    embedded phantoms (150 per class, 256 px); ``"phantoms:N"`` N phantoms per class and
    ``"phantoms:N@SIZE"`` N per class drawn SIZE px wide (all generated into the cache folder
    on first use; a phantom at 128 px takes about a third of the time of one at 256 px).
    An existing folder of either name wins, with a warning: ``cxrlab data synth --out
    phantoms`` then ``--data phantoms`` trains on it.

    Several sources (a list of ``[NAME=]PATH``), or one with a ``class_map``
    (``NAME=FROM=TO,...``; with one source ``FROM=TO,...`` will do) or ``sources_csv``
    (``NAME=FILE``), become one view of them (:func:`~cxrlab.data.sources.combine_sources`).

    Raises:
        DataError: ``phantoms:N`` with N not a whole number of at least 10, or ``@SIZE``
            outside 64-1024; a source problem
            (see :func:`~cxrlab.data.sources.combine_sources`).
    """
    if not isinstance(data, (str, os.PathLike)) and data is not None:
        items = [str(d) for d in data]
        named = "=" in items[0] and not os.path.exists(items[0]) if items else False
        if len(items) == 1 and not class_map and not sources_csv and not named:
            return resolve_data(items[0])
    elif class_map or sources_csv:
        items = [str(resolve_data(data))]
    else:
        items = []
    if items:
        from .sources import combine_sources, parse_sources

        names = [s.name for s in parse_sources(items)]
        if len(names) == 1:  # one source: its map and CSV need no name

            def named(t: str) -> str:
                return t if t.partition("=")[0] == names[0] else f"{names[0]}={t}"

            class_map, sources_csv = map(named, class_map), map(named, sources_csv)
        return combine_sources(parse_sources(items, class_map, sources_csv))
    if data is None:
        return demo_dataset()
    text, prefix = str(data), f"{DEMO_DATA}:"
    if text != DEMO_DATA and not text.startswith(prefix):
        return Path(data)
    if Path(text).exists():  # a folder of that name (cxrlab data synth --out phantoms) wins
        warnings.warn(
            f"Using the folder ./{text}; for the embedded phantoms run from another folder "
            f"or write {DEMO_DATA}:{_DEMO_PER_CLASS}",
            stacklevel=3,
        )
        return Path(data)
    if text == DEMO_DATA:
        return demo_dataset()
    count, at, size = text[len(prefix) :].partition("@")
    if not count.isdigit() or int(count) < _DEMO_MIN_PER_CLASS:
        raise DataError(
            f"{text!r}: write phantoms:N with N a whole number of phantoms per class, "
            f"at least {_DEMO_MIN_PER_CLASS} (e.g. phantoms:400), and optionally @SIZE "
            f"(e.g. phantoms:400@128)"
        )
    if at and (not size.isdigit() or not _DEMO_MIN_SIZE <= int(size) <= _DEMO_MAX_SIZE):
        raise DataError(
            f"{text!r}: write phantoms:N@SIZE with SIZE the drawn width in pixels, "
            f"{_DEMO_MIN_SIZE} to {_DEMO_MAX_SIZE} (e.g. phantoms:400@128)"
        )
    return demo_dataset(per_class=int(count), size=int(size) if at else _DEMO_SIZE)


def near_copy_groups(report: ScanReport, *, progress: bool = True) -> dict[str, str]:
    """Image path -> copy group (exact and near copies, see
    :func:`~cxrlab.data.dedup.copy_groups`), from images decoded at
    :data:`~cxrlab.data.dedup.SIGNATURE_SIZE` (cached like any decoded size)."""
    records = sorted(report.records, key=lambda r: r.path)
    if not records:
        return {}
    small = decoded_images(report.root, records, SIGNATURE_SIZE, progress=progress)
    groups = copy_groups([r.hash for r in records], small.array)
    if groups.chained:
        warnings.warn(
            f"{groups.chained} images under {report.root} are linked into chains of more than "
            f"{MAX_GROUP} look-alikes by the near-copy rule (images this alike at 32 px, such "
            "as synthetic phantoms, defeat it); they are kept together with exact copies only",
            stacklevel=2,
        )
    return {r.path: k for r, k in zip(records, groups.keys)}


#: ``(root, records, size, progress) -> DecodedMasks``: lung masks from somewhere other than
#: the files beside the images.
MaskProvider = Callable[[Path, Sequence[ImageRecord], int, bool], DecodedMasks]


def lung_mask_files(
    root: Path, records: Sequence[ImageRecord], size: int, progress: bool = True
) -> DecodedMasks:
    """The default :data:`MaskProvider`: the lung mask files beside the images."""
    return decoded_masks(root, records, size, "lung", progress=progress)


@dataclass(frozen=True)
class PreparedData:
    """A scanned dataset, its split and its decoded images (rows follow ``split.records``).

    ``images`` are what the model sees: with ``lungs="remove"`` or ``"only"`` the lungs (or
    everything else) are already filled; ``masks`` are then the lung masks, row-aligned.
    """

    report: ScanReport
    split: Split
    images: DecodedImages
    masks: DecodedMasks | None = None
    lungs: str = "keep"
    #: ``(path, reason)`` of images left out for want of a valid lung mask (``doubtful="skip"``)
    left_out: tuple[tuple[str, str], ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.split.classes

    def whole_images(self, progress: bool = False) -> DecodedImages:
        """The images as decoded, before any lungs mode (what finds copies of radiographs)."""
        if self.lungs == "keep":
            return self.images
        return decoded_images(self.report.root, self.split.records, self.images.size,
                              progress=progress)  # fmt: skip


def prepare_data(
    data: DataSpec = None,
    *,
    class_map: Sequence[str] = (),
    sources_csv: Sequence[str] = (),
    split_file: str | os.PathLike[str] | None = None,
    split_seed: int = 0,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    holdout_all: bool = False,
    image_size: int = 224,
    split_source: str = "auto",
    lungs: str = "keep",
    near_copies: bool = True,
    patients: Sequence[str] = (),
    mask_provider: MaskProvider | None = None,
    doubtful: str = "refuse",
    min_classes: int = 2,
    progress: bool = True,
) -> PreparedData:
    """Scan ``data``, load or make the split, and return it with the decoded-image cache.

    Args:
        data: a dataset folder, or ``None``/``"phantoms"``/``"phantoms:N[@SIZE]"`` for the
            synthetic phantoms, or several sources (``[NAME=]PATH`` each; see :func:`resolve_data`).
        class_map: each source's class map (:func:`resolve_data`).
        sources_csv: each source's finer sources (:func:`resolve_data`).
        split_file: a manifest from ``cxrlab data split``; when it exists it is used (and
            checked against the data), otherwise a split is made with ``split_seed``.
        split_seed: seed of a newly made split.
        ratios: train/val/test fractions of a newly made split.
        holdout_all: every image is test (evaluate a whole external dataset).
        image_size: side length of the cached square images.
        split_source: ``auto`` takes a new split from the dataset's own Train/Val/Test
            folders when it has them (COVID-QU-Ex) and draws a stratified one otherwise;
            ``folders`` insists on the folders; ``stratified`` always draws.
        lungs: ``keep``; ``remove`` fills every image's lung fields with the mean of the rest
            of the image; ``only`` fills everything outside the lungs with the lungs' mean;
            ``crop`` cuts every image to its lungs' bounding box plus 5 % of the side and
            resizes it back (the masks are cut the same way).
            Needs a valid lung mask for every image (see :mod:`cxrlab.data.masks`).
        near_copies: a newly drawn split keeps near copies (re-saved, re-sized, re-cropped
            images of one radiograph) in one split, like exact copies; ``False`` groups exact
            copies only. A loaded split is used as it was made.
        patients: each source's patient rule, ``[NAME=]RULE`` (see
            :mod:`cxrlab.data.patients`; default: the Kermany file naming wherever names
            follow it). A newly drawn split keeps each patient's images in one split and
            records every image's patient (held-out and external scoring leave out images of
            patients a run saw). A loaded split keeps the patients it recorded.
        mask_provider: where lung masks come from when ``lungs`` needs them:
            ``(root, records, size, progress) -> DecodedMasks`` (a segmenter's predictions,
            :func:`cxrlab.segment.apply.predicted_masks`); default: the mask files beside the
            images.
        doubtful: what ``lungs`` does with an image without a valid mask (missing, empty,
            or judged doubtful): ``refuse`` (raise) or ``skip`` (leave it out before the
            split, with a warning; listed in ``left_out``).
        min_classes: the fewest class folders ``data`` may have (1: one folder of a site's
            images, as ``cxrlab shift`` reads them).
        progress: show progress bars.

    Raises:
        DataError: ``lungs`` asks for masks some image lacks (``doubtful="refuse"``), or
            ``split_source`` asks for folders the dataset does not have.
    """
    if split_source not in SPLIT_SOURCES:
        raise DataError(f"split_source must be one of {', '.join(SPLIT_SOURCES)}")
    if lungs not in LUNG_MODES:
        raise DataError(f"lungs must be one of {', '.join(LUNG_MODES)}, got {lungs!r}")
    if doubtful not in DOUBTFUL:
        raise DataError(f"doubtful must be one of {', '.join(DOUBTFUL)}, got {doubtful!r}")
    report = _scan(resolve_data(data, class_map, sources_csv), progress, min_classes)
    masks, left_out = None, ()
    if lungs != "keep":  # before the split: what is left out is known before it is drawn
        masks = (mask_provider or lung_mask_files)(report.root, report.records, image_size,
                                                   progress)  # fmt: skip
        if doubtful == "skip":
            left_out = _without_masks(masks, report.records)
        else:
            masks.require(range(len(report.records)), f"--lungs {lungs}")
    made = not (split_file is not None and Path(split_file).exists() and not holdout_all)
    if made:
        split = _draw_split(report, ratios, split_seed, holdout_all, split_source, near_copies,
                            patients, progress)  # fmt: skip
    else:
        split = load_split(split_file, report)  # type: ignore[arg-type]
    # drawn on every image, then without those left out: the split is the one runs that keep
    # the lungs (or use other masks) draw, less the images this one cannot use
    split = split.without({path for path, _ in left_out})
    if made and split_file is not None:
        split.save(split_file)
    images = decoded_images(report.root, split.records, image_size, progress=progress)
    if masks is None:
        return PreparedData(report, split, images)
    row = {r.path: i for i, r in enumerate(report.records)}
    masks = masks.take([row[r.path] for r in split.records])  # the split's order
    return _with_lungs(PreparedData(report, split, images, masks, lungs, left_out), progress)


def _scan(root: Path, progress: bool, min_classes: int = 2) -> ScanReport:
    """The dataset's scan, with a warning for files it left out."""
    report = scan_dataset(root, progress=progress, min_classes=min_classes)
    if report.invalid:
        first = report.invalid[0]
        warnings.warn(
            f"{len(report.invalid)} file(s) under {report.root} are not usable images and were "
            f"left out (first: {first.path}: {first.reason}); 'cxrlab data scan' lists them",
            stacklevel=3,
        )
    if report.conflicts:
        warnings.warn(
            f"{len(report.conflicts)} image(s) appear under more than one class and were left "
            "out; 'cxrlab data scan' lists them",
            stacklevel=3,
        )
    return report


def _draw_split(report: ScanReport, ratios: tuple[float, float, float], seed: int,
                holdout_all: bool, split_source: str, near_copies: bool,
                patients: Sequence[str], progress: bool) -> Split:  # fmt: skip
    """A new split: the dataset's own folders, or a stratified draw keeping copies and
    patients whole."""
    folders = split_source == "folders" or (split_source == "auto" and report.source_splits)
    grouped = near_copies and not holdout_all and not folders and report.records
    groups = near_copy_groups(report, progress=progress) if grouped else None
    who = patient_ids(report.root, [r.path for r in report.records], patients)
    return make_split(report, ratios=ratios, seed=seed, holdout_all=holdout_all,
                      use_folders=bool(folders), groups=groups, patients=who)  # fmt: skip


def _with_lungs(data: PreparedData, progress: bool) -> PreparedData:
    """``data`` (whole images, row-aligned masks) with its lungs mode applied to the images,
    cached; with ``crop`` the masks are cut along with their images."""
    images, masks, lungs = data.images, data.masks, data.lungs
    assert masks is not None
    if lungs != "crop":
        hidden = derived_images(
            images, f"lungs-{lungs}-mean|{masks.key}",
            lambda rows: apply_lungs(images.array[rows], masks.array[rows], lungs),
            progress=progress,
        )  # fmt: skip
        return dataclasses.replace(data, images=hidden)
    boxes = crop_boxes(masks.array)
    recipe = f"lungs-crop-{CROP_MARGIN}|{masks.key}"
    cropped = derived_images(
        images, recipe, lambda rows: apply_lungs(images.array[rows], masks.array[rows], lungs),
        progress=progress,
    )  # fmt: skip
    as_images = DecodedImages(masks.array, images.path, masks.key, masks.size)
    cut = derived_images(
        as_images, recipe,
        lambda rows: crop_to_lungs(masks.array[rows], boxes[rows], nearest=True),
        progress=progress,
    )  # fmt: skip
    return dataclasses.replace(data, images=cropped,
                               masks=dataclasses.replace(masks, array=cut.array))  # fmt: skip


def _without_masks(
    masks: DecodedMasks, records: Sequence[ImageRecord]
) -> tuple[tuple[str, str], ...]:
    """``(path, reason)`` of the images without a valid mask (a warning says how many)."""
    left_out = tuple((r.path, s) for r, s in zip(records, masks.status) if s != "ok")
    if left_out:
        warnings.warn(
            f"{len(left_out)} of {len(records)} images left out for want of a valid lung mask "
            f"({masks.summary().split(' (', 1)[-1].rstrip(')')}; first: {left_out[0][0]})",
            stacklevel=3,
        )
    return left_out
