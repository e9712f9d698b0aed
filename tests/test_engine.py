import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from cxrlab.runs import evaluate_run, load_run_model
from cxrlab.training import TrainConfig, train

from conftest import random_gray, tiny_config, write_png


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return write_synthetic_dataset(out, per_class=10, seed=1, size=48, progress=False)


def tiny(data: Path, **kw) -> TrainConfig:
    return tiny_config(data, **kw)


def test_run_folder_contents(phantoms: Path, tmp_path: Path) -> None:
    result = train(tiny(phantoms, freeze="0.5"), tmp_path / "run")
    run = tmp_path / "run"
    for name in (
        "config.json",
        "split.csv",
        "history.csv",
        "metrics.json",
        "model.safetensors",
        "model_card.json",
        "loss.png",
        "confusion_matrix.png",
    ):
        assert (run / name).is_file(), name
    assert not (run / "checkpoint.pt").exists()
    m = json.loads((run / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "per_class",
        "auroc",
        "ece",
        "confusion_matrix",
    ):
        assert key in m
    assert np.sum(m["confusion_matrix"]) == m["n"] == 4  # 1 test image per class (10 x 0.15)
    assert 0 < m["train_seconds"] < m["wall_seconds"]
    assert set(m["per_class"]) == {"COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"}
    preds = (run / "predictions.csv").read_text().splitlines()
    assert preds[0] == "path,label,pred,p_COVID,p_Lung_Opacity,p_Normal,p_Viral Pneumonia"
    assert len(preds) == 1 + 4
    lines = (run / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s"
    assert len(lines) == 3 and len(result.history) == 2
    card = json.loads((run / "model_card.json").read_text())
    assert card["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert card["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert card["preprocessing"]["channel_mode"] == "repeat"
    assert card["freeze"]["policy"] == "0.5" and card["freeze"]["bn"] == "frozen"
    assert card["freeze"]["frozen_units"] == ["stem", "layer1.0", "layer1.1", "layer2.0"]
    assert card["data"]["split_hash"] and card["data"]["data_hash"]
    assert card["versions"]["torch"] == torch.__version__
    assert card["training"]["seed"] == 0
    # the saved model reproduces the reported test accuracy
    again = evaluate_run(run, progress=False)
    assert again["accuracy"] == m["accuracy"] and again["confusion_matrix"] == m["confusion_matrix"]


def test_evaluate_at_another_input_size(phantoms: Path, tmp_path: Path) -> None:
    """``image_size`` tests a run at another size (FixRes's test-time half): the images are
    prepared at that size, the model sees them, and a fixed-size model is refused."""
    from types import SimpleNamespace

    from cxrlab.errors import CheckpointError
    from cxrlab.runs.evaluate import _check_any_size

    train(tiny(phantoms), tmp_path / "run")
    own = evaluate_run(tmp_path / "run", split="val", progress=False)
    same = evaluate_run(tmp_path / "run", split="val", image_size=32, progress=False)
    larger = evaluate_run(tmp_path / "run", split="val", image_size=48, progress=False)
    assert own["image_size"] == same["image_size"] == 32 and larger["image_size"] == 48
    assert same["nll"] == own["nll"] and larger["nll"] != own["nll"]
    assert larger["n"] == own["n"]
    vit = SimpleNamespace(member_cards=[SimpleNamespace(model="vit_tiny")], classes=["a", "b"],
                          image_size=32)  # fmt: skip
    _check_any_size(vit, 32)
    with pytest.raises(CheckpointError, match="takes only the input size it was trained at"):
        _check_any_size(vit, 48)
    with pytest.raises(CheckpointError, match="at least 32"):
        _check_any_size(vit, 16)


def test_a_run_still_training_is_not_scored(phantoms: Path, tmp_path: Path) -> None:
    """While a run trains, its folder already holds a card and the best epoch's weights; a
    command that scores, predicts or audits it refuses in one line instead of silently
    using the half-trained model."""
    import shutil

    import cxrlab
    from cxrlab.errors import CheckpointError

    train(tiny(phantoms), tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "busy")
    (tmp_path / "busy" / "metrics.json").unlink()
    (tmp_path / "busy" / "checkpoint.pt").write_bytes(b"")
    for use in (lambda r: evaluate_run(r, progress=False), load_run_model, cxrlab.load):
        with pytest.raises(CheckpointError, match="has not finished training"):
            use(tmp_path / "busy")
    assert evaluate_run(tmp_path / "run", progress=False)["n"] == 4


def test_resume_after_sigterm_matches_uninterrupted(phantoms: Path, tmp_path: Path) -> None:
    cfg = tiny(phantoms, augment="light", scheduler="cosine", warmup_epochs=1, epochs=3)
    full = train(cfg, tmp_path / "full")

    def kill_mid_epoch(epoch: int, step: int, model) -> None:
        if (epoch, step) == (1, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(cfg, tmp_path / "cut", on_step=kill_mid_epoch)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state"]
    assert saved["wall_seconds"] > 0  # the first session's time, carried into the resumed run
    with pytest.raises(ConfigError, match="interrupted run"):
        train(cfg, tmp_path / "cut")  # must say --resume
    with pytest.raises(CheckpointError, match="lr="):
        train(cfg.replace(lr=0.1), tmp_path / "cut", resume=True)
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert resumed.metrics["wall_seconds"] > saved["wall_seconds"]
    assert resumed.metrics["accuracy"] == full.metrics["accuracy"]
    assert resumed.metrics["confusion_matrix"] == full.metrics["confusion_matrix"]
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    m1, _ = load_run_model(tmp_path / "full")
    m2, _ = load_run_model(tmp_path / "cut")
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    # a finished run resumed is returned as it is
    assert train(cfg, tmp_path / "cut", resume=True).metrics == resumed.metrics


def test_nan_loss_stops_and_keeps_last_good_checkpoint(phantoms: Path, tmp_path: Path) -> None:
    def poison(epoch: int, step: int, model) -> None:
        if (epoch, step) == (1, 1):
            with torch.no_grad():
                model.net.fc.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="loss became nan at epoch 2"):
        train(tiny(phantoms), tmp_path / "run", on_step=poison)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    with pytest.raises(CheckpointError, match="has not finished training"):
        load_run_model(tmp_path / "run")  # scorers refuse a run that stopped
    model, _ = load_run_model(tmp_path / "run", finished=False)  # epoch 1's best is intact
    assert torch.isfinite(model.net.fc.weight).all()


def test_evaluate_external_sets_and_class_mismatch(phantoms: Path, tmp_path: Path) -> None:
    train(tiny(phantoms, epochs=1), tmp_path / "run")
    # an external folder with two of the four classes: every image is test
    ext = tmp_path / "ext"
    for cls in ("Normal", "COVID"):
        shutil.copytree(phantoms / cls, ext / cls)
    m = evaluate_run(tmp_path / "run", ext, split="all", out=tmp_path / "ext.json",
                     exclude_copies=False, progress=False)  # fmt: skip
    assert m["n"] == 20 and json.loads((tmp_path / "ext.json").read_text())["n"] == 20
    assert m["per_class"]["Lung_Opacity"]["support"] == 0
    # these "external" images are the run's own: every one is found as an exact copy, and
    # by default the copies of training and validation images are not scored
    assert len(m["overlap"]["exact"]) == 20
    held_out = evaluate_run(tmp_path / "run", ext, split="all", progress=False)
    test_copies = sum(e["run_split"] == "test" for e in m["overlap"]["exact"])
    assert held_out["excluded_copies"] == 20 - test_copies and held_out["n"] == test_copies
    # a dataset with a class the model never saw
    other = tmp_path / "other"
    for i, cls in enumerate(("Normal", "Tuberculosis")):
        for j in range(3):
            write_png(other / cls / f"{j}.png", random_gray(100 * i + j, 40))
    with pytest.raises(CheckpointError, match="Tuberculosis"):
        evaluate_run(tmp_path / "run", other, split="all", progress=False)


def test_checkpoint_from_another_model_or_class_list(phantoms: Path, tmp_path: Path) -> None:
    train(tiny(phantoms, epochs=1), tmp_path / "four")
    three = tmp_path / "three-classes"
    for i, cls in enumerate(("a", "b", "c")):
        for j in range(6):
            write_png(three / cls / f"{j}.png", random_gray(10 * i + j, 40))
    train(tiny(three, epochs=1), tmp_path / "three")
    shutil.copy(tmp_path / "three" / "model.safetensors", tmp_path / "four" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"classes \['a', 'b', 'c'\]"):
        load_run_model(tmp_path / "four")
    (tmp_path / "three" / "model_card.json").unlink()
    with pytest.raises(CheckpointError, match=r"no model_card\.json"):
        load_run_model(tmp_path / "three")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run_model(tmp_path / "nowhere")


def test_config_differences_ignore_machine_settings_and_default_new_keys() -> None:
    cfg = TrainConfig(epochs=3, ratios=(0.8, 0.1, 0.1))
    saved = json.loads(json.dumps(cfg.to_dict()))  # as read back from config.json
    del saved["sync_bn"]  # a run made before this setting existed
    saved.update(device="cuda:1", threads=8, data="/elsewhere", progress=False)
    assert cfg.differences(saved) == []
    assert cfg.replace(sync_bn=True).differences(saved) == [("sync_bn", False, True)]
    assert cfg.replace(lr=0.1, epochs=4).differences(saved) == [("epochs", 3, 4), ("lr", 1e-3, 0.1)]


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="did you mean 'scheduler'"):
        TrainConfig.from_dict({"sheduler": "cosine"})
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        TrainConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig.from_dict({"optimizer": "lion"})
    with pytest.raises(ConfigError, match="freeze"):
        TrainConfig(freeze="most")
    with pytest.raises(ConfigError, match="lr must be positive"):
        TrainConfig(lr=0)


def test_cli_train_and_evaluate(phantoms: Path, tmp_path: Path, capsys) -> None:
    args = [
        "train",
        "--data",
        str(phantoms),
        "--model",
        "resnet18",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
        "--freeze",
        "head",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "freeze=head" in out and "trainable 2,052 of" in out and "test: accuracy" in out
    assert "Frozen-feature cache: the first 9 of 9 units" in out
    # the run keeps its shift reference as it finishes (what predict and shift read)
    assert "Shift reference:" in out and (tmp_path / "run" / "shift" / "reference.json").is_file()
    assert main(args) == 2  # the folder already holds a finished run
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--split", "all"]) == 0
    assert "all: n=40" in capsys.readouterr().out
    assert main(["train", "--model", "resnet19", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'resnet18'" in capsys.readouterr().err.lower()


def test_train_options_are_generated_from_the_config(capsys, monkeypatch) -> None:
    """Every TrainConfig field is a `cxrlab train` option with its help and choices; the
    parsed options give back the config (ratios, repeated and single values)."""
    import dataclasses

    from cxrlab.cli.common import config_from_options, config_parameters
    from cxrlab.engine import TrainConfig

    params = {p.name: p for p in config_parameters(TrainConfig)}
    fields = [f for f in dataclasses.fields(TrainConfig)]
    assert set(params) == {f.name for f in fields}
    assert all(f.metadata.get("help") for f in fields), "every option has help text"
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "<none|light|xray|acquisition>" in text and "--keep-init" in text
    assert main(["train", "--augment", "flips", "--out", "x"]) == 2
    assert "'flips' is not one of" in capsys.readouterr().err
    defaults = {name: p.default for name, p in params.items()}
    assert config_from_options(TrainConfig, defaults) == TrainConfig()
    cfg = config_from_options(TrainConfig, defaults | {"data": ["a=x", "b=y"],
                              "ratios": "0.6,0.2,0.2", "class_map": ["b=P=Q"]})  # fmt: skip
    assert cfg.data == ("a=x", "b=y") and cfg.ratios == (0.6, 0.2, 0.2)
    assert cfg.class_map == ("b=P=Q",)


def test_batches_order_and_lone_last_batch() -> None:
    from cxrlab.engine.batches import ImageBatches

    array = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    labels = np.array([0, 1] * 5)
    b = ImageBatches(array, list(range(9)), labels, batch_size=4, drop_single=True)
    assert len(b) == 2  # 9 = 4 + 4 + 1: the lone image would break BatchNorm
    order = b.order(seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(9))
    assert np.array_equal(order, b.order(seed=0, epoch=0))
    assert not np.array_equal(order, b.order(seed=0, epoch=1))
    xs = list(b.batches(order))
    assert [x.shape for x, _ in xs] == [(4, 1, 4, 4)] * 2
    x, y = xs[0]
    assert x.dtype == torch.uint8 and torch.equal(y, torch.from_numpy(labels[np.sort(order[:4])]))
    assert len(ImageBatches(array, list(range(9)), labels, 4)) == 3
    balanced = ImageBatches(array, [0, 2, 4, 6, 1], labels, 5).order(0, 0, balanced=True)
    assert len(balanced) == 5 and set(balanced) <= {0, 1, 2, 4, 6}


@pytest.mark.parametrize("freeze", ["head", "0.5", "last:2"])
def test_frozen_feature_cache_matches_full_forward(phantoms: Path, tmp_path: Path, freeze) -> None:
    cfg = tiny(phantoms, freeze=freeze, epochs=2)
    cached = train(cfg, tmp_path / "cached")
    plain = train(cfg.replace(feature_cache="off"), tmp_path / "plain")
    for a, b in zip(cached.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    assert cached.metrics["confusion_matrix"] == plain.metrics["confusion_matrix"]
    resolved = json.loads((tmp_path / "cached" / "config.json").read_text())["resolved"]
    assert resolved["frozen_feature_cache"].startswith("the first")
    off = json.loads((tmp_path / "plain" / "config.json").read_text())["resolved"]
    assert off["frozen_feature_cache"] == "not used: --feature-cache off"


def test_float16_feature_cache_trains_like_float32(phantoms: Path, tmp_path: Path) -> None:
    cfg = tiny(phantoms, freeze="head", epochs=2)
    full = train(cfg, tmp_path / "fp32")
    half = train(cfg.replace(feature_dtype="float16"), tmp_path / "fp16")
    from cxrlab.utils import cache_dir

    assert list((cache_dir() / "features").glob("*.float16"))  # really stored as float16
    for a, b in zip(full.history, half.history):  # fp16 rounding of the stored features only
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    assert half.metrics["n"] == full.metrics["n"]


def test_feature_cache_is_shared_and_skipped_when_unsafe(phantoms: Path, tmp_path: Path,
                                                         capsys) -> None:  # fmt: skip
    from cxrlab.utils import cache_dir

    features = cache_dir() / "features"
    before = set(features.glob("*.float32"))
    lite0 = dict(model="efficientnet_lite0", weights="imagenet", freeze="head", epochs=1)
    a = train(tiny(phantoms, **lite0, seed=0), tmp_path / "a")
    b = train(tiny(phantoms, **lite0, seed=1), tmp_path / "b")
    # two seeds of one pretrained cell share the frozen backbone: one feature file for both
    assert len(set(features.glob("*.float32")) - before) == 1
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]  # different heads
    capsys.readouterr()
    train(tiny(phantoms, freeze="head", epochs=1, augment="light"), tmp_path / "c")
    assert "Frozen-feature cache not used: --augment light" in capsys.readouterr().out
    train(tiny(phantoms, freeze="0.5", epochs=1, freeze_bn="update"), tmp_path / "d")
    assert "--freeze-bn update" in capsys.readouterr().out


def test_preloaded_batches_equal_memory_mapped_ones(phantoms: Path, tmp_path: Path) -> None:
    from cxrlab.engine.batches import ImageBatches

    array = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    labels = np.arange(20) % 4
    mapped = ImageBatches(array, list(range(3, 17)), labels, 4)
    loaded = ImageBatches(array, list(range(3, 17)), labels, 4)
    loaded.preload(torch.device("cpu"))
    order = mapped.order(seed=1, epoch=2)
    for (xa, ya), (xb, yb) in zip(mapped.batches(order), loaded.batches(order)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # and a whole run with preloading gives the run without it
    a = train(tiny(phantoms, epochs=1, preload="on"), tmp_path / "on")
    b = train(tiny(phantoms, epochs=1, preload="off"), tmp_path / "off")
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], abs=1e-6)


def test_weight_average_against_a_direct_computation() -> None:
    """build_ema: after the first step a copy, then decay x average + (1 - decay) x weights,
    BatchNorm running statistics included."""
    from cxrlab.engine.optim import build_ema

    assert build_ema(0.0, nn.Linear(2, 2)) is None
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = build_ema(0.75, net)
    seen = []
    for value in (1.0, 3.0, 7.0):
        with torch.no_grad():
            net[0].weight.fill_(value)
            net[1].running_mean.fill_(-value)
        ema.update_parameters(net)
        seen.append(value)
    want = seen[0]
    for value in seen[1:]:
        want = 0.75 * want + 0.25 * value  # 1, 1.5, 2.875
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), want))
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), -want))
    assert want == pytest.approx(2.875)


