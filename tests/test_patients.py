"""Patients: rules that name them, splits that keep them whole, held-out scores without them."""

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import main
from cxrlab.data import make_split, prepare_data, scan_dataset
from cxrlab.data.patients import (
    PatientRule,
    group_units,
    parse_patient_rule,
    parse_patient_rules,
    patient_ids,
)
from cxrlab.errors import ConfigError, DataError
from cxrlab.runs import evaluate_run
from cxrlab.training import train

from conftest import random_gray, tiny_config, write_png


def test_kermany_names_give_the_patient() -> None:
    names = {
        "person124_virus_238.jpeg": "person124",
        "person124_bacteria_590.jpeg": "person124",  # one child, two kinds of pneumonia
        "IM-0119-0001.jpeg": "IM-0119",
        "NORMAL2-IM-0588-0001.jpeg": "NORMAL2-IM-0588",  # another series than IM-0588
        "COVID-12.png": "",
        "Normal (3).png": "",
        "person124.png": "",  # no image number: not the Kermany naming
    }
    files = [(f"x/{n}", n) for n in names]
    assert PatientRule("auto").ids(files, "kids") == list(names.values())
    with pytest.raises(DataError, match="names the patient of none"):
        PatientRule("kermany").ids([("a/COVID-1.png", "COVID-1.png")], "sample")
    assert PatientRule("auto").ids([("a/COVID-1.png", "COVID-1.png")], "sample") == [""]


def test_patient_rules_parse_and_fail_in_one_line(tmp_path: Path) -> None:
    files = [("P7/img_1.png", "img_1.png"), ("P7/img_2.png", "img_2.png"),
             ("Q1/scan-Q1-3.png", "scan-Q1-3.png")]  # fmt: skip
    named = parse_patient_rule(r"re:scan-(?P<patient>Q\d+)-")
    assert named.ids(files, "s") == ["", "", "Q1"]
    assert parse_patient_rule(r"re:^img_(\d)").ids(files, "s") == ["1", "2", ""]
    assert parse_patient_rule(r"re:img").ids(files, "s") == ["img", "img", ""]  # whole match
    table = tmp_path / "patients.csv"
    table.write_text("path,patient,subject\nP7/img_1.png,p7,S1\nimg_2.png,p7,S2\n")
    assert parse_patient_rule(str(table)).ids(files, "s") == ["p7", "p7", ""]
    assert parse_patient_rule(f"{table}#subject").ids(files, "s") == ["S1", "S2", ""]
    assert str(parse_patient_rule(f"{table}#subject")) == f"{table}#subject"
    with pytest.raises(DataError, match="'path' and 'id' columns"):
        parse_patient_rule(f"{table}#id").ids(files, "s")
    with pytest.raises(DataError, match="Cannot read the patient CSV"):
        parse_patient_rule(str(tmp_path / "missing.csv")).ids(files, "s")
    with pytest.raises(ConfigError, match="not a regular expression"):
        parse_patient_rule("re:(unclosed")
    with pytest.raises(ConfigError, match="give kermany, re:PATTERN"):
        parse_patient_rule("by-name")
    with pytest.raises(DataError, match="'re:zzz' of source 's' names the patient of none"):
        parse_patient_rule("re:zzz").ids(files, "s")
    rules = parse_patient_rules(["kids=none"], ["sample", "kids"])
    assert rules == {"sample": PatientRule("auto"), "kids": PatientRule("none")}
    assert parse_patient_rules(["kermany"], ["kids"]) == {"kids": PatientRule("kermany")}
    with pytest.raises(ConfigError, match="NAME one of the sources"):
        parse_patient_rules(["kermany"], ["sample", "kids"])
    with pytest.raises(ConfigError, match="two rules"):
        parse_patient_rules(["kids=none", "kids=kermany"], ["sample", "kids"])


def test_units_join_copies_and_patients() -> None:
    paths = ["a", "b", "c", "d", "e"]
    copies = ["h1", "h2", "h2", "h4", "h5"]  # b and c copy one radiograph
    patients = {"a": "k:p1", "b": "k:p1", "d": "k:p2"}  # a and b one patient; c via its copy
    assert group_units(paths, copies, patients) == ["h1", "h1", "h1", "h4", "h5"]
    assert group_units(paths, copies, {}) == copies  # no patient: the copy groups as they were


def _kermany_db(root: Path, patients: int = 24, size: int = 24) -> Path:
    """Two classes of random images named the Kermany way; patient k has 1 + k % 4 images."""
    db = root / "kids"
    for k in range(patients):
        normal = k % 2
        cls = "Normal" if normal else "Viral Pneumonia"
        stem = f"IM-{k:04d}-" if normal else f"person{k}_virus_"
        for j in range(1 + k % 4):
            name = f"{stem}{j + 1:04d}.png" if k % 2 else f"{stem}{100 * k + j}.png"
            write_png(db / cls / "images" / name, random_gray(1000 * k + j, size))
    return db


