"""Finding the classes of a chest X-ray dataset on disk.

Supported layouts (``ROOT`` may also be the folder *above* the dataset folder)::

    COVID-19_Radiography_Dataset/COVID/images/COVID-1.png     Kaggle release (masks/ ignored)
    COVID-19_Radiography_Dataset/COVID/COVID-1.png            older flat copies
    Infection Segmentation Data/Train/COVID-19/images/x.png   COVID-QU-Ex: the dataset's own
                                                              Train/Val/Test folders, each
                                                              holding class folders
    my_dataset/<any class>/<any depth>/<image>                any one-folder-per-class set

Class folder names of the COVID-19 Radiography Database are matched case- and
separator-insensitively (``viral_pneumonia``, ``Viral-Pneumonia`` and ``Viral Pneumonia``
are the same class) and reported under their canonical names. Hidden files, masks,
metadata spreadsheets, READMEs and OS junk are ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError

__all__ = [
    "COVID_RADIOGRAPHY_CLASSES",
    "UNSCORED",
    "ClassFolder",
    "DatasetLayout",
    "canonical_class_name",
    "find_layout",
    "parse_class_map",
]

#: Canonical class names of the COVID-19 Radiography Database, in the order cxrlab uses.
COVID_RADIOGRAPHY_CLASSES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")

#: The value of a class map entry that leaves a dataset class unscored.
UNSCORED = "-"


def parse_class_map(text: str | None) -> dict[str, str]:
    """``"COVID-19=COVID,Non-COVID=-"`` -> ``{"COVID-19": "COVID", "Non-COVID": "-"}``."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, target = part.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ConfigError(
                f"--class-map entries look like DATASET_CLASS=MODEL_CLASS (or =- to leave a "
                f"class unscored), comma-separated; got {part!r}"
            )
        out[name.strip()] = target.strip()
    return out


_ALIASES = {
    "covid": "COVID",
    "covid19": "COVID",
    "lungopacity": "Lung_Opacity",
    "normal": "Normal",
    "viralpneumonia": "Viral Pneumonia",
}

#: Folder names never holding class images (segmentation masks and OS folders).
_SKIP_DIRS = {
    "masks",
    "mask",
    "lung masks",
    "lung_masks",
    "lungmasks",
    "infection masks",
    "infection_masks",
    "__macosx",
    "$recycle.bin",
    "system volume information",
}
#: Folder names of a dataset's own split, normalised (see :func:`_norm`).
_SPLIT_DIRS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
#: File names and suffixes that are documentation, metadata or OS junk, never images.
_SKIP_NAMES = {"thumbs.db", "desktop.ini", "readme", "license", "licence"}
_SKIP_SUFFIXES = {
    ".xlsx",
    ".xls",
    ".csv",
    ".tsv",
    ".md",
    ".txt",
    ".rst",
    ".json",
    ".yaml",
    ".yml",
    ".pdf",
    ".doc",
    ".docx",
    ".html",
    ".htm",
    ".ini",
    ".db",
    ".zip",
    ".py",
    ".ipynb",
}
_IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".webp",
    ".pgm",
    ".dcm",
    ".dicom",
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-.]+", "", name).lower()


def canonical_class_name(folder_name: str) -> str | None:
    """Return the database's canonical class name for a folder name, or ``None``."""
    return _ALIASES.get(_norm(folder_name))


def is_ignored_file(name: str) -> bool:
    """True for hidden files, documentation, spreadsheets and OS junk."""
    low = name.lower()
    if low.startswith((".", "~$", "._")):
        return True
    stem, suffix = os.path.splitext(low)
    return low in _SKIP_NAMES or stem in _SKIP_NAMES or suffix in _SKIP_SUFFIXES


def _is_ignored_dir(name: str) -> bool:
    return name.startswith(".") or name.lower() in _SKIP_DIRS


def _list_dirs(path: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if e.is_dir() and not _is_ignored_dir(e.name)]


