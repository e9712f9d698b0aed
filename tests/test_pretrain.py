"""Self-supervised pretraining (cxrlab.pretrain): the library's pieces against direct
computations, a tiny run that learns a planted signal, collapse detection, loading the
backbone strictly, the leakage refusal, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrlab import run_files
from cxrlab.analysis.reuse import init_kind
from cxrlab.augment import augment_batch, step_generator
from cxrlab.cli import main
from cxrlab.data import prepare_data
from cxrlab.errors import CheckpointError, ConfigError, DataError
from cxrlab.models import create_model
from cxrlab.pretrain import COLLAPSE, PretrainConfig, embedding_spread, knn_accuracy, pretrain
from cxrlab.pretrain import methods as pm
from cxrlab.pretrain.train import _draw
from cxrlab.runs import evaluate_run
from cxrlab.study.report.flags import TRANSDUCTIVE, run_flags
from cxrlab.study.study_config import _tag, arm_label
from cxrlab.training import train

from conftest import tiny_config, write_png


def planted(root: Path, per_class: int = 120, size: int = 32, seed: int = 0) -> Path:
    """Two classes told apart by a faint large-scale gradient (top-to-bottom or
    left-to-right) under a strong fine texture of random orientation: a random backbone's
    features follow the texture (k-NN at chance), views that blur, resample and crop the
    image make the texture a nuisance and leave the gradient to learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for cls, vertical in (("COVID", True), ("Normal", False)):
        for i in range(per_class):
            theta = rng.uniform(0, np.pi)
            wave = (np.cos(theta) * xx + np.sin(theta) * yy) * size / 3
            texture = 70 * np.sin(2 * np.pi * wave + rng.uniform(0, 6.3))
            img = rng.uniform(100, 156) + 25 * ((yy if vertical else xx) - 0.5) + texture
            write_png(root / cls / "images" / f"{cls}-{i + 1}.png",
                      np.clip(img, 0, 255).astype(np.uint8))  # fmt: skip
    return root


def small(data: Path, **kw) -> PretrainConfig:
    base = dict(data=str(data), image_size=32, model="resnet18", init="none", epochs=2,
                batch_size=16, lr=3.0, knn_k=5, progress=False, threads=2)  # fmt: skip
    return PretrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("planted")
    data = planted(root / "db")
    out = root / "run"
    pretrain(small(data, epochs=2, batch_size=32), out)
    return data, out


# ------------------------------------------------------------- the library, checked directly
def test_lightly_loss_is_the_negative_mean_cosine() -> None:
    from lightly.loss import NegativeCosineSimilarity

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    direct = -np.mean([float(x @ y / (x.norm() * y.norm())) for x, y in zip(a, b)])
    assert float(NegativeCosineSimilarity()(a, b)) == pytest.approx(direct, abs=1e-6)
    assert float(NegativeCosineSimilarity()(a, 3 * a)) == pytest.approx(-1.0, abs=1e-6)


def test_byol_momentum_follows_a_cosine_to_one() -> None:
    from lightly.models.utils import update_momentum

    model = pm.BYOL(torch.nn.Linear(4, 6), 6, proj_dim=8, hidden_dim=16, momentum=0.9)
    assert model.momentum_at(0.0) == pytest.approx(0.9)
    assert model.momentum_at(0.5) == pytest.approx(0.95, abs=1e-3)
    assert model.momentum_at(1.0) == pytest.approx(1.0)
    online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
    update_momentum(online, target, 0.9)  # target = 0.9 target + 0.1 online
    assert torch.allclose(target.weight, torch.full((1, 2), 0.1))


def test_embedding_spread_is_zero_on_collapse_and_one_when_isotropic() -> None:
    assert embedding_spread(torch.ones(64, 32)) == pytest.approx(0.0, abs=1e-6)
    z = torch.randn(20_000, 32, generator=torch.Generator().manual_seed(0))
    assert embedding_spread(z) == pytest.approx(1.0, abs=0.05)


