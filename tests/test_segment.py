"""Lung-segmentation building blocks: mask metrics against direct computations, and the
post-processing and verdict on planted defects."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cxrlab.segment import boundary, clean_mask, dice, hausdorff95, iou, judge_mask, mask_scores


def _square(y: int, x: int, side: int, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[y : y + side, x : x + side] = 1
    return m


def test_dice_and_iou_of_overlapping_squares() -> None:
    a, b = _square(10, 10, 10), _square(10, 15, 10)  # 50 of 100 pixels shared
    assert dice(a, b) == pytest.approx(0.5) and iou(a, b) == pytest.approx(50 / 150)
    assert dice(a, a) == 1 and iou(a, a * 255) == 1
    assert dice(a, np.zeros_like(a)) == 0 and iou(np.zeros_like(a), a) == 0
    empty = np.zeros_like(a)
    assert mask_scores(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert mask_scores(a, empty)["hd95"] is None


def test_hausdorff95_of_a_shift_and_against_brute_force() -> None:
    a, b = _square(20, 20, 20), _square(20, 23, 20)  # the same square 3 px to the right
    assert hausdorff95(a, b) == pytest.approx(3.0)
    assert hausdorff95(a, a) == 0
    # random blobs: the 95th percentiles of all boundary-to-boundary distances, directly
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = ndi.gaussian_filter(rng.normal(size=(48, 48)), 4) > 0.05
        r = ndi.gaussian_filter(rng.normal(size=(48, 48)), 4) > 0.05
        pa, pb = np.argwhere(boundary(p)), np.argwhere(boundary(r))
        d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
        want = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
        assert hausdorff95(p, r) == pytest.approx(want)


def test_boundary_is_the_inner_edge() -> None:
    edge = boundary(_square(2, 2, 4, size=8))
    assert edge.sum() == 12 and not edge[3:5, 3:5].any()  # 4x4 square: 12 edge, 4 inside
    assert boundary(np.ones((3, 3))).sum() == 8  # the image's edge is a boundary


def _lungs(size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[12:52, 8:28] = 1  # right lung
    m[12:48, 36:56] = 1  # left lung
    return m


def test_clean_mask_keeps_two_lungs_and_fills_holes() -> None:
    prob = _lungs()
    prob[30:34, 15:19] = 0  # a hole in one lung
    prob[2:5, 2:5] = 0.9  # a speck outside
    prob[58:62, 30:34] = 0.95  # and another
    clean = clean_mask(prob)
    assert clean.dtype == np.uint8 and set(np.unique(clean)) == {0, 1}
    assert ndi.label(clean)[1] == 2
    assert clean[30:34, 15:19].all()  # hole filled
    assert not clean[2:5, 2:5].any() and not clean[58:62, 30:34].any()  # specks dropped
    assert np.array_equal(clean, _lungs().astype(np.uint8))
    assert not clean_mask(np.zeros((8, 8))).any()


def test_mask_verdicts_on_planted_defects() -> None:
    good = judge_mask(_lungs(), _lungs())
    assert good.ok and good.lungs == 2 and 0.05 < good.area < 0.6
    one = _lungs()
    one[:, 32:] = 0
    assert "not two lungs" in judge_mask(one).reasons[0]
    small = _lungs()
    small[:, 12:] = 0  # 4 % of the image
    small[12:14, 20:22] = 1  # a token second region
    reasons = " ".join(judge_mask(clean_mask(small)).reasons)
    assert "outside 5%-60%" in reasons and "not two lungs" in reasons
    assert judge_mask(np.zeros((64, 64))).reasons == ("empty mask",)
    unsure = judge_mask(_lungs(), _lungs() * 0.55)  # the segmenter hesitated everywhere
    assert not unsure.ok and "low confidence" in unsure.reasons[0]
    assert unsure.to_dict()["ok"] is False


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory):
    from cxrlab.data import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("seg"), per_class=6, size=64,
                                   masks=True, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def seg_run(masked, tmp_path_factory: pytest.TempPathFactory):
    from cxrlab.segment.train import SegmentConfig, train_segmenter

    out = tmp_path_factory.mktemp("segrun") / "lungs"
    cfg = SegmentConfig(data=str(masked), image_size=64, epochs=2, batch_size=8, threads=2,
                        progress=False)  # fmt: skip
    card = train_segmenter(cfg, out)
    return out, card


def test_segment_train_writes_a_run_with_a_card(seg_run) -> None:
    import json

    out, _ = seg_run
    for name in ("model.safetensors", "segmenter_card.json", "history.csv", "split.csv",
                 "metrics.json"):  # fmt: skip
        assert (out / name).is_file(), name
    saved = json.loads((out / "segmenter_card.json").read_text())
    assert saved["format"] == "cxrlab-segmenter/1" and saved["encoder"] == "efficientnet_lite0"
    assert saved["weights"].startswith("imagenet") and saved["training"]["best_epoch"] in (1, 2)
    assert saved["data"]["images"]["train"] > 0 and 0 <= saved["test"]["dice"]["mean"] <= 1
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_dice") and len(rows) == 3


def test_dice_loss_per_image_and_over_the_batch_against_direct_computations() -> None:
    """Two 1x2 images: one with a mask on its first pixel, called 0.8 and 0.2; one empty,
    called 0.5 everywhere."""
    import torch

    from cxrlab.segment.train import _dice_loss

    p = torch.tensor([[[[0.8, 0.2]]], [[[0.5, 0.5]]]])
    t = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    logits = torch.logit(p)
    per_image = ((1 - (2 * 0.8 + 1) / (1.0 + 1 + 1)) + (1 - 1 / (1.0 + 0 + 1))) / 2
    batch = 1 - (2 * 0.8 + 1) / (2.0 + 1 + 1)
    assert _dice_loss(logits, t).item() == pytest.approx(per_image)
    assert _dice_loss(logits, t, "batch").item() == pytest.approx(batch)


def test_segmenter_weight_average_is_what_is_validated_and_kept(masked, tmp_path) -> None:
    """--ema: training is the same, the average is validated and saved, and the card says so."""
    import torch

    from cxrlab.errors import ConfigError
    from cxrlab.segment.card import read_segmenter_card
    from cxrlab.segment.model import load_segmenter
    from cxrlab.segment.train import SegmentConfig, train_segmenter

    cfg = SegmentConfig(data=str(masked), image_size=64, epochs=1, batch_size=8, threads=2,
                        weights="none", progress=False)  # fmt: skip
    train_segmenter(cfg, tmp_path / "plain")
    train_segmenter(dataclasses.replace(cfg, ema=0.5), tmp_path / "ema")
    plain, ema = ((tmp_path / n / "history.csv").read_text().splitlines()[1].split(",")
                  for n in ("plain", "ema"))  # fmt: skip
    assert plain[1] == ema[1] and plain[2] != ema[2]  # same training loss, other validation
    assert read_segmenter_card(tmp_path / "ema").training.config.ema == 0.5
    a, _ = load_segmenter(tmp_path / "plain")
    b, _ = load_segmenter(tmp_path / "ema")
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                      b.state_dict().values()))  # fmt: skip
    with pytest.raises(ConfigError, match="ema"):
        SegmentConfig(ema=1.0)


def test_segmenter_card_is_typed_read_once_and_refuses_what_it_cannot_read(
    seg_run, tmp_path: Path
) -> None:
    """The card round-trips through its typed form unchanged; a card of the first format
    written before it was typed reads; a newer format, another kind of card, a card missing
    a field and a classifier's run are each refused with one line."""
    import json

    from cxrlab.errors import CheckpointError
    from cxrlab.segment.card import SegmentConfig, SegmenterCard, read_segmenter_card

    out, card = seg_run
    raw = json.loads((out / "segmenter_card.json").read_text())
    typed = read_segmenter_card(out)
    assert typed == card and typed.to_dict() == raw and not typed.partial
    assert isinstance(typed.training.config, SegmentConfig) and typed.image_size == 64
    assert typed.training.config.image_size == 64 and typed.test_dice == raw["test"]["dice"]["mean"]
    cases = {
        "newer": ({**raw, "format": "cxrlab-segmenter/2"}, "newer cxrlab"),
        "other": ({**raw, "format": "cxrlab-model-card/1"}, "not a cxrlab segmenter card"),
        "field": ({k: v for k, v in raw.items() if k != "encoder"}, "not a readable"),
        "config": ({**raw, "training": {**raw["training"], "config": {"lr": "x"}}}, "lr"),
    }
    for name, (bad, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "segmenter_card.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=message):
            read_segmenter_card(folder)
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "model_card.json").write_text("{}")
    with pytest.raises(CheckpointError, match="is a classifier run, not a lung segmenter"):
        read_segmenter_card(tmp_path / "clf")
    partial = SegmenterCard.from_dict({k: raw[k] for k in ("format", "encoder", "preprocessing")}
                                      | {"partial": True})  # fmt: skip
    assert partial.partial and partial.data is None and partial.test_dice is None


