"""``cxrlab shift``: does a set of new images look like a run's data, and how will it do there?

:func:`shift_report` reads a folder of new images (class folders, or one folder of a site's
unlabelled images), prepares them as the run's were, leaves out copies of the run's
training and validation images and other images of its patients (as every held-out score
does), and reports:

* per image: every signal's score, the chosen signal's ``ood_score`` and ``ood`` (above the
  threshold fitted on the run's validation images at the keep rate);
* the share of images flagged, against the ``1 - keep`` expected in distribution;
* a two-sample test of the set against the run's validation images (statistic, p-value,
  ``shift_detected`` at ``alpha``) and its power on random batches of 10 to 200 images;
* the predicted class mix, the class mix estimated by black-box shift estimation, and the
  training one;
* the accuracy estimated without labels (ATC) with its interval, and where the folders name
  classes the model knows, the true accuracy beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data import PreparedData
from ..errors import CheckpointError, CxrlabError, DataError
from ..runs.scoring import Preparation
from ..utils import atomic_write_text, write_json
from .batch import TESTS, class_mix, detection_power, estimated_accuracy, two_sample_test
from .reference import (
    COMBINED,
    DEFAULT_KEEP,
    Detector,
    ImageEvidence,
    Reference,
    image_evidence,
    reference,
)
from .signals import SIGNALS, detection_auroc

__all__ = [
    "DEFAULT_SIGNAL",
    "POWER_SIZES",
    "format_shift",
    "holdout_shift",
    "model_labels",
    "prepare_site",
    "shift_report",
    "shift_summary",
    "write_shift_report",
]

#: The batch sizes whose detection and false-alarm rates a report gives.
POWER_SIZES = (10, 25, 50, 100)
#: The signal behind ``ood_score`` unless another is asked for.
DEFAULT_SIGNAL = COMBINED


def model_labels(classes: list[str], dataset_classes: tuple[str, ...],
            class_map: dict[str, str] | None) -> dict[str, int | None]:  # fmt: skip
    """Each dataset class's model class index, or ``None`` (unscored, or unlabelled: a
    site's folder).

    Raises:
        CheckpointError: the class map names a class the data does not have, or maps one to
            a class the model does not know.
    """
    from ..evaluation.other_data import match_classes

    matching = match_classes(dataset_classes, classes, class_map, unknown_unscored=True)
    return {c: None if t is None else classes.index(t) for c, t in matching.items()}


def prepare_site(run: Any, data: str | os.PathLike[str], preparation: Preparation,
                 *, progress: bool = True, **split: Any) -> PreparedData:  # fmt: skip
    """A site's images prepared as ``run``'s were: class folders, or one folder of
    unlabelled images; with ``split`` (``ratios``, ``split_seed``, ...) a drawn split, else
    every image as test.

    Raises:
        DataError: the folder holds no usable image; images lying loose in the folder
            itself (they need a folder of their own below it).
    """
    from ..data import prepare_data
    from ..data.layout import is_ignored_file

    prep = preparation.replace(doubtful="skip")
    try:
        if split:
            return prepare_data(data, progress=progress, min_classes=1, **split, **prep.kwargs())
        return run.prepare(data, "all", preparation=prep, min_classes=1, progress=progress)
    except DataError:
        folder = Path(data)
        loose = folder.is_dir() and any(
            f.is_file() and not is_ignored_file(f.name) for f in folder.iterdir()
        )
        if loose and not any(f.is_dir() for f in folder.iterdir()):
            raise DataError(
                f"{folder} holds its images directly; put them in one folder below it (e.g. "
                f"{folder / 'images'}), or in one folder per class"
            ) from None
        raise


def shift_report(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | PreparedData,
    *,
    split: str = "all",
    class_map: dict[str, str] | None = None,
    signal: str = DEFAULT_SIGNAL,
    test: str = "ks",
    keep: float = DEFAULT_KEEP,
    alpha: float = 0.05,
    sizes: tuple[int, ...] = POWER_SIZES,
    power_repeats: int = 30,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The shift report of ``data`` against the run in ``run_dir`` (see the module docstring).

    Args:
        data: a folder of new images (class folders, or one folder of a site's images), or
            data already prepared as the run's images were (a held-out source's split).
        split: with prepared data, the part of its split to judge (``all``: every image).
        sizes: the batch sizes whose detection rate is reported (and the in-distribution
            false-alarm rate, on batches of the run's own test images).

    Raises:
        CxrlabError: the run is not one finished run; the folder holds no image; every image
            copies the run's data; an unknown signal or test.
    """
    from ..runs.folder import load_run_model
    from ..runs.scoring import open_run

    if signal not in (*SIGNALS, COMBINED):
        raise CxrlabError(f"Unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}, "
                          f"{COMBINED}")  # fmt: skip
    if test not in TESTS:
        raise CxrlabError(f"Unknown test {test!r}; choose one of {', '.join(TESTS)}")
    run = open_run(run_dir)
    ref = reference(run_dir, device=device, progress=progress)
    detector = Detector.fit(ref, keep)
    if not isinstance(data, PreparedData):
        data = prepare_site(run, data, run.preparation(), progress=progress)
        split = "all"
    prepared = run.prepare(data)  # checks the size and lungs mode of prepared data
    rows = prepared.split.indices(split)
    if run.is_own_data(prepared):
        raise CheckpointError(f"{prepared.report.root} is the data {run_dir} trained on; give "
                              "other images")  # fmt: skip
    seen = run.not_held_out(prepared, rows, progress=progress)
    keep_rows = np.array([i for i in rows if prepared.split.records[i].path not in seen.paths])
    if not len(keep_rows):
        raise CheckpointError(
            f"Every image of {prepared.report.root} copies {run_dir}'s training or validation "
            "images, or shows one of its patients: nothing is new there"
        )
    model, card = load_run_model(run_dir)
    ev = image_evidence(model, prepared.images.array[keep_rows], card.temperature, device=device)
    scores = detector.scores(ev)
    ood = scores[signal] > detector.thresholds[signal]
    records = [prepared.split.records[i] for i in keep_rows]
    to_label = model_labels(run.classes, prepared.classes, class_map)
    y = np.array([-1 if to_label[r.label] is None else to_label[r.label] for r in records])
    labelled = y >= 0
    right = ev.probs.argmax(1)[labelled] == y[labelled]
    est = estimated_accuracy(ref.val.probs, ref.val_labels, ev.probs, seed=seed)
    k = len(run.classes)
    images = [
        {
            "path": r.path,
            "ood_score": float(scores[signal][j]),
            "ood": bool(ood[j]),
            "pred": run.classes[int(ev.probs[j].argmax())],
            **{f"score_{s}": float(v[j]) for s, v in scores.items()},
        }
        for j, r in enumerate(records)
    ]
    result: dict[str, Any] = {
        "run": str(run_dir),
        "data": str(prepared.report.root),
        "split": split,
        "n": len(records),
        "left_out": {
            "copies": len(seen.copies),
            "patients": len(seen.patients),
            "pretraining": len(seen.pretrained),
        },
        "signal": signal,
        "keep": keep,
        "threshold": detector.thresholds[signal],
        "flagged_share": float(ood.mean()),
        "expected_flagged_share": 1 - keep,
        "signals": _signal_table(detector, scores, ref),
        "two_sample": _batch(ref, ev, test, alpha, sizes, power_repeats, seed),
        "class_mix": {
            "classes": list(run.classes),
            "training": (
                np.bincount(ref.train_labels, minlength=k) / len(ref.train_labels)
            ).tolist(),
            "predicted": (np.bincount(ev.probs.argmax(1), minlength=k) / len(ev.probs)).tolist(),
            "estimated": class_mix(ref.val.probs, ref.val_labels, ev.probs).tolist(),
        },
        "estimated_accuracy": est["estimate"],
        "estimated_accuracy_ci": est["ci"],
        "estimated_accuracy_method": est["method"],
        "true_accuracy": float(right.mean()) if labelled.any() else None,
        "n_labelled": int(labelled.sum()),
        "control": _control(ref, test, alpha, sizes, power_repeats, seed),
        "images": images,
        "_plot": {"val": detector.val_scores[signal], "new": scores[signal]},
    }
    return result


