"""A run opened for scoring: one way to know what a model needs before it sees an image.

:func:`open_run` opens a run folder, an ensemble folder or several run folders as one
:class:`ScoringRun`: its members, classes, input size, lungs mode, segmenter, training data
and split. ``evaluate``, the audit, the reuse analysis, external evaluation, ``predict`` and
``serve`` all prepare images through it, so a run trained with ``--lungs remove`` is scored
on images with their lungs removed wherever it is scored, and "no image can be scored" is
one error everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import run_files
from ..data import PreparedData, prepare_data
from ..errors import CheckpointError
from ..evaluation.other_data import Overlap, find_overlap
from .card import Card, DataRecord, EnsembleCard, RunCard
from .ensemble import check_members, expand_members, is_ensemble, read_ensemble
from .folder import load_card, require_finished

__all__ = ["NotHeldOut", "Preparation", "ScoringRun", "open_run", "segmenter_masks"]


@dataclass(frozen=True)
class Preparation:
    """How images are prepared for a run: its input size, lungs mode, rule for images
    without a valid lung mask, and the segmenter that makes the masks (with its weights'
    hash; ``None``: mask files beside the images). With ``lungs="keep"`` the images do not
    depend on the segmenter, but the audit's lung checks use its masks.

    One value from the opened run (:meth:`ScoringRun.preparation`), used both to prepare
    images (:meth:`kwargs`) and as the key of a cache of prepared images (:attr:`key`): two
    preparations with the same key give the same images.
    """

    image_size: int
    lungs: str = "keep"
    doubtful: str = "refuse"
    segmenter: str | None = None
    segmenter_weights: str | None = None

    @classmethod
    def make(
        cls,
        image_size: int,
        lungs: str = "keep",
        doubtful: str = "refuse",
        segmenter: str | os.PathLike[str] | None = None,
    ) -> Preparation:
        """A preparation, the segmenter's weights hashed.

        Raises:
            CheckpointError: ``segmenter`` is not a segmenter run.
        """
        if not segmenter:
            return cls(int(image_size), lungs, doubtful)
        from ..segment.apply import segmenter_id

        weights = segmenter_id(segmenter)["weights"]
        return cls(int(image_size), lungs, doubtful, str(segmenter), weights)

    def replace(self, **changes: Any) -> Preparation:
        """A copy with ``changes`` (``doubtful="skip"``, another ``image_size``)."""
        return dataclasses.replace(self, **changes)

    @property
    def key(self) -> tuple[int, str, str, str]:
        """What the prepared images depend on (the segmenter by its weights, not its path;
        not at all with ``lungs="keep"``)."""
        weights = "" if self.lungs == "keep" else self.segmenter_weights or ""
        return (self.image_size, self.lungs, self.doubtful, weights)

    @functools.cached_property
    def mask_provider(self) -> Any:
        """The segmenter's ``mask_provider`` (loaded once per value), or ``None``: mask
        files."""
        return segmenter_masks(self.segmenter)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~cxrlab.data.prepare_data`."""
        return {"image_size": self.image_size, "lungs": self.lungs, "doubtful": self.doubtful,
                "mask_provider": self.mask_provider}  # fmt: skip


@dataclass(frozen=True)
class NotHeldOut:
    """Images of other data that are not held out from a run: copies of its training or
    validation images, other images of patients it trained or validated on, and images its
    backbone's self-supervised pretraining saw (``--weights pretrained:RUN``).

    Attributes:
        overlap: every copy of a run image found (train, val and test).
        copies: paths that copy a training or validation image.
        patients: paths of other images of a patient the run saw (not in ``copies``).
        pretrained: paths its pretraining saw, exactly or as near copies (in neither of the
            above).
    """

    overlap: Overlap
    copies: frozenset[str]
    patients: frozenset[str]
    pretrained: frozenset[str] = frozenset()

    @property
    def paths(self) -> set[str]:
        """Every path to leave out of a held-out number."""
        return set(self.copies | self.patients | self.pretrained)


