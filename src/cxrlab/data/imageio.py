"""Reading one image safely and turning it into 8-bit grayscale.

Chest X-rays come as 8-bit PNGs (the COVID-19 Radiography Database), 16-bit PNGs or TIFFs
(many hospital exports), RGB or RGBA screenshots, DICOM straight from the modality (with
``pydicom``), and now and then a JPEG saved under a ``.png`` name. :func:`load_gray8`
accepts all of them and returns a ``uint8`` array that uses the full intensity range;
anything else raises :class:`ImageReadError` with a short reason.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "is_dicom",
    "load_dicom_gray8",
    "load_gray8",
    "rescale_to_uint8",
    "to_gray8",
]

#: Images with more pixels than this are refused before decoding (decompression bombs).
#: 64 Mpx is far above any radiograph (a 43x43 cm detector at 0.1 mm is ~18 Mpx).
DEFAULT_MAX_PIXELS = 64_000_000


class ImageReadError(DataError):
    """One file could not be used as an image; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def to_gray8(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to a ``(H, W)`` uint8 array.

    8-bit grayscale is returned unchanged. Colour images are converted with the ITU-R 601
    luma weights (alpha is dropped). Images deeper than 8 bits (``I;16``, ``I``, ``F``) are
    linearly rescaled from their own minimum and maximum to 0..255, because a plain cast
    would clip every value above 255 to white and a division by 65535 would leave 12-bit
    detector data nearly black.
    """
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("1", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if img.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    # I;16, I;16B, I;16L, I, F, ...: deeper than 8 bits
    arr = np.asarray(img).astype(np.float64)
    if arr.ndim == 3:  # rare multi-channel deep images
        arr = arr.mean(axis=-1)
    return rescale_to_uint8(arr)


def rescale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Linearly map an array's own minimum..maximum to 0..255 (a constant image is black)."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("pixel values are not finite")
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether the file is DICOM Part 10 (the ``DICM`` magic after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def load_dicom_gray8(
    path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A single-frame DICOM radiograph as ``(H, W)`` uint8, as a viewer would show it.

    The stored values go through the modality LUT (rescale slope and intercept) and the VOI
    LUT or window the file names (the display the modality chose), MONOCHROME1 images (high
    values dark) are inverted, and the result is rescaled from its own range to 0..255, as
    for 16-bit PNGs. Needs ``pydicom`` (``pip install 'cxrlab[dicom]'``); compressed transfer
    syntaxes also need the decoder plugin pydicom names.

    Raises:
        ImageReadError: pydicom missing, no pixel data, multi-frame, too large, or corrupt.
    """
    path = Path(path)
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as e:
        raise ImageReadError(
            path, "DICOM file: reading it needs pydicom (pip install 'cxrlab[dicom]')"
        ) from e
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        rows, cols = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if rows * cols > max_pixels:
            raise ImageReadError(
                path, f"decompression bomb: {cols}x{rows} pixels exceeds the {max_pixels} limit"
            )
        if frames > 1:
            raise ImageReadError(path, f"multi-frame DICOM ({frames} frames), not one radiograph")
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise ImageReadError(path, "DICOM file without pixel data")
        arr = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as e:  # corrupt, truncated, or a compression without a decoder
        raise ImageReadError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e
    if arr.ndim == 3:  # colour (SamplesPerPixel 3, converted to RGB by pydicom)
        return to_gray8(Image.fromarray(rescale_to_uint8(arr)))
    values = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = np.max(values) + np.min(values) - values.astype(np.float64)
    return rescale_to_uint8(values)


def load_gray8(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` fully and return it as a ``(H, W)`` uint8 grayscale array.

    Args:
        path: an image file in any format Pillow reads (the extension is not trusted).
        max_pixels: refuse images with more pixels than this without decoding them.

    Raises:
        ImageReadError: empty, truncated, not an image, too large, or unreadable.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
    except OSError as e:
        raise ImageReadError(path, f"unreadable ({e.strerror or e})") from e
    if is_dicom(path):
        return load_dicom_gray8(path, max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at 2x its limit raises) for huge images; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageReadError(
                        path, f"decompression bomb: {w}x{h} pixels exceeds the {max_pixels} limit"
                    )
                if w == 0 or h == 0:
                    raise ImageReadError(path, f"image has no pixels ({w}x{h})")
                img.load()  # decodes everything: truncated data fails here
                img = ImageOps.exif_transpose(img) or img
                return to_gray8(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image (unrecognised format)") from e
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageReadError(path, "truncated image data") from e
        raise ImageReadError(path, f"unreadable ({msg})") from e
    except Exception as e:  # a corrupt file must never crash a scan of 20,000 images
        raise ImageReadError(path, f"corrupt image ({type(e).__name__}: {e})") from e