def test_segment_train_options_are_segment_configs_fields() -> None:
    """Every SegmentConfig field is an option of 'cxrlab segment train' (encoder and
    split_seed were once left out), with the field's default."""
    import dataclasses

    import typer.main

    from cxrlab.cli import app
    from cxrlab.segment.card import SegmentConfig

    group = typer.main.get_command(app).commands["segment"]  # type: ignore[attr-defined]
    params = {p.name: p for p in group.commands["train"].params}
    for f in dataclasses.fields(SegmentConfig):
        assert f.name in params, f.name
        assert params[f.name].default == f.default, f.name


def test_segment_evaluate_matches_its_per_image_scores(seg_run, masked, capsys) -> None:
    from cxrlab.cli import main
    from cxrlab.segment.evaluate import evaluate_segmenter

    out, card = seg_run
    r = evaluate_segmenter(out, progress=False)
    per = r["images"]
    assert r["overall"]["n"] == len(per) == card.data.images["test"]
    assert r["overall"]["dice"]["mean"] == pytest.approx(np.mean([p["dice"] for p in per]))
    assert r["overall"]["dice"]["mean"] == pytest.approx(card.test_dice)
    for cls, block in r["per_class"].items():
        mine = [p["dice"] for p in per if p["label"] == cls]
        assert block["dice"]["mean"] == pytest.approx(np.mean(mine))
    assert (out / "evaluation-test" / "worst.png").is_file()
    assert main(["segment", "evaluate", str(out), "--no-progress"]) == 0
    assert "Dice" in capsys.readouterr().out


