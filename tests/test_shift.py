"""Shift detection: signals against direct computations, tests on known answers, the command."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.neighbors import NearestNeighbors

from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.shift import (
    KnnDistance,
    Mahalanobis,
    class_mix,
    detection_auroc,
    estimated_accuracy,
    ks_test,
    mmd_test,
    shift_report,
)
from cxrlab.shift.batch import c2st_test, detection_power
from cxrlab.shift.signals import keep_threshold
from cxrlab.training import train

from conftest import tiny_config


def test_mahalanobis_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[3.0, 0, 0], [-3.0, 0, 0]])
    y = np.repeat([0, 1], 500)
    x = means[y] + rng.normal(size=(1000, 3)) * [1.0, 2.0, 0.5]
    m = Mahalanobis.fit(x, y)
    q = np.array([[0.5, 1.0, -0.2], [-4.0, 0.0, 1.0]])
    direct = [min(scipy_mahalanobis(p, mu, m.precision) ** 2 for mu in m.means) for p in q]
    assert np.allclose(m.score(q), direct)
    # the shared covariance is the within-class one (about diag(1, 4, 0.25)), not the pooled
    cov = np.linalg.inv(m.precision)
    assert np.allclose(np.diag(cov), [1, 4, 0.25], rtol=0.15)
    assert np.allclose(m.means, means, atol=0.2)
    with pytest.raises(ValueError, match="at least two"):
        Mahalanobis.fit(x[:1])


def test_knn_distance_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    bank, query = rng.normal(size=(200, 8)), rng.normal(size=(30, 8))
    knn = KnnDistance.fit(bank, k=5)
    nn = NearestNeighbors(n_neighbors=5, metric="cosine").fit(bank)
    dist, _ = nn.kneighbors(query)
    assert np.allclose(knn.score(query), dist[:, -1], atol=1e-5)
    assert np.allclose(KnnDistance.fit(bank, k=1).score(bank), 0, atol=1e-5)  # itself


def test_threshold_and_auroc() -> None:
    scores = np.arange(100.0)
    t = keep_threshold(scores, 0.95)
    assert (scores > t).mean() == pytest.approx(0.04, abs=0.011)
    assert detection_auroc(np.zeros(5), np.ones(5)) == 1.0
    assert detection_auroc(np.arange(10.0), np.arange(10.0)) == 0.5
    with pytest.raises(ValueError, match="keep rate"):
        keep_threshold(scores, 1.0)


def test_two_sample_tests_on_known_answers() -> None:
    rng = np.random.default_rng(2)

    def probs(n: int, shift: float) -> np.ndarray:
        logits = rng.normal(size=(n, 3)) + np.array([shift, 0, 0])
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    ref = probs(400, 0.0)
    assert ks_test(ref, probs(200, 0.0))[1] > 0.05
    assert ks_test(ref, probs(200, 1.5))[1] < 1e-3
    a = rng.normal(size=(300, 40))
    same, moved = rng.normal(size=(150, 40)), rng.normal(size=(150, 40))
    moved[:, :5] += 1.0
    assert mmd_test(a, same)[1] > 0.05 and mmd_test(a, moved)[1] < 0.01
    assert c2st_test(a, same)[1] > 0.05 and c2st_test(a, moved)[1] < 0.01
    assert c2st_test(a, moved)[0] > 0.8  # the domain classifier's AUROC
    power = detection_power(ks_test, ref, probs(300, 1.5), sizes=(10, 50, 100), repeats=20)
    assert power["power"][100] >= 0.8 and power["min_batch"] in (10, 50, 100)
    null = detection_power(ks_test, ref, probs(300, 0.0), sizes=(50,), repeats=40)
    assert null["power"][50] <= 0.15 and null["min_batch"] is None  # false alarms


def test_class_mix_recovers_a_planted_label_shift() -> None:
    rng = np.random.default_rng(3)
    # a classifier right 80 % of the time, wrong uniformly otherwise
    confusion = np.full((3, 3), 0.1) + np.eye(3) * 0.7

    def sample(prior: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(3, n, p=prior)
        pred = np.array([rng.choice(3, p=confusion[:, c]) for c in y])
        return np.eye(3)[pred] * 0.9 + 0.1 / 3, y

    ref_probs, ref_y = sample(np.array([1 / 3, 1 / 3, 1 / 3]), 6000)
    target = np.array([0.6, 0.3, 0.1])
    new_probs, _ = sample(target, 6000)
    est = class_mix(ref_probs, ref_y, new_probs)
    assert np.allclose(est, target, atol=0.03) and est.sum() == pytest.approx(1)
    predicted = np.bincount(new_probs.argmax(1), minlength=3) / 6000
    assert not np.allclose(predicted, target, atol=0.03)  # the raw mix is biased; BBSE is not


def test_atc_estimates_accuracy_on_the_same_distribution() -> None:
    rng = np.random.default_rng(4)
    n = 20000
    y = rng.integers(0, 2, n)
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.uniform(size=n) < conf  # calibrated: right as often as confident
    pred = np.where(right, y, 1 - y)
    probs = np.stack([np.where(pred == 0, conf, 1 - conf), np.where(pred == 1, conf, 1 - conf)], 1)
    half = n // 2
    est = estimated_accuracy(probs[:half], y[:half], probs[half:], resamples=200)
    true = float(right[half:].mean())
    assert abs(est["estimate"] - true) < 0.015 and est["ci"][0] <= true <= est["ci"][1]


# ---- the command on a tiny run


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny run on phantoms; other phantoms drawn alike; and those phantoms acquired
    elsewhere: inverted, with a bright frame (a planted shift)."""
    base = tmp_path_factory.mktemp("shift")
    data = write_synthetic_dataset(base / "train", per_class=20, seed=1, size=40, progress=False)
    run = base / "run"
    train(tiny_config(data, epochs=2, ratios=(0.5, 0.3, 0.2)), run)
    alike = write_synthetic_dataset(base / "alike", per_class=10, seed=9, size=40, progress=False)
    shifted = base / "shifted" / "site"
    shifted.mkdir(parents=True)
    for k, f in enumerate(sorted(alike.rglob("*.png"))):
        a = 255 - np.asarray(Image.open(f).convert("L"))
        a = a.copy()
        a[:4], a[-4:], a[:, :4], a[:, -4:] = 255, 255, 255, 255
        Image.fromarray(a).save(shifted / f"img-{k}.png")
    return run, alike, shifted.parent


