"""Shared fixtures: tiny synthetic datasets in temporary folders, the real sample's path."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test session writes caches to a temporary folder, never to ~/.cache."""
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cxrlab-cache"))


#: A study's [train] table small enough for a test: one epoch at 32 px on 2 threads.
TINY_TRAIN = """
[train]
epochs = 1
batch_size = 8
image_size = 32
precision = "fp32"
threads = 2
progress = false
"""

#: A study small enough for a test: ResNet-18 from scratch, 2 freezing depths x 2 seeds.
TINY_STUDY = (
    """
[study]
name = "tiny"
data = "{data}"
seeds = 2
"""
    + TINY_TRAIN
    + """

[[cells]]
model = "resnet18"
weights = "none"
freeze = ["none", "0.5"]
"""
)


def tiny_config(data: Path, **kw):
    """A training config small enough for a test: ResNet-18 from scratch, 32 px, 2 epochs."""
    from cxrlab.engine import TrainConfig

    base = dict(
        data=str(data),
        model="resnet18",
        weights="none",
        image_size=32,
        epochs=2,
        batch_size=8,
        progress=False,
        precision="fp32",
        threads=2,
    )
    return TrainConfig(**(base | kw))


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def random_gray(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def make_kaggle_db(root: Path, per_class: int = 6, size: int = 32) -> Path:
    """A tiny dataset in the Kaggle layout, with masks, metadata and junk beside the images."""
    db = root / "COVID-19_Radiography_Dataset"
    for ci, cls in enumerate(CLASSES):
        for i in range(per_class):
            write_png(db / cls / "images" / f"{cls}-{i + 1}.png", random_gray(ci * 1000 + i, size))
            write_png(db / cls / "masks" / f"{cls}-{i + 1}.png", np.zeros((size, size), np.uint8))
        (db / f"{cls}.metadata.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    (db / "README.md.txt").write_text("readme")
    (db / "COVID" / "images" / ".DS_Store").write_bytes(b"\0\1junk")
    (db / "COVID" / "images" / "Thumbs.db").write_bytes(b"junk")
    return db


@pytest.fixture
def kaggle_db(tmp_path: Path) -> Path:
    return make_kaggle_db(tmp_path)


def png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _real_data(variable: str, what: str, example: str) -> Path:
    """The folder named by ``variable``, or a skip (a failure where CI requires real data)."""
    path = os.environ.get(variable)
    if path and Path(path).is_dir():
        return Path(path)
    reason = f"real-data test: set {variable} to a copy of {what} (e.g. {example})"
    if os.environ.get("CXRLAB_REQUIRE_SAMPLE") == "1":
        pytest.fail(f"CXRLAB_REQUIRE_SAMPLE=1 but {variable} is missing ({path!r}); {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The real COVID-19 Radiography sample (500 images per class), when available.

    CI passes its path in ``CXRLAB_SAMPLE_DATA`` and sets ``CXRLAB_REQUIRE_SAMPLE=1`` so these
    tests can never be skipped there. A fresh clone has no sample: the tests are skipped with
    the reason.
    """
    return _real_data(
        "CXRLAB_SAMPLE_DATA",
        "the COVID-19 Radiography Database",
        "../shared/cxr-sample/COVID-19_Radiography_Dataset",
    )


@pytest.fixture(scope="session")
def masks_root() -> Path:
    """Real chest X-rays with lung masks (COVID-QU-Ex, its own Train/Val/Test folders).

    CI passes ``../shared/cxr-masks`` in ``CXRLAB_MASKS_DATA``; elsewhere as for the sample.
    """
    return _real_data("CXRLAB_MASKS_DATA", "COVID-QU-Ex with lung masks", "../shared/cxr-masks")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    with_pixels: bool = True,
    rows_cols: tuple[int, int] | None = None,
) -> Path:
    """An uncompressed single-frame DICOM radiograph (``pixels``: uint16 ``(H, W)``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray, presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows_cols or pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
