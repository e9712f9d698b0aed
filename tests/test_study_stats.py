import numpy as np
import pytest

from cxrlab.study.report.results import Comparison
from cxrlab.study.stats import (
    TwoLevelResult,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    seeds_needed,
    t_interval,
    two_level_bootstrap,
    wilson_interval,
)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_t_interval_known_values() -> None:
    low, high = t_interval([0.90, 0.92, 0.94])
    # mean 0.92, sd 0.02, t(0.975, 2) = 4.3027
    assert low == pytest.approx(0.92 - 4.3027 * 0.02 / np.sqrt(3), abs=1e-4)
    assert high == pytest.approx(0.92 + 4.3027 * 0.02 / np.sqrt(3), abs=1e-4)
    assert all(np.isnan(t_interval([0.9])))


def test_mcnemar_exact() -> None:
    a = np.array([True] * 10 + [True] * 5 + [False] * 5)
    b = np.array([False] * 10 + [True] * 5 + [False] * 5)
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == (10, 0)
    assert p == pytest.approx(2 * 0.5**10)  # exact two-sided binomial
    assert mcnemar_exact(a, a)[2] == 1.0
    _, _, p_balanced = mcnemar_exact(np.array([True, False] * 5), np.array([False, True] * 5))
    assert p_balanced == pytest.approx(1.0)


def test_holm_known_values() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.02, 0.9]) == pytest.approx([0.04, 0.9])


def test_paired_bootstrap() -> None:
    same = np.array([True, False] * 50)
    assert paired_bootstrap(same, same) == (0.0, (0.0, 0.0), 1.0)
    right, wrong = np.ones(100, bool), np.zeros(100, bool)
    diff, (low, high), p = paired_bootstrap(right, wrong, n_resamples=500)
    assert diff == 1.0 and low == high == 1.0 and p == pytest.approx(1 / 501)
    # two seeds per arm are averaged per image: A is right on 60 %, B on 55 % of images
    rng = np.random.default_rng(0)
    a = np.stack([rng.random(400) < 0.6 for _ in range(2)])
    b = np.stack([rng.random(400) < 0.55 for _ in range(2)])
    diff, (low, high), p = paired_bootstrap(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert low < diff < high and 0 < p <= 1
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones(3, bool), np.ones(4, bool))


def _runs(rng: np.random.Generator, seeds: int, difficulty: np.ndarray, shift: float = 0.0,
          seed_sd: float = 0.6) -> np.ndarray:  # fmt: skip
    """``(seeds, images)`` correctness of one training type: image difficulty shared with the
    other type, a whole-run offset per seed (training noise) and per-run image noise."""
    run = rng.normal(0, seed_sd, (seeds, 1))
    noise = rng.normal(0, 0.8, (seeds, len(difficulty)))
    p = 1 / (1 + np.exp(-(difficulty + shift + run + noise)))
    return rng.random(p.shape) < p


def test_two_level_bootstrap_counts_training_noise() -> None:
    """Equal types, noisy seeds: the image-only bootstrap calls differences that are not
    there; the two-level one keeps its false-positive rate near 5 %, and still finds a large
    consistent difference."""
    rng = np.random.default_rng(1)
    draws, false_two, false_image, found = 150, 0, 0, 0
    for k in range(draws):
        difficulty = rng.normal(1.5, 1.2, 300)
        a, b = _runs(rng, 5, difficulty), _runs(rng, 5, difficulty)
        false_two += two_level_bootstrap(a, b, n_resamples=500, seed=k).p < 0.05
        false_image += paired_bootstrap(a, b, n_resamples=500, seed=k)[2] < 0.05
        better = _runs(rng, 5, difficulty, shift=2.0)
        found += two_level_bootstrap(better, b, n_resamples=500, seed=k).p < 0.05
    assert false_image / draws > 0.4  # seeds that differ by chance look like a real gap
    assert false_two / draws <= 0.09, false_two / draws
    assert found / draws >= 0.9, found / draws


def test_two_level_bootstrap_known_cases() -> None:
    rng = np.random.default_rng(0)
    same = rng.random((3, 200)) < 0.7
    r = two_level_bootstrap(same, same, n_resamples=300)
    assert r.difference == 0.0 and r.p == pytest.approx(1.0)
    assert r.ci[0] < 0 < r.ci[1]
    # identical seeds within each arm: no training noise, so it matches the image-only test
    a = np.repeat((rng.random(400) < 0.8)[None], 3, axis=0)
    b = np.repeat((rng.random(400) < 0.7)[None], 3, axis=0)
    two = two_level_bootstrap(a, b, n_resamples=4000)
    diff, (low, high), _ = paired_bootstrap(a, b, n_resamples=4000)
    assert two.difference == pytest.approx(diff)
    assert two.seed_variance == (0.0, 0.0)
    assert two.ci[0] == pytest.approx(low, abs=0.01) and two.ci[1] == pytest.approx(high, abs=0.01)
    # per-run accuracies are reported, and arms may have different seed counts
    r = two_level_bootstrap(a[:2], b, n_resamples=100)
    assert r.seed_accuracy_a == pytest.approx((a[0].mean(), a[0].mean()))
    assert len(r.seed_accuracy_b) == 3
    with pytest.raises(ValueError, match="same test images"):
        two_level_bootstrap(np.ones((2, 3), bool), np.ones((2, 4), bool))


