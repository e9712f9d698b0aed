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
from cxrlab.adapt import adapt_batchnorm, adapt_run, em_priors
from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.engine import evaluate_run, train
from cxrlab.engine.rundir import load_card as read_card
from cxrlab.errors import ConfigError
from cxrlab.infer import load

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
    fails([str(run), "--data", str(site), "--out", out, "--labels", "5"], "not built yet")
    fails([str(run), "--data", str(site), "--out", out, "--method", "tent"], "Unknown method")
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