@pytest.mark.parametrize("freeze", ["none", "0.5"])
def test_weight_average_resumes_exactly_and_is_what_is_kept(phantoms: Path, tmp_path: Path,
                                                            freeze: str) -> None:  # fmt: skip
    """--ema: validation and the kept weights use the moving average, and a resumed run
    (the average restored from the checkpoint) ends exactly like an uninterrupted one."""
    cfg = tiny(phantoms, freeze=freeze, epochs=2, ema=0.9)
    full = train(cfg, tmp_path / "full")
    plain = train(cfg.replace(ema=0.0), tmp_path / "plain")
    assert full.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"])
    assert full.history[0]["val_loss"] != pytest.approx(plain.history[0]["val_loss"])

    def kill(epoch: int, step: int, model) -> None:
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "cut", on_step=kill)
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert resumed.metrics["accuracy"] == full.metrics["accuracy"]
    for a, b in zip(full.history, resumed.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    m1, _ = load_run_model(tmp_path / "full")
    m2, _ = load_run_model(tmp_path / "cut")
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    with pytest.raises(ConfigError, match="ema"):
        TrainConfig(ema=1.0)


def test_xray_augmentation_and_test_time_views(phantoms: Path, tmp_path: Path) -> None:
    from cxrlab.augment import augment_batch, tta_views

    x = torch.zeros(6, 1, 32, 32)
    x[..., :16] = 200.0  # bright left half
    out = augment_batch(x, torch.Generator().manual_seed(0), "xray")
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    assert (out[..., :12].mean((1, 2, 3)) > out[..., 20:].mean((1, 2, 3))).all()  # no flips
    views = tta_views(x)
    assert len(views) == 5 and torch.equal(views[0], x)
    # a run tested with TTA: evaluate reproduces its test numbers, as it does without
    run = train(tiny(phantoms, epochs=1, tta=True, augment="xray"), tmp_path / "run")
    again = evaluate_run(tmp_path / "run", progress=False)
    assert again["accuracy"] == run.metrics["accuracy"]
    assert again["nll"] == pytest.approx(run.metrics["nll"], abs=1e-5)


def test_acquisition_augmentation_does_what_it_says(monkeypatch) -> None:
    """Each acquisition perturbation alone, on a grey ramp whose answer is known; all of
    them drawn together are seeded and stay in 0..255."""
    import cxrlab.augment as batches

    ramp = torch.linspace(0, 255, 64).repeat(64, 1)[None, None].repeat(4, 1, 1, 1)
    seeded = lambda: torch.Generator().manual_seed(3)

    def only(name: str) -> torch.Tensor:
        monkeypatch.setattr(batches, "ACQUISITION", {k: float(k == name) for k in
                                                     batches.ACQUISITION})  # fmt: skip
        return batches._acquisition(ramp, seeded())

    curve = only("curve")  # a monotone tone curve: grey levels keep their order, ends stay
    assert (curve.diff(dim=-1) >= -1e-4).all() and not torch.allclose(curve, ramp, atol=1)
    assert curve[..., 0].abs().max() < 1e-3 and (curve[..., -1] - 255).abs().max() < 1e-3
    framed = only("frame")
    assert torch.equal(framed[..., 20:44, 20:44], ramp[..., 20:44, 20:44])  # inside: as it was
    assert not torch.equal(framed, ramp)
    sharp = only("blur_sharpen")
    assert torch.allclose(sharp[..., 8:-8, 8:-8], ramp[..., 8:-8, 8:-8], atol=1e-3)  # linear
    jpeg = only("jpeg")
    assert (jpeg - ramp).abs().mean() < 6 and not torch.equal(jpeg, ramp)
    resampled = only("resample")
    assert (resampled - ramp).abs().mean() < 4
    noisy = only("noise")
    assert 0 < (noisy - ramp)[..., 8:-8, 8:-8].std() < 7
    monkeypatch.undo()
    x = torch.rand(6, 1, 48, 48, generator=seeded()) * 255
    a = batches.augment_batch(x, seeded(), "acquisition")
    assert torch.equal(a, batches.augment_batch(x, seeded(), "acquisition"))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert not torch.equal(a, batches.augment_batch(x, seeded(), "xray"))


def test_auto_precision_follows_the_cpu_and_a_onednn_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrlab import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert runtime.resolve_precision("auto", cpu) == torch.bfloat16
    for limit, native in (("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                          ("AVX512_CORE_AMX", True), ("ALL", True)):  # fmt: skip
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
        assert runtime.cpu_supports_bf16() is native, limit
        assert runtime.resolve_precision("auto", cpu) == (torch.bfloat16 if native else None)
    assert runtime.resolve_precision("bf16", cpu) == torch.bfloat16  # asked for: kept
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert runtime.resolve_precision("auto", cpu) is None