def _signal_table(detector: Detector, scores: dict[str, np.ndarray],
                  ref: Reference) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per signal: the share flagged, its threshold, medians, and where the run has test
    images, the share of them flagged and how well the signal tells the new images from
    them (``auroc``: new images against in-distribution ones never used to fit it)."""
    control = detector.scores(ref.test) if ref.test is not None else None
    out: dict[str, dict[str, Any]] = {}
    for s, v in scores.items():
        row: dict[str, Any] = {
            "flagged_share": float((v > detector.thresholds[s]).mean()),
            "threshold": detector.thresholds[s],
            "median": float(np.median(v)),
            "val_median": float(np.median(detector.val_scores[s])),
        }
        if control is not None:
            row["test_flagged_share"] = float((control[s] > detector.thresholds[s]).mean())
            row["auroc"] = detection_auroc(control[s], v)
        out[s] = row
    return out


def _sides(ref: Reference, ev: ImageEvidence, test: str) -> tuple[np.ndarray, np.ndarray]:
    """What ``test`` compares: probabilities (``ks``) or features, reference then new."""
    if test == "ks":
        return ref.val.probs, ev.probs
    return ref.val.features, ev.features


def _batch(ref: Reference, ev: ImageEvidence, test: str, alpha: float, sizes: tuple[int, ...],
           repeats: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """The two-sample test of the whole set against the validation images, and its power."""
    fn = two_sample_test(test)
    a, b = _sides(ref, ev, test)
    stat, p = fn(a, b, seed=seed)
    out = {"test": test, "statistic": stat, "p_value": p, "alpha": alpha,
           "shift_detected": bool(p < alpha), "reference": "validation",
           "n_reference": len(ref.val_labels)}  # fmt: skip
    return out | detection_power(fn, a, b, sizes, repeats=repeats, alpha=alpha, seed=seed)


def _control(ref: Reference, test: str, alpha: float, sizes: tuple[int, ...], repeats: int,
             seed: int) -> dict[str, Any] | None:  # fmt: skip
    """The same on the run's own test images (in distribution): how often the batch test
    raises a false alarm, and how close the accuracy estimate comes where the truth is
    known."""
    if ref.test is None or ref.test_labels is None:
        return None
    a, b = _sides(ref, ref.test, test)
    alarms = detection_power(two_sample_test(test), a, b, sizes, repeats=repeats, alpha=alpha,
                             seed=seed)  # fmt: skip
    est = estimated_accuracy(ref.val.probs, ref.val_labels, ref.test.probs, seed=seed)
    return {
        "n": len(ref.test_labels),
        "false_alarm": alarms["power"],
        "estimated_accuracy": est["estimate"],
        "estimated_accuracy_ci": est["ci"],
        "true_accuracy": float((ref.test.probs.argmax(1) == ref.test_labels).mean()),
    }


def format_shift(r: dict[str, Any]) -> str:
    """The report as Markdown."""
    two = r["two_sample"]
    mix = r["class_mix"]
    lines = [
        f"# Shift report: {r['data']}",
        "",
        f"Run: {r['run']}. {r['n']} new images scored ({r['left_out']['copies']} copies of the "
        f"run's training or validation images and {r['left_out']['patients']} other images of "
        "its patients left out).",
        "",
        f"- **Flagged as unlike the training data** ({r['signal']} signal): "
        f"{r['flagged_share']:.1%} of images, against {r['expected_flagged_share']:.0%} of "
        "the run's validation images.",
        f"- **Batch test** ({two['test']}, against {two['n_reference']} validation images): "
        f"statistic {two['statistic']:.4g}, p = {two['p_value']:.3g}: "
        + ("**shift detected**" if two["shift_detected"] else "no shift detected")
        + f" at alpha {two['alpha']}. Smallest batch flagged 80 % of the time: "
        + (f"{two['min_batch']} images" if two["min_batch"] else "none up to the set's size")
        + ".",
        f"- **Accuracy estimated without labels** (ATC): {r['estimated_accuracy']:.3f} "
        f"[{r['estimated_accuracy_ci'][0]:.3f}, {r['estimated_accuracy_ci'][1]:.3f}]"
        + (f"; true accuracy on the {r['n_labelled']} labelled images: "
           f"{r['true_accuracy']:.3f}" if r["true_accuracy"] is not None else "")
        + ".",
        "",
        "| class | training mix | predicted here | estimated here (BBSE) |",
        "|---|---|---|---|",
        *(f"| {c} | {a:.3f} | {b:.3f} | {e:.3f} |" for c, a, b, e in
          zip(mix["classes"], mix["training"], mix["predicted"], mix["estimated"])),
        "",
        "| signal | flagged here | flagged on the run's test images | AUROC, here vs test "
        "images | threshold | median here | median on validation |",
        "|---|---|---|---|---|---|---|",
        *(f"| {s} | {v['flagged_share']:.1%} | {_pct(v.get('test_flagged_share'))} | "
          f"{_num(v.get('auroc'))} | {v['threshold']:.4g} | {v['median']:.4g} | "
          f"{v['val_median']:.4g} |" for s, v in r["signals"].items()),
        "",
        "Batch test flags random batches of these images (power): "
        + ", ".join(f"{n}: {p:.0%}" for n, p in two["power"].items()) + ".",
    ]  # fmt: skip
    control = r.get("control")
    if control:
        lines += [
            f"On batches of the run's own test images (in distribution, {control['n']} "
            "images) it raises a false alarm: "
            + ", ".join(f"{n}: {p:.0%}" for n, p in control["false_alarm"].items())
            + f". There, the accuracy estimated without labels is "
            f"{control['estimated_accuracy']:.3f} [{control['estimated_accuracy_ci'][0]:.3f}, "
            f"{control['estimated_accuracy_ci'][1]:.3f}] against a true "
            f"{control['true_accuracy']:.3f}.",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def shift_summary(r: dict[str, Any]) -> dict[str, Any]:
    """A report without its per-image rows (what a held-out source's scores keep)."""
    return {k: v for k, v in r.items() if k not in ("images", "_plot")}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def write_shift_report(r: dict[str, Any], out: str | os.PathLike[str]) -> list[Path]:
    """Write ``out`` (JSON), the Markdown beside it and a figure of the scores; the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = r.get("_plot", {})
    write_json(out, {k: v for k, v in r.items() if k != "_plot"})  # the images kept
    md = out.with_suffix(".md")
    atomic_write_text(md, format_shift(r))
    fig_path = out.with_suffix(".png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    both = np.r_[plot["val"], plot["new"]]
    bins = np.linspace(both.min(), both.max(), 40)
    ax.hist(plot["val"], bins=bins, alpha=0.6, density=True, label="run's validation images")
    ax.hist(plot["new"], bins=bins, alpha=0.6, density=True, label="new images")
    ax.axvline(r["threshold"], color="k", ls="--", lw=1, label=f"threshold (keep {r['keep']:.0%})")
    ax.set_xlabel(f"{r['signal']} score (higher: further from the training data)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_path, dpi=120)
    plt.close(fig)
    return [out, md, fig_path]


def holdout_shift(
    run_dir: str | os.PathLike[str], prepared: PreparedData, split: str, progress: bool = True
) -> dict[str, Any]:
    """Would the run have seen a held-out source coming? The shift report of that source's
    ``split`` without per-image rows (:func:`shift_summary`); ``{"error": ...}`` where it
    cannot be made. ``holdout.json`` keeps it under each split's ``shift``."""
    try:
        return shift_summary(shift_report(run_dir, prepared, split=split, progress=progress))
    except CxrlabError as e:
        return {"error": str(e)}