def test_knn_accuracy_matches_a_direct_vote() -> None:
    """Planted features: class 0 points along e1, class 1 along e2; each query's 3
    cosine-nearest bank images vote."""

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0, 0, :2].float()

    rng = np.random.default_rng(0)
    n = 40
    labels = np.repeat([0, 1], n // 2)
    images = np.zeros((n, 1, 2), np.uint8)
    images[:, 0, 0] = np.where(labels == 0, 200, rng.integers(0, 60, n))
    images[:, 0, 1] = np.where(labels == 1, 200, rng.integers(0, 60, n))
    images[3, 0] = (10, 200)  # a class-0 query that looks like class 1
    bank, queries = np.arange(10, n), np.arange(10)
    got = knn_accuracy(Fixed(), images, bank, queries, labels, 3, torch.device("cpu"))
    f = images[:, 0].astype(float)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    votes = [np.bincount(labels[bank][np.argsort(-(f[bank] @ f[q]))[:3]], minlength=2).argmax()
             for q in queries]  # fmt: skip
    assert got["accuracy"] == pytest.approx(np.mean(np.array(votes) == labels[queries]))
    assert got["accuracy"] == pytest.approx(0.9)


# ----------------------------------------------------------------------------- a tiny run
def _random_backbone_knn(data: Path, out: Path) -> float:
    """The k-NN accuracy of a random ResNet-18 whose BatchNorm statistics were estimated on
    views of the bank's images (so that only what pretraining learned in the weights can
    beat it)."""
    prepared = prepare_data(str(data), split_file=out / run_files.SPLIT, image_size=32,
                            progress=False)  # fmt: skip
    labels, images = np.asarray(prepared.split.labels()), prepared.images.array
    bank = _draw(prepared.split.indices("train"), labels, 1000, 0)
    queries = _draw(prepared.split.indices("val"), labels, 1000, 1)
    torch.manual_seed(0)
    model = create_model("resnet18", 2, "none", image_size=32).drop_head()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over every batch
    model.train()
    with torch.no_grad():
        for start in range(0, len(bank), 32):
            x = torch.from_numpy(images[bank[start : start + 32]])[:, None].float()
            model(augment_batch(x, step_generator(0, 0, start), "pretrain"))
    return knn_accuracy(model, images, bank, queries, labels, 5, torch.device("cpu"))["accuracy"]


def test_pretraining_lowers_its_loss_and_learns_the_planted_signal(planted_run) -> None:
    data, out = planted_run
    card = json.loads((out / run_files.PRETRAIN_CARD).read_text())
    history = (out / run_files.HISTORY).read_text().splitlines()
    losses = [float(r.split(",")[1]) for r in history[1:]]
    assert losses[-1] < losses[0]
    random = _random_backbone_knn(data, out)
    assert card["initial"]["accuracy"] <= 0.6 and random <= 0.6  # they follow the texture
    assert card["final"]["knn_accuracy"] >= max(random, card["initial"]["accuracy"]) + 0.15
    assert not card["collapsed"] and card["final"]["embedding_spread"] > 0.3
    assert card["images"] == 168 and card["data"]["use"] == "train"  # the training split only
    seen = (out / run_files.PRETRAIN_IMAGES).read_text().splitlines()
    assert len(seen) == 169 and all(",train," in row for row in seen[1:])
    assert not (out / run_files.CHECKPOINT).exists() and (out / run_files.METRICS).exists()


def test_the_backbone_loads_strictly_and_reproduces_its_features(planted_run) -> None:
    data, out = planted_run
    model = create_model("resnet18", 2, f"pretrained:{out}", image_size=32)
    assert model.weights_source.startswith(f"pretrained:{out} (simsiam, init none")
    # the loaded backbone scores the run's own k-NN monitor exactly as the run did
    prepared = prepare_data(str(data), split_file=out / run_files.SPLIT, image_size=32,
                            progress=False)  # fmt: skip
    labels = np.asarray(prepared.split.labels())
    bank = _draw(prepared.split.indices("train"), labels, 1000, 0)
    queries = _draw(prepared.split.indices("val"), labels, 1000, 1)
    got = knn_accuracy(model.drop_head(), prepared.images.array, bank, queries, labels, 5,
                       torch.device("cpu"))  # fmt: skip
    card = json.loads((out / run_files.PRETRAIN_CARD).read_text())
    assert got["accuracy"] == pytest.approx(card["final"]["knn_accuracy"])


def test_collapse_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    class Collapsing(pm.SimSiam):  # every image gets one embedding
        def step(self, x1, x2, progress):
            loss, z = super().step(x1, x2, progress)
            return loss, torch.ones_like(z)

    monkeypatch.setitem(pm.METHODS, "simsiam", Collapsing)
    data = planted(tmp_path / "db", per_class=12)
    code = main(["pretrain", "--data", str(data), "--image-size", "32", "--model", "resnet18",
                 "--init", "none", "--epochs", "1", "--batch-size", "8", "--no-progress",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "run" / run_files.PRETRAIN_CARD).read_text())
    assert card["collapsed"] and card["final"]["embedding_spread"] < COLLAPSE
    assert "COLLAPSED" in capsys.readouterr().out


def test_resume_goes_on_from_the_checkpoint_and_refuses_other_settings(tmp_path: Path) -> None:
    data = planted(tmp_path / "db", per_class=12)
    out = tmp_path / "run"
    pretrain(small(data, epochs=1), out)
    whole = json.loads((out / run_files.METRICS).read_text())
    # an interrupted run of 2 epochs: its checkpoint after epoch 1, no metrics
    out2 = tmp_path / "run2"
    with pytest.raises(KeyboardInterrupt):
        _interrupt_after_first_epoch(small(data, epochs=2), out2)
    assert (out2 / run_files.CHECKPOINT).exists()
    with pytest.raises(CheckpointError, match="--resume"):
        pretrain(small(data, epochs=2), out2)
    with pytest.raises(CheckpointError, match=r"lr=3\.0, now lr=1\.0"):
        pretrain(small(data, epochs=2, lr=1.0), out2, resume=True)
    with pytest.raises(ConfigError, match="has not finished"):
        create_model("resnet18", 2, f"pretrained:{out2}", image_size=32)
    card = pretrain(small(data, epochs=2), out2, resume=True)
    assert card.epochs == 2 and whole["initial"] == card.initial
    with pytest.raises(CheckpointError, match="finished"):
        pretrain(small(data, epochs=2), out2, resume=True)


def _interrupt_after_first_epoch(config: PretrainConfig, out: Path) -> None:
    from cxrlab.pretrain import train as pt

    real = pt._save_checkpoint

    def save_then_stop(*args, **kw):
        real(*args, **kw)
        raise KeyboardInterrupt

    pt._save_checkpoint = save_then_stop
    try:
        pretrain(config, out)
    finally:
        pt._save_checkpoint = real


# --------------------------------------------------------------------------------- leakage
def test_leakage_refusal_fires_on_a_planted_copy_of_a_test_image(tmp_path: Path,
                                                                 planted_run) -> None:  # fmt: skip
    data, _ = planted_run
    split_file = tmp_path / "split.csv"
    prepared = prepare_data(str(data), split_file=split_file, image_size=32, progress=False)
    test_image = data / prepared.split.records[prepared.split.indices("test")[0]].path
    # the pretraining data: other images, and a re-sized copy of one test image
    other = planted(tmp_path / "other", per_class=12, seed=7)
    copy = Image.open(test_image).resize((48, 48), Image.BILINEAR)
    copy.save(other / "COVID" / "images" / "COVID-99.png")
    pt_run = tmp_path / "pt"
    pretrain(small(other, epochs=1, use="all"), pt_run)
    config = tiny_config(data, split_file=str(split_file), epochs=1,
                         weights=f"pretrained:{pt_run}")  # fmt: skip
    with pytest.raises(ConfigError, match=r"saw 1 of this run's .* \(0 exact, 1 near"):
        train(config, tmp_path / "refused")
    result = train(config.__class__(**(config.to_dict() | {"allow_transductive": True})),
                   tmp_path / "allowed")  # fmt: skip
    card = json.loads((result.run_dir / run_files.CARD).read_text())
    assert card["pretraining"]["eval_images_seen"] == 1
    assert card["pretraining"]["allow_transductive"] is True
    assert card["pretraining"]["run"] == str(pt_run)
    # a study's report flags it; the reuse analysis names its initialisation
    flags = run_flags(result.run_dir, result.metrics)
    assert "saw 1 of its validation and test images" in flags[TRANSDUCTIVE]
    assert init_kind(result.card) == "XR-RI"  # pretrained from scratch (init none)
    # scored on other data, the images its pretraining saw are not held out
    mixed = planted(tmp_path / "mixed", per_class=12, seed=9)  # 24 images never seen
    for png in other.rglob("*.png"):  # and the 25 the pretraining saw
        shutil.copy(png, mixed / png.parent.relative_to(other) / f"seen-{png.name}")
    metrics = evaluate_run(result.run_dir, str(mixed), split="all", progress=False)
    left_out = metrics["excluded_pretraining"] + metrics["excluded_copies"]
    assert metrics["excluded_pretraining"] >= 24 and left_out + metrics["n"] == 49
    assert metrics["n"] >= 20  # the unseen images (a few may copy a run image)


def test_a_study_names_pretrained_cells() -> None:
    assert arm_label("pretrained:runs/xray", "head", train_size=0.1) == (
        "X-ray pretrained (xray), head only, 10% of training data"
    )
    assert _tag("pretrained:runs/xray", "none") == "pt-xray-full"


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_one_line(tmp_path: Path, planted_run, capsys) -> None:
    data, out = planted_run
    with pytest.raises(ConfigError, match="pretrained resnet18, not resnet34"):
        create_model("resnet34", 2, f"pretrained:{out}", image_size=32)
    with pytest.raises(ConfigError, match=r"must be one of"):
        PretrainConfig.from_dict({"method": "dino"})
    few = planted(tmp_path / "few", per_class=6)
    with pytest.raises(DataError, match="at least one batch"):
        pretrain(small(few, batch_size=64), tmp_path / "few-run")
    with pytest.raises(ConfigError, match="no folder"):
        create_model("resnet18", 2, f"pretrained:{tmp_path / 'nowhere'}", image_size=32)
    with pytest.raises(ConfigError, match=r"give the folder of a 'cxrlab pretrain' run"):
        create_model("resnet18", 2, "pretrained:", image_size=32)
    code = main(["train", "--data", str(data), "--model", "resnet34", "--weights",
                 f"pretrained:{out}", "--image-size", "32",
                 "--out", str(tmp_path / "t")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not resnet34" in err
