"""The dataset layer: find classes, scan and hash images, split, cache decoded pixels.

Typical use::

    from cxrlab.data import scan_dataset, make_split, decoded_images

    report = scan_dataset("data/COVID-19_Radiography_Dataset")
    split = make_split(report, seed=0)
    images = decoded_images(report.root, split.records, size=224)
    x = images.array[split.indices("train")]  # (N, 224, 224) uint8
"""

from .cache import RESIZE_METHOD, DecodedImages, decoded_images, resize_gray8
from .download import KAGGLE_URL, download_database
from .imageio import ImageReadError, load_gray8, to_gray8
from .layout import COVID_RADIOGRAPHY_CLASSES, DatasetLayout, find_layout
from .masks import LUNG_MODES, DecodedMasks, apply_lung_mask, apply_lungs, decoded_masks
from .options import DataOptions
from .prepare import PreparedData, near_copy_groups, prepare_data, resolve_data
from .scan import ImageRecord, InvalidFile, ScanReport, scan_dataset
from .split import SPLITS, Split, load_split, make_split, train_size_label
from .synth import draw_phantom, write_synthetic_dataset

__all__ = [
    "COVID_RADIOGRAPHY_CLASSES",
    "KAGGLE_URL",
    "LUNG_MODES",
    "RESIZE_METHOD",
    "SPLITS",
    "DataOptions",
    "DatasetLayout",
    "DecodedImages",
    "DecodedMasks",
    "ImageReadError",
    "ImageRecord",
    "InvalidFile",
    "PreparedData",
    "ScanReport",
    "Split",
    "apply_lung_mask",
    "apply_lungs",
    "decoded_images",
    "decoded_masks",
    "download_database",
    "draw_phantom",
    "find_layout",
    "load_gray8",
    "load_split",
    "make_split",
    "near_copy_groups",
    "prepare_data",
    "resize_gray8",
    "resolve_data",
    "scan_dataset",
    "to_gray8",
    "train_size_label",
    "write_synthetic_dataset",
]
