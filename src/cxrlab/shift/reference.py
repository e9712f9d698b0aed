"""What a run needs to judge new images without its training data: its reference.

:func:`reference` computes, once per run, the penultimate features and acquisition
signatures of the run's training images, and the features, signatures, calibrated
probabilities and labels of its validation images (the images as the run saw them: its size
and lungs mode, no augmentation), and keeps them in ``<run>/shift/reference.safetensors``
(features in float16: about 7 MB for 3,000 images of a 1,280-feature network). A later call
reads them; a run retrained since is computed again.

:class:`Detector` fits the per-image signals (:mod:`cxrlab.shift.signals`) on the training
images and their thresholds on the validation images, at a stated in-distribution keep rate.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import run_files
from ..errors import CheckpointError, CxrlabError
from ..models import forward_images
from ..utils import atomic_write_text, hash_strings
from .signals import KnnDistance, Mahalanobis, keep_threshold, max_softmax_score

__all__ = [
    "COMBINED",
    "DEFAULT_KEEP",
    "Detector",
    "ImageEvidence",
    "OodScorer",
    "Reference",
    "calibrated_probs",
    "captured_features",
    "image_evidence",
    "reference",
    "store_reference",
]

#: Where a run keeps its reference: ``<run>/shift/``.
_ARRAYS, _META, _VERSION = "reference.safetensors", "reference.json", 2
#: The share of in-distribution (validation) images a threshold keeps unflagged.
DEFAULT_KEEP = 0.95
#: The signal that combines the others: each signal's score as its share of validation
#: images scoring lower, and the largest of those shares.
COMBINED = "combined"
_SIGNATURE_PROBES = ("thumbnail", "histogram", "border")


@dataclass(frozen=True)
class ImageEvidence:
    """What the signals read of some images: ``(N, D)`` penultimate features, ``(N, S)``
    acquisition signatures and ``(N, K)`` calibrated probabilities."""

    features: np.ndarray
    signatures: np.ndarray
    probs: np.ndarray

    def take(self, rows: np.ndarray) -> ImageEvidence:
        return ImageEvidence(self.features[rows], self.signatures[rows], self.probs[rows])


@dataclass(frozen=True)
class Reference:
    """A run's training and validation evidence (see the module docstring)."""

    train: ImageEvidence
    train_labels: np.ndarray
    val: ImageEvidence
    val_labels: np.ndarray
    classes: tuple[str, ...]
    #: the run's test images: an in-distribution control, never used to fit or threshold
    test: ImageEvidence | None = None
    test_labels: np.ndarray | None = None


def signatures(images: np.ndarray) -> np.ndarray:
    """``(N, S)`` acquisition signatures of ``(N, H, W)`` uint8 images: the audit's
    thumbnail, histogram and border probes side by side."""
    from ..evaluation.acquisition import probe_features

    if not len(images):
        return np.zeros((0, 0), np.float32)
    parts = [probe_features(p, images) for p in _SIGNATURE_PROBES]
    return np.concatenate(parts, axis=1).astype(np.float32)


