"""A run folder on disk: the model weights, its card, and loading both back safely.

``model.safetensors`` holds the weights with a small header (model name, classes);
``model_card.json`` holds everything needed to use and to trust the model: architecture,
classes, preprocessing, weights source, freezing, data and split hashes, seed, versions.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..data import RESIZE_METHOD, PreparedData
from ..errors import CheckpointError
from ..freeze import FreezeReport
from ..models import CxrClassifier, create_model, get_spec
from ..utils import write_json
from .config import TrainConfig
from .runtime import versions

__all__ = [
    "CARD_FORMAT",
    "INIT_FILE",
    "MODEL_FILE",
    "build_card",
    "load_card",
    "load_run_model",
    "require_whole_images",
    "run_data",
    "run_lungs",
    "run_preparation",
    "run_segmenter",
    "save_model",
    "segmenter_masks",
]

CARD_FORMAT = "cxrlab-model-card/1"
MODEL_FILE = "model.safetensors"
INIT_FILE = "init.safetensors"  # the weights a run started from (--keep-init)
CARD_FILE = "model_card.json"


def save_model(
    run_dir: str | os.PathLike[str], model: CxrClassifier, card: dict, *, file: str = MODEL_FILE
) -> Path:
    """Write ``model.safetensors`` (atomically) and ``model_card.json``.

    With ``file`` another weights file (``init.safetensors``) is written, and no card.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": CARD_FORMAT, "model": card["model"], "classes": json.dumps(card["classes"])}
    tmp = run_dir / f".{file}.tmp"
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, run_dir / file)
    if file == MODEL_FILE:
        write_json(run_dir / CARD_FILE, card)
    return run_dir / file


def load_card(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a run's model card."""
    run_dir = Path(run_dir)
    path = run_dir / CARD_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"Run folder {run_dir} does not exist")
    if not path.is_file() and (run_dir / "segmenter_card.json").is_file():
        raise CheckpointError(
            f"{run_dir} is a lung segmenter run, not a classifier (train a classifier with "
            "'cxrlab train'; use a segmenter with 'cxrlab segment')"
        )
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {CARD_FILE}: not a finished cxrlab run "
            "(train one with 'cxrlab train --out DIR')"
        )
    try:
        card = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if card.get("format") != CARD_FORMAT:
        raise CheckpointError(f"{path} is not a cxrlab model card (format {card.get('format')!r})")
    return card


def require_whole_images(card: dict[str, Any], run: str | os.PathLike[str], what: str) -> None:
    """Refuse a run trained on images with their lungs removed, kept alone or cropped to,
    where ``what`` (an exported model) can only be given whole images: the segmenter and
    its post-processing run in Python, not inside an exported file.

    Raises:
        CheckpointError: the run's lungs mode is not ``keep``.
    """
    lungs = str(card.get("data", {}).get("lungs", "keep"))
    if lungs != "keep":
        raise CheckpointError(
            f"{run} was trained with --lungs {lungs}: {what} would be given whole images, and "
            "the lung segmenter and its post-processing cannot run inside it. Use 'cxrlab "
            "predict', 'cxrlab serve' or cxrlab.load(run), which run them"
        )


def run_lungs(
    card: dict[str, Any],
    run: str | os.PathLike[str],
    *,
    masks_from: str | os.PathLike[str] | None = None,
    doubtful: str = "skip",
) -> Any:
    """The lung preprocessing a run needs on whole images
    (:class:`~cxrlab.segment.apply.RunLungs`), or ``None`` for a run that keeps the lungs.

    The masks come from ``masks_from`` (a segmenter run) or else from the segmenter the run
    was trained with.

    Raises:
        CheckpointError: the run was trained on mask files and no segmenter is given; the
            recorded segmenter is gone or has changed since.
    """
    lungs = str(card.get("data", {}).get("lungs", "keep"))
    if lungs == "keep":
        return None
    from ..segment.apply import RunLungs, segmenter_id

    recorded = card.get("data", {}).get("masks_from") or {}
    segmenter = masks_from or run_segmenter(card)
    fix = "pass --masks-from SEGMENTER (a 'cxrlab segment train' run) to make the masks"
    if not segmenter:
        raise CheckpointError(
            f"{run} was trained with --lungs {lungs} on mask files, and whole images have "
            f"none: {fix}"
        )
    if not Path(segmenter).is_dir():
        raise CheckpointError(f"{run}'s lung segmenter {segmenter} does not exist: {fix}")
    if not masks_from and segmenter_id(segmenter)["weights"] != recorded.get("weights"):
        raise CheckpointError(
            f"{run}'s lung segmenter {segmenter} has other weights than when the run was "
            "trained; pass --masks-from with it to use it anyway"
        )
    size = int(card["preprocessing"]["image_size"])
    return RunLungs(lungs, segmenter, size, doubtful)


