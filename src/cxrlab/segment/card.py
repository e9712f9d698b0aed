"""A segmenter's configuration and its card, typed.

:class:`SegmentConfig` declares ``cxrlab segment train``'s options once (the command line
is generated from its fields, as ``train``'s is from ``TrainConfig``). A segmenter run's
``segmenter_card.json`` is read into a :class:`SegmenterCard` by :func:`read_segmenter_card`
only, checked once (its format, its fields), and every other module reads its typed fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import run_files
from ..errors import CheckpointError, ConfigError
from ..typed_config import check_format, from_dict, option

__all__ = [
    "SEGMENTER_FORMAT",
    "TARGETS",
    "SegmentConfig",
    "SegmenterCard",
    "SegmenterData",
    "SegmenterTraining",
    "read_segmenter_card",
]

SEGMENTER_FORMAT = "cxrlab-segmenter/1"
#: What a segmenter can segment, and the kind of mask file (data.masks.MASK_KINDS) it
#: learns from.
TARGETS: dict[str, str] = {"lungs": "lung", "infection": "infection"}


@dataclass(frozen=True)
class SegmentConfig:
    """One segmenter training run (``cxrlab segment train``'s options, one field each)."""

    data: str = option(
        "phantoms",
        "A dataset with masks beside its images (<Class>/masks/ or COVID-QU-Ex's 'lung "
        "masks/' and 'infection masks/'); its own Train/Val/Test folders are the split when "
        "it has them.",
        panel="Data",
    )
    target: Literal["lungs", "infection"] = option(
        "lungs",
        "What to segment: the lungs, or the infection ('infection masks/'; an empty mask is "
        "learned as no infection, and the masks are kept inside the lungs' masks).",
        panel="Data",
    )
    image_size: int = option(256, "Square input size in px (COVID-QU-Ex's masks are 256).",
                             panel="Data")  # fmt: skip
    split_source: Literal["auto", "folders", "stratified"] = option(
        "auto", "The dataset's own split folders (folders), a stratified split, or auto.",
        panel="Data",
    )  # fmt: skip
    split_seed: int = option(0, "Seed of a stratified split.", panel="Data")
    encoder: str = option("efficientnet_lite0", "The U-Net's encoder.", panel="Model")
    decoder: Literal["light", "full"] = option(
        "light", "The U-Net's decoder: light (128-64-32-16-8 channels) or full (smp's "
        "256-128-64-32-16).", panel="Model",
    )  # fmt: skip
    context: Literal["none", "lungs"] = option(
        "none", "What the network sees beside the image: nothing, or (infection only) the "
        "lung mask as an input channel (the reference's in training; the one the infection "
        "is kept in wherever it is used).", panel="Model",
    )  # fmt: skip
    weights: Literal["imagenet", "none"] = option("imagenet", "Encoder weights.", panel="Model")
    epochs: int = option(12, "Epochs (Adam, cosine decay over them).", panel="Training")
    batch_size: int = option(8, "Images per step.", panel="Training")
    lr: float = option(1e-3, "Learning rate.", panel="Training")
    dice: Literal["image", "batch"] = option(
        "image", "The soft Dice term of the loss: per image, averaged (an empty mask scores "
        "well only when nothing at all is called), or over the whole batch's pixels at once.",
        panel="Training",
    )  # fmt: skip
    ema: float = option(
        0.0, "Decay of a moving average of the weights (and BatchNorm statistics) per step, "
        "e.g. 0.99; the average is what is validated and kept. 0 = off.", panel="Training",
    )  # fmt: skip
    augment: Literal["none", "light", "xray"] = option(
        "light", "Augmentation that moves each mask with its image.", panel="Training"
    )
    seed: int = option(0, "Seed of the decoder's initialisation, the order and augmentation.",
                       panel="Training")  # fmt: skip
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps.",
                         panel="Runtime")  # fmt: skip
    threads: int = option(0, "CPU threads (0: torch's default).", panel="Runtime")
    progress: bool = option(True, "Progress bars.", panel="Runtime")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.image_size < 32:
            raise ConfigError("epochs, batch_size >= 1, lr > 0 and image_size >= 32 are needed")
        if not 0 <= self.ema < 1:
            raise ConfigError("ema must be in [0, 1) (a decay such as 0.99; 0 = off)")
        if self.context == "lungs" and self.target != "infection":
            raise ConfigError("--context lungs is for an infection segmenter (--target infection)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], section: str = "") -> SegmentConfig:
        """Build and check one from a dict (unknown keys refused)."""
        return from_dict(cls, data, section)


@dataclass(frozen=True)
class SegmenterData:
    """What a segmenter was trained on: the folder, its hashes, images per split, masks."""

    root: str
    data_hash: str
    split_hash: str
    split_source: str
    images: dict[str, int]
    masks: str


@dataclass(frozen=True)
class SegmenterTraining:
    """How it was trained: the configuration, its best epoch and the validation number it
    was chosen by (lungs: Dice; infection: Dice on the images with infection once the
    false-positive constraint holds, else the mean Dice; see :mod:`cxrlab.segment.train`),
    time."""

    config: SegmentConfig
    best_epoch: int
    best_val_dice: float
    train_seconds: float


@dataclass(frozen=True)
class SegmenterCard:
    """A segmenter run's card (``segmenter_card.json``, format :data:`SEGMENTER_FORMAT`).

    ``data``, ``training`` and ``test`` are ``None`` (empty) in the card written at each
    best epoch while training (``partial``); a finished run has them.
    """

    encoder: str
    architecture: str
    weights: str
    preprocessing: dict[str, Any]
    versions: dict[str, Any]
    created: str
    data: SegmenterData | None = None
    training: SegmenterTraining | None = None
    test: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    task: str = "lung segmentation"
    target: str = "lungs"
    decoder: str = "light"
    context: str = "none"
    format: str = SEGMENTER_FORMAT

    @property
    def image_size(self) -> int:
        """The square input size it was trained at (px)."""
        return int(self.preprocessing["image_size"])

    @property
    def test_dice(self) -> float | None:
        """The mean Dice on its test split (``None`` before it finished; for an infection
        segmenter, over the test images with infection)."""
        return (self.test.get("dice") or {}).get("mean")

    def to_dict(self) -> dict[str, Any]:
        """The card as written to ``segmenter_card.json``."""
        out: dict[str, Any] = {
            "format": self.format, "task": self.task, "target": self.target,
            "encoder": self.encoder, "decoder": self.decoder, "context": self.context,
            "architecture": self.architecture, "weights": self.weights,
            "preprocessing": self.preprocessing, "versions": self.versions,
            "created": self.created,
        }  # fmt: skip
        if self.partial:
            out["partial"] = True
        if self.data is not None:
            out["data"] = dataclasses.asdict(self.data)
        if self.training is not None:
            out["training"] = dataclasses.asdict(self.training)
        if self.test:
            out["test"] = self.test
        return out

    @classmethod
    def from_dict(
        cls, card: dict[str, Any], where: str = run_files.SEGMENTER_CARD
    ) -> SegmenterCard:
        """Read and check a card's fields.

        Raises:
            CheckpointError: another kind of card, a newer format, or a field missing or
                malformed.
        """
        check_format(card, SEGMENTER_FORMAT, where, "cxrlab segmenter card")
        try:
            data = card.get("data")
            training = card.get("training")
            out = cls(
                encoder=str(card["encoder"]),
                architecture=str(card.get("architecture", "")),
                weights=str(card.get("weights", "")),
                preprocessing=dict(card["preprocessing"]),
                versions=dict(card.get("versions", {})),
                created=str(card.get("created", "")),
                data=SegmenterData(**data) if data else None,
                training=SegmenterTraining(
                    **{**training, "config": SegmentConfig.from_dict(training["config"])}
                ) if training else None,
                test=dict(card.get("test", {})),
                partial=bool(card.get("partial", False)),
                task=str(card.get("task", "lung segmentation")),
                target=str(card.get("target", "lungs")),
                decoder=str(card.get("decoder", "light")),
                context=str(card.get("context", "none")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{where} is not a readable segmenter card: {e}") from e
        if out.target not in TARGETS:
            raise CheckpointError(
                f"{where} segments {out.target!r}, which this cxrlab does not know "
                f"({', '.join(TARGETS)}); upgrade cxrlab"
            )
        return out


def read_segmenter_card(
    run_dir: str | os.PathLike[str], target: str | None = None
) -> SegmenterCard:
    """A segmenter run's card, checked (``target``: the segmenter must segment that).

    Raises:
        CheckpointError: a classifier's run folder (said so), no card, a card cxrlab
            cannot read, or a segmenter of another target.
    """
    run_dir = Path(run_dir)
    path = run_dir / run_files.SEGMENTER_CARD
    if not path.is_file():
        if (run_dir / run_files.CARD).is_file():
            raise CheckpointError(
                f"{run_dir} is a classifier run, not a lung segmenter (train one with "
                "'cxrlab segment train')"
            )
        raise CheckpointError(f"{run_dir} is not a segmenter run (no {run_files.SEGMENTER_CARD})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {path}: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a segmenter card")
    card = SegmenterCard.from_dict(raw, str(path))
    if target is not None and card.target != target:
        raise CheckpointError(
            f"{run_dir} segments the {card.target}, but {_NAMES[target]} is needed here "
            f"(train one with 'cxrlab segment train --target {target}')"
        )
    return card


_NAMES = {"lungs": "a lung segmenter", "infection": "an infection segmenter"}