@dataclass(frozen=True)
class ScoringRun:
    """A run, an ensemble or several runs, as a model to score images with.

    Attributes:
        path: the run folder, or the ensemble folder (either holds ``split.csv``); for
            several run folders, the first.
        card: the run's card, or the ensemble's (several run folders: made on the fly).
        members: the run folders whose probabilities are averaged (one for a single run).
        member_cards: their cards, in the same order.
    """

    path: Path
    card: Card
    members: tuple[Path, ...]
    member_cards: tuple[RunCard, ...]

    @property
    def ensemble(self) -> bool:
        """Whether the members' calibrated probabilities are averaged (else a single run is
        scored on its own probabilities, like its ``metrics.json``)."""
        return isinstance(self.card, EnsembleCard)

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def image_size(self) -> int:
        return self.card.image_size

    @property
    def data(self) -> DataRecord:
        """What the (first) member trained on: its data, split and lungs."""
        return self.card.data

    @property
    def lungs(self) -> str:
        return self.data.lungs

    @property
    def split_file(self) -> Path:
        return self.path / run_files.SPLIT

    def data_root(self) -> str:
        """The folder the run's images came from; a view of several sources that is no
        longer in the cache is built again from the sources the card names."""
        from ..data.sources import data_root

        return data_root(self.data.root, (self.data.sources or {}).get("built_from"))

    def preparation(self, masks_from: str | os.PathLike[str] | None = None) -> Preparation:
        """How images are prepared as the run's were: its input size, lungs mode and rule
        for images without a valid mask, and masks from the segmenter it trained with (else
        ``masks_from``, else mask files)."""
        segmenter = self.data.segmenter or (str(masks_from) if masks_from else None)
        return Preparation.make(self.image_size, self.lungs, self.data.doubtful, segmenter)

    def prepare(
        self,
        data: str | os.PathLike[str] | PreparedData | None = None,
        split: str = "test",
        *,
        preparation: Preparation | None = None,
        min_classes: int | None = None,
        progress: bool = True,
    ) -> PreparedData:
        """The images to score, prepared as the run's were (its size and lungs mode).

        Args:
            data: a dataset folder (default: the run's own), or data already prepared at
                the run's size and lungs mode (an external set scored for many runs).
            split: ``test``/``val``/``train`` of the run's saved split (checked against the
                data image by image), or ``all``: every image of ``data``, where every image
                without a valid lung mask is left out and counted, whatever the run did.
            preparation: what :meth:`preparation` returned, where the caller needs it too
                (a segmenter is then loaded once); by default ``preparation()``.
            min_classes: the fewest classes the data may have (``prepare_data``'s default
                when ``None``; a site's folder of unlabelled images has one).

        Raises:
            CheckpointError: prepared data of another size or lungs mode; a split of a run
                folder without ``split.csv``.
        """
        if isinstance(data, PreparedData):
            if data.images.size != self.image_size or data.lungs != self.lungs:
                raise CheckpointError(
                    f"The data was prepared at {data.images.size} px with lungs "
                    f"{data.lungs!r}; the run in {self.path} needs {self.image_size} px with "
                    f"lungs {self.lungs!r}"
                )
            return data
        prep = (preparation if preparation is not None else self.preparation()).kwargs()
        if min_classes is not None:
            prep["min_classes"] = min_classes
        root = data if data is not None else self.data_root()
        if split == "all":
            return prepare_data(root, holdout_all=True, progress=progress,
                                **(prep | {"doubtful": "skip"}))  # fmt: skip
        if not self.split_file.is_file():
            raise CheckpointError(
                f"{self.path} has no split.csv; score every image of the data instead "
                "(split='all', --split all)"
            )
        return prepare_data(root, split_file=self.split_file, progress=progress, **prep)

    def is_own_data(self, prepared: PreparedData) -> bool:
        """Whether ``prepared`` holds the very images the run trained on."""
        return prepared.report.fingerprint() == self.data.data_hash

    def copies(
        self, records: Sequence[Any], whole: np.ndarray, *, progress: bool = False
    ) -> Overlap:
        """Images of other data (``records``, their ``whole`` decoded images) that copy one
        of the run's images."""
        if not self.split_file.is_file():
            return Overlap(note=f"{self.path} has no split.csv")
        try:
            root = self.data_root()
        except Exception as e:  # the run's data may live on another machine
            return Overlap(note=f"the run's images at {self.data.root} cannot be read ({e})")
        return find_overlap(self.split_file, root, self.image_size, records, whole,
                            progress=progress)  # fmt: skip

    def not_held_out(
        self, prepared: PreparedData, rows: Sequence[int], *, progress: bool = False
    ) -> NotHeldOut:
        """Which of ``prepared``'s images at ``rows`` (other data than the run's) are not
        held out from it: copies of its training or validation images (exact and near, on
        whole images), other images of the patients it saw (:meth:`seen_patients`), and
        images its backbone's pretraining saw (:meth:`seen_in_pretraining`)."""
        records = [prepared.split.records[i] for i in rows]
        whole = prepared.whole_images(progress).array  # copies are of whole radiographs
        pixels = whole[list(rows)]
        overlap = self.copies(records, pixels, progress=progress)
        copies = overlap.paths(("train", "val"))
        patients = self.seen_patients(prepared, rows, copies) - copies
        pretrained = self.seen_in_pretraining(records, pixels) - copies - patients
        return NotHeldOut(overlap, frozenset(copies), frozenset(patients), frozenset(pretrained))

    def seen_in_pretraining(self, records: Sequence[Any], pixels: np.ndarray) -> set[str]:
        """Paths of ``records`` (their whole decoded images ``pixels``) that the run's
        backbone's self-supervised pretraining saw, exactly or as near copies (nothing for
        a run without ``pretrained:RUN`` weights, and for an ensemble).

        Raises:
            CheckpointError: the pretraining run is gone, so it cannot be checked.
        """
        record = getattr(self.card, "pretraining", None)
        if record is None:
            return set()
        from ..pretrain.leakage import seen_by_pretraining

        try:
            seen = seen_by_pretraining(record.run, [r.hash for r in records], pixels)
        except CheckpointError as e:
            raise CheckpointError(
                f"{self.path} started from the pretraining run {record.run}, which cannot be "
                f"read to find the images it saw ({e}); put it back to score other data"
            ) from e
        return {records[i].path for i in seen.rows}

    def seen_patients(
        self, prepared: PreparedData, rows: Sequence[int], copies: set[str]
    ) -> set[str]:
        """Paths of ``prepared``'s images at ``rows`` (other data) whose patient the run saw:
        a patient with an image in the run's training or validation split (patients are
        keyed so that one patient has one key in every folder named the same way, see
        :mod:`cxrlab.data.patients`), or one whose image here copies a run image
        (``copies``: the patient's other radiographs are not held out either)."""
        split = prepared.split
        if not split.patients:
            return set()
        seen: set[str] = set()
        if self.split_file.is_file():
            from ..data import load_split

            seen = load_split(self.split_file).patients_in(("train", "val"))
        seen |= {split.patient(i) for i in rows if split.records[i].path in copies}
        return {split.records[i].path for i in rows
                if split.patient(i) and split.patient(i) in seen}  # fmt: skip

    def whole_image_lungs(
        self, *, masks_from: str | os.PathLike[str] | None = None, doubtful: str = "skip"
    ) -> Any:
        """The lung preprocessing the run needs on whole images
        (:class:`~cxrlab.segment.apply.RunLungs`), or ``None`` for a run that keeps them.

        The masks come from ``masks_from`` (a segmenter run) or else from the segmenter the
        run was trained with.

        Raises:
            CheckpointError: the run was trained on mask files and no segmenter is given;
                the recorded segmenter is gone or has changed since.
        """
        if self.lungs == "keep":
            return None
        from ..segment.apply import RunLungs, segmenter_id

        recorded = self.data.masks_from or {}
        segmenter = masks_from or self.data.segmenter
        fix = "pass --masks-from SEGMENTER (a 'cxrlab segment train' run) to make the masks"
        if not segmenter:
            raise CheckpointError(
                f"{self.path} was trained with --lungs {self.lungs} on mask files, and whole "
                f"images have none: {fix}"
            )
        if not Path(segmenter).is_dir():
            raise CheckpointError(f"{self.path}'s lung segmenter {segmenter} does not exist: {fix}")
        if not masks_from and segmenter_id(segmenter)["weights"] != recorded.get("weights"):
            raise CheckpointError(
                f"{self.path}'s lung segmenter {segmenter} has other weights than when the run "
                "was trained; pass --masks-from with it to use it anyway"
            )
        return RunLungs(self.lungs, segmenter, self.image_size, doubtful)


def open_run(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> ScoringRun:
    """Open a run folder, an ensemble folder, or several run or ensemble folders (one
    ensemble of all their runs) for scoring.

    Raises:
        CheckpointError: a folder that is not a finished run or ensemble; several runs that
            do not share classes, input size, split and lungs mode.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise CheckpointError("No run folder to score")
    path = Path(sources[0])
    members = tuple(expand_members(sources))
    for member in members:
        require_finished(member)
    cards = tuple(load_card(m) for m in members)
    card: Card
    if len(sources) == 1 and is_ensemble(path):
        card = read_ensemble(path)
    elif len(members) > 1:
        check_members(members, cards)
        card = EnsembleCard.of_runs(list(cards), [str(m) for m in members])
    else:
        card = cards[0]
    return ScoringRun(path, card, members, cards)


def segmenter_masks(segmenter: str | os.PathLike[str] | None) -> Any:
    """A ``mask_provider`` for :func:`~cxrlab.data.prepare_data` that runs ``segmenter``, or
    ``None`` (the mask files beside the images)."""
    if not segmenter:
        return None
    from ..segment.apply import mask_provider

    return mask_provider(segmenter)
