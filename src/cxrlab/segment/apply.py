"""Lung masks from a segmenter, for commands that need masks the data does not have.

:func:`predicted_masks` returns the same :class:`~cxrlab.data.masks.DecodedMasks` that masks
read from files give, so ``--lungs remove|only|crop`` and the audit's lung checks run on any
dataset. Each mask is post-processed and judged as ``segment predict`` does; a doubtful mask
gets the status ``doubtful (reasons)`` and counts as no valid mask (training refuses, the
audit leaves the image out and says how many), never silently used. Masks are cached by the
images' content, the segmenter's weights and the size.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import run_files
from ..data import ImageReadError, ImageRecord, apply_lungs, decoded_images, resize_gray8
from ..data.cache import read_memmap, write_memmap
from ..data.masks import DecodedMasks
from ..errors import CxrlabError, DataError
from ..utils import cache_dir, hash_strings
from .card import read_segmenter_card
from .masks import LIMITS, clean_mask, judge_mask
from .model import load_segmenter, predict_probs

__all__ = [
    "DOUBTFUL_PREDICT",
    "DoubtfulMask",
    "RunLungs",
    "finished_mask",
    "mask_provider",
    "predicted_masks",
    "segmenter_id",
]


@functools.lru_cache(maxsize=64)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    """The hash of a weights file, read once per (file, size, modification time)."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()


def segmenter_id(run_dir: str | os.PathLike[str], target: str = "lungs") -> dict[str, Any]:
    """What identifies a segmenter (of ``target``) in a card: its folder, when it was made, a
    weights hash (read once per weights file and its modification time)."""
    run_dir = Path(run_dir)
    card = read_segmenter_card(run_dir, target)
    weights = (run_dir / run_files.MODEL).resolve()
    st = weights.stat()
    digest = _weights_digest(str(weights), st.st_size, st.st_mtime_ns)
    return {"run": str(run_dir.resolve()), "created": card.created, "weights": digest,
            "test_dice": card.test_dice}  # fmt: skip


def finished_mask(prob: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """A segmenter's lung probabilities as a ``(size, size)`` 0/1 mask, post-processed
    (:func:`~cxrlab.segment.masks.clean_mask`) and judged: ``"ok"`` or ``"doubtful
    (reasons)"``. Resized bilinearly and thresholded at half, like mask files."""
    mask = clean_mask(prob)
    verdict = judge_mask(mask, prob)
    status = "ok" if verdict.ok else f"doubtful ({'; '.join(verdict.reasons)})"
    if mask.shape != (size, size):
        full = Image.fromarray(mask * 255).resize((size, size), Image.BILINEAR)
        mask = (np.asarray(full) >= 128).astype(np.uint8)
    return mask, status


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
    model, card = load_segmenter(run_dir, "lungs")
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
        seg_size = card.image_size
        images = decoded_images(root, records, seg_size, progress=progress)
        status = []

        def rows() -> Any:
            for start in range(0, len(records), 64):
                chunk = list(range(start, min(start + 64, len(records))))
                for prob in predict_probs(model, images.array, chunk):
                    mask, verdict = finished_mask(prob, size)
                    status.append(verdict)
                    yield mask

        arr = write_memmap(path, shape, rows(), lambda: {"status": status, "segmenter": ident})
    files = tuple(None for _ in records)
    return DecodedMasks(arr, tuple(status), files, (), "lung", key, size)


def mask_provider(run_dir: str | os.PathLike[str]) -> Any:
    """A ``mask_provider`` for :func:`~cxrlab.data.prepare_data`: the segmenter's masks.

    Raises:
        CheckpointError: ``run_dir`` is not a segmenter run (checked now, not at first use).
    """
    load_segmenter(run_dir, "lungs")

    def provide(root: Path, records: Sequence[ImageRecord], size: int,
                progress: bool) -> DecodedMasks:  # fmt: skip
        return predicted_masks(root, records, size, run_dir, progress=progress)

    return provide


#: What a command does with an image whose predicted lung mask is doubtful: leave the image
#: out and say why (``skip``), or use the mask anyway (``keep``).
DOUBTFUL_PREDICT = ("skip", "keep")


class DoubtfulMask(ImageReadError):
    """An image whose lung mask cannot be used: it is left out, with the reason."""


class RunLungs:
    """A classifier run's lung preprocessing for single images, exactly as in training.

    The segmenter sees the whole image resized to its own input size; its mask is
    post-processed, judged, resized to the classifier's size (:func:`finished_mask`, as for
    the training cache) and applied with the run's lungs mode
    (:func:`~cxrlab.data.masks.apply_lungs`).

    Args:
        lungs: the run's lungs mode (``remove``, ``only`` or ``crop``).
        segmenter: a segmenter run folder.
        size: the classifier's input size.
        doubtful: ``skip`` (a doubtful mask raises :class:`DoubtfulMask`) or ``keep``.

    Raises:
        CheckpointError: ``segmenter`` is not a segmenter run.
    """

    def __init__(self, lungs: str, segmenter: str | os.PathLike[str], size: int,
                 doubtful: str = "skip") -> None:  # fmt: skip
        if doubtful not in DOUBTFUL_PREDICT:
            raise CxrlabError(
                f"doubtful must be one of {', '.join(DOUBTFUL_PREDICT)}, got {doubtful!r}"
            )
        self.model, card = load_segmenter(segmenter, "lungs")
        self.model.cpu()
        self.lungs, self.size, self.doubtful = lungs, int(size), doubtful
        self.segmenter = Path(segmenter)
        self.seg_size = card.image_size

    def __call__(self, gray: np.ndarray, name: str = "image") -> np.ndarray:
        """``(H, W)`` uint8, any size -> the classifier's ``(size, size)`` uint8 input.

        Raises:
            DoubtfulMask: the mask is doubtful (with ``doubtful="skip"``), or too small to
                crop to (always: a crop to next to nothing is never made).
        """
        small = resize_gray8(gray, self.seg_size)
        prob = predict_probs(self.model, small[None], [0])[0]
        mask, status = finished_mask(prob, self.size)
        if status != "ok" and self.doubtful == "skip":
            raise DoubtfulMask(name, f"lung mask {status}: not scored (--doubtful keep uses it)")
        try:
            return apply_lungs(resize_gray8(gray, self.size)[None], mask[None], self.lungs)[0]
        except DataError as e:
            raise DoubtfulMask(name, f"lung mask too small to crop to ({status})") from e
