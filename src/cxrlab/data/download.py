"""Fetching the COVID-19 Radiography Database from Kaggle with ``kagglehub``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import DataError

__all__ = ["KAGGLE_DATASET", "KAGGLE_URL", "download_database"]

KAGGLE_DATASET = "tawsifurrahman/covid19-radiography-database"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"


def download_database(out: str | os.PathLike[str]) -> Path:
    """Download and unpack the database into ``out`` and return the dataset folder.

    Needs network access and, for Kaggle, credentials (``~/.kaggle/kaggle.json`` or the
    ``KAGGLE_USERNAME``/``KAGGLE_KEY`` variables).

    Raises:
        DataError: one line saying why the download failed and what to do instead.
    """
    out = Path(out).expanduser()
    manual = f"download it by hand from {KAGGLE_URL}, unzip it, then pass --data PATH to cxrlab"
    try:
        import kagglehub
    except ImportError as e:  # pragma: no cover - kagglehub is a dependency
        raise DataError(f"kagglehub is not installed (pip install kagglehub); or {manual}") from e
    try:
        cached = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as e:  # network, credentials, quota: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"Could not download {KAGGLE_DATASET} from Kaggle ({reason[:200]}); "
            f"check your network and Kaggle credentials, or {manual}"
        ) from e
    out.mkdir(parents=True, exist_ok=True)
    for item in cached.iterdir():
        target = out / item.name
        if target.exists():
            continue
        if item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)
    return out