@contextlib.contextmanager
def captured_features(model: Any) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass of ``model`` appends what its classifier head
    receives (``(B, D)`` float32 on the CPU: the pooled features, or a ViT's class token)
    to the list it yields."""
    head = model.head_module
    captured: list[torch.Tensor] = []
    handle = model.net.get_submodule(head).register_forward_hook(
        lambda m, inputs, out: captured.append(inputs[0].detach().flatten(1).float().cpu())
    )
    try:
        yield captured
    finally:
        handle.remove()


def calibrated_probs(
    model: Any,
    images: np.ndarray,
    temperature: float = 1.0,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """``(N, K)`` probabilities (logits divided by ``temperature`` before the softmax) of
    ``(N, H, W)`` uint8 images, one plain view each (no augmentation), in eval mode."""
    if not len(images):
        raise CheckpointError("No image to predict")
    logits = forward_images(model, images, device=device, batch_size=batch_size)
    return torch.softmax(logits / temperature, dim=1).numpy()


def image_evidence(
    model: Any,
    images: np.ndarray,
    temperature: float = 1.0,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> ImageEvidence:
    """Features, signatures and probabilities (divided by ``temperature`` before the
    softmax) of ``(N, H, W)`` uint8 images as a run's model sees them (no augmentation)."""
    with captured_features(model) as captured:
        probs = calibrated_probs(model, images, temperature, device=device,
                                 batch_size=batch_size)  # fmt: skip
    return ImageEvidence(torch.cat(captured).numpy(), signatures(images), probs)


def _key(run_dir: Path, card: Any) -> str:
    """What a reference depends on: the run's model (a retrained run is a new one) and
    this format."""
    from ..runs.folder import model_stamp

    return hash_strings([f"shift-reference-v{_VERSION}", *model_stamp(run_dir, card)])


def store_reference(run_dir: str | os.PathLike[str], *, device: str = "auto",
                    progress: bool = True) -> str:  # fmt: skip
    """Compute and keep a freshly trained run's reference (``train`` and ``study run`` call it
    as a run finishes, while its data are at hand); a line saying what was done, or why not
    (a run whose reference cannot be made still trained: ``cxrlab shift`` says why later)."""
    from ..runtime import resolve_device

    try:
        ref = reference(run_dir, device=str(resolve_device(device)), progress=progress)
    except CxrlabError as e:
        return f"No shift reference kept for {run_dir}: {e}"
    return (f"Shift reference: {len(ref.val.probs)} validation images' features and thresholds "
            f"kept in {Path(run_dir) / run_files.SHIFT_DIR}")  # fmt: skip


def reference(run_dir: str | os.PathLike[str], *, device: str = "cpu",
              progress: bool = True) -> Reference:  # fmt: skip
    """The run's reference, read from ``<run>/shift/`` or computed there from its own data
    and split (the run's data must be readable then). It also keeps the run's test images'
    evidence, as an in-distribution control for reports (never to fit or threshold).

    Raises:
        CheckpointError: not a finished single run, or its data cannot be read.
    """
    from safetensors.numpy import load_file, save_file

    from ..runs.folder import load_run_model
    from ..runs.scoring import open_run

    run_dir = Path(run_dir)
    run = open_run(run_dir)
    if run.ensemble or len(run.members) > 1:
        raise CheckpointError(
            f"{run_dir} is an ensemble: shift detection reads one model's features; give one "
            "of its runs"
        )
    folder = run_dir / run_files.SHIFT_DIR
    key = _key(run_dir, run.card)
    meta_path = folder / _META
    if meta_path.is_file() and (folder / _ARRAYS).is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            a = load_file(str(folder / _ARRAYS))
            return _from_arrays(a, tuple(meta["classes"]))
    model, card = load_run_model(run_dir)
    prepared = run.prepare(None, "val", progress=progress)
    labels = np.asarray(prepared.split.labels(), dtype=np.int64)
    rows = {s: np.asarray(prepared.split.indices(s)) for s in ("train", "val", "test")}
    if not len(rows["val"]) or len(rows["train"]) < 2:
        raise CheckpointError(f"{run_dir}'s split has too few training or validation images")
    images = prepared.images.array
    t = card.temperature
    ev = {s: image_evidence(model, images[r], t, device=device)
          for s, r in rows.items() if len(r)}  # fmt: skip
    arrays = {
        "train_features": ev["train"].features.astype(np.float16),
        "train_signatures": ev["train"].signatures,
        "train_probs": ev["train"].probs.astype(np.float32),
        "train_labels": labels[rows["train"]],
        "val_features": ev["val"].features.astype(np.float16),
        "val_signatures": ev["val"].signatures,
        "val_probs": ev["val"].probs.astype(np.float32),
        "val_labels": labels[rows["val"]],
    }
    if len(rows["test"]):
        arrays |= {
            "test_features": ev["test"].features.astype(np.float16),
            "test_signatures": ev["test"].signatures,
            "test_probs": ev["test"].probs.astype(np.float32),
            "test_labels": labels[rows["test"]],
        }
    folder.mkdir(exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / _ARRAYS))
    atomic_write_text(meta_path, json.dumps({"key": key, "classes": list(run.classes),
                                             "version": _VERSION}, indent=2) + "\n")  # fmt: skip
    return _from_arrays(arrays, tuple(run.classes))


