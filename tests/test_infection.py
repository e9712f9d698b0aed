"""Infection segmentation, severity and whether a classifier looks at the infection: known
fractions and grades, left and right told apart, planted Grad-CAM maps, the library metrics
against direct computations, and a tiny infection segmenter end to end."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxrlab.audit.checks import infection_attention
from cxrlab.segment.masks import clean_infection
from cxrlab.segment.severity import extent_grade, severity, split_lungs


def _lungs(size: int = 100) -> np.ndarray:
    """Two rectangular lungs: the patient's right (image left) 40x20, left 40x25."""
    m = np.zeros((size, size), np.uint8)
    m[20:60, 10:30] = 1  # 800 px, image left: the patient's right lung
    m[20:60, 50:75] = 1  # 1000 px, image right: the left lung
    return m


def test_extent_grade_edges() -> None:
    assert [extent_grade(f) for f in (0, 0.009, 0.01, 0.2499, 0.25, 0.5, 0.7499, 0.75, 1)] == [
        0, 0, 1, 1, 2, 3, 3, 4, 4,
    ]  # fmt: skip
    with pytest.raises(ValueError):
        extent_grade(1.2)
    with pytest.raises(ValueError):
        extent_grade(float("nan"))


def test_severity_of_a_known_case_and_its_mirror() -> None:
    lungs = _lungs()
    sick = np.zeros_like(lungs)
    sick[20:32, 10:30] = 1  # 240 of the right lung's 800 px: 30 %
    sick[20:60, 50:70] = 1  # 800 of the left lung's 1000 px: 80 %
    sick[80:90, 80:90] = 1  # outside the lungs: not counted
    s = severity(lungs, sick)
    assert s.ok and s.right_fraction == pytest.approx(0.3) and s.left_fraction == pytest.approx(0.8)
    assert s.infection_fraction == pytest.approx(1040 / 1800)
    assert (s.right_grade, s.left_grade, s.grade) == (2, 4, 6)
    mirrored = severity(lungs[:, ::-1], sick[:, ::-1])  # the patient's sides swap in the image
    assert mirrored.right_fraction == pytest.approx(0.8)
    assert mirrored.left_fraction == pytest.approx(0.3)
    assert mirrored.grade == 6 and mirrored.right_grade == 4
    right, left = split_lungs(lungs)
    assert right.sum() == 800 and right[20:60, 10:30].all() and not right[:, 40:].any()
    assert left.sum() == 1000
    none = severity(lungs, np.zeros_like(lungs))
    assert none.grade == 0 and none.infection_fraction == 0
    row = s.to_row()
    assert row["grade"] == 6 and row["lungs"] == "ok" and row["right_lung_fraction"] == 0.3


def test_severity_refuses_doubtful_lungs_and_other_sizes() -> None:
    one = _lungs()
    one[:, 40:] = 0  # one lung
    s = severity(one, np.zeros_like(one))
    assert not s.ok and s.grade is None and "not two lungs" in s.reason
    row = s.to_row()
    assert row["grade"] == "" and row["lungs"].startswith("doubtful (not two lungs")
    with pytest.raises(ValueError, match="the same size"):
        severity(_lungs(), np.zeros((50, 50)))


def test_clean_infection_stays_in_the_lungs_and_drops_specks() -> None:
    lungs = _lungs()
    prob = np.zeros(lungs.shape, np.float32)
    prob[30:50, 12:28] = 0.9  # a real region: 320 px of 1800 lung px
    prob[55:57, 60:62] = 0.9  # a speck: 4 px, under 0.5 % of the lungs (9 px)
    prob[80:95, 80:95] = 0.9  # outside the lungs
    clean = clean_infection(prob, lungs)
    assert clean.dtype == np.uint8 and clean.sum() == 320 and clean[30:50, 12:28].all()
    assert not clean_infection(np.zeros_like(prob), lungs).any()  # no infection is an answer
    assert clean_infection(prob, None)[80:95, 80:95].all()  # without lungs, kept


