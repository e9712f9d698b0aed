"""The decoded-image cache: every image decoded, converted and resized once.

Training reads a ``(N, H, W)`` uint8 memory-mapped array instead of decoding PNGs every
epoch. The file's name is a hash of the images' content hashes (in manifest order), the size
and the resize method, so a changed image, a new image or a new size gives a new cache, and
a stale one is never read. It is written under a temporary name and renamed when complete,
so an interrupted build leaves nothing that could be mistaken for a finished cache.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError
from ..utils import cache_dir, hash_strings
from .imageio import ImageReadError, load_gray8
from .scan import ImageRecord

__all__ = [
    "RESIZE_METHOD",
    "DecodedImages",
    "decoded_images",
    "derived_images",
    "read_memmap",
    "resize_gray8",
    "write_memmap",
]

_CACHE_VERSION = 1
#: How images are resized: the whole image squashed to a square (no crop), bilinear with
#: Pillow's antialiasing. Recorded in every model card.
RESIZE_METHOD = "bilinear-antialias-squash"


def resize_gray8(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(H, W)`` uint8 image to ``(size, size)`` the way the cache does."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR))


@dataclass(frozen=True)
class DecodedImages:
    """A finished cache: ``array[i]`` is record ``i`` as a ``(size, size)`` uint8 image."""

    array: np.ndarray
    path: Path
    key: str
    size: int

    def __len__(self) -> int:
        return int(self.array.shape[0])


def read_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap | None:
    """A finished uint8 cache file of ``shape`` (with its JSON beside it), or ``None``."""
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("shape") == list(shape) and path.stat().st_size == int(np.prod(shape)):
            return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    except (OSError, ValueError):
        pass  # unreadable metadata: rebuild
    return None


def write_memmap(
    path: Path,
    shape: tuple[int, ...],
    rows: Iterable[np.ndarray],
    meta: Callable[[], dict] | dict | None = None,
) -> np.memmap:
    """Fill a new uint8 cache file of ``shape`` row by row, then publish it atomically.

    The rows go to a temporary file; the JSON beside it (``shape`` plus ``meta``, which may be
    a function called once every row is written) and the final name appear only when the file
    is complete, so an interrupted build leaves nothing that looks finished.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
        for i, row in enumerate(rows):
            out[i] = row
        out.flush()
        del out
        extra = meta() if callable(meta) else dict(meta or {})
        path.with_suffix(".json").write_text(json.dumps({"shape": list(shape), **extra}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)


def _cache_key(records: Sequence[ImageRecord], size: int) -> str:
    return hash_strings(
        [f"v{_CACHE_VERSION}", RESIZE_METHOD, str(size), *(r.hash for r in records)]
    )


def decoded_images(
    root: str | os.PathLike[str],
    records: Sequence[ImageRecord],
    size: int = 224,
    *,
    directory: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> DecodedImages:
    """Return the decoded-image cache for ``records``, building it if needed.

    Args:
        root: the dataset folder the records' paths are relative to.
        records: images in the order the array rows should have (a manifest's rows).
        size: the square side length in pixels.
        directory: where caches live (default: ``cxrlab.utils.cache_dir() / "images"``).
        workers: decoding threads (default: number of CPUs).
        progress: show a progress bar while building.

    Raises:
        DataError: an image cannot be read any more, or changed since it was scanned.
    """
    if size < 8:
        raise DataError(f"Image size must be at least 8 pixels, got {size}")
    if not records:
        raise DataError("No images to cache: the manifest is empty")
    directory = Path(directory) if directory else cache_dir() / "images"
    key = _cache_key(records, size)
    path = directory / f"{key}-{len(records)}x{size}x{size}.u8"
    shape = (len(records), size, size)
    if (arr := read_memmap(path, shape)) is not None:
        return DecodedImages(arr, path, key, size)
    root = Path(root)

    def work(i: int) -> np.ndarray:
        rec = records[i]
        try:
            gray = load_gray8(root / rec.path)
        except ImageReadError as e:
            raise DataError(
                f"{rec.path} became unreadable since the scan ({e.reason}); "
                "re-run 'cxrlab data scan'"
            ) from e
        if gray.shape != (rec.height, rec.width):
            raise DataError(
                f"{rec.path} changed since the scan (size "
                f"{gray.shape[1]}x{gray.shape[0]}, manifest "
                f"{rec.width}x{rec.height}); re-create the split"
            )
        return resize_gray8(gray, size)

    meta = {"version": _CACHE_VERSION, "resize": RESIZE_METHOD, "root": str(root),
            "count": len(records)}  # fmt: skip
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        jobs = pool.map(work, range(len(records)))
        bar = tqdm(jobs, total=len(records), desc=f"Caching images at {size}px", unit="img",
                   disable=not progress or None, leave=False)  # fmt: skip
        arr = write_memmap(path, shape, bar, meta)
    return DecodedImages(arr, path, key, size)


def derived_images(
    images: DecodedImages,
    recipe: str,
    transform: Callable[[np.ndarray], np.ndarray],
    *,
    batch: int = 256,
    progress: bool = True,
) -> DecodedImages:
    """A cache of ``images`` changed by a deterministic ``transform`` (lungs removed, say).

    Built once beside the decoded-image cache; its key combines the source cache's key and
    ``recipe`` (which must name everything the transform depends on), so feature caches and
    runs built on it never mix with the untouched images.

    Args:
        transform: maps an array of row indices to those rows' new ``(B, H, W)`` uint8 pixels.
    """
    key = hash_strings([images.key, recipe])
    shape = images.array.shape
    path = images.path.parent / f"{key}-{shape[0]}x{shape[1]}x{shape[2]}.u8"
    if (arr := read_memmap(path, shape)) is None:
        batches = [np.arange(i, min(i + batch, shape[0])) for i in range(0, shape[0], batch)]
        rows = (row for b in tqdm(batches, desc=f"Preparing images ({recipe[:24]})", unit="batch",
                                  disable=not progress or None, leave=False)
                for row in transform(b))  # fmt: skip
        arr = write_memmap(path, shape, rows, {"recipe": recipe, "source": images.key})
    return DecodedImages(arr, path, key, images.size)