def test_seeds_needed() -> None:
    def result(diff: float, acc_a: tuple, acc_b: tuple, image_var: float = 0.0) -> TwoLevelResult:
        return TwoLevelResult(diff, (0, 0), 1, 0, 1, acc_a, acc_b, (0, 0), image_var)

    # pooled seed variance 0.0004 (sd 2 points), difference 2 points: 2 * s^2 * 7.85 / d^2
    r = result(0.02, (0.80, 0.82, 0.84), (0.78, 0.80, 0.82))
    assert seeds_needed(r) == int(np.ceil(2 * 0.0004 * (1.959964 + 0.841621) ** 2 / 0.02**2))
    assert seeds_needed(result(0.2, (0.80, 0.82), (0.60, 0.62))) == 3  # at least 3
    assert seeds_needed(result(0.0001, (0.7, 0.9), (0.7, 0.9))) == 101  # more than the cap
    assert seeds_needed(result(0.02, (0.8,), (0.78,))) is None  # spread not estimable
    assert seeds_needed(result(0.02, (0.8, 0.82), (0.78, 0.8), image_var=0.001)) is None


def _comparison(diff: float, ci: tuple, p: float, seeds: int, image_ci=(-0.1, 0.1)) -> Comparison:
    acc_a = {s: 0.8 + diff + 0.01 * s for s in range(seeds)}
    acc_b = {s: 0.8 for s in range(seeds)}
    return Comparison("m", "A", "B", diff, ci, p, p, acc_a, acc_b,
                      {s: (5, 3, 0.7) for s in range(seeds)}, 0.05, image_ci, p)  # fmt: skip


def test_verdict_orients_the_difference() -> None:
    worse_first = _comparison(-0.08, (-0.117, -0.047), 0.005, 3)
    assert worse_first.significant and worse_first.status == "significant"
    assert worse_first.verdict().startswith("m: 'B' beats 'A' by 8.0 accuracy points")
    assert "95% CI [+4.7, +11.7] over seeds and test images, 3 seeds each" in worse_first.verdict()
    tie = _comparison(0.012, (-0.01, 0.03), 0.5, 4)
    assert not tie.significant and "no significant difference" in tie.verdict()


def test_few_seeds_are_not_established() -> None:
    """Two seeds: a clear image-level difference is still not a verdict."""
    two = _comparison(0.05, (0.01, 0.09), 0.001, 2, image_ci=(0.02, 0.08))
    assert two.status == "not established" and not two.significant
    text = two.verdict()
    assert "not established" in text and "with 2 seeds per training type" in text
    assert "seed-level differences +5.0, +6.0" in text and "[+2.0, +8.0]" in text
    two.seeds_needed = 7
    assert "about 7 seeds per type" in two.verdict()


def test_failed_runs_are_flagged_and_verdicts_warn(tmp_path) -> None:
    from cxrlab.study.report.flags import run_flags

    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s\n"
        "1,1.3,0.40,1.20,0.30,0.001,1,10\n2,1.0,0.55,1.40,0.28,0.001,1,10\n"
        "3,0.8,0.68,1.90,0.27,0.001,1,10\n"
    )
    at_chance = {"n": 100, "accuracy": 0.27, "confusion_matrix": [[10, 15], [58, 17]]}
    flags = run_flags(run, at_chance)
    assert list(flags) == ["not above chance", "validation loss rose from epoch 1"]
    detail = list(flags.values())
    assert detail[0].startswith("test accuracy 0.270") and "not above chance (0.750" in detail[0]
    assert "lowest after epoch 1 (1.200) and rose to 1.900" in detail[1]
    good = {"n": 100, "accuracy": 0.9, "confusion_matrix": [[45, 5], [5, 45]]}
    (run / "history.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s\n"
        "1,1.3,0.40,1.20,0.30,0.001,1,10\n2,1.0,0.55,0.9,0.5,0.001,1,10\n"
        "3,0.8,0.68,0.8,0.6,0.001,1,10\n"
    )
    assert run_flags(run, good) == {}
    c = _comparison(0.4, (0.3, 0.5), 0.001, 3)
    c.flags = {"B": "not above chance in 2 of 3 seeds"}
    assert c.verdict().endswith("CAUTION: 'B' is a questionable baseline (not above chance in "
                                "2 of 3 seeds; see the flagged runs).")  # fmt: skip
