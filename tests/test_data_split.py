import csv
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


def _field(seed: int, size: int = 96):
    """A smooth random image: distinct per seed, and far from every other seed's."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), size / 10)
    return ((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8)


def _with_near_copies(root: Path, per_class: int = 20, copied: int = 4) -> Path:
    """Two classes of distinct images; ``copied`` of each class also saved re-sized (70 px,
    then back) and re-cropped (2 % off each side): three files, one radiograph."""
    import numpy as np
    from PIL import Image

    from conftest import write_png

    for ci, cls in enumerate(("COVID", "Normal")):
        for i in range(per_class):
            img = _field(ci * 100 + i)
            write_png(root / cls / f"{cls}-{i}.png", img)
            if i < copied:
                small = Image.fromarray(img).resize((70, 70), Image.BILINEAR)
                write_png(root / cls / f"{cls}-{i}-resized.png", np.asarray(small))
                write_png(root / cls / f"{cls}-{i}-cropped.png", img[2:-2, 2:-2])
    return root


def test_near_copies_stay_in_one_split(tmp_path: Path, capsys) -> None:
    from cxrlab.data import prepare_data

    db = _with_near_copies(tmp_path / "db")

    def copies_apart(split) -> int:
        where: dict[str, set[str]] = {}
        for r, s in zip(split.records, split.assignment):
            where.setdefault(Path(r.path).name.split("-")[1].split(".")[0] + r.label, set()).add(s)
        return sum(len(v) > 1 for v in where.values())

    for seed in range(4):
        data = prepare_data(db, split_seed=seed, image_size=32, progress=False)
        assert data.split.joined() == (8, 24)  # 8 radiographs saved three times each
        assert copies_apart(data.split) == 0
        counts = data.split.counts()
        assert all(abs(counts["test"][c] - 0.15 * 28) <= 2 for c in data.split.classes)
    # the manifest names each image's group; the three files of one radiograph share it
    manifest = tmp_path / "split.csv"
    data = prepare_data(db, split_file=manifest, image_size=32, progress=False)
    text = manifest.read_text()
    assert text.splitlines()[1] == "path,label,width,height,hash,group,patient,source,split"
    groups = {row["path"]: row["group"] for row in csv.DictReader(text.splitlines()[1:])}
    assert groups["COVID/COVID-1.png"] == groups["COVID/COVID-1-resized.png"]
    assert groups["COVID/COVID-1.png"] == groups["COVID/COVID-1-cropped.png"]
    assert groups["COVID/COVID-1.png"] != groups["COVID/COVID-2.png"]
    assert load_split(manifest, _scan(db)).to_csv() == text
    # the same data and seed give the same bytes; the opt-out groups exact copies only
    again = prepare_data(db, split_file=tmp_path / "again.csv", image_size=64, progress=False)
    assert (tmp_path / "again.csv").read_text() == text  # the input size plays no part
    apart = [copies_apart(prepare_data(db, split_seed=s, image_size=32, near_copies=False,
                                       progress=False).split) for s in range(4)]  # fmt: skip
    assert max(apart) > 0, "without grouping some copies land in different splits"
    assert again.split.joined() == (8, 24)
    # the CLI says how many were joined
    assert main(["data", "split", str(db), "--out", str(tmp_path / "cli.csv")]) == 0
    assert "Near copies: 8 group(s) of 24 images joined" in capsys.readouterr().out
    assert main(["data", "split", str(db), "--out", str(tmp_path / "n.csv"),
                 "--no-near-copies"]) == 0  # fmt: skip
    assert "Near copies" not in capsys.readouterr().out


def test_old_manifest_without_groups_still_loads(tmp_path: Path) -> None:
    db = make_kaggle_db(tmp_path, per_class=6)
    split = make_split(_scan(db), seed=0)
    lines = split.to_csv().splitlines()
    old = "\n".join([lines[0]] + [",".join(ln.split(",")[:5] + ln.split(",")[6:])
                                   for ln in lines[1:]]) + "\n"  # fmt: skip
    (tmp_path / "old.csv").write_text(old)
    loaded = load_split(tmp_path / "old.csv", _scan(db))
    assert loaded.assignment == split.assignment and loaded.groups == ()
    assert loaded.fingerprint() == split.fingerprint()
    assert loaded.group(0) == loaded.records[0].hash
