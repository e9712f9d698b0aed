"""External test sets: scoring a run on data from elsewhere, in train and in studies."""

import csv
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import CheckpointError, ConfigError, TrainingInterrupted
from cxrlab.runs.external_sets import (
    ExternalSet,
    evaluate_external,
    external_sets,
    parse_external,
    read_external,
)
from cxrlab.study import build_report, parse_study_config, run_study
from cxrlab.training import train

from conftest import TINY_STUDY, tiny_config


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("ph"), per_class=10, seed=5, size=40,
                                   progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def hospital_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantoms drawn elsewhere (another seed), with the other hospital's class names:
    ``COVID-19`` (an alias of COVID), ``Normal``, and viral pneumonia split into two folders
    that the class map merges; Lung_Opacity renamed ``Other`` (left unscored)."""
    src = write_synthetic_dataset(tmp_path_factory.mktemp("hb"), per_class=6, seed=77, size=48,
                                  progress=False)  # fmt: skip
    out = tmp_path_factory.mktemp("hospital_b") / "B"
    names = {"COVID": "COVID-19", "Normal": "Normal", "Lung_Opacity": "Other"}
    for cls, folder in names.items():
        shutil.copytree(src / cls / "images", out / folder)
    for k, f in enumerate(sorted((src / "Viral Pneumonia" / "images").iterdir())):
        (out / ("VP-a" if k % 2 else "VP-b")).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out / ("VP-a" if k % 2 else "VP-b") / f.name)
    return out


B_MAP = {"Other": "-", "VP-a": "Viral Pneumonia", "VP-b": "Viral Pneumonia"}


@pytest.fixture(scope="module")
def run(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    train(tiny_config(phantoms, epochs=1, ratios=(0.5, 0.1, 0.4)), out)
    return out


def _split_rows(run: Path) -> list[dict]:
    lines = (run / "split.csv").read_text().splitlines()[1:]
    return list(csv.DictReader(lines))


def test_parse_external_sets() -> None:
    ext = parse_external("quex=data/q", {"quex": "COVID-19=COVID,Non-COVID=-"})
    assert ext == ExternalSet("quex", "data/q", {"COVID-19": "COVID", "Non-COVID": "-"})
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_external("data/q")
    with pytest.raises(ConfigError, match="letters, digits"):
        parse_external("q ex=data/q")
    sets = external_sets([{"name": "a", "data": "x", "class_map": {"A": "-"}}])
    assert sets[0].class_map == {"A": "-"}
    with pytest.raises(ConfigError, match="unknown key"):
        external_sets([{"name": "a", "data": "x", "classmap": {}}])
    with pytest.raises(ConfigError, match="used twice"):
        external_sets([{"name": "a", "data": "x"}, {"name": "a", "data": "y"}])
    with pytest.raises(ConfigError, match="class_map must map"):
        external_sets([{"name": "a", "data": "x", "class_map": {"A": 1}}])


def test_external_score_is_the_runs_own_on_those_images(run: Path, phantoms: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    """An external set made of the run's own test images (renamed, merged, one class
    dropped) plus planted copies of training images: the copies are left out, and the
    accuracy is exactly the run's own on the test images that remain."""
    rows = _split_rows(run)
    own = {r["path"]: r["label"] == r["pred"] for r in
           csv.DictReader((run / "predictions.csv").open())}  # fmt: skip
    ext = tmp_path / "ext"
    folders = {"COVID": "COVID-19", "Normal": "Normal", "Lung_Opacity": "Other",
               "Viral Pneumonia": "VP-a"}  # fmt: skip
    origin = {}
    for r in rows:
        if r["split"] != "test":
            continue
        name = f"{r['label'][:3]}-{Path(r['path']).name}"
        target = ext / folders[r["label"]] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(phantoms / r["path"], target)
        origin[f"{folders[r['label']]}/{name}"] = r["path"]
    # two folders merged into one model class
    vp = sorted((ext / "VP-a").iterdir())
    (ext / "VP-b").mkdir()
    for f in vp[::2]:
        shutil.move(f, ext / "VP-b" / f.name)
        origin[f"VP-b/{f.name}"] = origin.pop(f"VP-a/{f.name}")
    # planted copies of training images: exact, and re-sized (a near copy)
    train_rows = [r for r in rows if r["split"] == "train" and r["label"] == "Normal"]
    planted = []
    for k, r in enumerate(train_rows[:3]):
        img = Image.open(phantoms / r["path"])
        if k == 2:
            img = img.resize((44, 44), Image.BILINEAR)
        name = f"copy-{k}.png"
        if k == 2:
            img.save(ext / "Normal" / name)
        else:
            shutil.copy(phantoms / r["path"], ext / "Normal" / name)
        planted.append(f"Normal/{name}")
    s = ExternalSet("twin", str(ext), B_MAP)
    result, computed = evaluate_external(run, s, progress=False)
    assert computed and "error" not in result
    excluded = {o["path"] for o in result["overlap"]["exact"] + result["overlap"]["near"]
                if o["run_split"] in ("train", "val")}  # fmt: skip
    assert set(planted) <= excluded
    assert result["excluded_copies"] == len(excluded)
    scored = [p for p, o in origin.items() if not p.startswith("Other/") and p not in excluded]
    assert result["n"] == len(scored)
    assert result["accuracy"] == pytest.approx(np.mean([own[origin[p]] for p in scored]))
    assert result["class_matching"] == {
        "COVID-19": "COVID",
        "Normal": "Normal",
        "Other": None,
        "VP-a": "Viral Pneumonia",
        "VP-b": "Viral Pneumonia",
    }
    assert set(result["classes_present"]) == {"COVID", "Normal", "Viral Pneumonia"}
    assert sum(result["routing"]["Other"].values()) == sum(p.startswith("Other/") for p in origin)
    assert 0 <= result["ece_calibrated"] <= 1 and result["temperature"] > 0
    assert not result["not_external"] and 0 < result["copy_share"] < 0.2
    # the per-image file the study pairs runs on
    preds = list(csv.DictReader((run / "external" / "twin.predictions.csv").open()))
    assert len(preds) == result["n"]
    # asked again: from the run folder, nothing scored
    again, computed = evaluate_external(run, s, progress=False)
    assert not computed and again == read_external(run, "twin")
    # a changed class map is a new question
    _, computed = evaluate_external(run, ExternalSet("twin", str(ext), B_MAP | {"Normal": "-"}),
                                    progress=False)  # fmt: skip
    assert computed