def test_segment_evaluate_leaves_out_copies_of_what_it_saw(seg_run, masked, tmp_path) -> None:
    """Scored on another copy of its data, every training image re-saved cropped and resized
    (a near copy, another hash): those and the exact copies of its validation images are
    left out; only its test images are scored."""
    import shutil

    from PIL import Image

    from cxrlab.data import load_split
    from cxrlab.segment.evaluate import evaluate_segmenter

    out, card = seg_run
    other = tmp_path / "other"
    shutil.copytree(masked, other)
    split = load_split(out / "split.csv")
    for rec, part in zip(split.records, split.assignment):
        if part == "train":
            path = other / rec.path
            img = Image.open(path)
            w, h = img.size
            img.crop((1, 1, w - 1, h - 1)).resize((w, h), Image.BILINEAR).save(path)
    r = evaluate_segmenter(out, other, split="all", out=tmp_path / "ev", progress=False)
    n = card.data.images
    assert r["left_out_copies"] == {"exact": n["val"], "near": n["train"], "note": ""}
    assert r["overall"]["n"] == n["test"]
    assert {p["path"] for p in r["images"]} == {
        rec.path for rec, part in zip(split.records, split.assignment) if part == "test"
    }


def test_segment_predict_writes_a_masked_dataset(seg_run, masked, tmp_path, capsys) -> None:
    import csv

    from cxrlab.cli import main
    from cxrlab.data import decoded_masks, scan_dataset

    out, _ = seg_run
    pred = tmp_path / "pred"
    assert main(["segment", "predict", str(out), str(masked), "--out", str(pred),
                 "--doubtful", "keep", "--no-progress"]) == 0  # fmt: skip
    assert "24 of 24 masks written" in capsys.readouterr().out
    rows = list(csv.DictReader((pred / "masks.csv").open()))
    assert len(rows) == 24 and all(r["mask"] for r in rows)
    assert (pred / "preview.png").is_file() and (pred / "segmenter.json").is_file()
    # the same verdicts as the masks training and the audit take from this segmenter
    from cxrlab.segment.apply import predicted_masks

    source = scan_dataset(masked, progress=False)
    records = sorted(source.records, key=lambda r: r.path)
    same = predicted_masks(source.root, records, 64, out, progress=False)
    assert [s == "ok" for s in same.status] == [r["ok"] == "True" for r in rows]
    report = scan_dataset(pred, progress=False)
    assert len(report.records) == 24  # the images, linked at their own paths
    masks = decoded_masks(report.root, report.records, 64, progress=False)
    ok = {r["path"] for r in rows if r["ok"] == "True"}
    assert sum(s == "ok" for s in masks.status) >= len(ok)  # every kept mask is readable
    # doubtful masks are not put beside their images unless asked: never used silently
    skip = tmp_path / "skip"
    assert main(["segment", "predict", str(out), str(masked), "--out", str(skip),
                 "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    bad = [r for r in rows if r["ok"] == "False"]
    assert f"{len(bad)} doubtful (not used)" in text
    for r in bad:
        assert not (skip / r["path"].replace("/images/", "/masks/")).with_suffix(".png").exists()


def test_segmenter_and_classifier_runs_are_not_confused(seg_run, tmp_path, capsys) -> None:
    from cxrlab.cli import main
    from cxrlab.training import train

    from conftest import tiny_config

    out, _ = seg_run
    assert main(["evaluate", str(out)]) == 2
    assert "is a lung segmenter run, not a classifier" in capsys.readouterr().err
    clf = tmp_path / "clf"
    train(tiny_config(seg_run[1].data.root, epochs=1), clf)
    assert main(["segment", "evaluate", str(clf)]) == 2
    assert "is a classifier run, not a lung segmenter" in capsys.readouterr().err
    assert main(["segment", "predict", str(clf), str(tmp_path), "--out", str(tmp_path / "p")]) == 2


def test_segment_train_refuses_data_without_masks(tmp_path, capsys) -> None:
    from cxrlab.cli import main

    from conftest import make_kaggle_db

    db = make_kaggle_db(tmp_path, per_class=4)  # its masks are empty: no valid lung mask
    assert main(["segment", "train", "--data", str(db), "--out", str(tmp_path / "r"),
                 "--image-size", "32", "--epochs", "1", "--no-progress"]) == 2  # fmt: skip
    assert "has a valid lung mask" in capsys.readouterr().err


def test_masks_from_a_segmenter_for_data_without_masks(seg_run, masked, tmp_path,
                                                       monkeypatch, capsys) -> None:  # fmt: skip
    """--lungs remove on images without mask files, with a segmenter's masks: doubtful masks
    are refused in one line; accepted ones train a run whose card names the segmenter, and
    evaluate runs the same segmenter to reproduce the run's test metrics."""
    import json
    import shutil

    import cxrlab.segment.apply as apply
    from cxrlab.cli import main
    from cxrlab.runs import evaluate_run
    from cxrlab.segment.masks import MaskVerdict
    from cxrlab.training import train

    from conftest import tiny_config

    out, _ = seg_run
    bare = tmp_path / "bare"
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        shutil.copytree(masked / cls / "images", bare / cls / "images")  # no masks
    args = ["train", "--data", str(bare), "--lungs", "remove", "--masks-from", str(out),
            "--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1",
            "--precision", "fp32", "--no-progress", "--out", str(tmp_path / "r0")]  # fmt: skip
    # a segmenter trained for two epochs on 16 phantoms draws implausible masks: refused
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs a valid lung mask" in err and "doubtful" in err
    assert main(["keep" if a == "remove" else a for a in args]) == 2  # nothing uses them
    assert "masks_from gives lung masks" in capsys.readouterr().err
    # judged plausible (as a better segmenter's would be): used, recorded and reproduced
    monkeypatch.setattr(apply, "judge_mask", lambda m, p=None: MaskVerdict(0.3, 2, 1.0, 0.0))
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))  # the verdicts are cached
    cfg = tiny_config(bare, lungs="remove", masks_from=str(out), epochs=1)
    run = train(cfg, tmp_path / "r1").run_dir
    card = json.loads((run / "model_card.json").read_text())
    assert card["data"]["masks_from"]["run"] == str(out.resolve())
    own = json.loads((run / "metrics.json").read_text())
    m = evaluate_run(run, progress=False)
    assert m["lungs"] == "remove" and m["confusion_matrix"] == own["confusion_matrix"]
    assert main(["evaluate", str(run), "--data", str(masked), "--split", "all",
                 "--no-progress"]) == 0  # fmt: skip
    # the audit takes a segmenter for data without masks
    assert main(["audit", str(tmp_path / "r1"), "--check", "lungs", "--masks-from", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert "lungs: skipped: the model was trained with lungs remove" in capsys.readouterr().out


def test_runs_carry_their_lungs_everywhere(seg_run, masked, tmp_path, monkeypatch,
                                           capsys) -> None:  # fmt: skip
    """A run trained with each lungs mode on a segmenter's masks is scored alike by evaluate,
    predict and serve (which run the recorded segmenter on whole images, one at a time), and
    export refuses it in one line. Doubtful masks are skipped with the reason unless kept,
    and a crop to nothing is never made."""
    import csv
    import json
    import shutil

    import cxrlab.segment.apply as apply
    from cxrlab.app.service import ModelService
    from cxrlab.cli import main
    from cxrlab.errors import CheckpointError
    from cxrlab.infer import load
    from cxrlab.runs import evaluate_run
    from cxrlab.segment.masks import MaskVerdict
    from cxrlab.training import train

    from conftest import tiny_config

    out, _ = seg_run
    bare = tmp_path / "bare"
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        shutil.copytree(masked / cls / "images", bare / cls / "images")  # no masks
    monkeypatch.setattr(apply, "judge_mask", lambda m, p=None: MaskVerdict(0.3, 2, 1.0, 0.0))
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    runs = {}
    for lungs in ("remove", "only", "crop"):
        cfg = tiny_config(bare, lungs=lungs, masks_from=str(out), epochs=1, calibrate=False,
                          ratios=(0.5, 0.1, 0.4))  # fmt: skip
        run = runs[lungs] = train(cfg, tmp_path / lungs).run_dir
        rows = list(csv.DictReader((run / "predictions.csv").open()))
        own = np.array([[float(r[f"p_{c}"]) for c in cfg_classes(run)] for r in rows])
        m = evaluate_run(run, progress=False)
        saved = json.loads((run / "metrics.json").read_text())
        assert m["lungs"] == lungs and m["confusion_matrix"] == saved["confusion_matrix"]
        predictor = load(run, device="cpu")
        assert predictor.describe()["lungs"]["mode"] == lungs
        got = predictor.predict_many([bare / r["path"] for r in rows])
        np.testing.assert_allclose(got, own, atol=2e-4)  # image by image, as in training
        served = ModelService([run]).classify_file(bare / rows[0]["path"], cam=True)
        probs = served.outputs[0].probs
        assert list(probs.values()) == pytest.approx(list(own[0]), abs=2e-4)
        assert served.outputs[0].cam_png is not None
        assert main(["export", str(run), "--out", str(tmp_path / f"{lungs}.onnx")]) == 2
        assert "cannot run inside it" in capsys.readouterr().err
    image = str(bare / rows[0]["path"])
    # members that prepare images differently cannot share one input
    with pytest.raises(CheckpointError, match="lungs"):
        load([runs["remove"], runs["crop"]])
    # a doubtful mask: the image is skipped with the reason (exit 3), or kept when asked
    doubt = MaskVerdict(0.01, 1, 0.0, 0.0, ("area 1% outside 5%-60%",))
    monkeypatch.setattr(apply, "judge_mask", lambda m, p=None: doubt)
    assert main(["predict", str(runs["remove"]), image, "--no-progress"]) == 3
    assert "lung mask doubtful (area 1% outside 5%-60%)" in capsys.readouterr().err
    assert main(["predict", str(runs["remove"]), image, "--doubtful", "keep",
                 "--no-progress"]) == 0  # fmt: skip
    outcome = ModelService([runs["only"]]).classify_file(image)
    assert outcome.error and "lung mask doubtful" in outcome.error
    # an empty mask, even when kept, is never cropped to
    monkeypatch.setattr(apply, "clean_mask", lambda prob: np.zeros(prob.shape, np.uint8))
    assert main(["predict", str(runs["crop"]), image, "--doubtful", "keep",
                 "--no-progress"]) == 3  # fmt: skip
    assert "too small to crop to" in capsys.readouterr().err
    # a run trained on mask files needs a segmenter for whole images; a vanished one is named
    card_path = runs["remove"] / "model_card.json"
    card = json.loads(card_path.read_text())
    card["data"]["masks_from"] = None
    card_path.write_text(json.dumps(card))
    assert main(["predict", str(runs["remove"]), image]) == 2
    assert "on mask files, and whole images have none" in capsys.readouterr().err
    assert load(runs["remove"], masks_from=out).lungs.segmenter == out
    card["data"]["masks_from"] = {"run": str(tmp_path / "gone"), "weights": "x"}
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="gone does not exist: pass --masks-from"):
        load(runs["remove"])


def cfg_classes(run) -> list[str]:
    import json

    return json.loads((run / "model_card.json").read_text())["classes"]


def test_training_skips_images_without_a_valid_mask_when_asked(seg_run, masked, tmp_path,
                                                               monkeypatch) -> None:  # fmt: skip
    """--doubtful skip leaves images whose predicted mask is doubtful out before the split,
    warns, counts them in the card; evaluate opens the same images and reproduces the run."""
    import json
    import shutil

    import cxrlab.segment.apply as apply
    from cxrlab.runs import evaluate_run
    from cxrlab.segment.masks import MaskVerdict
    from cxrlab.training import train

    from conftest import tiny_config

    out, _ = seg_run
    bare = tmp_path / "bare"
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        shutil.copytree(masked / cls / "images", bare / cls / "images")
    doubtful = {p.name for p in sorted(bare.rglob("*.png"))[::5]}  # 5 of 24 planted doubtful
    seen = iter(range(10_000))

    def judge(mask, prob=None):  # the segmenter judges images in scan order (sorted paths)
        i = next(seen)
        return MaskVerdict(0.3, 2, 1.0, 0.0, ("planted",) if i % 5 == 0 else ())

    monkeypatch.setattr(apply, "judge_mask", judge)
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(bare, lungs="crop", masks_from=str(out), epochs=1, doubtful="skip")
    with pytest.warns(UserWarning, match=r"5 of 24 images left out for want of a valid lung"):
        run = train(cfg, tmp_path / "r").run_dir
    card = json.loads((run / "model_card.json").read_text())
    assert card["data"]["left_out"] == len(doubtful) == 5 and card["data"]["doubtful"] == "skip"
    kept = (run / "split.csv").read_text()
    assert kept.count("\n") == 2 + 19 and not any(name in kept for name in doubtful)
    # the split is the one a run keeping the lungs draws, less the images left out
    from cxrlab.data import load_split, prepare_data

    whole = prepare_data(bare, image_size=32, progress=False).split
    mine = load_split(run / "split.csv")
    gone = {r.path for r in whole.records if r.path.rsplit("/", 1)[-1] in doubtful}
    assert len(gone) == 5 and mine.assignment == whole.without(gone).assignment
    saved = json.loads((run / "metrics.json").read_text())
    m = evaluate_run(run, progress=False)  # the cached verdicts: the same 19 images
    assert m["confusion_matrix"] == saved["confusion_matrix"]
