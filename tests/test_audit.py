"""The shortcut audit on data whose truth is known: phantoms with and without a planted marker.

A model trained on phantoms whose class is also written in a tag outside the lungs must keep
its accuracy with the lungs removed; a model trained on clean phantoms (every finding inside
the lungs) must fall to chance. Both models are trained once per test session.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.audit import acquisition_probes, run_audit
from cxrlab.audit.checks import mass_inside
from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import CheckpointError
from cxrlab.runs import evaluate_run
from cxrlab.study import build_report, parse_study_config, run_study
from cxrlab.training import TrainConfig, train

from conftest import CLASSES, random_gray, write_png

FAST = {"precision": "fp32", "threads": 2, "progress": False, "batch_size": 16,
        "ratios": (0.5, 0.1, 0.4)}  # fmt: skip


@pytest.fixture(scope="module")
def marker_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 from scratch on phantoms whose class is also in a tag outside the lungs."""
    base = tmp_path_factory.mktemp("marker")
    data = write_synthetic_dataset(base / "data", per_class=24, size=64, masks=True,
                                   shortcut="marker", progress=False)  # fmt: skip
    cfg = TrainConfig(data=str(data), model="resnet18", weights="none", epochs=4, image_size=64,
                      **FAST)  # fmt: skip
    return train(cfg, base / "run").run_dir


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pretrained EfficientNet-Lite0 (half frozen) on clean phantoms with clear findings."""
    base = tmp_path_factory.mktemp("clean")
    data = write_synthetic_dataset(base / "data", per_class=30, size=64, masks="infection",
                                   min_severity=1.0, progress=False)  # fmt: skip
    cfg = TrainConfig(data=str(data), model="efficientnet_lite0", weights="imagenet",
                      freeze="0.5", epochs=8, image_size=64, **FAST)  # fmt: skip
    return train(cfg, base / "run").run_dir


def test_marker_phantoms_score_without_the_lungs(marker_run: Path, tmp_path: Path) -> None:
    metrics = json.loads((marker_run / "metrics.json").read_text())
    result = run_audit(marker_run, out=tmp_path / "audit", progress=False)
    lungs = result.report["checks"]["lungs"]
    removed = lungs["variants"]["lungs removed (mean fill)"]
    noise = lungs["variants"]["lungs removed (noise fill)"]
    assert lungs["chance"] == pytest.approx(0.25)
    assert removed["accuracy"] >= 0.8 and noise["accuracy"] >= 0.8  # far above chance
    assert removed["retained"] > 0.7
    # the audit reproduces the run's own test accuracy, and never touches the run
    assert result.report["normal"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert json.loads((marker_run / "metrics.json").read_text()) == metrics
    cam = result.report["checks"]["cam"]
    assert cam["n"] == 40 and cam["share"] < 0.5  # most Grad-CAM mass outside the lungs
    probes = result.report["checks"]["probes"]["probes"]
    assert probes["border"]["balanced_accuracy"] > 0.7  # the tag is on the border
    for name in ("audit.json", "audit.md", "lungs.png", "lung_examples.png", "cam_outside.png",
                 "cam_shares.png", "probes.png"):  # fmt: skip
        assert (tmp_path / "audit" / name).is_file(), name
    text = (tmp_path / "audit" / "audit.md").read_text()
    assert "**Lungs removed / lungs only**: With the lungs removed (mean fill)" in text
    assert "by chance" in text and "| lungs removed (noise fill) |" in text


def test_clean_phantoms_fall_to_chance_without_the_lungs(clean_run: Path) -> None:
    result = run_audit(clean_run, checks=("lungs",), progress=False)
    lungs = result.report["checks"]["lungs"]
    original = lungs["original"]["accuracy"]
    removed = lungs["variants"]["lungs removed (mean fill)"]
    assert original >= 0.6  # the model learned the findings
    assert removed["accuracy"] <= lungs["chance"] + 0.15  # and they were all in the lungs
    assert removed["retained"] < 0.3
    assert (clean_run / "audit" / "audit.json").is_file()  # the default place


def test_infection_check_on_phantoms_with_infection_masks(clean_run: Path,
                                                          marker_run: Path) -> None:  # fmt: skip
    """The COVID phantoms' infection masks: Grad-CAM on correctly classified COVID images,
    against chance; data without infection masks is a reported skip."""
    result = run_audit(clean_run, checks=("infection",), progress=False,
                       out=clean_run / "audit-infection")  # fmt: skip
    inf = result.report["checks"]["infection"]
    assert "skipped" not in inf, inf
    assert 0 < inf["n_correct"] <= inf["n_infected"] < 30  # COVID test images
    assert inf["n"] == len(inf["rows"]) == len(inf["ratios"]) == inf["n_correct"]
    assert 0 < inf["area_share"] < 1 and inf["within"] == "lungs"
    assert np.nanmean(inf["ratios"]) == pytest.approx(inf["ratio"])
    assert inf["pointing"] == pytest.approx(np.mean(inf["hits"]))
    assert inf["ratio_ci"][0] <= inf["ratio"] <= inf["ratio_ci"][1]
    assert "times as much as a map spread evenly" in result.findings["infection"]
    assert (clean_run / "audit-infection" / "cam_infection.png").is_file()
    assert (
        "Does it look at the infection" in (clean_run / "audit-infection" / "audit.md").read_text()
    )
    other = run_audit(marker_run, checks=("infection",), progress=False, out=marker_run / "a2")
    why = other.report["checks"]["infection"]["skipped"]
    assert "needs infection masks" in why and "missing" in why


def test_cam_mass_inside_a_mask() -> None:
    cams = np.zeros((3, 4, 4))
    cams[0, :2] = 1.0  # all mass in the top half
    cams[1] = 1.0  # evenly spread
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2] = True  # the mask is the top half
    share = mass_inside(cams, masks)
    assert share[0] == 1.0 and share[1] == 0.5 and np.isnan(share[2])  # an empty map: no share


def test_probes_find_a_planted_acquisition_difference() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (80, 32, 32), dtype=np.uint8)
    labels = ["a"] * 40 + ["b"] * 40
    images[40:, :3, :] = 255  # class b's images have a bright top border (a collimator edge)
    result = acquisition_probes(images, labels, probes=("border", "histogram"))
    assert result["chance"] == 0.5
    assert result["probes"]["border"]["balanced_accuracy"] > 0.95
    same = acquisition_probes(rng.integers(60, 200, (80, 32, 32), dtype=np.uint8), labels,
                              probes=("thumbnail",))  # fmt: skip
    assert same["probes"]["thumbnail"]["balanced_accuracy"] < 0.75  # nothing to find
    assert "skipped" in acquisition_probes(images[:3], ["a", "a", "b"])


def test_external_data_with_some_classes_and_copies(marker_run: Path, tmp_path: Path,
                                                    capsys) -> None:  # fmt: skip
    """Another dataset: two of the model's classes plus one it does not know, and copies of
    training images (one exact, one re-sized) that must be found and left out."""
    card = json.loads((marker_run / "model_card.json").read_text())
    own = Path(card["data"]["root"])
    split = [line.split(",") for line in (marker_run / "split.csv").read_text().splitlines()[2:]]
    train_paths = [p for p, *_, s in split if s == "train" and p.startswith("Normal/")]
    ext = tmp_path / "ext"
    rng = np.random.default_rng(0)
    for folder in ("COVID-19", "normal", "kids"):  # images from elsewhere: no copies
        for i in range(3):
            smooth = Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8))
            pixels = np.asarray(smooth.resize((64, 64), Image.BICUBIC))
            write_png(ext / folder / f"x{i}.png", pixels)
    shutil.copy(own / train_paths[0], ext / "normal" / "copy.png")  # an exact copy
    big = Image.open(own / train_paths[1]).resize((80, 80), Image.BILINEAR)
    big.save(ext / "normal" / "resized.png")  # a re-sized copy
    with pytest.raises(CheckpointError, match=r"'kids'.*--class-map 'kids="):
        evaluate_run(marker_run, ext, split="all", progress=False)
    m = evaluate_run(marker_run, ext, split="all", class_map={"kids": "-"}, progress=False)
    assert m["class_matching"] == {"COVID-19": "COVID", "kids": None, "normal": "Normal"}
    assert m["overlap"]["checked_near"] and m["excluded_copies"] == 2
    assert {e["path"] for e in m["overlap"]["exact"]} == {"normal/copy.png"}
    assert {e["path"] for e in m["overlap"]["near"]} == {"normal/resized.png"}
    assert m["n"] == 6 and m["n_unscored"] == 3  # 3 COVID-19 + 3 normal scored
    assert m["classes_present"] == ["COVID", "Normal"]
    assert sum(m["routing"]["kids"].values()) == 3  # where the unknown class went
    assert sum(m["routing"]["normal"].values()) == 5  # copies are still shown there
    assert main(["evaluate", str(marker_run), "--data", str(ext), "--split", "all",
                 "--class-map", "kids=-", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("Overlap with the run's data: 1 exact / 1 near copies of train images")
    assert "Where the images went:" in out and "kids (unscored)" in out
    assert main(["evaluate", str(marker_run), "--data", str(ext), "--split", "all"]) == 2
    assert "--class-map" in capsys.readouterr().err
    # the audit on the external data: the overlap comes first, and no masks: said so
    result = run_audit(marker_run, ext, split="all", class_map={"kids": "-"},
                       out=tmp_path / "a", checks=("lungs", "cam"), progress=False)  # fmt: skip
    assert result.report["checks"]["copies"]["excluded"] == 2
    assert result.report["checks"]["lungs"]["skipped"].startswith("needs lung masks; 0 of")
    assert "External data" in (tmp_path / "a" / "audit.md").read_text()


def test_audit_bad_input(marker_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from cxrlab.errors import CxrlabError

    def no_layer(model):
        raise CxrlabError("Grad-CAM does not know which layer of some_arch to explain")

    monkeypatch.setattr("cxrlab.infer.cam.target_layer", no_layer)
    result = run_audit(marker_run, out=tmp_path / "a", checks=("cam", "lungs"), progress=False)
    assert result.findings["cam"].startswith("skipped: Grad-CAM does not know which layer")
    assert "variants" in result.report["checks"]["lungs"]  # the other checks still ran
    assert main(["audit", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["audit", str(marker_run), "--check", "vibes", "--no-progress"]) == 2
    assert "Unknown audit check" in capsys.readouterr().err


def test_lungs_removed_training_and_study_audit(tmp_path: Path) -> None:
    """--lungs remove as a study axis, an [audit] table, and the report's audit section."""
    data = write_synthetic_dataset(tmp_path / "d", per_class=8, size=48, masks=True,
                                   shortcut="marker", progress=False)  # fmt: skip
    study = parse_study_config(f"""
[study]
name = "audit"
data = "{data}"
seeds = 1
ratios = [0.5, 0.1, 0.4]

[train]
epochs = 1
batch_size = 8
image_size = 48
precision = "fp32"
progress = false

[[cells]]
model = "resnet18"
weights = "none"
lungs = ["keep", "remove"]

[audit]
checks = ["copies", "lungs", "probes"]
""")
    assert [c.id for c in study.cells] == ["resnet18-scratch-full-s0",
                                           "resnet18-scratch-full-nolungs-s0"]  # fmt: skip
    assert study.cells[1].label == "From scratch, lungs removed"
    out = tmp_path / "study"
    run_study(study, out, progress=False)
    keep, nolungs = (out / "runs" / c.id for c in study.cells)
    assert (keep / "audit" / "audit.json").is_file()
    assert json.loads((nolungs / "model_card.json").read_text())["data"]["lungs"] == "remove"
    skipped = json.loads((nolungs / "audit" / "audit.json").read_text())["checks"]["lungs"]
    assert "trained with lungs remove" in skipped["skipped"]
    assert (out / "audit" / "audit.json").is_file()  # the data's probes, once
    report = build_report(out, study)
    summary = report.files["summary"].read_text()
    assert "## Shortcut audit" in summary and "Acquisition probes:" in summary
    assert "| resnet18-scratch-full-s0 |" in summary
    assert "Shortcut audit" in report.files["report"].read_text()
    again = run_study(study, out, progress=False)
    assert again.ran == [] and len(again.skipped) == 2  # audits are not redone