def test_a_drawn_split_keeps_each_patient_in_one_split(tmp_path: Path) -> None:
    db = _kermany_db(tmp_path)
    report = scan_dataset(db, progress=False)
    who = patient_ids(report.root, [r.path for r in report.records])
    assert len(set(who.values())) == 24 and len(who) == len(report.records) == 60
    for seed in range(8):
        split = make_split(report, seed=seed, ratios=(0.6, 0.2, 0.2), patients=who)
        where: dict[str, set[str]] = defaultdict(set)
        for i, s in enumerate(split.assignment):
            where[split.patient(i)].add(s)
        assert all(len(s) == 1 for s in where.values()), seed
        counts = split.counts()
        assert all(counts[s][c] > 0 for s in ("val", "test") for c in split.classes)
    summary = split.patient_summary()
    assert summary == {"patients": 24, "images": 60, "grouped_patients": 18,
                       "grouped_images": 54, "across": 0}  # fmt: skip
    # without patients, the split is the one drawn before patients existed
    plain = make_split(report, seed=3)
    assert make_split(report, seed=3, patients={}).fingerprint() == plain.fingerprint()
    assert plain.patient_summary()["across"] == 0 and plain.patients == ()
    # the manifest records the patient and reads back
    manifest = tmp_path / "split.csv"
    prepared = prepare_data(db, split_file=manifest, image_size=24, progress=False)
    rows = list(csv.DictReader(manifest.read_text().splitlines()[1:]))
    assert {r["patient"] for r in rows} == set(who.values())
    again = prepare_data(db, split_file=manifest, image_size=24, progress=False)
    assert again.split.patients == prepared.split.patients
    none = prepare_data(db, image_size=24, patients=["none"], progress=False)
    assert none.split.patients == () and none.split.patient_summary()["patients"] == 0


def test_cli_split_reports_patients(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = _kermany_db(tmp_path)
    out = tmp_path / "m.csv"
    assert main(["data", "split", str(db), "--out", str(out)]) in (0, None)
    text = capsys.readouterr().out
    assert "60 images of 24 known patients; 18 with several images (54 images)" in text
    assert main(["data", "split", str(db), "--out", str(out), "--patients", "re:nothing"]) == 2
    assert "names the patient of none of its 60 images" in capsys.readouterr().err


def test_a_view_applies_each_sources_rule_to_the_linked_file(tmp_path: Path) -> None:
    kids = _kermany_db(tmp_path, patients=8)
    other = tmp_path / "other"
    for k in range(6):  # two images per subject, named subject-K_view-J
        for j in range(2):
            name = f"subject-{k}_view-{j}.png"
            write_png(other / "Normal" / name, random_gray(9000 + 10 * k + j))
    prepared = prepare_data([f"kids={kids}", f"site={other}"],
                            patients=[r"site=re:subject-(\d+)_"], image_size=24,
                            progress=False)  # fmt: skip
    split = prepared.split
    keys = {split.patient(i) for i in range(len(split.records))}
    assert {k.split(":")[0] for k in keys} == {"kermany", "site"}
    assert "site:3" in keys and "kermany:person2" in keys
    assert split.patient_summary()["across"] == 0
    with pytest.raises(ConfigError, match="NAME one of the sources"):
        prepare_data([f"kids={kids}", f"site={other}"], patients=["re:x"], image_size=24,
                     progress=False)  # fmt: skip


def test_held_out_scores_leave_out_patients_the_run_saw(tmp_path: Path) -> None:
    db = _kermany_db(tmp_path, patients=24)
    run = tmp_path / "run"
    train(tiny_config(db, epochs=1, ratios=(0.6, 0.2, 0.2)), run)
    card = json.loads((run / "model_card.json").read_text())
    assert card["data"]["patients"]["grouped_patients"] == 18
    assert card["data"]["patients"]["across"] == 0 and card["data"]["patients"]["rules"] == ["auto"]
    rows = list(csv.DictReader((run / "split.csv").read_text().splitlines()[1:]))
    seen = sorted({r["patient"] for r in rows if r["split"] in ("train", "val")})
    # another site's images: new radiographs of two patients the run saw, of new patients,
    # and an exact copy of a training image under a new patient whose other image then goes too
    site = tmp_path / "site" / "B"
    expected_patients = 0
    for k, key in enumerate(seen[:2]):
        pid = key.split(":")[1]
        cls = "Viral Pneumonia" if pid.startswith("person") else "Normal"
        name = f"{pid}_virus_9{k}.png" if pid.startswith("person") else f"{pid}-0099.png"
        write_png(site / cls / name, random_gray(50_000 + k))
        expected_patients += 1
    for k in range(6):
        write_png(site / "Normal" / f"IM-{5000 + k}-0001.png", random_gray(60_000 + k))
        write_png(site / "Viral Pneumonia" / f"person{5000 + k}_virus_1.png",
                  random_gray(70_000 + k))  # fmt: skip
    trained = next(r for r in rows if r["split"] == "train")
    copy = (db / trained["path"]).read_bytes()
    cls = trained["label"]
    (site / cls / "person7777_virus_1.png").write_bytes(copy)
    write_png(site / cls / "person7777_virus_2.png", random_gray(80_000))
    expected_patients += 1
    m = evaluate_run(run, data=site, split="all", progress=False)
    assert m["excluded_copies"] == 1 and m["excluded_patients"] == expected_patients
    assert m["n"] == 12
    kept = evaluate_run(run, data=site, split="all", exclude_copies=False, progress=False)
    assert kept["n"] == 12 + 1 + expected_patients and kept["excluded_patients"] == 0
    assert np.isfinite(m["accuracy"])
