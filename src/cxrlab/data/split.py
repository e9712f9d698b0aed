"""Reproducible, stratified train/val/test splits saved as a manifest CSV.

The manifest has one row per valid image (path, label, width, height, hash, group, patient,
source, split; the group, patient and source columns came later, and manifests without them
still load) and a
first comment line with the seed, ratios and class order. Its bytes depend only on the data
and the seed: each image's place in the shuffle is a hash of its content and the seed, so
the same data and seed give a byte-identical file on any machine and any NumPy version, and
adding images never moves existing ones between splits unless a class's quotas change.
Exact duplicates (same pixels) always land in the same split, and so do near copies (the
same radiograph re-saved, re-sized or re-cropped, found by perceptual signature, see
:func:`~cxrlab.data.dedup.copy_groups`) when the split is given its copy groups: a test image
then has no copy in training. The manifest's ``group`` column names each image's group.
Images of one patient (:mod:`cxrlab.data.patients`) go into one split as well, joined with
their copies' groups; the ``patient`` column names each image's patient where it is known.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..utils import atomic_write_text, hash_strings
from .patients import group_units
from .scan import ImageRecord, ScanReport

__all__ = ["SPLITS", "Split", "load_split", "make_split", "train_size_label"]

SPLITS = ("train", "val", "test")
_HEADER = ("path", "label", "width", "height", "hash", "group", "patient", "source", "split")


@dataclass(frozen=True)
class Split:
    """A dataset's images with their split assignment.

    Attributes:
        classes: class names; a label's index in this tuple is the model's target.
        records: valid images, sorted by path.
        assignment: ``"train"``, ``"val"`` or ``"test"`` for each record.
        seed: the split seed.
        ratios: train/val/test fractions (``(0, 0, 1)`` for a hold-out set).
        source: ``stratified`` (made by :func:`make_split`) or ``folders`` (the dataset's
            own Train/Val/Test folders; ``ratios`` are then the fractions found).
        groups: each record's copy group (kept whole in one split); empty: every image is
            grouped with its exact copies only (its hash), as manifests before groups were.
        sources: each record's data source (:meth:`ScanReport.source_of`); empty when not
            known (a manifest written before sources were recorded, read without data).
        patients: each record's patient (``""`` where not known,
            :func:`~cxrlab.data.patients.patient_ids`); empty when no patient is known (or
            the manifest came before patients were recorded). A drawn split keeps each
            patient's images in one split.
    """

    classes: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    assignment: tuple[str, ...]
    seed: int
    ratios: tuple[float, float, float]
    source: str = "stratified"
    groups: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()

    def patient(self, i: int) -> str:
        """Record ``i``'s patient (``""`` when not known)."""
        return self.patients[i] if self.patients else ""

    def patient_summary(self) -> dict[str, int]:
        """How patients shaped the split: ``patients`` known, the ``images`` they cover,
        ``grouped_patients`` with several images (each kept in one split) and their
        ``grouped_images``, and ``across`` patients whose images lie in more than one split
        (0 for a drawn split; a dataset's own folders or an old manifest may have some)."""
        where: dict[str, set[str]] = defaultdict(set)
        sizes: dict[str, int] = defaultdict(int)
        for i, s in enumerate(self.assignment):
            p = self.patient(i)
            if p:
                where[p].add(s)
                sizes[p] += 1
        grouped = [p for p, n in sizes.items() if n > 1]
        return {
            "patients": len(sizes),
            "images": sum(sizes.values()),
            "grouped_patients": len(grouped),
            "grouped_images": sum(sizes[p] for p in grouped),
            "across": sum(len(s) > 1 for s in where.values()),
        }

    def patients_in(self, splits: tuple[str, ...] = ("train", "val")) -> set[str]:
        """The known patients with an image in ``splits``."""
        return {self.patient(i) for i, s in enumerate(self.assignment)
                if s in splits and self.patient(i)}  # fmt: skip

    def source_of(self, i: int) -> str:
        """Record ``i``'s source (``""`` when not known)."""
        return self.sources[i] if self.sources else ""

    def group(self, i: int) -> str:
        """The copy group of row ``i`` (its hash when the split has no groups)."""
        return self.groups[i] if self.groups else self.records[i].hash

    def joined(self) -> tuple[int, int]:
        """``(groups, images)``: near-copy groups (images with different pixels kept together)
        and how many images they hold."""
        hashes: dict[str, set[str]] = defaultdict(set)
        sizes: dict[str, int] = defaultdict(int)
        for i, r in enumerate(self.records):
            hashes[self.group(i)].add(r.hash)
            sizes[self.group(i)] += 1
        near = [g for g, h in hashes.items() if len(h) > 1]
        return len(near), sum(sizes[g] for g in near)

    def without(self, paths: set[str] | frozenset[str]) -> Split:
        """The split with the images at ``paths`` left out; the rest keep their splits."""
        keep = [i for i, r in enumerate(self.records) if r.path not in paths]
        return dataclasses.replace(
            self,
            records=tuple(self.records[i] for i in keep),
            assignment=tuple(self.assignment[i] for i in keep),
            groups=tuple(self.groups[i] for i in keep) if self.groups else (),
            sources=tuple(self.sources[i] for i in keep) if self.sources else (),
            patients=tuple(self.patients[i] for i in keep) if self.patients else (),
        )

    def indices(self, split: str) -> list[int]:
        """Row indices of one split (``"all"`` gives every row)."""
        if split == "all":
            return list(range(len(self.records)))
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)} or all")
        return [i for i, s in enumerate(self.assignment) if s == split]

    def train_subset(self, size: float) -> list[int]:
        """Row indices of a stratified, nested subset of the training split.

        ``size`` in (0, 1] is a fraction of each class's training images (at least one per
        class); a whole number above 1 is a count per class. Within a class the images are
        ordered by a hash of their content alone, so a subset is the same for every seed and
        every cell, and a smaller subset lies inside every larger one (10 % inside 30 %).

        Raises:
            DataError: ``size`` is not a fraction or a whole count, or a class has fewer
                training images than the count asks for.
        """
        train = self.indices("train")
        if size == 1:
            return train
        if not (0 < size < 1 or (size > 1 and float(size).is_integer())):
            raise DataError(
                f"train_size {size:g}: give a fraction in (0, 1] or a whole count per class"
            )
        by_class: dict[str, list[int]] = defaultdict(list)
        for i in train:
            by_class[self.records[i].label].append(i)
        keep: list[int] = []
        for label, rows in by_class.items():
            if size < 1:
                n = max(1, round(size * len(rows)))
            else:
                n = int(size)
                if n > len(rows):
                    raise DataError(
                        f"train_size {n} per class: class {label!r} has only {len(rows)} "
                        "training images"
                    )
            rows = sorted(rows, key=lambda i: _rank(0, self.records[i].hash + self.records[i].path))
            keep.extend(rows[:n])
        return sorted(keep)

    def labels(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[r.label] for r in self.records]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: n}}``."""
        out = {s: dict.fromkeys(self.classes, 0) for s in SPLITS}
        for r, s in zip(self.records, self.assignment):
            out[s][r.label] += 1
        return out

    def fingerprint(self) -> str:
        """Hash of the manifest's rows (the split hash recorded with every run)."""
        return hash_strings(
            f"{r.path}\t{r.label}\t{r.hash}\t{s}" for r, s in zip(self.records, self.assignment)
        )

    def to_csv(self) -> str:
        buf = io.StringIO()
        ratios = ",".join(f"{r:g}" for r in self.ratios)
        source = f"; source={self.source}" if self.source != "stratified" else ""
        buf.write(
            f"# cxrlab manifest v1; seed={self.seed}; ratios={ratios}; "
            f"classes={'|'.join(self.classes)}{source}\n"
        )
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_HEADER)
        for i, (r, s) in enumerate(zip(self.records, self.assignment)):
            w.writerow([r.path, r.label, r.width, r.height, r.hash, self.group(i),
                        self.patient(i), self.source_of(i), s])  # fmt: skip
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest CSV atomically; returns the path."""
        atomic_write_text(path, self.to_csv())
        return Path(path)


def train_size_label(train_size: float) -> str:
    """How a ``train_size`` reads: ``10% of training data`` or ``50 per class``."""
    if train_size <= 1:
        return f"{train_size:.0%} of training data"
    return f"{train_size:g} per class"


def _rank(seed: int, key: str) -> str:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=16).hexdigest()


def _draw(weights: list[int], digest: str) -> int:
    """An index drawn in proportion to ``weights`` (some positive) by a hex digest."""
    u = int(digest, 16) % sum(weights)
    for i, w in enumerate(weights):
        if u < w:
            return i
        u -= w
    raise AssertionError("unreachable")


def _quotas(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """Split ``n`` items by ``ratios`` (largest remainder), keeping val/test non-empty."""
    raw = [n * r for r in ratios]
    q = [int(x) for x in raw]
    for i in sorted(range(3), key=lambda i: (q[i] - raw[i], i))[: n - sum(q)]:
        q[i] += 1
    for i in (1, 2):  # a class must be represented in val and test when it can be
        if ratios[i] > 0 and q[i] == 0 and q[0] > 1:
            q[0] -= 1
            q[i] += 1
    return q


def make_split(
    report: ScanReport,
    *,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    holdout_all: bool = False,
    use_folders: bool = False,
    groups: Mapping[str, str] | None = None,
    patients: Mapping[str, str] | None = None,
) -> Split:
    """Assign every valid image of ``report`` to train, val or test, stratified by class.

    Args:
        report: the result of :func:`~cxrlab.data.scan.scan_dataset`.
        ratios: train/val/test fractions; they must be non-negative and sum to 1.
        seed: the split seed (independent of the training seed).
        holdout_all: every image is test (evaluating an external dataset).
        use_folders: keep the dataset's own Train/Val/Test folders as the split
            (``report.source_splits``) instead of drawing one; ``ratios`` and ``seed`` are
            then not used.
        groups: image path -> copy group (:func:`~cxrlab.data.dedup.copy_groups`); each group
            goes whole into one split. Default: exact copies (the same hash) only.
        patients: image path -> patient (:func:`~cxrlab.data.patients.patient_ids`; images
            not named have no known patient); each patient's images, with their copy
            groups, go whole into one split. Recorded in the split either way (a folder
            split keeps its folders, and :meth:`Split.patient_summary` counts the patients
            it splits).

    Raises:
        DataError: a class has no valid images, the ratios are invalid, or ``use_folders``
            is asked of a dataset without split folders.
    """
    if report.empty_classes:
        folders = ", ".join(repr(c) for c in report.empty_classes)
        raise DataError(
            f"Class folder(s) {folders} under {report.root} hold no valid images; add images or "
            "remove the folder ('cxrlab data scan' lists invalid files)"
        )
    if use_folders and not holdout_all:
        return _with_patients(_folder_split(report), patients)
    if holdout_all:
        ratios = (0.0, 0.0, 1.0)
    ratios = tuple(float(r) for r in ratios)  # type: ignore[assignment]
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise DataError(
            f"Split ratios must be three non-negative numbers summing to 1, got {ratios}"
        )
    records = sorted(report.records, key=lambda r: r.path)
    keys = [groups.get(r.path, r.hash) if groups else r.hash for r in records]
    units = group_units([r.path for r in records], keys, patients) if patients else keys
    members: dict[str, list[ImageRecord]] = defaultdict(list)
    for r, k in zip(records, units):
        members[k].append(r)
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[r.label] += 1
    quota = {c: _quotas(counts[c], ratios) for c in report.classes}  # type: ignore[arg-type]
    filled = {c: [0, 0, 0] for c in report.classes}
    assign: dict[str, str] = {}

    def place(g: list[ImageRecord], k: int) -> None:
        for r in g:
            filled[r.label][k] += 1
            assign[r.path] = SPLITS[k]

    order = sorted(members, key=lambda k: _rank(seed, k))
    # copy groups first, each whole into a split drawn (seeded) in proportion to the room its
    # classes have left there; then single images fill every class's quotas exactly
    for key in (k for k in order if len(members[k]) > 1):
        g = members[key]
        need = {c: sum(r.label == c for r in g) for c in {r.label for r in g}}
        room = [min(quota[c][i] - filled[c][i] - n for c, n in need.items()) + 1
                for i in range(3)]  # fmt: skip
        weights = [max(0, w) for w in room]
        if not sum(weights):  # fits nowhere whole: the split with most room for its bulk
            place(g, max(range(3), key=lambda i: room[i]))
            continue
        place(g, _draw(weights, _rank(seed, f"place:{key}")))
    for key in (k for k in order if len(members[k]) == 1):
        label = members[key][0].label
        # the first split with room (a class's rounding can leave none: test)
        place(members[key], next((i for i in range(3) if filled[label][i] < quota[label][i]), 2))
    return Split(
        classes=tuple(report.classes),
        records=tuple(records),
        assignment=tuple(assign[r.path] for r in records),
        seed=seed,
        ratios=ratios,  # type: ignore[arg-type]
        groups=tuple(keys) if groups else (),
        sources=tuple(report.source_of(r.path) for r in records),
        patients=_patient_column(records, patients),
    )


def _patient_column(records: tuple[ImageRecord, ...] | list[ImageRecord],
                    patients: Mapping[str, str] | None) -> tuple[str, ...]:  # fmt: skip
    """Each record's patient, or ``()`` when none is known."""
    if not patients:
        return ()
    column = tuple(patients.get(r.path, "") for r in records)
    return column if any(column) else ()


