"""Adaptation to a site: AdaBN and EM priors on known answers, the command and its refusals."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cxrlab.adapt.core as core
from cxrlab.adapt import (
    FineTuneSettings,
    adapt_batchnorm,
    adapt_run,
    choose_scope,
    draw_labelled,
    em_priors,
    fine_tune,
    tent,
)
from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import ConfigError, DataError
from cxrlab.evaluation.calibration import fit_temperature
from cxrlab.infer import load
from cxrlab.runs import evaluate_run
from cxrlab.runs.folder import load_card as read_card
from cxrlab.training import train

from conftest import tiny_config


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x.float() / 255)).mean((2, 3))


def test_adabn_recovers_the_statistics_of_a_shifted_copy() -> None:
    torch.manual_seed(0)
    net = _Tiny()
    rng = np.random.default_rng(0)
    home = rng.integers(0, 120, (64, 12, 12), dtype=np.uint8)
    site = np.clip(home.astype(int) * 2 + 60, 0, 255).astype(np.uint8)  # brighter, contrastier
    adapt_batchnorm(net, home, batch_size=16)
    home_mean = net.bn.running_mean.clone()
    assert adapt_batchnorm(net, site, batch_size=16) == 1
    with torch.no_grad():
        z = net.conv(torch.from_numpy(site)[:, None].float() / 255)
    # a plain average over the batches: exactly the statistics of the site's activations
    assert torch.allclose(net.bn.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    per_batch = torch.stack([z[k : k + 16].var((0, 2, 3), unbiased=True) for k in range(0, 64, 16)])
    assert torch.allclose(net.bn.running_var, per_batch.mean(0), atol=1e-5)
    assert not torch.allclose(home_mean, net.bn.running_mean)
    assert net.bn.momentum == 0.1 and not net.training  # restored
    assert adapt_batchnorm(nn.Linear(2, 2), site) == 0  # no BatchNorm: nothing to adapt


def test_em_recovers_planted_priors_and_leaves_unshifted_data_alone() -> None:
    rng = np.random.default_rng(1)
    # two classes, x ~ N(+-1, 1); the posterior under equal priors is a logistic of 2x
    y = rng.choice(2, 20000, p=[0.8, 0.2])
    x = rng.normal(np.where(y == 0, 1.0, -1.0), 1.0)
    p0 = 1 / (1 + np.exp(-2 * x))
    probs = np.stack([p0, 1 - p0], 1)
    q = em_priors(probs, np.array([0.5, 0.5]))
    assert q == pytest.approx([0.8, 0.2], abs=0.015)
    # data whose mean posterior is the prior: a fixed point, nothing changes
    assert em_priors(probs, probs.mean(0)) == pytest.approx(probs.mean(0), abs=1e-12)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("adapt")
    data = write_synthetic_dataset(base / "home", per_class=16, seed=2, size=40, progress=False)
    run = base / "run"
    train(tiny_config(data, epochs=2, ratios=(0.5, 0.25, 0.25)), run)
    site = write_synthetic_dataset(base / "site", per_class=12, seed=8, size=40, progress=False)
    for f in site.rglob("*.png"):  # acquired elsewhere: darker, lower contrast
        a = np.asarray(Image.open(f).convert("L")).astype(float)
        Image.fromarray((a * 0.6 + 20).astype(np.uint8)).save(f)
    return run, site


def test_adapt_writes_a_run_like_any_other_and_never_reads_the_test_part(
    setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, site = setting
    seen: list[np.ndarray] = []
    real = core._adapt

    def spy(model, pool, *args, **kw):
        seen.append(np.array(pool))
        return real(model, pool, *args, **kw)

    monkeypatch.setattr(core, "_adapt", spy)
    out = tmp_path / "adapted"
    result = adapt_run(run, site, out, method="bn+prior", progress=False)
    rec = json.loads((out / "adaptation.json").read_text())
    assert rec == json.loads(json.dumps(result.record))
    # adaptation read the pool and nothing of the test part
    manifest = (out / "site_split.csv").read_text().splitlines()[2:]
    test_paths = {line.split(",")[0] for line in manifest if line.split(",")[-1] == "test"}
    pool_paths = set(rec["pool_images"])
    assert test_paths and pool_paths and not test_paths & pool_paths
    assert len(seen) == 1 and len(seen[0]) == rec["adaptation"]["pool"] == len(pool_paths)
    from cxrlab.data import load_gray8, resize_gray8

    test_pixels = {resize_gray8(load_gray8(site / p), 32).tobytes() for p in test_paths}
    assert not any(img.tobytes() in test_pixels for img in seen[0])
    # the card says where it came from; it loads, predicts and evaluates like any run
    card = read_card(out)
    assert card.adaptation.method == "bn+prior" and card.adaptation.parent == str(run.resolve())
    assert card.adaptation.changed["batchnorm_layers"] > 0
    assert sum(card.adaptation.changed["priors"]["site"]) == pytest.approx(1)
    assert card.classes == read_card(run).classes and card.image_size == 32
    assert (out / "metrics.json").is_file() and (out / "split.csv").is_file()
    probs = load(out).predict_many(sorted(site.rglob("*.png"))[:3])
    assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    m = evaluate_run(out, data=site, split="all", progress=False)
    assert m["n"] > 0
    before, after = rec["site_test"]["before"], rec["site_test"]["after"]
    # copies of the run's images (phantoms this small look alike) are left out of both parts
    assert before["n"] == after["n"] == rec["adaptation"]["test"] <= len(test_paths)


def test_prior_only_changes_nothing_but_the_bias(setting, tmp_path: Path) -> None:
    run, site = setting
    out = tmp_path / "prior"
    adapt_run(run, site, out, method="prior", progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == ["net.fc.bias"]


def test_adapt_refuses_bad_input_in_one_line(setting, tmp_path: Path, capsys) -> None:
    run, site = setting

    def fails(args: list[str], text: str) -> None:
        assert main(["adapt", *args, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, err

    out = str(tmp_path / "o")
    empty = tmp_path / "empty" / "site"
    empty.mkdir(parents=True)
    fails([str(run), "--data", str(empty.parent), "--out", out], "No class folders")
    fails([str(run), "--data", str(site), "--out", out, "--labels", "50"], "holds only")
    fails([str(run), "--data", str(site), "--out", out, "--method", "none"], "changes nothing")
    fails([str(run), "--data", str(site), "--out", out, "--labels", "1"],
          "at least 2 labelled images per class")  # fmt: skip
    # refused before anything is read: the site named here does not even exist
    fails([str(run), "--data", str(tmp_path / "nowhere"), "--out", out, "--labels", "1"],
          "at least 2 labelled images per class")  # fmt: skip
    fails([str(run), "--data", str(site), "--out", out, "--labels", "2", "--scope", "x"],
          "Unknown scope")  # fmt: skip
    fails([str(run), "--data", str(site), "--out", out, "--method", "entropy"], "Unknown method")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    fails([str(onnx), "--data", str(site), "--out", out], "an exported model cannot be adapted")
    busy = tmp_path / "busy"
    shutil.copytree(run, busy)
    (busy / "metrics.json").unlink()
    (busy / "checkpoint.pt").write_bytes(b"x")
    fails([str(busy), "--data", str(site), "--out", out], "has not finished training")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    fails([str(run), "--data", str(site), "--out", str(full)], "is not empty")
    fails([str(run), "--data", str(site), "--out", out, "--class-map", "Cat=COVID"],
          "not a class of the data")  # fmt: skip
    with pytest.raises(ConfigError, match="test_share"):
        adapt_run(run, site, tmp_path / "t", test_share=1.0, progress=False)


def test_draw_labelled_takes_n_per_class_by_seed_and_refuses_too_few() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1, -1, 2, 2, 2])
    a = draw_labelled(y, 2, 0, ["a", "b", "c"])
    assert len(a) == 6 and list(np.bincount(y[a])) == [2, 2, 2] and (y[a] >= 0).all()
    assert (a == draw_labelled(y, 2, 0, ["a", "b", "c"])).all()
    assert len({tuple(draw_labelled(y, 2, s, ["a", "b", "c"])) for s in range(6)}) > 1
    with pytest.raises(DataError, match=r"holds only 3 image.* of a"):
        draw_labelled(y, 4, 0, ["a", "b", "c"])
    with pytest.raises(DataError, match="no class the model knows"):
        draw_labelled(np.full(4, -1), 1, 0, ["a"])


def test_temperature_with_a_prior_stays_near_it_on_separated_images() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 12)
    probs = np.full((12, 3), 0.2)
    probs[np.arange(12), y] = 0.6  # every image right: the plain fit runs to its bound
    assert fit_temperature(probs, y) == pytest.approx(0.05, rel=1e-2)
    t = fit_temperature(probs, y, prior=1.5)
    assert 0.2 < t < 1.5  # sharper than the prior, far from the bound (MAP: 0.35)
    # with many images the data win: the prior barely moves the fit
    big_y = np.repeat(y, 200)
    noisy = np.repeat(probs, 200, 0)
    noisy[::3] = noisy[::3][:, ::-1]
    assert fit_temperature(noisy, big_y, prior=3.0) == pytest.approx(
        fit_temperature(noisy, big_y), rel=0.05
    )


def _mini_model(tmp: Path):
    from cxrlab.models import create_model

    torch.manual_seed(0)
    return create_model("resnet18", 2, weights="none", image_size=32)


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by brightness: class 1 is bright."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, 32, 32)) + 150 * y[:, None, None]
    return x.astype(np.uint8), y


def test_fine_tune_trains_only_its_scope_and_learns_a_planted_signal(tmp_path: Path) -> None:
    images, y = _planted(16, 0)
    # ResNet-18: 9 units (stem, 8 blocks); "last" freezes floor(0.75 * 9) = 6 of them
    for scope, changed_only in (("head", {"fc."}), ("last", {"fc.", "layer3.1.", "layer4."})):
        model = _mini_model(tmp_path)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        settings = FineTuneSettings(epochs=30, head_lr=1e-2, lr=1e-3)
        assert fine_tune(model, images, y, scope, settings, seed=1) >= 20
        after = model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(k.startswith(tuple(f"net.{c}" for c in changed_only))
                               for k in changed), changed  # fmt: skip
        assert all(p.requires_grad for p in model.parameters()) and not model.training
        test, ty = _planted(20, 5)
        with torch.no_grad():
            pred = model(torch.from_numpy(test)[:, None]).argmax(1).numpy()
        assert (pred == ty).mean() >= 0.9


def test_choose_scope_prefers_no_change_when_the_model_is_already_right(tmp_path) -> None:
    images, y = _planted(12, 0)
    model = _mini_model(tmp_path)
    fine_tune(model, images, y, "head", FineTuneSettings(epochs=40, head_lr=1e-2), seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    more, my = _planted(12, 3)
    choice = choose_scope(model, more, my, scopes=("none", "head"), seed=0)
    assert set(choice.table) == {"none", "head"} and choice.folds == 3
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # left as it came
    assert choice.table["none"]["accuracy"] == 1.0
    # a model whose classes are swapped: fine-tuning must win the cross-validation
    with torch.no_grad():
        model.net.fc.weight.copy_(model.net.fc.weight.flip(0))
        model.net.fc.bias.copy_(model.net.fc.bias.flip(0))
    choice = choose_scope(model, more, my, scopes=("none", "head"),
                          settings=FineTuneSettings(epochs=40, head_lr=1e-2), seed=0)  # fmt: skip
    assert choice.scope == "head" and choice.table["none"]["accuracy"] == 0.0
    assert choice.table["head"]["nll"] < choice.table["none"]["nll"]
    # each scope starts from the model as it came, whatever the order
    settings = FineTuneSettings(epochs=40, head_lr=1e-2)
    after_head = choose_scope(model, more, my, scopes=("head", "none"), settings=settings)
    assert after_head.table["none"] == choice.table["none"]


def test_tent_lowers_the_entropy_and_changes_only_batchnorm(tmp_path: Path) -> None:
    model = _mini_model(tmp_path)
    images, _ = _planted(32, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def entropy() -> float:
        with torch.no_grad():
            p = model.eval()(torch.from_numpy(images)[:, None]).softmax(1)
        return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())

    adapt_batchnorm(model, images, batch_size=16)
    start = entropy()
    assert tent(model, images, epochs=5, batch_size=16, lr=1e-2) == 10
    assert entropy() < start
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed and all(".bn" in k or "downsample.1" in k or k.startswith("net.bn1")
                           for k in changed), changed  # fmt: skip
    assert all(p.requires_grad for p in model.parameters())


def test_adapt_with_labels_fixes_swapped_classes_from_the_pool_only(
    setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, site = setting
    swapped = tmp_path / "swapped"
    shutil.copytree(site, swapped)
    names = sorted(p.name for p in swapped.iterdir() if p.is_dir())
    for a in names:  # every class folder takes the next one's name: the labels disagree
        (swapped / a).rename(swapped / f"_{a}")
    for a, b in zip(names, names[1:] + names[:1]):
        (swapped / f"_{a}").rename(swapped / b)
    seen: list[np.ndarray] = []
    real = core._adapt

    def spy(model, pool, *args, **kw):
        seen.append(np.array(pool))
        labelled = args[-1] if len(args) > 4 else kw.get("labelled")
        pool_bytes = {img.tobytes() for img in pool}
        assert all(img.tobytes() in pool_bytes for img in labelled.images)
        return real(model, pool, *args, **kw)

    monkeypatch.setattr(core, "_adapt", spy)
    out = tmp_path / "labelled"
    settings = FineTuneSettings(epochs=40, head_lr=1e-2)
    rec = adapt_run(run, swapped, out, labels=3, method="none", seed=1, scope="head",
                    fine_tune_settings=settings, progress=False).record  # fmt: skip
    assert len(seen) == 1
    a = rec["adaptation"]
    assert a["labels"] == 3 and a["scope"] == "head" and a["draw_seed"] == 1
    assert len(a["labelled_images"]) == 12 and set(a["labelled_images"]) <= set(rec["pool_images"])
    # the swapped labels were learned: the adapted model follows them on the labelled images
    paths = [swapped / p for p in a["labelled_images"]]
    truth = [read_card(run).classes.index(p.parts[-3]) for p in paths]
    hits = {r: (load(r).predict_many(paths).argmax(1) == truth).mean() for r in (run, out)}
    assert hits[out] >= 0.75 and hits[out] > hits[run] + 0.3, hits
    card = read_card(out)
    assert card.adaptation.labelled_images == a["labelled_images"]
    assert card.calibration.fitted_on.startswith("site")
    assert card.calibration.temperature == a["changed"]["fine_tune"]["temperature"]
    assert a["changed"]["fine_tune"]["folds"] == 3 and set(a["changed"]["fine_tune"]["cv"]) == {
        "head"
    }


def test_adapting_without_labels_to_images_like_the_runs_keeps_its_predictions(
    setting,
) -> None:
    """No shift: a pool whose mean prediction is the run's own prior. EM's answer is that
    prior, the bias moves by ``T log(q / p) = 0``, and the adapted model predicts as its
    parent did."""
    from cxrlab.runs.folder import load_run_model
    from cxrlab.shift.reference import calibrated_probs

    run, _ = setting
    model, card = load_run_model(run)
    pool = np.random.default_rng(0).integers(0, 256, (24, 32, 32), dtype=np.uint8)
    before = calibrated_probs(model, pool, card.temperature)
    changed, t = core._adapt(model, pool, "prior", card.temperature, before.mean(0), "cpu")
    assert t == card.temperature
    assert changed["priors"]["site"] == pytest.approx(changed["priors"]["run"], abs=1e-4)
    after = calibrated_probs(model, pool, card.temperature)
    assert np.abs(after - before).max() < 1e-4  # float32 probabilities