def test_lungs_option_needs_masks(tmp_path: Path, capsys) -> None:
    for k, cls in enumerate(CLASSES):
        for i in range(4):
            write_png(tmp_path / "db" / cls / "images" / f"{i}.png", random_gray(10 * k + i))
    assert main(["train", "--data", str(tmp_path / "db"), "--lungs", "remove", "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 2  # fmt: skip
    assert "--lungs remove needs a valid lung mask for every image" in capsys.readouterr().err


def test_evaluate_applies_the_runs_lungs_mode(tmp_path: Path) -> None:
    """A run trained with --lungs remove is evaluated on images with the lungs removed, as
    it was tested: cxrlab evaluate reproduces its own test metrics, image by image."""
    data = write_synthetic_dataset(tmp_path / "d", per_class=8, size=48, masks=True,
                                   shortcut="marker", progress=False)  # fmt: skip
    cfg = TrainConfig(data=str(data), model="resnet18", weights="none", epochs=2,
                      image_size=48, lungs="remove", **FAST)  # fmt: skip
    run = train(cfg, tmp_path / "run").run_dir
    own = json.loads((run / "metrics.json").read_text())
    m = evaluate_run(run, split="test", progress=False)
    assert m["lungs"] == "remove"
    assert m["accuracy"] == own["accuracy"] and m["nll"] == pytest.approx(own["nll"], abs=1e-6)
    assert m["confusion_matrix"] == own["confusion_matrix"]


def test_predict_and_export_refuse_a_lungs_removed_run(tmp_path: Path, capsys) -> None:
    """predict and export get whole images; a run trained with its lungs removed on mask
    files has no segmenter to find them (predict names --masks-from), and an export cannot
    run one: both refuse in one line instead of scoring whole images."""
    data = write_synthetic_dataset(tmp_path / "d", per_class=4, size=40, masks=True,
                                   progress=False)  # fmt: skip
    cfg = TrainConfig(data=str(data), model="resnet18", weights="none", epochs=1,
                      image_size=40, lungs="remove", **FAST)  # fmt: skip
    run = train(cfg, tmp_path / "run").run_dir
    image = next((data / "COVID" / "images").iterdir())
    assert main(["predict", str(run), str(image)]) == 2
    assert "trained with --lungs remove" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m")]) == 2
    assert "trained with --lungs remove" in capsys.readouterr().err


def test_lungs_crop_training_is_evaluated_and_labelled(tmp_path: Path) -> None:
    """--lungs crop trains on images cut to the lungs; evaluate reproduces its test metrics
    and a study names the axis."""
    data = write_synthetic_dataset(tmp_path / "d", per_class=6, size=48, masks=True,
                                   progress=False)  # fmt: skip
    cfg = TrainConfig(data=str(data), model="resnet18", weights="none", epochs=1,
                      image_size=48, lungs="crop", **FAST)  # fmt: skip
    run = train(cfg, tmp_path / "run").run_dir
    own = json.loads((run / "metrics.json").read_text())
    m = evaluate_run(run, split="test", progress=False)
    assert m["lungs"] == "crop" and m["confusion_matrix"] == own["confusion_matrix"]
    study = parse_study_config('[[cells]]\nmodel = "resnet18"\nlungs = ["keep", "crop"]\n')
    assert study.cells[1].id == "resnet18-in1k-full-lungcrop-s0"
    assert study.cells[1].label == "Pretrained, fully fine-tuned, lungs cropped"
    # --masks-from gives the cropped cells a segmenter; the kept ones need none
    study = parse_study_config('[[cells]]\nmodel = "resnet18"\nlungs = ["keep", "crop"]\n',
                               masks_from="runs/lungs")  # fmt: skip
    assert [c.config.masks_from for c in study.cells] == [None, "runs/lungs"]
    assert study.cells[1].id == "resnet18-in1k-full-lungcrop-s0"
