"""Scanning a dataset: every image opened once, sorted into valid and invalid, hashed.

The scan is the single source of truth for which files may be used. Its results are cached
per file (keyed by path, size and modification time) so a second scan of 20,000 images only
re-reads the files that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..utils import atomic_write_text, cache_dir, hash_strings
from .imageio import DEFAULT_MAX_PIXELS, ImageReadError, load_gray8
from .layout import DatasetLayout, find_layout
from .sources import read_sources

__all__ = ["ImageRecord", "InvalidFile", "ScanReport", "pixel_hash", "scan_dataset"]

_SCAN_CACHE_VERSION = 1


def pixel_hash(gray: np.ndarray) -> str:
    """Content hash of a decoded grayscale image (shape and pixels, not file bytes).

    Two files with the same pixels are the same image even when their encodings differ
    (PNG compression level, a JPEG re-save is *not* the same).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(gray.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(gray).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ImageRecord:
    """One valid image: where it is, its class, its size and its content hash."""

    path: str  # relative to the dataset folder, '/'-separated
    label: str
    width: int
    height: int
    hash: str


@dataclass(frozen=True)
class InvalidFile:
    """A file left out of the dataset, with the reason."""

    path: str
    reason: str


@dataclass
class ScanReport:
    """Everything :func:`scan_dataset` found.

    Attributes:
        root: the dataset folder the class folders were found in.
        classes: class names in label order.
        records: valid images, sorted by path, conflicting images excluded.
        invalid: files that could not be used, with reasons.
        duplicates: groups of paths with identical pixels within one class.
        conflicts: groups of identical images found under different classes; these are
            left out of ``records`` because their label is ambiguous.
        empty_classes: class folders without a single valid image.
        source_splits: the dataset's own split of each valid image (``train``/``val``/
            ``test``) when it comes in split folders (COVID-QU-Ex); empty otherwise.
        sources: each image's source, in a view of several sources; empty otherwise (see
            :meth:`source_of`).
    """

    root: Path
    classes: tuple[str, ...]
    records: list[ImageRecord]
    invalid: list[InvalidFile] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    known_database: bool = False
    source_splits: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def source_of(self, path: str) -> str:
        """The source an image came from: named by a view of several sources
        (:mod:`cxrlab.data.sources`), else the dataset folder's name."""
        return self.sources.get(path) or self.root.name

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return {c: counts.get(c, 0) for c in self.classes}

    def size_summary(self) -> dict[str, Any]:
        """Width/height ranges and the most common sizes of the valid images."""
        if not self.records:
            return {}
        w = np.array([r.width for r in self.records])
        h = np.array([r.height for r in self.records])
        common = Counter(f"{r.width}x{r.height}" for r in self.records).most_common(5)
        return {
            "width": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
            "height": {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
            "most_common": dict(common),
        }

    def fingerprint(self) -> str:
        """A hash of the valid images' paths, labels and contents (the data hash)."""
        return hash_strings(f"{r.path}\t{r.label}\t{r.hash}" for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "known_database": self.known_database,
            "classes": self.class_counts(),
            "total": len(self.records),
            "sizes": self.size_summary(),
            "invalid": [{"path": i.path, "reason": i.reason} for i in self.invalid],
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "empty_classes": self.empty_classes,
            "source_splits": dict(Counter(self.source_splits.values())),
            "sources": self.source_summary(),
            "data_hash": self.fingerprint(),
        }

    def source_summary(self) -> dict[str, Any] | None:
        """With several sources: images per class and source, the confounds (a class one
        source holds entirely, a source that holds one class), and exact copies across
        sources; ``None`` for one source."""
        from .sources import class_source_table, confounds

        names = [self.source_of(r.path) for r in self.records]
        if len(set(names)) < 2:
            return None
        table = class_source_table([r.label for r in self.records], names)
        by_hash: dict[str, set[str]] = defaultdict(set)
        for r, name in zip(self.records, names):
            by_hash[r.hash].add(name)
        across = sum(len(s) > 1 for s in by_hash.values())
        return {"images": table, "confounds": confounds(table), "copies_across": across}


def _scan_cache_path(root: Path) -> Path:
    return cache_dir() / "scan" / f"{hash_strings([str(root.resolve())])}.json"


def _load_scan_cache(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_text())
        if data.get("version") == _SCAN_CACHE_VERSION:
            return data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def _probe(path: Path, max_pixels: int) -> list[Any]:
    """Decode one file; return ``[width, height, hash]`` or ``["invalid", reason]``."""
    try:
        gray = load_gray8(path, max_pixels=max_pixels)
    except ImageReadError as e:
        return ["invalid", e.reason]
    return [int(gray.shape[1]), int(gray.shape[0]), pixel_hash(gray)]


def _files(layout: DatasetLayout) -> tuple[list[tuple[str, Path, str]], dict[str, str]]:
    """Every file of the class folders as ``(relative path, path, class)``, sorted, and the
    dataset's own split of each file it splits."""
    files: list[tuple[str, Path, str]] = []
    own_split: dict[str, str] = {}
    for cls in layout.classes:
        for f in cls.files():
            rel = f.relative_to(layout.root).as_posix()
            files.append((rel, f, cls.name))
            if cls.split is not None:
                own_split[rel] = cls.split
    files.sort(key=lambda t: t[0])
    return files, own_split


def _probe_files(root: Path, files: list[tuple[str, Path, str]], max_pixels: int,
                 workers: int | None, use_cache: bool,
                 progress: bool) -> dict[str, list[Any]]:  # fmt: skip
    """Per file, ``[size, mtime, *probe]``: decoded once, or read from the scan cache when
    the file is unchanged since (the cache is then brought up to date)."""
    cache_path = _scan_cache_path(root)
    cached = _load_scan_cache(cache_path) if use_cache else {}
    results: dict[str, list[Any]] = {}
    todo: list[tuple[str, Path, list[int]]] = []
    for rel, path, _ in files:
        try:
            st = path.stat()
            key = [st.st_size, st.st_mtime_ns]
        except OSError:
            key = [-1, -1]
        hit = cached.get(rel)
        if hit is not None and hit[:2] == key:
            results[rel] = hit
        else:
            todo.append((rel, path, key))
    if not todo:
        return results
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probes = pool.map(lambda t: _probe(t[1], max_pixels), todo)
        bar = tqdm(probes, total=len(todo), desc="Scanning images", unit="img",
                   disable=not progress or None, leave=False)  # fmt: skip
        for (rel, _, key), res in zip(todo, bar):
            results[rel] = key + res
    if use_cache:
        payload = {"version": _SCAN_CACHE_VERSION, "root": str(root), "files": results}
        try:
            atomic_write_text(cache_path, json.dumps(payload))
        except OSError as e:
            warnings.warn(f"Could not write the scan cache {cache_path}: {e}", stacklevel=3)
    return results


def _same_pixels(valid: list[ImageRecord]) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Groups of files with identical pixels: copies within one class, and conflicts (one
    image under several classes)."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in valid:
        by_hash[r.hash].append(r)
    duplicates: list[list[str]] = []
    conflicts: list[dict[str, Any]] = []
    for h, group in by_hash.items():
        if len(group) < 2:
            continue
        labels = sorted({r.label for r in group})
        if len(labels) > 1:
            conflicts.append({"hash": h, "classes": labels, "paths": [r.path for r in group]})
        else:
            duplicates.append([r.path for r in group])
    duplicates.sort()
    conflicts.sort(key=lambda c: c["paths"])
    return duplicates, conflicts


def scan_dataset(
    root: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    use_cache: bool = True,
    progress: bool = True,
    min_classes: int = 2,
) -> ScanReport:
    """Find the classes under ``root``, decode every image once, and report what is usable.

    Args:
        root: the dataset folder, or a folder above it (see :mod:`cxrlab.data.layout`).
        max_pixels: images larger than this are reported as decompression bombs.
        workers: decoding threads (default: number of CPUs).
        use_cache: reuse per-file results of earlier scans for unchanged files.
        progress: show a progress bar.
        min_classes: the fewest class folders a dataset may have (1: a site's unlabelled
            images in one folder, see :func:`~cxrlab.data.layout.find_layout`).

    Returns:
        A :class:`ScanReport`. Invalid files never raise: they are listed with a reason.

    Raises:
        DataError: ``root`` is missing or holds no recognisable class folders.

    Example:
        >>> report = scan_dataset("data/COVID-19_Radiography_Dataset")  # doctest: +SKIP
        >>> report.class_counts()  # doctest: +SKIP
        {'COVID': 3616, 'Lung_Opacity': 6012, 'Normal': 10192, 'Viral Pneumonia': 1345}
    """
    layout: DatasetLayout = find_layout(root, min_classes=min_classes)
    files, own_split = _files(layout)
    results = _probe_files(layout.root, files, max_pixels, workers, use_cache, progress)
    valid: list[ImageRecord] = []
    invalid: list[InvalidFile] = []
    for rel, _, label in files:
        res = results[rel][2:]
        if res[0] == "invalid":
            invalid.append(InvalidFile(rel, res[1]))
        else:
            valid.append(ImageRecord(rel, label, int(res[0]), int(res[1]), str(res[2])))
    duplicates, conflicts = _same_pixels(valid)
    conflicted = {p for c in conflicts for p in c["paths"]}
    records = [r for r in valid if r.path not in conflicted]
    counts = Counter(r.label for r in records)
    empty = [c for c in layout.class_names if counts.get(c, 0) == 0]
    return ScanReport(
        root=layout.root,
        classes=layout.class_names,
        records=records,
        invalid=invalid,
        duplicates=duplicates,
        conflicts=conflicts,
        empty_classes=empty,
        known_database=layout.known_database,
        source_splits={r.path: own_split[r.path] for r in records if r.path in own_split},
        sources=read_sources(layout.root),
    )
