import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import CheckpointError, CxrlabError
from cxrlab.infer import export_model, gradcam, load
from cxrlab.models import create_model
from cxrlab.training import TrainConfig, train

from conftest import write_png


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("infer")
    data = write_synthetic_dataset(base / "ph", per_class=8, seed=4, size=48, progress=False)
    cfg = TrainConfig(data=str(data), model="resnet18", weights="none", image_size=32, epochs=1,
                      batch_size=8, progress=False, precision="fp32")  # fmt: skip
    train(cfg, base / "run")
    return base / "run"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(folder / f"a{i}.png", rng.integers(0, 256, (40, 50), dtype=np.uint8))
    write_png(folder / "deep" / "b.png", rng.integers(0, 256, (30, 30), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("ignored")
    return folder


def _read(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        return {r["path"]: [float(v) for k, v in r.items() if k.startswith("p_")]
                for r in csv.DictReader(f)}  # fmt: skip


def test_predict_files_folders_globs_and_bad_file(run: Path, inputs: Path, tmp_path: Path,
                                                  capsys) -> None:  # fmt: skip
    out = tmp_path / "preds.csv"
    args = [
        "predict",
        str(run),
        str(inputs / "deep"),
        str(inputs / "a*.png"),
        str(inputs / "broken.png"),
        str(inputs / "missing.png"),
        "--out",
        str(out),
    ]
    assert main(args) == 3  # some inputs were skipped
    err = capsys.readouterr().err
    assert "broken.png: " in err and "missing.png: no such file" in err
    rows = _read(out)
    assert len(rows) == 4  # a0..a2 and deep/b
    # every column it had, and the shift score and flag last
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["path", "pred", "p_COVID", "p_Lung_Opacity", "p_Normal",
                              "p_Viral Pneumonia", "ood_score", "ood"]  # fmt: skip
    assert all(float(r["ood_score"]) >= 0 and r["ood"] in ("0", "1") for r in table)
    # read from the prediction's own forward pass: the same as a pass of its own
    pred = load(run)
    pixels = np.stack([pred.to_pixels(r["path"]) for r in table])
    probs, (score, _) = pred.predict_with_ood(pixels)
    alone, _ = pred.ood(pixels)
    assert np.allclose(score, alone, atol=1e-5) and np.allclose(probs, pred.predict_pixels(pixels))
    assert np.allclose(score, [float(r["ood_score"]) for r in table], atol=1e-5)
    assert "look unlike the run's training data" in err
    for probs in rows.values():
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and len(probs) == 4
    # the Python API gives the same numbers as the CLI
    predictor = load(run)
    assert predictor.classes == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    for path, probs in rows.items():
        api = predictor.predict(path)
        assert list(api.values()) == pytest.approx(probs, abs=1e-5)
    from PIL import Image

    first = str(inputs / "a0.png")
    as_pil = predictor.predict(Image.open(first))
    as_array = predictor.predict(np.asarray(Image.open(first)))
    assert list(as_pil.values()) == pytest.approx(rows[first], abs=1e-5)
    assert list(as_array.values()) == pytest.approx(rows[first], abs=1e-5)
    # a folder with only good images exits 0
    assert main(["predict", str(run), str(inputs / "deep"), "--no-progress"]) == 0


def test_predict_reports_progress_per_image(run: Path, inputs: Path, monkeypatch) -> None:
    """The bar counts every image read and predicted or skipped, batch after batch."""
    import io

    from tqdm import tqdm

    import cxrlab.infer.predict as predict_module

    stream = io.StringIO()
    shown = {"disable": False, "file": stream, "mininterval": 0, "miniters": 1}
    monkeypatch.setattr(predict_module, "tqdm", lambda **kw: tqdm(**kw | shown))
    result = predict_module.predict_paths(load(run), [inputs], batch_size=2, progress=True)
    assert len(result.paths) == 4 and len(result.skipped) == 1
    text = stream.getvalue()
    assert "Predicting" in text and "5/5" in text and "2/5" in text


def test_predict_refuses_bad_run_folders(run: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path / "nope"), "x.png"]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"no model_card\.json"):
        load(broken)


def test_cam_highlights_the_deciding_quadrant(tmp_path: Path) -> None:
    """The class is the stripe direction in the top-left quadrant; the rest is shared noise.

    Whatever the model learned, only the top-left quadrant can decide the class, so its
    Grad-CAM must be strongest there.
    """
    rng = np.random.default_rng(0)
    size, half = 128, 64
    yy, xx = np.mgrid[:half, :half]
    for i in range(30):
        for cls in ("vertical", "horizontal"):
            img = rng.normal(110, 30, (size, size))
            coord = xx if cls == "vertical" else yy
            img[:half, :half] += 50 * np.sin(2 * np.pi * coord / 8 + rng.uniform(0, 2 * np.pi))
            write_png(tmp_path / "q" / cls / f"{i}.png", np.clip(img, 0, 255).astype(np.uint8))
    cfg = TrainConfig(data=str(tmp_path / "q"), model="resnet18", weights="none",
                      image_size=size, epochs=3, batch_size=16, progress=False,
                      precision="fp32")  # fmt: skip
    result = train(cfg, tmp_path / "run")
    assert result.metrics["accuracy"] >= 0.9
    predictor = load(tmp_path / "run")
    for cls in predictor.classes:
        images = sorted((tmp_path / "q" / cls).glob("*.png"))[:8]
        pixels = np.stack([predictor.to_pixels(p) for p in images])
        maps = gradcam(predictor.model.cpu(), pixels, predictor.classes.index(cls))
        assert maps.shape == (8, size, size) and np.isfinite(maps).all()
        quadrants = maps.reshape(8, 2, half, 2, half).mean(axis=(2, 4)).reshape(8, 4)
        assert (quadrants.argmax(axis=1) == 0).sum() >= 7, quadrants  # top-left strongest
        assert np.median(quadrants[:, 0] / quadrants[:, 1:].mean(axis=1)) > 1.2


def test_cam_works_for_vits() -> None:
    for name in ("vit_tiny", "vit_b_16"):
        model = create_model(name, 3, "none", image_size=32)
        maps = gradcam(model, np.random.default_rng(0).integers(0, 256, (2, 32, 32), np.uint8))
        assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()


@pytest.mark.parametrize(
    "fmt,suffix", [("onnx", ".onnx"), ("exported", ".pt2"), ("torchscript", ".pt")]
)
def test_export_parity_and_onnx_predict(run: Path, inputs: Path, tmp_path: Path, fmt: str,
                                        suffix: str, capsys) -> None:  # fmt: skip
    out = tmp_path / f"model{suffix}"
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["input"] == {**meta["input"], "name": "image", "dtype": "uint8",
                             "shape": ["N", 1, 32, 32]}  # fmt: skip
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["parity"]["max_abs_diff"] <= 1e-4
    card = json.loads((run / "model_card.json").read_text())
    assert meta["calibration"]["temperature"] == card["calibration"]["temperature"]
    if fmt == "exported":  # PyTorch alone runs it, at any batch size
        import torch

        program = torch.export.load(str(out)).module()
        for n in (1, 3):
            with torch.no_grad():
                probs = program(torch.full((n, 1, 32, 32), 128, dtype=torch.uint8))
            assert probs.shape == (n, len(card["classes"]))
            assert probs.sum(1).numpy() == pytest.approx(np.ones(n), abs=1e-5)
    if fmt == "onnx":
        capsys.readouterr()
        assert (
            main(["predict", str(out), str(inputs / "deep"), "--out", str(tmp_path / "o.csv")]) == 0
        )
        assert (
            main(["predict", str(run), str(inputs / "deep"), "--out", str(tmp_path / "t.csv")]) == 0
        )
        onnx_probs, torch_probs = _read(tmp_path / "o.csv"), _read(tmp_path / "t.csv")
        # an export carries no shift reference: its ood columns stay empty, and it says why
        assert "ood_score left empty: an ONNX export" in capsys.readouterr().err
        with open(tmp_path / "o.csv", newline="") as f:
            assert {(r["ood_score"], r["ood"]) for r in csv.DictReader(f)} == {("", "")}
        for path in torch_probs:
            assert onnx_probs[path] == pytest.approx(torch_probs[path], abs=1e-4)
        # one self-contained file: no external weights beside it, and it loads alone
        assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.json", "model.onnx"]
        alone = tmp_path / "copied" / "m.onnx"
        alone.parent.mkdir()
        alone.write_bytes(out.read_bytes())
        p = load(alone)
        assert p.classes == card["classes"] and p.image_size == 32
        assert p.card is None and p.exported is not None
        assert p.card_data()["calibration"]["temperature"] == card["calibration"]["temperature"]
        probe = next(iter(torch_probs))
        assert list(p.predict(probe).values()) == pytest.approx(torch_probs[probe], abs=1e-4)
        foreign = tmp_path / "foreign.onnx"
        import onnx

        bare = onnx.load(str(out))
        del bare.metadata_props[:]
        onnx.save_model(bare, str(foreign))
        with pytest.raises(CheckpointError, match="not exported by 'cxrlab export'"):
            load(foreign)
        (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
        with pytest.raises(CheckpointError, match="not a readable ONNX model"):
            load(tmp_path / "junk.onnx")
    with pytest.raises(CxrlabError, match="--format"):
        export_model(run, "tflite", tmp_path / "x")


def test_runs_are_calibrated_on_validation(run: Path, inputs: Path) -> None:
    """Temperature scaling: fitted on the validation split, never worse there, stored in the
    card and applied by the predictor without changing a predicted class."""
    metrics = json.loads((run / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0
    assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9
    assert cal["test_ece_before"] == pytest.approx(metrics["ece"])
    assert (run / "reliability.png").is_file()
    card = json.loads((run / "model_card.json").read_text())
    assert card["calibration"]["temperature"] == cal["temperature"]
    predictor = load(run, device="cpu")
    pixels = np.stack([predictor.to_pixels(p) for p in sorted((inputs).glob("a*.png"))])
    calibrated = predictor.predict_pixels(pixels)
    predictor.temperature = 1.0
    raw = predictor.predict_pixels(pixels)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    logits = np.log(raw)
    expected = np.exp(logits / cal["temperature"])
    assert calibrated == pytest.approx(expected / expected.sum(1, keepdims=True), abs=1e-5)


def test_ensembles_average_their_members(run: Path, inputs: Path, tmp_path: Path,
                                         capsys) -> None:  # fmt: skip
    """Two copies of one run average to that run; ensembles work wherever a run does."""
    import shutil

    from cxrlab.runs import evaluate_run
    from cxrlab.runs.ensemble import is_ensemble, write_ensemble

    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    ens = write_ensemble([run, twin], tmp_path / "ens")
    assert is_ensemble(ens) and not is_ensemble(run)
    card = json.loads((ens / "model_card.json").read_text())
    assert [m["seed"] for m in card["members"]] == [0, 0] and card["classes"]
    images = sorted(inputs.glob("a*.png"))
    single, both = load(run, device="cpu"), load(ens, device="cpu")
    assert both.predict_many(images) == pytest.approx(single.predict_many(images), abs=1e-6)
    assert load([run, twin], device="cpu").predict(images[0]) == pytest.approx(
        single.predict(images[0]), abs=1e-6)  # fmt: skip
    one, avg = evaluate_run(run, progress=False), evaluate_run(ens, progress=False)
    assert avg["accuracy"] == one["accuracy"] and len(avg["members"]) == 2
    meta = export_model(ens, "onnx", tmp_path / "ens.onnx")
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and len(meta["members"]) == 2
    assert main(["predict", str(run), str(images[0]), "--with", str(twin)]) == 0
    # an ensemble's shift score: its members' mean, flagged at its own validation threshold
    score, flag = both.ood(np.stack([both.to_pixels(i) for i in images]))
    a, _ = single.ood(np.stack([single.to_pixels(i) for i in images]))
    assert score.shape == flag.shape == (len(images),) and np.allclose(score, a)  # twin = run
    assert main(["evaluate", str(run), str(twin), "--no-progress"]) == 0
    assert "Ensemble of 2 runs" in capsys.readouterr().out
    assert main(["predict", str(ens), str(images[0]), "--cam", str(tmp_path / "c")]) == 2
    assert "not an ONNX file or an ensemble" in capsys.readouterr().err
    # members must agree on classes, input size and split
    other = tmp_path / "other"
    shutil.copytree(run, other)
    card = json.loads((other / "model_card.json").read_text())
    card["preprocessing"]["image_size"] = 64
    (other / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="input size"):
        write_ensemble([run, other], tmp_path / "bad")