def _from_arrays(a: Mapping[str, np.ndarray], classes: tuple[str, ...]) -> Reference:
    def part(s: str) -> ImageEvidence:
        return ImageEvidence(a[f"{s}_features"].astype(np.float32), a[f"{s}_signatures"],
                             a[f"{s}_probs"])  # fmt: skip

    test = part("test") if "test_features" in a else None
    return Reference(part("train"), a["train_labels"], part("val"), a["val_labels"], classes,
                     test, a.get("test_labels"))  # fmt: skip


@dataclass(frozen=True)
class Detector:
    """Per-image signals fitted on a reference, with thresholds at a keep rate.

    Attributes:
        thresholds: per signal, the score above which an image is flagged.
        val_scores: per signal, the validation images' scores (the in-distribution picture).
        keep: the share of validation images each threshold keeps.
    """

    mahalanobis: Mahalanobis
    knn: KnnDistance
    signature: Mahalanobis
    thresholds: dict[str, float]
    val_scores: dict[str, np.ndarray]
    keep: float

    @classmethod
    def fit(cls, ref: Reference, keep: float = DEFAULT_KEEP, k: int = 10) -> Detector:
        maha = Mahalanobis.fit(ref.train.features, ref.train_labels)
        knn = KnnDistance.fit(ref.train.features, k)
        sig = Mahalanobis.fit(_finite(ref.train.signatures))
        partial = cls(maha, knn, sig, {}, {}, keep)
        raw = partial._raw(ref.val)
        val = raw | {COMBINED: _combined(raw, raw)}
        thresholds = {s: keep_threshold(v, keep) for s, v in val.items()}
        return cls(maha, knn, sig, thresholds, val, keep)

    def _raw(self, ev: ImageEvidence) -> dict[str, np.ndarray]:
        return {
            "mahalanobis": self.mahalanobis.score(ev.features),
            "knn": self.knn.score(ev.features),
            "signature": self.signature.score(_finite(ev.signatures)),
            "confidence": max_softmax_score(ev.probs),
        }

    def scores(self, ev: ImageEvidence) -> dict[str, np.ndarray]:
        """Each signal's score of the images (and the ``combined`` one)."""
        raw = self._raw(ev)
        return raw | {COMBINED: _combined(raw, {s: self.val_scores[s] for s in raw})}


def _finite(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(x, np.float64))


def _combined(raw: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per image, the largest share of validation images that score lower, over the
    distance signals (the model's confidence left out: it is a score of the class, not of
    the image's place)."""
    shares = [np.searchsorted(np.sort(val[s]), raw[s], side="left") / len(val[s])
              for s in ("mahalanobis", "knn", "signature")]  # fmt: skip
    return np.max(shares, axis=0)


@dataclass(frozen=True)
class OodScorer:
    """``ood_score`` and ``ood`` of new images for one run or an ensemble of runs that share
    a split: each member's ``combined`` signal averaged over the members, flagged above the
    keep-rate quantile of the same average on the validation images (one member: its own
    threshold)."""

    detectors: tuple[Detector, ...]
    threshold: float
    keep: float

    @classmethod
    def for_runs(cls, runs: list[Path], keep: float = DEFAULT_KEEP, *, device: str = "cpu",
                 progress: bool = False) -> OodScorer:  # fmt: skip
        """Raises: CheckpointError: a run's reference cannot be made (its data unreadable)."""
        detectors = tuple(Detector.fit(reference(r, device=device, progress=progress), keep)
                          for r in runs)  # fmt: skip
        val = [d.val_scores[COMBINED] for d in detectors]
        if len({len(v) for v in val}) > 1:
            raise CheckpointError("The ensemble's members were validated on different images")
        return cls(detectors, keep_threshold(np.mean(val, axis=0), keep), keep)

    def score(self, evidence: list[ImageEvidence]) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, flags)`` from each member's evidence of the same images."""
        s = np.mean([d.scores(e)[COMBINED] for d, e in zip(self.detectors, evidence)], axis=0)
        return s, s > self.threshold
