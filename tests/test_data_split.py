import shutil
from pathlib import Path

import pytest

from cxrlab.cli import main
from cxrlab.data import load_split, make_split, scan_dataset
from cxrlab.errors import DataError

from conftest import make_kaggle_db


def _scan(db: Path):
    return scan_dataset(db, use_cache=False, progress=False)


def test_split_is_stratified_and_byte_identical(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path / "a", per_class=20)
    a = make_split(_scan(db), seed=3)
    b = make_split(_scan(db), seed=3)
    assert a.to_csv() == b.to_csv()
    # a copy of the data somewhere else gives the same bytes
    other = make_kaggle_db(tmp_path / "b", per_class=20)
    assert make_split(_scan(other), seed=3).to_csv() == a.to_csv()
    assert make_split(_scan(db), seed=4).to_csv() != a.to_csv()
    for cls, n in a.counts()["train"].items():
        assert n == 14, cls
        assert a.counts()["val"][cls] == 3 and a.counts()["test"][cls] == 3


def test_split_file_roundtrip_and_cli(tmp_path: Path, capsys) -> None:
    db = make_kaggle_db(tmp_path, per_class=10)
    out1, out2 = tmp_path / "s1.csv", tmp_path / "s2.csv"
    assert main(["data", "split", str(db), "--out", str(out1), "--seed", "1"]) == 0
    assert main(["data", "split", str(db), "--out", str(out2), "--seed", "1"]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    assert "split hash" in capsys.readouterr().out
    split = load_split(out1, _scan(db))
    assert split.seed == 1 and split.classes[0] == "COVID"
    assert split.to_csv() == out1.read_text()
    assert main(["data", "split", str(db), "--ratios", "0.5,0.5"]) == 2


def test_duplicates_stay_in_one_split(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path, per_class=30)
    imgs = db / "Normal" / "images"
    for i in range(1, 11):  # ten duplicate pairs
        shutil.copy(imgs / f"Normal-{i}.png", imgs / f"dup-{i}.png")
    split = make_split(_scan(db), seed=0)
    where = dict(zip((r.path for r in split.records), split.assignment))
    for i in range(1, 11):
        assert where[f"Normal/images/Normal-{i}.png"] == where[f"Normal/images/dup-{i}.png"]


def test_holdout_all_and_small_classes(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path, per_class=3)
    report = _scan(db)
    assert set(make_split(report, holdout_all=True).assignment) == {"test"}
    small = make_split(report)  # 3 images: one in each split
    for cls in report.classes:
        assert [small.counts()[s][cls] for s in ("train", "val", "test")] == [1, 1, 1]


def test_bad_ratios_and_changed_data_are_refused(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path, per_class=4)
    report = _scan(db)
    with pytest.raises(DataError, match="sum"):
        make_split(report, ratios=(0.8, 0.3, 0.1))
    path = make_split(report).save(tmp_path / "split.csv")
    (db / "COVID" / "images" / "COVID-1.png").unlink()
    with pytest.raises(DataError, match="does not match the dataset"):
        load_split(path, _scan(db))
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a cxrlab manifest"):
        load_split(tmp_path / "junk.csv")
