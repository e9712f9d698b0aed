from pathlib import Path

import numpy as np
import pytest

from cxrlab.data import find_layout, scan_dataset
from cxrlab.data.layout import canonical_class_name
from cxrlab.errors import DataError

from conftest import CLASSES, random_gray, write_png


def test_kaggle_layout_from_root_and_from_parent(kaggle_db: Path) -> None:
    for root in (kaggle_db, kaggle_db.parent):
        layout = find_layout(root)
        assert layout.root == kaggle_db
        assert layout.class_names == CLASSES
        assert layout.known_database
        # masks, spreadsheets, READMEs and OS junk are never candidates
        files = [f for c in layout.classes for f in c.files()]
        assert len(files) == 4 * 6
        assert all(f.parent.name == "images" and f.suffix == ".png" for f in files)


def test_flat_and_renamed_class_folders(tmp_path: Path) -> None:
    names = ["covid", "lung-opacity", "NORMAL", "viral_pneumonia"]
    for i, name in enumerate(names):
        for j in range(3):
            write_png(tmp_path / name / f"img{j}.png", random_gray(10 * i + j))
    layout = find_layout(tmp_path)
    assert layout.class_names == CLASSES  # canonical names and order
    assert [c.path.name for c in layout.classes] == names


@pytest.mark.parametrize(
    "name,expected",
    [
        ("Viral Pneumonia", "Viral Pneumonia"),
        ("viral_pneumonia", "Viral Pneumonia"),
        ("COVID-19", "COVID"),
        ("Lung Opacity", "Lung_Opacity"),
        ("cats", None),
    ],
)
def test_canonical_names(name: str, expected: str | None) -> None:
    assert canonical_class_name(name) == expected


def test_generic_dataset_keeps_folder_names(tmp_path: Path) -> None:
    for i, name in enumerate(["effusion", "atelectasis", "no_finding"]):
        for j in range(2):
            write_png(tmp_path / "set" / name / f"{j}.jpg", random_gray(i * 7 + j))
    layout = find_layout(tmp_path)
    assert not layout.known_database
    assert layout.class_names == ("atelectasis", "effusion", "no_finding")


def test_missing_root_and_wrong_layout_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        find_layout(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        find_layout(tmp_path / "file.png")
    # images directly in the root: no class folders
    write_png(tmp_path / "flat" / "a.png", random_gray(1))
    write_png(tmp_path / "flat" / "b.png", random_gray(2))
    with pytest.raises(DataError, match="No class folders"):
        find_layout(tmp_path / "flat")


def test_two_folders_for_one_class_is_an_error(tmp_path: Path) -> None:
    for name in ["COVID", "covid_19", "Normal"]:
        write_png(tmp_path / name / "a.png", random_gray(hash(name) % 100))
    with pytest.raises(DataError, match="several folders for the class 'COVID'"):
        find_layout(tmp_path)


def test_empty_class_folder_is_reported_and_blocks_a_split(kaggle_db: Path) -> None:
    from cxrlab.data import make_split

    for f in (kaggle_db / "Viral Pneumonia" / "images").iterdir():
        f.unlink()
    report = scan_dataset(kaggle_db, use_cache=False, progress=False)
    assert report.empty_classes == ["Viral Pneumonia"]
    assert report.class_counts()["Viral Pneumonia"] == 0
    with pytest.raises(DataError, match=r"'Viral Pneumonia'.*hold no valid images"):
        make_split(report)


def test_class_of_only_invalid_files_is_empty(kaggle_db: Path) -> None:
    for f in (kaggle_db / "Normal" / "images").iterdir():
        f.write_bytes(b"not a png")
    report = scan_dataset(kaggle_db, use_cache=False, progress=False)
    assert report.empty_classes == ["Normal"]
    assert len(report.invalid) == 6
    assert np.all([i.reason.startswith("not an image") for i in report.invalid])