def test_external_bad_input(run: Path, phantoms: Path, hospital_b: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate_external(run, ExternalSet("gone", str(tmp_path / "nowhere")), progress=False)
    with pytest.raises(CheckpointError, match=r"'VP-a'.*(?s:.*)knows COVID, Lung_Opacity"):
        evaluate_external(run, ExternalSet("b", str(hospital_b), {"Other": "-"}), progress=False)
    with pytest.raises(CheckpointError, match=r"is the data .* was trained on"):
        evaluate_external(run, ExternalSet("self", str(phantoms)), progress=False)
    # only copies of training images: nothing left to score, said and kept
    copies = tmp_path / "copies"
    for r in _split_rows(run):
        if r["split"] == "train":
            (copies / r["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(phantoms / r["path"], copies / r["label"])
    result, _ = evaluate_external(run, ExternalSet("copies", str(copies)), progress=False)
    assert "copy the run's training or validation images" in result["error"]
    assert "accuracy" not in result
    # a few images from elsewhere beside them: scored, and flagged as not external
    rng = np.random.default_rng(1)
    for i in range(4):
        pixels = Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)).resize((40, 40))
        pixels.save(copies / "COVID" / f"fresh-{i}.png")
    result, _ = evaluate_external(run, ExternalSet("copies", str(copies)), progress=False)
    assert result["n"] == 4 and result["not_external"] and result["copy_share"] > 0.8


def test_train_with_external(phantoms: Path, hospital_b: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t"
    args = ["train", "--data", str(phantoms), "--out", str(out), "--model", "resnet18",
            "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--precision", "fp32", "--no-progress", "--external", f"b={hospital_b}",
            "--external-class-map", "b=Other=-,VP-a=Viral Pneumonia,VP-b=Viral Pneumonia",
            "--external", f"gone={tmp_path / 'nowhere'}"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "external b: accuracy" in text and "copies of training/validation images" in text
    assert "external gone: skipped:" in text and "does not exist" in text
    assert read_external(out, "b")["n"] == 18
    assert main([*args[:-2], "--external-class-map", "x=A=-"]) == 2
    assert "names 'x', which no --external names" in capsys.readouterr().err


EXTERNAL = """
[[study.external]]
name = "b"
data = "{b}"
class_map = {{"Other" = "-", "VP-a" = "Viral Pneumonia", "VP-b" = "Viral Pneumonia"}}
"""


def test_study_with_external_sets(phantoms: Path, hospital_b: Path, tmp_path: Path, capsys,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import cxrlab.runs.external_sets as ext_module
    import cxrlab.study.runner as runner

    text = TINY_STUDY.format(data=phantoms).replace(
        "\n[train]", EXTERNAL.format(b=hospital_b) + "\n[train]"
    )
    study = parse_study_config(text)
    out = tmp_path / "study"
    # a killed study: one cell finished (scored on b as soon as it trained), the next one
    # killed half-way through training, then the same command again
    first = run_study(study, out, cells=[study.cells[0].id], progress=False)
    assert first.ran == [study.cells[0].id]
    assert read_external(out / "runs" / study.cells[0].id, "b")["n"] == 18
    cut = study.cells[1]

    def stop(epoch: int, step: int, model) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train(cut.config.replace(split_file=str(out / "split.csv")), out / "runs" / cut.id,
              on_step=stop)  # fmt: skip
    assert read_external(out / "runs" / cut.id, "b") is None
    calls: list[str] = []
    real = ext_module.evaluate_run
    monkeypatch.setattr(
        ext_module,
        "evaluate_run",
        lambda run, *a, **k: calls.append(Path(run).name) or real(run, *a, **k),
    )
    done = run_study(study, out, progress=False)
    assert done.complete and cut.id in done.ran
    assert sorted(calls) == sorted(c.id for c in study.cells[1:])
    # a second run of the same command trains and scores nothing
    calls.clear()
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("retrained"))
    again = run_study(study, out, progress=False)
    assert again.ran == [] and calls == []

    # adding sets to the finished study scores only what is missing, without retraining;
    # bad sets are one line each and the study goes on
    other = write_synthetic_dataset(tmp_path / "c", per_class=4, seed=9, size=36, progress=False)
    unmapped = tmp_path / "unmapped"
    shutil.copytree(hospital_b, unmapped)
    more = (
        parse_external(f"c={other}"),
        parse_external(f"u={unmapped}"),
        parse_external(f"gone={tmp_path / 'nowhere'}"),
        parse_external(f"self={phantoms}"),
    )
    study2 = parse_study_config(text, external=more)
    capsys.readouterr()
    run_study(study2, out, progress=False)
    assert sorted(calls) == sorted(c.id for c in study.cells)  # each cell once, on c only
    lines = capsys.readouterr().out.splitlines()
    assert sum("external u: skipped" in ln and "'Other'" in ln for ln in lines) == 1
    assert sum("external gone: skipped" in ln and "does not exist" in ln for ln in lines) == 1
    assert sum("external self: skipped" in ln and "own data" in ln for ln in lines) == 1

    report = build_report(out, study2)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    for col in ("b_accuracy", "b_macro_f1", "b_auroc", "b_ece", "b_ece_calibrated", "b_drop",
                "b_copies_left_out", "b_not_external", "c_accuracy"):  # fmt: skip
        assert col in header, col
    summary = (out / "summary.md").read_text()
    assert "## External sets: does it hold up elsewhere?" in summary
    # phantoms look alike: a few are linked as near copies
    assert re.search(r"The split keeps \d+ near-copy group\(s\) of \d+ images", summary)
    assert "| Training type | model | in distribution | b accuracy | drop (points)" in summary
    assert "Paired comparisons on b (18 images)" in summary
    rows = list(csv.DictReader((out / "comparisons.csv").open()))
    assert {r["test_set"] for r in rows} == {"own", "b", "c"}
    assert report.files["external_b_routing"].is_file()
    html = (out / "report.html").read_text()
    assert "External sets" in html and "b: where each class went" in html
    # the drop is each run's own accuracy minus its accuracy on b
    res = {r["cell"]: r for r in csv.DictReader((out / "results.csv").open())}
    for cell, r in res.items():
        b = read_external(out / "runs" / cell, "b")
        assert float(r["b_drop"]) == pytest.approx(float(r["accuracy"]) - b["accuracy"], abs=1e-5)
    assert json.loads((out / "study.json").read_text())["overrides"]["external"][0]["name"] == "c"

    # a set made mostly of the study's training images is flagged beside its numbers
    dup = tmp_path / "dup"
    for line in list(csv.DictReader((out / "split.csv").read_text().splitlines()[1:])):
        if line["split"] == "train":
            (dup / line["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(phantoms / line["path"], dup / line["label"])
    rng = np.random.default_rng(2)
    for i in range(4):
        fresh = Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)).resize((40, 40))
        fresh.save(dup / "Normal" / f"fresh-{i}.png")
    run_study(parse_study_config(text, external=(parse_external(f"dup={dup}"),)), out,
              progress=False)  # fmt: skip
    build_report(out)
    summary = (out / "summary.md").read_text()
    assert "**NOT EXTERNAL**: more than 20 % of its images copy the training data" in summary
    assert re.search(
        r"\| \S[^|]* \| resnet18 \| [^|]+ \| [0-9.± \[\],]+ \(NOT EXTERNAL\) \|", summary
    )


def test_frozen_prefix_of_external_images_runs_once_per_study(
    phantoms: Path, hospital_b: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head-only cells of one pretrained backbone share its frozen features: the backbone
    runs once per image of the study's data and once per image of the external set, however
    many seeds and cells use it."""
    import cxrlab.engine.features as features

    seen: list[int] = []
    real = features._prefix
    monkeypatch.setattr(features, "_prefix",
                        lambda m, c, n, x: seen.append(len(x)) or real(m, c, n, x))  # fmt: skip
    text = f"""
[study]
name = "frozen"
data = "{phantoms}"
seeds = 3
{EXTERNAL.format(b=hospital_b)}
[train]
epochs = 1
batch_size = 8
image_size = 32
precision = "fp32"
progress = false

[[cells]]
model = "efficientnet_lite0"
weights = "imagenet"
freeze = "head"
"""
    out = tmp_path / "s"
    run_study(parse_study_config(text), out, progress=False)
    n_own, n_b = 40, 24
    assert sum(seen) == n_own + n_b
    accs = [read_external(out / "runs" / f"efficientnet_lite0-in1k-head-s{s}", "b")["accuracy"]
            for s in range(3)]  # fmt: skip
    assert len(accs) == 3


def test_another_hospital_with_other_tags_exposes_a_shortcut(tmp_path: Path) -> None:
    """Hospital A burns a class-dependent tag into every image; hospital B burns in tags
    too, by its own convention (each class gets the next class's tag). A model that learned
    A's tags scores well at home and sends B's images where their tags point: the answer is
    known, and the external evaluation must show it."""
    from cxrlab.data import COVID_RADIOGRAPHY_CLASSES as CLASSES
    from cxrlab.data.synth import _plant_marker, draw_phantom
    from cxrlab.engine import TrainConfig

    a = write_synthetic_dataset(tmp_path / "a", per_class=24, size=64, shortcut="marker",
                                progress=False)  # fmt: skip
    cfg = TrainConfig(data=str(a), model="resnet18", weights="none", epochs=4, image_size=64,
                      precision="fp32", threads=2, progress=False, batch_size=16,
                      ratios=(0.5, 0.1, 0.4))  # fmt: skip
    run = train(cfg, tmp_path / "run").run_dir
    rng = np.random.default_rng(11)
    for k, cls in enumerate(CLASSES):
        for i in range(10):
            img = Image.fromarray(draw_phantom(cls, rng, 64))
            _plant_marker(img, CLASSES[(k + 1) % 4])
            (tmp_path / "b" / cls).mkdir(parents=True, exist_ok=True)
            img.save(tmp_path / "b" / cls / f"b-{i}.png")
    result, _ = evaluate_external(run, ExternalSet("b", str(tmp_path / "b")), progress=False)
    own = json.loads((run / "metrics.json").read_text())["accuracy"]
    followed = sum(result["routing"][c][CLASSES[(k + 1) % 4]] for k, c in enumerate(CLASSES))
    assert own >= 0.8 and result["n"] + result["excluded_copies"] == 40  # look-alikes left out
    assert followed / 40 >= 0.6 and result["accuracy"] <= 0.4


def test_copies_are_found_whatever_the_lungs_mode(tmp_path: Path) -> None:
    """A run trained on images cropped to the lungs, scored on a set holding re-sized copies
    of its training images: the copies are found on the whole images and left out (compared
    cropped against whole, they were missed)."""
    from cxrlab.runs import evaluate_run

    data = write_synthetic_dataset(tmp_path / "d", per_class=6, size=48, masks=True,
                                   progress=False)  # fmt: skip
    run = train(tiny_config(data, lungs="crop", epochs=1, ratios=(0.5, 0.25, 0.25)),
                tmp_path / "run").run_dir  # fmt: skip
    rows = list(csv.DictReader((run / "split.csv").read_text().splitlines()[1:]))
    trained = [r["path"] for r in rows if r["split"] == "train"][:4]
    ext = tmp_path / "ext"
    for rel in trained:
        cls, _, name = rel.split("/")
        for sub in ("images", "masks"):
            img = Image.open(data / cls / sub / name).resize((56, 56), Image.BILINEAR)
            (ext / cls / sub).mkdir(parents=True, exist_ok=True)
            img.save(ext / cls / sub / name)
    fresh = write_synthetic_dataset(tmp_path / "f", per_class=2, size=48, seed=9, masks=True,
                                    progress=False)  # fmt: skip
    for cls in ("COVID", "Normal"):
        for sub in ("images", "masks"):
            for f in (fresh / cls / sub).iterdir():
                shutil.copy(f, ext / cls / sub / f"new-{f.name}") if (ext / cls).is_dir() else None
    m = evaluate_run(run, data=ext, split="all", progress=False)
    assert m["lungs"] == "crop" and m["excluded_copies"] == len(trained)


ADAPT = """
[[study.adapt]]
site = "b"
labels = [0, 2]
draws = 2
test_share = 0.34
"""


def test_study_adapts_every_cell_to_a_site(phantoms: Path, hospital_b: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import cxrlab.adapt as adapt_module

    text = TINY_STUDY.format(data=phantoms).replace(
        "\n[train]", EXTERNAL.format(b=hospital_b) + ADAPT + "\n[train]"
    )
    study = parse_study_config(text)
    assert study.settings.adapt[0].runs() == [(0, 0, "b-n0-d0"), (2, 0, "b-n2-d0"),
                                              (2, 1, "b-n2-d1")]  # fmt: skip
    out = tmp_path / "s"
    one = [study.cells[0].id]  # one cell keeps the test short
    run_study(study, out, cells=one, progress=False)
    for c in study.cells[:1]:
        for name in ("b-n0-d0", "b-n2-d0", "b-n2-d1"):
            rec = json.loads((out / "adapted" / c.id / name / "adaptation.json").read_text())
            assert rec["adaptation"]["parent"] == str((out / "runs" / c.id).resolve())
            assert rec["adaptation"]["labels"] == int(name[3])
    build_report(out)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["cell"] for r in rows] == one
    for r in rows:
        assert r["adapt_b_n2_draws"] == "2" and r["adapt_b_n0_draws"] == "1"
        assert 0 <= float(r["adapt_b_n2_accuracy"]) <= 1 and float(r["adapt_b_n_test"]) > 0
    summary = (out / "summary.md").read_text()
    assert "## Adapted to b" in summary and "| N = 2 |" in summary
    assert "<h2>Adapted to b</h2>" in (out / "report.html").read_text()
    # the same command again adapts nothing
    monkeypatch.setattr(adapt_module, "adapt_run", lambda *a, **k: pytest.fail("adapted again"))
    assert run_study(study, out, cells=one, progress=False).ran == []
    with pytest.raises(ConfigError, match="site 'x' is not one of the study's external sets"):
        parse_study_config(text.replace('site = "b"', 'site = "x"'))
    with pytest.raises(ConfigError, match="method"):
        parse_study_config(text.replace('site = "b"', 'site = "b"\nmethod = "magic"'))
