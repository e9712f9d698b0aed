import numpy as np
import pytest

from cxrlab.evaluation import classification_metrics, expected_calibration_error

CLASSES = ["a", "b", "c"]


def test_perfect_and_known_confusion() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[y] * 0.98 + 0.01
    m = classification_metrics(y, perfect, CLASSES)
    assert m["accuracy"] == 1.0 and m["auroc"] == 1.0 and m["macro_f1"] == 1.0
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]

    pred = np.array([0, 1, 1, 1, 2, 0])  # one a->b, one c->a
    m = classification_metrics(y, np.eye(3)[pred] * 0.7 + 0.1, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows true, cols pred
    assert m["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2, "auroc": 0.875}
    )
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_ece_on_a_constructed_case() -> None:
    # 10 predictions at confidence 0.9, 6 of them right: ECE = |0.6 - 0.9| = 0.3
    probs = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, y) == pytest.approx(0.3)
    # perfectly calibrated halves
    probs = np.array([[1.0, 0.0]] * 5 + [[0.5, 0.5]] * 4)
    y = np.array([0] * 5 + [0, 0, 1, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)


def test_absent_class_gives_none_auroc_not_a_crash() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics(y, probs, CLASSES)
    assert m["per_class"]["c"]["auroc"] is None and m["per_class"]["c"]["support"] == 0
    # nothing to count is not a score of 0: null, with the reason beside it
    absent = m["per_class"]["c"]
    assert absent["recall"] is None and absent["f1"] is None and absent["precision"] is None
    assert set(absent["why_null"]) == {"recall", "f1", "auroc", "precision"}
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2,
                                   "auroc": 1.0}  # fmt: skip
    assert m["auroc"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(y, probs[:, :2], CLASSES)


def test_temperature_scaling_lowers_nll_and_keeps_every_class() -> None:
    from scipy.special import softmax

    from cxrlab.evaluation.calibration import apply_temperature, fit_temperature, nll

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (2000, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])  # calibrated at T=1
    overconfident = softmax(3 * logits, axis=1)  # the same model, three times too sure
    t = fit_temperature(overconfident[:1000], y[:1000])  # fitted on a "validation" half
    assert t == pytest.approx(3.0, rel=0.15)
    after = apply_temperature(overconfident, t)
    assert nll(after[:1000], y[:1000]) < nll(overconfident[:1000], y[:1000])
    assert nll(after[1000:], y[1000:]) < nll(overconfident[1000:], y[1000:])  # and held out
    assert (after.argmax(1) == overconfident.argmax(1)).all()  # no prediction changes
    assert fit_temperature(softmax(logits, axis=1), y) == pytest.approx(1.0, rel=0.15)


def test_files_other_programs_read_are_strict_json(tmp_path) -> None:
    """NaN and infinities become null with the reason beside them; a producer's own reason
    wins; numpy values become plain numbers; the written text parses with a strict parser."""
    import json

    from cxrlab.utils import UNDEFINED, strict_json, write_json

    obj = {"auroc": float("nan"), "ci": (0.1, np.float32("inf")), "n": np.int64(3),
           "per_class": {"COVID": {"recall": np.float64("nan")}},
           "cka": float("nan"), "why_null": {"cka": "no starting weights"}}  # fmt: skip
    out = strict_json(obj)
    assert out["auroc"] is None and out["ci"] == [0.1, None] and out["n"] == 3
    assert out["why_null"] == {"cka": "no starting weights", "auroc": UNDEFINED, "ci": UNDEFINED}
    assert out["per_class"]["COVID"] == {"recall": None, "why_null": {"recall": UNDEFINED}}
    write_json(tmp_path / "x.json", obj)

    def refuse(token: str) -> None:
        raise ValueError(token)

    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse) == out
