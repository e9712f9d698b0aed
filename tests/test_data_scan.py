import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import main
from cxrlab.data import scan_dataset

from conftest import png_with_declared_size, random_gray, write_png


def _add_bad_files(db: Path) -> None:
    imgs = db / "COVID" / "images"
    (imgs / "zero.png").write_bytes(b"")
    (imgs / "notes.png").write_text("not an image")
    data = (imgs / "COVID-1.png").read_bytes()
    (imgs / "cut.png").write_bytes(data[: len(data) // 2])
    png_with_declared_size(imgs / "bomb.png", 100_000, 100_000)


def test_invalid_files_are_reported_and_left_out(kaggle_db: Path) -> None:
    _add_bad_files(kaggle_db)
    report = scan_dataset(kaggle_db, use_cache=False, progress=False)
    assert report.class_counts() == dict.fromkeys(report.classes, 6)
    reasons = {Path(i.path).name: i.reason for i in report.invalid}
    assert set(reasons) == {"zero.png", "notes.png", "cut.png", "bomb.png"}
    assert reasons["zero.png"].startswith("empty file")
    assert reasons["notes.png"].startswith("not an image")
    assert reasons["cut.png"].startswith("truncated")
    assert reasons["bomb.png"].startswith("decompression bomb")
    assert not {r.path for r in report.records} & set(reasons)


def test_duplicates_and_label_conflicts(kaggle_db: Path) -> None:
    imgs = kaggle_db / "Normal" / "images"
    shutil.copy(imgs / "Normal-1.png", imgs / "Normal-copy.png")
    # the same pixels re-encoded differently are still the same image
    Image = pytest.importorskip("PIL.Image")
    Image.open(imgs / "Normal-2.png").save(imgs / "Normal-2b.png", compress_level=0)
    shutil.copy(imgs / "Normal-3.png", kaggle_db / "COVID" / "images" / "stray.png")
    report = scan_dataset(kaggle_db, use_cache=False, progress=False)
    assert sorted(report.duplicates) == [
        ["Normal/images/Normal-1.png", "Normal/images/Normal-copy.png"],
        ["Normal/images/Normal-2.png", "Normal/images/Normal-2b.png"],
    ]
    assert len(report.conflicts) == 1
    conflict = report.conflicts[0]
    assert conflict["classes"] == ["COVID", "Normal"]
    assert set(conflict["paths"]) == {"COVID/images/stray.png", "Normal/images/Normal-3.png"}
    kept = {r.path for r in report.records}
    assert not kept & set(conflict["paths"])  # ambiguous labels never reach a split


def test_scan_cache_rereads_only_changed_files(kaggle_db: Path, monkeypatch) -> None:
    from cxrlab.data import scan as scan_mod

    first = scan_dataset(kaggle_db, progress=False)
    calls: list[Path] = []
    real = scan_mod._probe
    monkeypatch.setattr(scan_mod, "_probe", lambda p, m: calls.append(p) or real(p, m))
    again = scan_dataset(kaggle_db, progress=False)
    assert calls == [] and again.fingerprint() == first.fingerprint()
    target = kaggle_db / "Normal" / "images" / "Normal-1.png"
    write_png(target, random_gray(999))
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse file systems
    changed = scan_dataset(kaggle_db, progress=False)
    assert calls == [target]
    assert changed.fingerprint() != first.fingerprint()


def test_cli_scan_json_keys_and_exit_codes(kaggle_db: Path, capsys, tmp_path: Path) -> None:
    _add_bad_files(kaggle_db)
    assert main(["data", "scan", str(kaggle_db.parent), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == {"COVID": 6, "Lung_Opacity": 6, "Normal": 6, "Viral Pneumonia": 6}
    assert {Path(i["path"]).name for i in out["invalid"]} == {
        "zero.png",
        "notes.png",
        "cut.png",
        "bomb.png",
    }
    assert all(set(i) == {"path", "reason"} for i in out["invalid"])
    assert out["duplicates"] == [] and out["conflicts"] == []

    assert main(["data", "scan", str(kaggle_db)]) == 0
    text = capsys.readouterr().out
    assert "Invalid files: 4" in text and "total" in text

    assert main(["data", "scan", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrlab: error:") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["data", "scan", str(tmp_path / "empty")]) == 2
    assert "No class folders" in capsys.readouterr().err


@pytest.mark.realdata
def test_real_sample_scan(sample_root: Path, capsys) -> None:
    report = scan_dataset(sample_root, progress=False)
    assert report.known_database
    assert report.class_counts() == {
        "COVID": 500,
        "Lung_Opacity": 500,
        "Normal": 500,
        "Viral Pneumonia": 500,
    }
    assert report.invalid == []
    assert {(r.width, r.height) for r in report.records} == {(299, 299)}
    # the CLI on the folder above the dataset gives the same counts
    assert main(["data", "scan", str(sample_root.parent), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == report.class_counts() and out["invalid"] == []
    assert np.sum(list(out["classes"].values())) == 2000
