"""The data options that ``cxrlab train`` and ``cxrlab pretrain`` share, declared once.

:class:`DataOptions` holds where the images come from and how they are split. A training
configuration (:class:`cxrlab.engine.TrainConfig`) and a pretraining one
(:class:`cxrlab.pretrain.PretrainConfig`) both extend it, so that the same values give both
commands the same images in the same split (which is what lets a pretraining run promise that
it never saw a later training run's validation or test images), and the two command lines
offer the same flags with the same help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..typed_config import option

__all__ = ["DataOptions"]

#: Help panel of these options on the command line.
PANEL = "Data"


@dataclass(frozen=True)
class DataOptions:
    """Where the images come from and how a new split is drawn.

    Attributes:
        data: dataset folder, or ``"phantoms"`` (``"phantoms:N[@SIZE]"``: N per class, drawn
            SIZE px wide) for the embedded synthetic phantoms; or several sources
            (``[NAME=]PATH`` each), read as one dataset that records each image's source
            (:mod:`cxrlab.data.sources`).
        class_map: each source's class map, ``NAME=FROM=TO,...`` (``TO`` may merge classes
            or be ``-`` to drop one; with one source ``FROM=TO,...``).
        sources_csv: ``NAME=FILE``: a CSV of ``path,source`` naming finer sources (hospitals,
            collections) of a source's images.
        split_seed: seed of a newly made split (independent of any training seed).
        ratios: train/val/test fractions of a newly made split.
        split_source: ``auto`` (the dataset's own Train/Val/Test folders when it has them,
            else a stratified split), ``folders`` or ``stratified``.
        near_copies: a newly drawn split keeps near copies (one radiograph re-saved,
            re-sized or re-cropped, found by perceptual signature) in one split, as it keeps
            exact copies; ``False`` groups exact copies only.
        patients: each source's patient rule, ``[NAME=]RULE``: ``kermany`` (the Kermany et
            al. file names, ``person124_virus_238.jpeg``), ``re:PATTERN`` (a regular
            expression on the file name), ``FILE.csv[#COLUMN]`` (a CSV of path and patient)
            or ``none``. A source without one gets the Kermany naming wherever its file names
            follow it. A newly drawn split keeps each patient's images in one split, and
            held-out and external scoring leave out images of patients a run saw
            (:mod:`cxrlab.data.patients`).
        image_size: square input size in pixels.
    """

    data: str | tuple[str, ...] = option(
        "phantoms",
        "Dataset folder, or 'phantoms', 'phantoms:N', 'phantoms:N@SIZE' (synthetic, N per "
        "class, SIZE px wide); repeat as [NAME=]PATH for several sources.",
        panel=PANEL)  # fmt: skip
    class_map: tuple[str, ...] = option(
        (), "A source's class map: NAME=FROM=TO,... (TO '-' drops a class); repeatable.",
        panel=PANEL)  # fmt: skip
    sources_csv: tuple[str, ...] = option(
        (), "NAME=FILE: a CSV of path,source naming finer sources of a source's images.",
        panel=PANEL)  # fmt: skip
    split_seed: int = option(0, "Seed of a new split.", panel=PANEL)
    ratios: tuple[float, float, float] = option((0.7, 0.15, 0.15), "train,val,test.", panel=PANEL)
    split_source: Literal["auto", "folders", "stratified"] = option(
        "auto", "auto: the dataset's Train/Val/Test folders if any.", panel=PANEL
    )
    near_copies: bool = option(
        True, "Keep near copies (re-saved, re-sized, re-cropped images) in one split.",
        panel=PANEL)  # fmt: skip
    patients: tuple[str, ...] = option(
        (),
        "A source's patient rule: [NAME=]kermany|re:PATTERN|FILE.csv[#COLUMN]|none; default: "
        "Kermany file names where they appear. Repeatable.", panel=PANEL)  # fmt: skip
    image_size: int = option(224, "Input size (px).", panel=PANEL)

    def split_options(self) -> dict[str, Any]:
        """These options as :func:`cxrlab.data.prepare_data`'s keywords (all but ``data``)."""
        return {"class_map": self.class_map, "sources_csv": self.sources_csv,
                "patients": self.patients, "split_seed": self.split_seed,
                "ratios": self.ratios, "split_source": self.split_source,
                "near_copies": self.near_copies, "image_size": self.image_size}  # fmt: skip