def _with_patients(split: Split, patients: Mapping[str, str] | None) -> Split:
    return dataclasses.replace(split, patients=_patient_column(split.records, patients))


def _folder_split(report: ScanReport) -> Split:
    """The dataset's own split folders as a :class:`Split`."""
    records = sorted(report.records, key=lambda r: r.path)
    missing = [r.path for r in records if r.path not in report.source_splits]
    if not report.source_splits or missing:
        raise DataError(
            f"{report.root} has no Train/Val/Test folders to take the split from"
            + (f" ({len(missing)} image(s) outside them, first: {missing[0]})" if missing else "")
            + "; use a stratified split instead (--split-source stratified)"
        )
    assignment = tuple(report.source_splits[r.path] for r in records)
    n = len(records)
    ratios = tuple(round(assignment.count(s) / n, 4) for s in SPLITS)
    sources = tuple(report.source_of(r.path) for r in records)
    return Split(tuple(report.classes), tuple(records), assignment, 0, ratios,  # type: ignore[arg-type]
                 "folders", sources=sources)  # fmt: skip


def load_split(path: str | os.PathLike[str], report: ScanReport | None = None) -> Split:
    """Read a manifest written by :meth:`Split.save`.

    When ``report`` (a fresh scan of the dataset) is given, every row is checked against it:
    a missing, changed or relabelled image raises instead of training on other data than the
    manifest describes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"Cannot read split file {path}: {e.strerror or e}") from e
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# cxrlab manifest v1"):
        raise DataError(
            f"{path} is not a cxrlab manifest (first line should start with "
            "'# cxrlab manifest v1'); create one with 'cxrlab data split'"
        )
    meta = dict(part.strip().split("=", 1) for part in lines[0][2:].split(";") if "=" in part)
    try:
        classes = tuple(meta["classes"].split("|"))
        seed = int(meta["seed"])
        ratios = tuple(float(x) for x in meta["ratios"].split(","))
        rows = list(csv.DictReader(lines[1:]))
        records = tuple(
            ImageRecord(r["path"], r["label"], int(r["width"]), int(r["height"]), r["hash"])
            for r in rows
        )
        assignment = tuple(r["split"] for r in rows)
        groups = tuple(r.get("group") or rec.hash for r, rec in zip(rows, records))
        sources = tuple(r.get("source") or "" for r in rows)
        patients = tuple(r.get("patient") or "" for r in rows)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"Split file {path} is malformed ({e}); re-create it") from e
    bad = {s for s in assignment if s not in SPLITS} | {
        r.label for r in records if r.label not in classes
    }
    if bad:
        raise DataError(f"Split file {path} has unknown split or class names: {sorted(bad)}")
    if report is not None:
        current = {r.path: r for r in report.records}
        changed = [r.path for r in records if current.get(r.path) != r]
        if changed:
            raise DataError(
                f"Split file {path} does not match the dataset at {report.root}: "
                f"{len(changed)} image(s) missing or changed (first: {changed[0]}). "
                "Re-create the split or point --data at the dataset it was made from"
            )
    if not all(sources):  # a manifest from before sources: from the data, when given
        sources = tuple(report.source_of(r.path) for r in records) if report is not None else ()
    source = meta.get("source", "stratified")
    return Split(classes, records, assignment, seed, ratios, source,  # type: ignore[arg-type]
                 groups if any(g != r.hash for g, r in zip(groups, records)) else (),
                 sources, patients if any(patients) else ())  # fmt: skip