def test_shift_report_flags_a_planted_shift_and_not_alike_images(phantom_run) -> None:
    run, alike, shifted = phantom_run
    new = shift_report(run, shifted, progress=False, power_repeats=10)
    same = shift_report(run, alike, progress=False, power_repeats=10)
    assert new["flagged_share"] > 0.8 and same["flagged_share"] < 0.3
    assert new["two_sample"]["shift_detected"] and new["two_sample"]["p_value"] < 0.01
    assert new["n_labelled"] == 0 and new["true_accuracy"] is None  # a site's unlabelled folder
    # phantoms this small look alike: some count as near copies of the run's and are left out
    assert same["n"] + same["left_out"]["copies"] == 40
    assert same["n_labelled"] == same["n"] and same["true_accuracy"] is not None
    assert 0 <= same["estimated_accuracy"] <= 1
    lo, hi = same["estimated_accuracy_ci"]
    assert lo <= same["estimated_accuracy"] <= hi
    assert len(new["images"]) == new["n"] == 40
    assert {"ood_score", "ood", "pred"} <= set(new["images"][0])
    assert sum(new["class_mix"]["estimated"]) == pytest.approx(1)
    # the reference was kept in the run folder, and is read back, not computed again
    kept = run / "shift" / "reference.safetensors"
    stamp = kept.stat().st_mtime_ns
    shift_report(run, alike, progress=False, power_repeats=2)
    assert kept.stat().st_mtime_ns == stamp


def test_shift_leaves_out_copies_of_the_runs_images(phantom_run, tmp_path: Path) -> None:
    run, alike, _ = phantom_run
    mixed = tmp_path / "mixed"
    shutil.copytree(alike, mixed)
    split = (run / "split.csv").read_text().splitlines()[2:]
    trained = [line.split(",")[0] for line in split if line.split(",")[-1] == "train"][:3]
    data_root = Path(json.loads((run / "model_card.json").read_text())["data"]["root"])
    for k, rel in enumerate(trained):
        cls = rel.split("/")[0]
        shutil.copy(data_root / rel, mixed / cls / "images" / f"copy-{k}.png")
    r = shift_report(run, mixed, progress=False, power_repeats=2)
    base = shift_report(run, alike, progress=False, power_repeats=2)["left_out"]["copies"]
    assert r["left_out"]["copies"] == base + 3 and r["n"] + r["left_out"]["copies"] == 43


def test_shift_cli_writes_reports_and_refuses_bad_input(phantom_run, tmp_path: Path,
                                                        capsys) -> None:  # fmt: skip
    run, _, shifted = phantom_run
    out = tmp_path / "r" / "shift.json"
    args = ["shift", str(run), "--data", str(shifted), "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shift detected" in text and "Accuracy estimated without labels" in text
    report = json.loads(out.read_text())
    assert report["two_sample"]["test"] == "ks" and "_plot" not in report
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 1000
    empty = tmp_path / "empty" / "site"
    empty.mkdir(parents=True)
    assert main(["shift", str(run), "--data", str(empty.parent), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrlab: error:") and len(err.strip().splitlines()) == 1
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in sorted(shifted.rglob("*.png"))[:3]:
        shutil.copy(f, loose / f.name)
    assert main(["shift", str(run), "--data", str(loose), "--no-progress"]) == 2
    assert "holds its images directly; put them in one folder below it" in capsys.readouterr().err
    assert main(["shift", str(run), "--data", str(shifted), "--test", "t", "--no-progress"]) == 2
    assert "Unknown test 't'" in capsys.readouterr().err
    busy = tmp_path / "busy"
    shutil.copytree(run, busy)
    (busy / "metrics.json").unlink()
    (busy / "checkpoint.pt").write_bytes(b"x")
    assert main(["shift", str(busy), "--data", str(shifted), "--no-progress"]) == 2
    assert "has not finished training" in capsys.readouterr().err
