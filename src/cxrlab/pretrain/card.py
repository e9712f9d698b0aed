"""A pretraining run's configuration and card, typed.

:class:`PretrainConfig` declares ``cxrlab pretrain``'s options once (the command line is
generated from its fields). A pretraining run's ``pretrain_card.json`` is read into a
:class:`PretrainCard` by :func:`read_pretrain_card` only, checked once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import run_files
from ..data.options import DataOptions
from ..errors import CheckpointError, ConfigError
from ..models.weights import PRETRAIN_FORMAT
from ..typed_config import check_format, from_dict, option

__all__ = ["PRETRAIN_FORMAT", "PretrainCard", "PretrainConfig", "read_pretrain_card"]

_D, _M, _T, _R = "Data", "Model", "Training", "Runtime"


@dataclass(frozen=True)
class PretrainConfig(DataOptions):
    """One self-supervised pretraining run (``cxrlab pretrain``'s options, one field each).

    The data options are ``cxrlab train``'s (:class:`~cxrlab.data.options.DataOptions`): with
    the same values and ``use="train"``, a pretraining run sees exactly the training images
    that ``train`` would train on, and none of its validation or test images. Labels are
    ignored for training and used only by the k-NN monitor.
    """

    use: Literal["train", "all"] = option(
        "train",
        "Which images to pretrain on: the training split only (a later 'train' with the same "
        "data options may use its validation and test images), or all (then no study may "
        "test on this data without --allow-transductive).", panel=_D)  # fmt: skip
    model: str = option("efficientnet_lite0", "The backbone (see 'cxrlab models').", panel=_M)
    init: Literal["imagenet", "none"] = option(
        "imagenet", "Start from ImageNet weights (continued pretraining) or from scratch.",
        panel=_M)  # fmt: skip
    method: Literal["simsiam", "byol"] = option(
        "simsiam",
        "simsiam (Chen & He 2021: no negatives, no momentum encoder; works with small "
        "batches) or byol (Grill et al. 2020: a momentum target network).", panel=_M)  # fmt: skip
    proj_dim: int = option(256, "Output size of the projection head.", panel=_M)
    hidden_dim: int = option(1024, "Hidden size of the projection (and BYOL's predictor).",
                             panel=_M)  # fmt: skip
    momentum: float = option(0.99, "BYOL: the target network's momentum at the start (cosine "
                             "to 1).", panel=_M)  # fmt: skip
    epochs: int = option(20, "Epochs (SGD, cosine decay over them).", panel=_T)
    batch_size: int = option(32, "Images per step (two views each).", panel=_T)
    lr: float = option(0.05, "Base learning rate, scaled by batch_size/256 (SimSiam's rule).",
                       panel=_T)  # fmt: skip
    weight_decay: float = option(1e-4, "SGD weight decay.", panel=_T)
    knn_k: int = option(20, "Neighbours of the k-NN monitor.", panel=_T)
    knn_images: int = option(
        1000, "At most this many training images form the k-NN monitor's bank (and validation "
        "images its queries), drawn per class with the seed.", panel=_T)  # fmt: skip
    seed: int = option(0, "Seed of the heads' initialisation, the order and the views.",
                       panel=_T)  # fmt: skip
    channels_last: bool = option(True, "channels_last memory format for CNNs (faster on CPU).",
                                 panel=_R)  # fmt: skip
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps.", panel=_R)
    threads: int = option(0, "CPU threads (0: torch's default).", panel=_R)
    progress: bool = option(True, "Progress bars.", panel=_R)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.image_size < 32:
            raise ConfigError(
                "pretrain needs epochs >= 1, batch_size >= 2, lr > 0 and image_size >= 32"
            )
        if not 0 <= self.momentum < 1 or self.knn_k < 1 or self.proj_dim < 4:
            raise ConfigError("pretrain needs 0 <= momentum < 1, knn_k >= 1 and proj_dim >= 4")

    #: Options that do not change what is computed (a resumed run may change them).
    RUNTIME = ("device", "threads", "progress")

    @classmethod
    def from_dict(cls, data: dict[str, Any], section: str = "") -> PretrainConfig:
        """Build and check one from a dict (unknown keys refused)."""
        return from_dict(cls, data, section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PretrainCard:
    """A pretraining run's card (``pretrain_card.json``, format :data:`PRETRAIN_FORMAT`).

    Attributes:
        model, method, init, image_size: what was pretrained, how, from what.
        config: the whole configuration.
        data: the dataset (root, data and split hashes, which part was used, images).
        images_hash: a fingerprint of the content hashes of every image it saw (the list is
            ``images.csv``, their perceptual signatures ``signatures.npz``).
        weights_sha256: the SHA-256 of ``backbone.safetensors``.
        monitor: the k-NN monitor's bank and queries, and whether pretraining saw the queries.
        final: the last epoch's loss, embedding spread and k-NN accuracy; ``initial`` the
            k-NN accuracy before pretraining.
        collapsed: the embedding spread fell under the collapse threshold at some epoch.
    """

    model: str
    method: str
    init: str
    image_size: int
    config: PretrainConfig
    data: dict[str, Any]
    images_hash: str
    images: int
    weights_sha256: str
    monitor: dict[str, Any]
    initial: dict[str, float]
    final: dict[str, float]
    collapsed: bool
    epochs: int
    train_seconds: float
    versions: dict[str, Any]
    created: str
    format: str = PRETRAIN_FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return {"format": out.pop("format"), **out}

    @classmethod
    def from_dict(cls, card: dict[str, Any], where: str = run_files.PRETRAIN_CARD) -> PretrainCard:
        """Read and check a card's fields.

        Raises:
            CheckpointError: another kind of card, a newer format, or a malformed field.
        """
        check_format(card, PRETRAIN_FORMAT, where, "cxrlab pretraining card")
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in card.items() if k in fields}
            values["config"] = PretrainConfig.from_dict(card["config"])
            return cls(**values)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{where} is not a readable pretraining card: {e}") from e


def read_pretrain_card(run: str | os.PathLike[str]) -> PretrainCard:
    """The card of the pretraining run in folder ``run``.

    Raises:
        CheckpointError: no card there (not a finished pretraining run), or an unreadable one.
    """
    path = Path(run) / run_files.PRETRAIN_CARD
    if not path.is_file():
        raise CheckpointError(f"{run} has no {run_files.PRETRAIN_CARD}: not a finished "
                              "'cxrlab pretrain' run")  # fmt: skip
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"Cannot read {path} ({type(e).__name__})") from e
    return PretrainCard.from_dict(card, str(path))