def test_cam_planted_on_the_infection_scores_high_and_outside_low() -> None:
    lungs = np.stack([_lungs()] * 3)
    sick = np.zeros_like(lungs)
    sick[:, 20:40, 10:30] = 1  # 400 of 1800 lung px
    on, off, even = np.zeros((3, 100, 100)), np.zeros((3, 100, 100)), lungs.astype(float)
    on[:, 25:35, 15:25] = 1.0
    off[:, 45:55, 55:70] = 1.0  # in the left lung, away from the infection
    cams = np.stack([on[0], off[1], even[2]])
    found = infection_attention(cams, sick, lungs)
    area = 400 / 1800
    assert found["area_share"] == pytest.approx([area] * 3)
    assert found["ratio"][0] == pytest.approx(1 / area) and found["hit"][0]
    assert found["ratio"][1] == 0 and not found["hit"][1]
    assert found["ratio"][2] == pytest.approx(1.0)  # spread evenly over the lungs: chance
    blank = infection_attention(np.zeros((1, 100, 100)), sick[:1], lungs[:1])
    assert np.isnan(blank["ratio"][0])


def test_library_kappa_and_spearman_against_direct_computations() -> None:
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 9, 60), rng.integers(0, 9, 60)
    b[:30] = a[:30]
    k = 9
    observed = np.zeros((k, k))
    for i, j in zip(a, b):
        observed[i, j] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    w = np.subtract.outer(np.arange(k), np.arange(k)) ** 2
    direct = 1 - (w * observed).sum() / (w * expected).sum()
    assert cohen_kappa_score(a, b, weights="quadratic", labels=list(range(k))) == pytest.approx(
        direct
    )
    x, y = rng.normal(size=40), rng.normal(size=40)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))  # no ties
    assert spearmanr(x, y).statistic == pytest.approx(np.corrcoef(rx, ry)[0, 1])


def test_an_empty_infection_mask_is_valid_and_an_empty_lung_mask_is_not(tmp_path) -> None:
    from cxrlab.data import decoded_masks, scan_dataset

    from conftest import random_gray, write_png

    root = tmp_path / "db"
    for cls in ("COVID-19", "Normal"):
        for n in range(2):
            write_png(root / cls / "images" / f"{cls}-{n}.png", random_gray(len(cls) + n))
            write_png(root / cls / "lung masks" / f"{cls}-{n}.png",
                      (_lungs(32) * 255).astype(np.uint8))  # fmt: skip
            sick = np.zeros((32, 32), np.uint8)
            if cls == "COVID-19":
                sick[8:14, 4:9] = 255
            if not (cls == "Normal" and n == 1):  # one image without an infection mask
                write_png(root / cls / "infection masks" / f"{cls}-{n}.png", sick)
    write_png(root / "Normal" / "lung masks" / "Normal-0.png", np.zeros((32, 32), np.uint8))
    report = scan_dataset(root, progress=False)
    records = sorted(report.records, key=lambda r: r.path)
    sick = decoded_masks(root, records, 32, "infection", progress=False)
    assert sick.status[:3] == ("ok", "ok", "ok") and sick.status[3].startswith("missing")
    assert sick.array[0].any() and not sick.array[2].any()
    lung = decoded_masks(root, records, 32, "lung", progress=False)
    assert lung.status[2].startswith("empty") and lung.status[0] == "ok"
    # an infection mask of another shape than its image is not used: it says why
    write_png(
        root / "COVID-19" / "infection masks" / "COVID-19-1.png", np.zeros((32, 48), np.uint8)
    )
    again = decoded_masks(root, records, 32, "infection", progress=False)
    assert again.status[1].startswith("wrong size (48x32 mask for a 32x32 image)")


# -- a tiny infection segmenter, end to end ------------------------------------------------


