"""Near-duplicate images: the same radiograph re-saved, re-scaled or slightly re-cropped.

Exact duplicates (identical pixels) are found by the scan's content hash. The public COVID-19
collections also hold the same X-ray several times in other encodings or crops (figures taken
from papers, the same patient exported twice), and a second dataset built from the same
sources holds re-sized copies. A copy of a training image in the test set, or in an
"external" test set, inflates every number computed on it.

A pair of images is a near-duplicate when both of these hold:

* their 64-bit perceptual hashes (the signs of the 8x8 lowest DCT frequencies of a 32x32
  thumbnail, DC term left out, against their median) differ in at most ``max_hamming`` bits;
* their 32x32 thumbnails correlate with Pearson r >= ``min_correlation``.

The thresholds (6 bits, r >= 0.97) were set by eye on the real sample and COVID-QU-Ex at
224 px: every pair above them was the same radiograph (re-saved, re-sized or re-cropped, most
of them COVID images taken from publications), while different children's X-rays from the
one paediatric hospital, which look much alike at 32 px, reached r = 0.968. The margin is
narrow: treat a count of near-duplicates as an estimate, and look at the pairs (the audit
shows them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy.fft import dctn

from ..utils import DisjointSets

__all__ = [
    "MAX_GROUP",
    "SIGNATURE_SIZE",
    "CopyGroups",
    "ImageSignatures",
    "copy_groups",
    "near_duplicates",
    "signatures",
]

_THUMB = 32

#: The decoded size splits compute signatures at, whatever size a run trains at, so that a
#: split depends on the data and its seed alone (see :func:`copy_groups`).
SIGNATURE_SIZE = 128


@dataclass(frozen=True)
class ImageSignatures:
    """Perceptual hashes (``(N,)`` uint64) and standardised thumbnails (``(N, 1024)``)."""

    hashes: np.ndarray
    thumbs: np.ndarray

    def __len__(self) -> int:
        return len(self.hashes)


def signatures(images: np.ndarray, batch: int = 512) -> ImageSignatures:
    """Signatures of ``(N, H, W)`` uint8 images (any size; each is reduced to 32x32)."""
    n = len(images)
    hashes = np.zeros(n, dtype=np.uint64)
    thumbs = np.zeros((n, _THUMB * _THUMB), dtype=np.float32)
    weights = (1 << np.arange(63, dtype=np.uint64)).astype(np.uint64)
    for start in range(0, n, batch):
        for i in range(start, min(start + batch, n)):
            small = Image.fromarray(np.asarray(images[i], dtype=np.uint8)).resize(
                (_THUMB, _THUMB), Image.BILINEAR
            )
            t = np.asarray(small, dtype=np.float64)
            low = dctn(t, norm="ortho")[:8, :8].ravel()[1:]  # 63 coefficients, no DC
            bits = (low > np.median(low)).astype(np.uint64)
            hashes[i] = np.bitwise_or.reduce(bits * weights)
            flat = t.ravel()
            thumbs[i] = (flat - flat.mean()) / (flat.std() + 1e-6)
    return ImageSignatures(hashes, thumbs)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.bitwise_count(x)
    b = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(b, axis=-1).sum(axis=-1)


def near_duplicates(
    a: ImageSignatures,
    b: ImageSignatures | None = None,
    *,
    max_hamming: int = 6,
    min_correlation: float = 0.97,
    chunk: int = 1024,
) -> list[tuple[int, int, int, float]]:
    """Pairs ``(i, j, hash distance, correlation)`` of near-duplicate images.

    With ``b`` given, ``i`` indexes ``a`` and ``j`` indexes ``b``; without it, pairs within
    ``a`` with ``i < j``. Exact copies are near-duplicates too (distance 0, r = 1).
    """
    other = a if b is None else b
    pairs: list[tuple[int, int, int, float]] = []
    dim = a.thumbs.shape[1]
    for start in range(0, len(a), chunk):
        rows = slice(start, min(start + chunk, len(a)))
        dist = _popcount(a.hashes[rows, None] ^ other.hashes[None, :])  # (chunk, M)
        ii, jj = np.nonzero(dist <= max_hamming)
        ii = ii + start
        if b is None:
            keep = ii < jj
            ii, jj = ii[keep], jj[keep]
        if not len(ii):
            continue
        r = np.einsum("ij,ij->i", a.thumbs[ii], other.thumbs[jj]) / dim
        for i, j, rr in zip(ii, jj, r):
            if rr >= min_correlation:
                pairs.append((int(i), int(j), int(dist[i - start, j]), float(rr)))
    return pairs


#: The most images one copy group may hold. A larger linked component is not one radiograph
#: saved many times but a chain of look-alikes (synthetic phantoms drawn from one template,
#: say): its images are grouped by exact copies only.
MAX_GROUP = 10


class CopyGroups(NamedTuple):
    """Each image's group key, and how many images were in look-alike chains that were too
    large to be copies of one radiograph (left to exact-copy grouping)."""

    keys: list[str]
    chained: int


def copy_groups(
    hashes: Sequence[str], images: np.ndarray | None, *, max_group: int = MAX_GROUP
) -> CopyGroups:
    """Per image, the key of its copy group: the smallest content hash among the images it is
    linked to by exact copies (the same hash) or near copies (:func:`near_duplicates`),
    directly or through others (re-crops of one radiograph chain together).

    Args:
        hashes: each image's content hash.
        images: their decoded ``(N, H, W)`` uint8 pixels, row-aligned; ``None`` groups exact
            copies only.
        max_group: a linked component with more images than this is a chain of look-alikes,
            not copies: its images keep their exact-copy groups (counted in ``chained``).

    An image without copies is its own group, keyed by its hash.
    """
    n = len(hashes)
    sets = DisjointSets()
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        sets.join(i, first.setdefault(h, i))
    if images is not None and n > 1:
        for i, j, _, _ in near_duplicates(signatures(images)):
            sets.join(i, j)
    roots = [sets.find(i) for i in range(n)]
    size: dict[int, int] = {}
    key: dict[int, str] = {}
    for i, h in enumerate(hashes):
        size[roots[i]] = size.get(roots[i], 0) + 1
        key[roots[i]] = min(key.get(roots[i], h), h)
    chained = 0
    out = []
    for i, h in enumerate(hashes):
        if size[roots[i]] > max_group:
            chained += 1
            out.append(h)  # exact copies still share their hash
        else:
            out.append(key[roots[i]])
    return CopyGroups(out, chained)
