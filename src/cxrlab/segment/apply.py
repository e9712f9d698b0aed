"""Lung masks from a segmenter, for commands that need masks the data does not have.

:func:`predicted_masks` returns the same :class:`~cxrlab.data.masks.DecodedMasks` that masks
read from files give, so ``--lungs remove|only|crop`` and the audit's lung checks run on any
dataset. Each mask is post-processed and judged as ``segment predict`` does; a doubtful mask
gets the status ``doubtful (reasons)`` and counts as no valid mask (training refuses, the
audit leaves the image out and says how many), never silently used. Masks are cached by the
images' content, the segmenter's weights and the size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageRecord, decoded_images
from ..data.cache import read_memmap, write_memmap
from ..data.masks import DecodedMasks
from ..utils import cache_dir, hash_strings
from .evaluate import predict_probs
from .masks import LIMITS, clean_mask, judge_mask
from .model import MODEL_FILE, load_segmenter

__all__ = ["mask_provider", "predicted_masks", "segmenter_id"]


def segmenter_id(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a segmenter in a card: its folder, when it was made, a weights hash."""
    run_dir = Path(run_dir)
    digest = hashlib.blake2b((run_dir / MODEL_FILE).read_bytes(), digest_size=8).hexdigest()
    card = json.loads((run_dir / "segmenter_card.json").read_text())
    return {"run": str(run_dir.resolve()), "created": card.get("created"), "weights": digest,
            "test_dice": card.get("test", {}).get("dice", {}).get("mean")}  # fmt: skip


def predicted_masks(
    root: str | os.PathLike[str],
    records: Sequence[ImageRecord],
    size: int,
    run_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
) -> DecodedMasks:
    """Lung masks of ``records`` at ``size`` px from the segmenter in ``run_dir``.

    Raises:
        CheckpointError: ``run_dir`` is not a segmenter run.
    """
    model, card = load_segmenter(run_dir)
    ident = segmenter_id(run_dir)
    key = hash_strings(["predicted-lung-masks-v1", ident["weights"], str(size), repr(LIMITS)]
                       + [r.hash for r in records])  # fmt: skip
    path = cache_dir() / "masks" / f"{key}-{len(records)}x{size}x{size}.u8"
    shape = (len(records), size, size)
    arr = read_memmap(path, shape)
    status: list[str] = []
    if arr is not None:
        try:
            status = list(json.loads(path.with_suffix(".json").read_text())["status"])
        except (OSError, ValueError, KeyError):
            arr = None
    if arr is None or len(status) != len(records):
        seg_size = int(card["preprocessing"]["image_size"])
        images = decoded_images(root, records, seg_size, progress=progress)
        status = []

        def rows() -> Any:
            for start in range(0, len(records), 64):
                chunk = list(range(start, min(start + 64, len(records))))
                for prob in predict_probs(model, images.array, chunk):
                    mask = clean_mask(prob)
                    verdict = judge_mask(mask, prob)
                    status.append("ok" if verdict.ok else
                                  f"doubtful ({'; '.join(verdict.reasons)})")  # fmt: skip
                    if seg_size != size:
                        full = Image.fromarray(mask * 255).resize((size, size), Image.BILINEAR)
                        mask = (np.asarray(full) >= 128).astype(np.uint8)
                    yield mask

        arr = write_memmap(path, shape, rows(), lambda: {"status": status, "segmenter": ident})
    files = tuple(None for _ in records)
    return DecodedMasks(arr, tuple(status), files, (), "lung", key, size)


def mask_provider(run_dir: str | os.PathLike[str]) -> Any:
    """A ``mask_provider`` for :func:`~cxrlab.data.prepare_data`: the segmenter's masks.

    Raises:
        CheckpointError: ``run_dir`` is not a segmenter run (checked now, not at first use).
    """
    load_segmenter(run_dir)

    def provide(root: Path, records: Sequence[ImageRecord], size: int,
                progress: bool) -> DecodedMasks:  # fmt: skip
        return predicted_masks(root, records, size, run_dir, progress=progress)

    return provide
