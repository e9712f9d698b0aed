import numpy as np
import pytest

from cxrlab.study.stats import holm, mcnemar_exact, paired_bootstrap, t_interval, wilson_interval


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


def test_verdict_orients_the_difference() -> None:
    from cxrlab.study.report.results import Comparison

    worse_first = Comparison("m", "A", "B", -0.08, (-0.117, -0.047), 0.001, 0.005, (1, 9, 0.02),
                             2, 0.05)  # fmt: skip
    assert worse_first.significant
    assert worse_first.verdict().startswith("m: 'B' beats 'A' by 8.0 accuracy points")
    assert "95% CI [+4.7, +11.7]" in worse_first.verdict()
    tie = Comparison("m", "A", "B", 0.012, (-0.01, 0.03), 0.3, 0.5, (4, 3, 1.0), 2, 0.05)
    assert not tie.significant and "no significant difference" in tie.verdict()