@dataclass(frozen=True)
class ClassFolder:
    """One class folder of the dataset: the class name, the folder its images live under,
    and the dataset's own split when the class folder sits in a ``Train``/``Val``/``Test``
    folder (``None`` otherwise)."""

    name: str
    path: Path
    split: str | None = None

    def files(self) -> list[Path]:
        """Every candidate image file under the class folder, sorted by path.

        When the folder has an ``images/`` subfolder (the Kaggle layout) only that is read, so
        the lung masks next to it never become training images.
        """
        images = next((d for d in _list_dirs(self.path) if d.name.lower() == "images"), None)
        top = images or self.path
        out: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not _is_ignored_dir(d))
            out.extend(Path(dirpath, f) for f in filenames if not is_ignored_file(f))
        return sorted(out)


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset's classes are: the dataset folder and its :class:`ClassFolder` s
    (one per class, or one per class and split folder)."""

    root: Path
    classes: tuple[ClassFolder, ...]
    known_database: bool

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.name for c in self.classes))

    @property
    def has_split_folders(self) -> bool:
        """Whether the dataset comes with its own train/val/test folders."""
        return any(c.split is not None for c in self.classes)


def _has_image_files(folder: Path) -> bool:
    """Whether ``folder`` (or its ``images/`` subfolder) holds at least one image-like file."""
    for sub in (folder / "images", folder):
        try:
            with os.scandir(sub) as it:
                for e in it:
                    suffix = os.path.splitext(e.name)[1].lower()
                    if suffix in _IMAGE_SUFFIXES and e.is_file() and not is_ignored_file(e.name):
                        return True
        except OSError:
            continue
    return False


def _class_folders(folder: Path, min_classes: int = 2) -> tuple[list[ClassFolder], bool] | None:
    """The class folders directly under ``folder`` and whether they are the database's
    canonical classes, or ``None`` when fewer than ``min_classes`` subfolders hold images
    (one will do for a source and in a view of sources, :mod:`cxrlab.data.sources`: a
    hospital may send one class only)."""
    if (folder / "sources.json").is_file():
        min_classes = 1
    dirs = _list_dirs(folder)
    if min_classes < 2:  # a class folder's own images/ or masks/ is never a class
        dirs = [d for d in dirs if d.name.lower() not in ("images", "masks")]
    with_images = [d for d in dirs if _has_image_files(d)]
    if len(with_images) < min_classes:
        return None
    canon = {d: canonical_class_name(d.name) for d in dirs}
    if not all(canon[d] for d in with_images):
        # A generic one-folder-per-class dataset: every subfolder is a class.
        return [ClassFolder(d.name, d) for d in dirs], False
    # The COVID-19 Radiography Database: canonical names and order; a known class folder
    # without images stays in the list so the scan reports it as empty.
    known = [d for d in dirs if canon[d]]
    names = [canon[d] for d in known]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        same = ", ".join(repr(d.name) for d in known if canon[d] == dup)
        raise DataError(f"{folder} has several folders for the class {dup!r} ({same}); keep one")
    order = {name: i for i, name in enumerate(COVID_RADIOGRAPHY_CLASSES)}
    known.sort(key=lambda d: order[canon[d]])
    return [ClassFolder(canon[d], d) for d in known], True  # type: ignore[arg-type]


def _split_folders(folder: Path, min_classes: int = 2) -> DatasetLayout | None:
    """A dataset whose own ``Train``/``Val``/``Test`` folders each hold class folders."""
    splits = [(d, _SPLIT_DIRS[_norm(d.name)]) for d in _list_dirs(folder)
              if _norm(d.name) in _SPLIT_DIRS]  # fmt: skip
    found = [(d, split, _class_folders(d, min_classes)) for d, split in splits]
    found = [(d, split, c) for d, split, c in found if c is not None]
    if len(found) < 2:
        return None
    names = [s for _, s, _ in found]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        same = ", ".join(repr(d.name) for d, s, _ in found if s == dup)
        raise DataError(f"{folder} has several folders for the {dup} split ({same}); keep one")
    kinds = {known for _, _, (_, known) in found}
    classes: list[ClassFolder] = []
    for _, split, (folders, _) in sorted(found, key=lambda t: ("train", "val", "test").index(t[1])):
        classes += [ClassFolder(c.name, c.path, split) for c in folders]
    if kinds == {True}:
        order = {name: i for i, name in enumerate(COVID_RADIOGRAPHY_CLASSES)}
        names_in_order = sorted({c.name for c in classes}, key=order.__getitem__)
    else:  # generic names: sorted, as a generic dataset's folders are
        names_in_order = sorted({c.name for c in classes})
    rank = {n: i for i, n in enumerate(names_in_order)}
    classes.sort(key=lambda c: rank[c.name])  # class order first, split order within
    return DatasetLayout(folder, tuple(classes), known_database=kinds == {True})


def find_layout(root: str | os.PathLike[str], *, min_classes: int = 2) -> DatasetLayout:
    """Locate the class folders under ``root``.

    ``root`` itself is tried first, then its subfolders (for a root holding
    ``COVID-19_Radiography_Dataset/``), then one level deeper. A folder whose
    ``Train``/``Val``/``Test`` subfolders each hold class folders (COVID-QU-Ex) is one
    dataset with its own split, not three. A dataset needs two classes; one of several
    sources may hold one (``min_classes=1``).

    Raises:
        DataError: ``root`` does not exist, or no folder holds ``min_classes`` classes.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(
            f"Dataset folder {root} does not exist; check the path or create a demo "
            "set with 'cxrlab data synth --out DIR'"
        )
    if not root.is_dir():
        raise DataError(f"Dataset path {root} is a file, not a folder of class folders")

    candidates = [root]
    level = [root]
    for _ in range(2):
        level = [d for parent in level for d in _list_dirs(parent)]
        candidates.extend(level)
    for folder in candidates:
        if (layout := _split_folders(folder, min_classes)) is not None:
            return layout
        if (found := _class_folders(folder, min_classes)) is not None:
            classes, known = found
            return DatasetLayout(folder, tuple(classes), known)
    raise DataError(
        f"No class folders found under {root}: expected one folder per class holding images "
        "(e.g. COVID-19_Radiography_Dataset/COVID/images/*.png). Download the database with "
        "'cxrlab data download' or create a demo set with 'cxrlab data synth --out DIR'"
    )
