from pathlib import Path

import numpy as np
import pytest

from cxrlab.data import cache as cache_mod
from cxrlab.data import decoded_images, prepare_data, scan_dataset
from cxrlab.errors import DataError

from conftest import make_kaggle_db, random_gray, write_png


def test_cache_content_reuse_and_invalidation(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path, per_class=3, size=40)
    report = scan_dataset(db, progress=False)
    cache = decoded_images(report.root, report.records, 16, progress=False)
    assert cache.array.shape == (12, 16, 16) and cache.array.dtype == np.uint8
    from PIL import Image

    first = np.asarray(Image.open(report.root / report.records[0].path))
    np.testing.assert_array_equal(cache.array[0], cache_mod.resize_gray8(first, 16))
    mtime = cache.path.stat().st_mtime_ns
    again = decoded_images(report.root, report.records, 16, progress=False)
    assert again.path == cache.path and again.path.stat().st_mtime_ns == mtime  # reused
    assert decoded_images(report.root, report.records, 24, progress=False).path != cache.path
    write_png(report.root / report.records[0].path, random_gray(12345, 40))
    changed = scan_dataset(db, use_cache=False, progress=False)
    rebuilt = decoded_images(changed.root, changed.records, 16, progress=False)
    assert rebuilt.path != cache.path  # new content, new cache


def test_interrupted_build_leaves_no_cache(tmp_path: Path, monkeypatch) -> None:
    db = make_kaggle_db(tmp_path, per_class=3)
    report = scan_dataset(db, progress=False)
    calls = {"n": 0}
    real = cache_mod.resize_gray8

    def flaky(gray: np.ndarray, size: int) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(gray, size)

    monkeypatch.setattr(cache_mod, "resize_gray8", flaky)
    directory = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        decoded_images(
            report.root, report.records, 16, directory=directory, workers=1, progress=False
        )
    assert list(directory.glob("*.u8")) == [] and list(directory.glob("*.partial")) == []
    monkeypatch.setattr(cache_mod, "resize_gray8", real)
    ok = decoded_images(report.root, report.records, 16, directory=directory, progress=False)
    assert ok.array.shape == (12, 16, 16)


def test_file_deleted_after_scan(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path, per_class=3)
    report = scan_dataset(db, progress=False)
    (report.root / report.records[2].path).unlink()
    with pytest.raises(DataError, match="became unreadable"):
        decoded_images(report.root, report.records, 16, progress=False)


def test_prepare_data_uses_and_checks_split_file(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path, per_class=5)
    split_file = tmp_path / "split.csv"
    first = prepare_data(db, split_file=split_file, image_size=16, progress=False)
    assert split_file.exists()
    second = prepare_data(db, split_file=split_file, split_seed=99, image_size=16, progress=False)
    assert second.split.to_csv() == first.split.to_csv()  # the saved split wins
    assert second.images.path == first.images.path
    holdout = prepare_data(db, holdout_all=True, image_size=16, progress=False)
    assert holdout.split.indices("test") == list(range(20))