def load_run_model(
    run_dir: str | os.PathLike[str], *, file: str = MODEL_FILE
) -> tuple[CxrClassifier, dict[str, Any]]:
    """Rebuild a run's model from its card and load its weights (no unpickling).

    ``file="init.safetensors"`` loads the weights the run started from instead (written by
    ``--keep-init``).

    Raises:
        CheckpointError: the card or weights are missing, or the weights belong to another
            model or class list than the card describes.
    """
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    weights = run_dir / file
    if not weights.is_file() and file == INIT_FILE:
        raise CheckpointError(
            f"{run_dir} has no {INIT_FILE}: the weights it started from were not kept. "
            "Train it again with --keep-init (in a study: [analysis] reuse = true)"
        )
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has a model card but no {file}")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:  # header and tensors in one read
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # safetensors raises its own error types per version
        raise CheckpointError(f"Cannot read {weights}: {e}") from e
    file_classes = json.loads(meta.get("classes", "null"))
    if meta.get("model") != card["model"] or file_classes != card["classes"]:
        raise CheckpointError(
            f"{weights} is for model {meta.get('model')!r} with classes {file_classes}, but the "
            f"card describes {card['model']!r} with classes {card['classes']}; the files come "
            "from different runs"
        )
    pre = card["preprocessing"]
    model = create_model(
        card["model"], len(card["classes"]), "none", image_size=int(pre["image_size"])
    )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ
        raise CheckpointError(
            f"{weights} does not fit {card['model']} with "
            f"{len(card['classes'])} classes: {str(e).splitlines()[1:2]}"
        ) from e
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit {card['model']}: missing {missing[:2]}, "
            f"unexpected {unexpected[:2]}"
        )
    model.eval()
    return model, card


def build_card(
    cfg: TrainConfig,
    data: PreparedData,
    model: CxrClassifier,
    freeze: FreezeReport,
    best_epoch: int,
    best_val_loss: float,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, Any]:
    """The model card: everything needed to use, reproduce and trust the model."""
    spec = get_spec(cfg.model)
    pre = model.preprocess_config.to_dict() | {"resize": RESIZE_METHOD}
    return {
        "format": CARD_FORMAT,
        "model": cfg.model,
        "architecture": f"{spec.source}:{spec.arch}",
        "classes": list(data.classes),
        "preprocessing": pre,
        "weights": model.weights_source,  # type: ignore[attr-defined]
        "initialisation": getattr(model, "init_report", None),
        "freeze": freeze.to_dict(),
        "data": {
            "root": str(data.report.root),
            "data_hash": data.report.fingerprint(),
            "split_hash": data.split.fingerprint(),
            "split_seed": data.split.seed,
            "ratios": list(data.split.ratios),
            "split_source": data.split.source,
            "counts": data.split.counts(),
            "lungs": data.lungs,
            "masks_from": _segmenter(cfg.masks_from),
            "doubtful": cfg.doubtful,
            "left_out": len(data.left_out),  # images without a valid lung mask, skipped
            "sources": _sources(data),
        },
        "training": {
            "seed": cfg.seed,
            "best_epoch": best_epoch,
            "best_val_loss": best_val_loss,
            "epochs": cfg.epochs,
            "device": str(device),
            "precision": str(amp or "fp32").removeprefix("torch."),
            "config": cfg.to_dict(),
        },
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _sources(data: PreparedData) -> dict[str, Any] | None:
    """The card's record of a run's sources: images per class and source, and the sources
    a view was built from (to build it again); ``None`` for one plain dataset folder."""
    from ..data.sources import class_source_table, view_sources

    spec = view_sources(data.report.root)
    if spec is None:
        return None
    split = data.split
    labels = [r.label for r in split.records]
    sources = [split.source_of(i) for i in range(len(labels))]
    return {"built_from": spec, "images": class_source_table(labels, sources)}


def run_data(card: dict[str, Any]) -> str:
    """The folder a run's images came from; a view of several sources that is no longer in
    the cache is built again from the sources the card names."""
    from ..data.sources import data_root

    return data_root(card["data"])


def run_segmenter(card: dict[str, Any]) -> str | None:
    """The lung segmenter a run's masks came from (``--masks-from``), or ``None``."""
    return (card.get("data", {}).get("masks_from") or {}).get("run")


def run_preparation(
    card: dict[str, Any], masks_from: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Keyword arguments of :func:`~cxrlab.data.prepare_data` that prepare images as the
    run's were: its input size, lungs mode and rule for images without a valid mask, and
    masks from the segmenter it trained with (else ``masks_from``, else mask files)."""
    data = card["data"]
    segmenter = run_segmenter(card) or (str(masks_from) if masks_from else None)
    return {
        "image_size": int(card["preprocessing"]["image_size"]),
        "lungs": str(data.get("lungs", "keep")),
        "doubtful": str(data.get("doubtful", "refuse")),
        "mask_provider": segmenter_masks(segmenter),
    }


def segmenter_masks(segmenter: str | os.PathLike[str] | None) -> Any:
    """A ``mask_provider`` for :func:`~cxrlab.data.prepare_data` that runs ``segmenter``, or
    ``None`` (the mask files beside the images)."""
    if not segmenter:
        return None
    from ..segment.apply import mask_provider

    return mask_provider(segmenter)


def _segmenter(masks_from: str | None) -> dict[str, Any] | None:
    """The card's record of the segmenter whose masks a run used (``None``: mask files)."""
    if not masks_from:
        return None
    from ..segment.apply import segmenter_id

    return segmenter_id(masks_from)