@pytest.fixture(scope="module")
def sick_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrlab.data import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("sick"), per_class=6, size=64,
                                   masks="infection", min_severity=1.0,
                                   progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def infection_run(sick_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrlab.segment.train import SegmentConfig, train_segmenter

    out = tmp_path_factory.mktemp("infrun") / "infection"
    cfg = SegmentConfig(data=str(sick_data), target="infection", image_size=64, epochs=2,
                        batch_size=8, threads=2, progress=False)  # fmt: skip
    card = train_segmenter(cfg, out)
    assert card.target == "infection" and card.task == "infection segmentation"
    return out


def test_synthetic_infection_masks_lie_in_the_lungs_and_only_covid_has_them(sick_data) -> None:
    from cxrlab.data import load_gray8

    for cls in ("COVID", "Normal", "Lung_Opacity"):
        sick = load_gray8(sick_data / cls / "infection masks" / f"{cls}-1.png") > 0
        lungs = load_gray8(sick_data / cls / "masks" / f"{cls}-1.png") > 0
        assert sick.any() == (cls == "COVID") and not (sick & ~lungs).any()


def test_infection_segmenter_trains_evaluates_and_writes_severity(
    infection_run: Path, sick_data: Path, tmp_path: Path, capsys
) -> None:
    from cxrlab.cli import main
    from cxrlab.segment.card import read_segmenter_card

    card = json.loads((infection_run / "segmenter_card.json").read_text())
    assert card["target"] == "infection" and card["training"]["config"]["target"] == "infection"
    test = card["test"]
    assert {"dice", "fp_area", "fp_under_aim", "spearman", "kappa"} <= set(test)
    assert read_segmenter_card(infection_run).target == "infection"
    # evaluate: the per-image rows agree with the summary
    assert main(["segment", "evaluate", str(infection_run), "--split", "all",
                 "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "Dice (infected)" in text and "FP area" in text
    folder = infection_run / "evaluation-all"
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = list(csv.DictReader((folder / "per_image.csv").open()))
    # every image of the run's own folder, less the 20 it trained on or chose its epoch by
    assert metrics["left_out_copies"]["exact"] == 20 and "20 copies of images" in text
    assert len(rows) == metrics["overall"]["n"] == 4 and metrics["target"] == "infection"
    infected = [float(r["dice"]) for r in rows if r["infected"] == "True"]
    covid = sum(r["label"] == "COVID" for r in rows)
    assert len(infected) == covid >= 1 and metrics["overall"]["dice"]["mean"] == pytest.approx(
        np.mean(infected)
    )
    fp = [float(r["fp_area"]) for r in rows if r["infected"] == "False"]
    assert metrics["overall"]["fp_under_aim"] == pytest.approx(np.mean([v < 0.01 for v in fp]))
    assert (folder / "worst.png").is_file()
    # predict with the dataset's own lung masks: infection masks and severity.csv
    out = tmp_path / "pred"
    assert main(["segment", "predict", str(infection_run), str(sick_data), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert "infection masks written" in capsys.readouterr().out
    sev = list(csv.DictReader((out / "severity.csv").open()))
    assert len(sev) == 24 and {"path", "infection_fraction", "right_lung_fraction",
                               "left_lung_fraction", "grade"} <= set(sev[0])  # fmt: skip
    for r in sev:
        if r["lungs"] == "ok":
            g = int(r["right_lung_grade"]) + int(r["left_lung_grade"])
            assert int(r["grade"]) == g and 0 <= float(r["infection_fraction"]) <= 1
            assert (out / r["infection_mask"]).is_file()
        else:
            assert r["grade"] == "" and r["infection_fraction"] == ""
    assert (out / "preview.png").is_file()


def test_infection_and_lung_segmenters_are_not_confused(
    infection_run: Path, sick_data: Path, tmp_path: Path, capsys
) -> None:
    from cxrlab.cli import main
    from cxrlab.data import scan_dataset
    from cxrlab.segment.apply import predicted_masks

    records = scan_dataset(sick_data, progress=False).records
    with pytest.raises(Exception, match="segments the infection, but a lung segmenter"):
        predicted_masks(sick_data, records, 64, infection_run, progress=False)
    # the CLI says it in one line
    assert main(["train", "--data", str(sick_data), "--lungs", "crop", "--masks-from",
                 str(infection_run), "--epochs", "1", "--image-size", "64", "--out",
                 str(tmp_path / "run"), "--no-progress"]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "segments the infection" in err and "Traceback" not in err
    # an infection segmenter with no lungs to keep the infection in
    bare = tmp_path / "bare"
    for path in sorted(sick_data.rglob("images/*.png"))[:8]:
        target = bare / path.parent.parent.name / "images" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    assert main(["segment", "predict", str(infection_run), str(bare), "--out",
                 str(tmp_path / "p"), "--no-progress"]) != 0  # fmt: skip
    assert "needs the lungs; give a lung segmenter (--lungs RUN)" in capsys.readouterr().err


def test_predicted_masks_beside_linked_images_are_found(tmp_path: Path) -> None:
    """'segment predict' links each image into its output and writes the mask beside the
    link: a mask-aware command reading that folder finds the mask there (not only beside the
    original)."""
    from cxrlab.data import decoded_masks, scan_dataset

    from conftest import random_gray, write_png

    for k, cls in enumerate(("COVID", "Normal")):
        src = tmp_path / "src" / cls / "images" / "a.png"
        write_png(src, random_gray(k))
        out = tmp_path / "out" / cls
        (out / "images").mkdir(parents=True)
        (out / "images" / "a.png").symlink_to(src)
        write_png(out / "masks" / "a.png", (_lungs(32) * 255).astype(np.uint8))
    report = scan_dataset(tmp_path / "out", progress=False)
    records = sorted(report.records, key=lambda r: r.path)
    masks = decoded_masks(report.root, records, 32, progress=False)
    assert masks.status == ("ok", "ok") and masks.files[1] == "Normal/masks/a.png"


def test_real_infection_masks_are_read_as_covid_qu_ex_drew_them(masks_root: Path) -> None:
    """COVID-QU-Ex: every COVID-19 image has infection, every other one an empty (valid)
    mask, each infection inside its lungs; severity gives every COVID-19 test image a grade."""
    from cxrlab.data import decoded_masks, prepare_data

    data = prepare_data(masks_root, image_size=64, progress=False)
    rows = data.split.indices("test")
    records = [data.split.records[i] for i in rows]
    sick = decoded_masks(data.report.root, records, 64, "infection", progress=False)
    lungs = decoded_masks(data.report.root, records, 64, "lung", progress=False)
    assert sick.valid.all() and lungs.valid.all()
    covid = np.array([r.label == "COVID-19" for r in records])
    has = sick.array.reshape(len(records), -1).any(1)
    assert covid.sum() == 100 and (has == covid).all()
    outside = (sick.array.astype(bool) & ~lungs.array.astype(bool)).sum() / sick.array.sum()
    assert outside < 0.01  # the release's infection lies in its lungs (a resizing rim aside)
    graded = [severity(lungs.array[k], sick.array[k]) for k in np.flatnonzero(covid)]
    assert sum(s.ok for s in graded) >= 95 and all(s.grade >= 1 for s in graded if s.ok)


def test_a_segmenter_with_the_lungs_as_context_uses_them_everywhere(
    sick_data: Path, lung_run: Path, tmp_path: Path, capsys
) -> None:
    import torch

    from cxrlab.cli import main
    from cxrlab.errors import CheckpointError, ConfigError
    from cxrlab.segment.card import read_segmenter_card
    from cxrlab.segment.evaluate import evaluate_segmenter
    from cxrlab.segment.model import load_segmenter, predict_probs
    from cxrlab.segment.train import SegmentConfig, train_segmenter

    with pytest.raises(ConfigError, match="for an infection segmenter"):
        SegmentConfig(target="lungs", context="lungs")
    out = tmp_path / "ctx"
    cfg = SegmentConfig(data=str(sick_data), target="infection", image_size=64, epochs=1,
                        batch_size=8, threads=2, decoder="full", context="lungs",
                        dice="batch", weights="none", progress=False)  # fmt: skip
    train_segmenter(cfg, out)
    card = read_segmenter_card(out)
    assert (card.decoder, card.context) == ("full", "lungs") and "256, 128" in card.architecture
    assert card.training.config.dice == "batch"
    model, _ = load_segmenter(out)
    assert model.net.decoder.blocks[0].conv1[0].out_channels == 256
    # the lung mask is an input: other lungs, other probabilities; none, a one-line refusal
    x = torch.full((1, 1, 64, 64), 120, dtype=torch.uint8)
    lungs = torch.zeros(1, 1, 64, 64)
    lungs[..., 10:50, 8:30] = 1
    with torch.no_grad():
        assert not torch.allclose(model(x, lungs), model(x, torch.zeros_like(lungs)))
    with pytest.raises(ConfigError, match="takes the lungs as context"):
        predict_probs(model, x[:, 0].numpy(), [0])
    # evaluate (reference lungs, and a lung segmenter's) and predict give it the lungs
    ref = evaluate_segmenter(out, split="all", out=tmp_path / "ref", progress=False)
    chain = evaluate_segmenter(out, split="all", lungs=lung_run, progress=False)
    assert ref["overall"]["n"] == chain["overall"]["n"] >= 1
    assert main(["segment", "predict", str(out), str(sick_data), "--out", str(tmp_path / "p"),
                 "--lungs", str(lung_run), "--no-progress"]) == 0  # fmt: skip
    assert (tmp_path / "p" / "severity.csv").is_file()
    # a card naming a decoder this cxrlab does not know
    raw = json.loads((out / "segmenter_card.json").read_text())
    (out / "segmenter_card.json").write_text(json.dumps(raw | {"decoder": "huge"}))
    with pytest.raises(CheckpointError, match="needs a newer cxrlab"):
        load_segmenter(out)


@pytest.fixture(scope="module")
def lung_run(sick_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrlab.segment.train import SegmentConfig, train_segmenter

    out = tmp_path_factory.mktemp("lungrun") / "lungs"
    train_segmenter(SegmentConfig(data=str(sick_data), image_size=64, epochs=2, batch_size=8,
                                  threads=2, progress=False), out)  # fmt: skip
    return out


def test_evaluate_the_whole_chain_with_a_lung_segmenters_lungs(
    infection_run: Path, lung_run: Path, tmp_path: Path
) -> None:
    from cxrlab.errors import CheckpointError
    from cxrlab.segment.evaluate import evaluate_segmenter

    ref = evaluate_segmenter(infection_run, split="all", out=tmp_path / "ref", progress=False)
    chain = evaluate_segmenter(infection_run, split="all", lungs=lung_run, progress=False)
    assert ref["lungs"] == "reference" and chain["lungs"] == str(lung_run)
    assert Path(chain["files"]["metrics"]).parent.name == "evaluation-all-predicted-lungs"
    assert [r["true_fraction"] for r in chain["images"]] == [
        r["true_fraction"] for r in ref["images"]
    ]  # the truth is the reference's either way
    doubtful = [r for r in chain["images"] if r["lungs"].startswith("predicted lungs")]
    assert all(r["pred_fraction"] is None for r in doubtful)
    with pytest.raises(CheckpointError, match="--lungs is for an infection segmenter"):
        evaluate_segmenter(lung_run, split="test", lungs=lung_run, progress=False)


def test_predict_and_serve_show_the_infection_beside_the_class(
    infection_run: Path, lung_run: Path, sick_data: Path, tmp_path: Path, capsys
) -> None:
    from cxrlab.app.service import ModelService
    from cxrlab.app.ui import results_html
    from cxrlab.cli import main
    from cxrlab.data import load_gray8
    from cxrlab.errors import CheckpointError
    from cxrlab.segment.reading import SEVERITY_COLUMNS, InfectionReader
    from cxrlab.training import train

    from conftest import tiny_config

    run = train(tiny_config(sick_data, epochs=1), tmp_path / "run").run_dir
    images = sorted(sick_data.glob("COVID/images/*.png"))[:3]
    # a run trained without a segmenter: the lungs must be named
    assert main(["predict", str(run), *map(str, images), "--infection", str(infection_run),
                 "--no-ood", "--no-progress"]) != 0  # fmt: skip
    assert "needs a lung segmenter" in capsys.readouterr().err
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *map(str, images), "--infection", str(infection_run),
                 "--masks-from", str(lung_run), "--no-ood", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and list(rows[0])[-len(SEVERITY_COLUMNS) :] == list(SEVERITY_COLUMNS)
    reader = InfectionReader(infection_run, lung_run)
    want = reader.read(load_gray8(images[0])).to_dict()
    got = rows[0]
    assert got["lungs"] == want["lungs"]
    if want["grade"] is None:
        assert got["grade"] == "" and got["infection_fraction"] == ""
    else:
        assert int(got["grade"]) == want["grade"]
        assert float(got["infection_fraction"]) == pytest.approx(want["infection_fraction"],
                                                                  abs=1e-5)  # fmt: skip
    # serve: the numbers in the JSON, the overlay in the page and the CSV's columns
    service = ModelService([run], masks_from=lung_run, infection=infection_run)
    outcome = service.classify_file(images[0], cam=False)
    assert outcome.error is None and outcome.infection == want
    assert outcome.infection_png.startswith(b"\x89PNG")
    data = outcome.to_dict(with_cam=True)
    assert data["infection"]["lungs"] == want["lungs"] and "overlay_png_base64" in data["infection"]
    assert "Infection" in results_html([outcome])
    header = service.to_csv([outcome]).splitlines()[0].split(",")
    assert header[-len(SEVERITY_COLUMNS) :] == list(SEVERITY_COLUMNS)
    with pytest.raises(CheckpointError, match="segments the lungs, but an infection segmenter"):
        InfectionReader(lung_run, infection_run)
    # an image with no lungs to find (blank, and of another size): no numbers, and why
    blank = reader.read(np.full((80, 120), 128, np.uint8)).to_dict()
    assert blank["grade"] is None and blank["lungs"].startswith("doubtful (")
