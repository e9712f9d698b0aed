"""The typed model card: written and read back unchanged, older cards upgraded, newer and
broken ones refused in one line; one way to open a run for scoring."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import CheckpointError
from cxrlab.infer import load
from cxrlab.runs import (
    EnsembleCard,
    RunCard,
    evaluate_run,
    load_card,
    load_run_model,
    open_run,
    read_card,
)
from cxrlab.runs.ensemble import write_ensemble
from cxrlab.training import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("card")
    data = write_synthetic_dataset(base / "ph", per_class=6, seed=2, size=40, progress=False)
    out = {}
    for name, size in (("a", 32), ("b", 32), ("wide", 40)):
        cfg = TrainConfig(data=str(data), model="resnet18", weights="none", image_size=size,
                          epochs=1, batch_size=8, progress=False, precision="fp32",
                          seed=len(out))  # fmt: skip
        out[name] = train(cfg, base / name).run_dir
    return out


def test_a_card_reads_back_to_the_file_it_was_written_as(runs: dict[str, Path]) -> None:
    path = runs["a"] / "model_card.json"
    card = read_card(path)
    assert isinstance(card, RunCard) and card == load_card(runs["a"])
    assert json.loads(json.dumps(card.to_dict())) == json.loads(path.read_text())
    # typed facts, not string keys
    assert card.image_size == 32 and card.lungs == "keep" and card.classes[0] == "COVID"
    assert card.training.config.model == "resnet18" and card.training.config.ratios == (
        0.7,
        0.15,
        0.15,
    )
    assert card.temperature == card.calibration.temperature > 0
    model, again = load_run_model(runs["a"])
    logits = model(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    assert again == card and logits.shape == (1, len(card.classes))


def test_an_older_card_is_upgraded_and_its_run_still_scores(runs: dict[str, Path],
                                                             tmp_path: Path) -> None:  # fmt: skip
    """A card from before lungs modes, segmenters, sources, calibration and newer settings:
    those parts read as they were before they existed, and the run scores as before."""
    old = tmp_path / "old"
    shutil.copytree(runs["a"], old)
    raw = json.loads((old / "model_card.json").read_text())
    for key in ("lungs", "masks_from", "doubtful", "left_out", "sources"):
        del raw["data"][key]
    for key in ("balance", "holdout_source", "sources_csv", "class_map", "doubtful"):
        del raw["training"]["config"][key]
    del raw["training"]["test_accuracy"], raw["calibration"]
    (old / "model_card.json").write_text(json.dumps(raw))
    card = load_card(old)
    assert card.lungs == "keep" and card.data.doubtful == "refuse" and card.data.left_out == 0
    assert card.data.segmenter is None and card.calibration is None and card.temperature == 1.0
    assert card.training.config.balance == "none" and card.training.test_accuracy is None
    own = json.loads((runs["a"] / "metrics.json").read_text())
    assert evaluate_run(old, progress=False)["accuracy"] == own["accuracy"]


def test_newer_broken_and_foreign_cards_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    raw = json.loads((runs["a"] / "model_card.json").read_text())
    cases = {
        "newer": ({**raw, "format": "cxrlab-model-card/2"}, "newer cxrlab"),
        "foreign": ({**raw, "format": "someone-else/1"}, "not a cxrlab model card"),
        "no data": ({k: v for k, v in raw.items() if k != "data"}, "has no 'data'"),
        "list": ([1, 2], "not a JSON object"),
        "bad config": ({**raw, "training": {**raw["training"],
                                            "config": {**raw["training"]["config"],
                                                       "epochs": "ten"}}},
                       "training.config cannot be read"),
    }  # fmt: skip
    for name, (content, message) in cases.items():
        path = tmp_path / name / "model_card.json"
        path.parent.mkdir()
        path.write_text(json.dumps(content))
        with pytest.raises(CheckpointError, match=message) as info:
            read_card(path)
        assert "\n" not in str(info.value), name
    (tmp_path / "text" / "model_card.json").parent.mkdir()
    (tmp_path / "text" / "model_card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(tmp_path / "text" / "model_card.json")


def test_open_run_for_a_run_an_ensemble_and_several_runs(runs: dict[str, Path],
                                                         tmp_path: Path) -> None:  # fmt: skip
    one = open_run(runs["a"])
    assert not one.ensemble and one.members == (runs["a"],) and one.image_size == 32
    from cxrlab.runs.scoring import Preparation

    prep = one.preparation()  # one value: the preparation, and the key of a cache of it
    assert prep == Preparation(32, "keep", "refuse") and prep.key == (32, "keep", "refuse", "")
    assert prep.kwargs() == {"image_size": 32, "lungs": "keep", "doubtful": "refuse",
                             "mask_provider": None}  # fmt: skip
    assert prep.replace(doubtful="skip").key == (32, "keep", "skip", "")
    ens = write_ensemble([runs["a"], runs["b"]], tmp_path / "ens")
    card = read_card(ens / "model_card.json")
    assert isinstance(card, EnsembleCard) and [m.seed for m in card.members] == [0, 1]
    opened = open_run(ens)
    assert opened.ensemble and [p.name for p in opened.members] == ["a", "b"]
    both = open_run([runs["a"], runs["b"]])
    assert both.ensemble and both.card.classes == card.classes
    # the same images, prepared once, for the ensemble folder and the two runs given
    prepared = one.prepare(progress=False)
    rows = prepared.split.indices("test")
    assert len(rows) == json.loads((runs["a"] / "metrics.json").read_text())["n"]
    images = [prepared.report.root / prepared.split.records[i].path for i in rows[:3]]
    np.testing.assert_allclose(load(ens).predict_many(images),
                               load([runs["a"], runs["b"]]).predict_many(images))  # fmt: skip
    # runs that cannot be averaged: refused in one line, naming what differs
    with pytest.raises(CheckpointError, match="other input size"):
        open_run([runs["a"], runs["wide"]])
    # one check for every use of several runs: the reuse analysis's too, lungs mode included
    import dataclasses

    from cxrlab.runs.ensemble import check_members

    first = load_card(runs["a"])
    other = dataclasses.replace(first, data=dataclasses.replace(first.data, lungs="remove"))
    with pytest.raises(CheckpointError, match=r"other lungs mode .*same images"):
        check_members([runs["a"], runs["b"]], [first, other], "compared on the same images")
    with pytest.raises(CheckpointError, match="ensemble folder, not one run"):
        load_card(ens)


def test_dict_reads_of_a_card_still_work_but_warn(runs: dict[str, Path]) -> None:
    card = load_card(runs["a"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert card["classes"] == list(card.classes)
        assert card.get("calibration")["temperature"] == card.temperature
    assert [w.category for w in caught] == [DeprecationWarning] * 2


def test_run_dir_names_every_file_and_reads_typed_metrics(runs: dict[str, Path],
                                                          tmp_path: Path) -> None:  # fmt: skip
    """RunDir: the files where the trainer wrote them, finished or not, the card and split
    read back; metrics.json typed and back to the very file; a metrics file that lacks a
    field every run has, and an unfinished run, refused in one line."""
    from cxrlab import run_files
    from cxrlab.runs import RunDir, RunMetrics

    run = RunDir(runs["a"])
    for name in ("card_file", "model_file", "config_file", "metrics_file", "split_file",
                 "history_file", "predictions_file"):  # fmt: skip
        assert getattr(run, name).is_file(), name
    assert run.finished and not run.interrupted and not run.checkpoint_file.exists()
    assert run.card() == load_card(runs["a"]) and len(run.split().records) > 0
    raw = json.loads(run.metrics_file.read_text())
    scores = run.scores()
    assert isinstance(scores, RunMetrics) and scores.to_dict() == raw == run.metrics()
    assert scores.correct == round(raw["accuracy"] * raw["n"]) and scores.extra == {}
    later = RunMetrics.from_dict(raw | {"new_field": 1})  # a later cxrlab's field is kept
    assert later.extra == {"new_field": 1} and later.to_dict() == raw | {"new_field": 1}
    busy = tmp_path / "busy"
    shutil.copytree(runs["a"], busy)
    (busy / run_files.METRICS).unlink()
    (busy / run_files.CHECKPOINT).write_bytes(b"x")
    assert RunDir(busy).interrupted and not RunDir(busy).finished
    with pytest.raises(CheckpointError, match="not a finished run"):
        RunDir(busy).scores()
    (busy / run_files.METRICS).write_text(json.dumps({k: v for k, v in raw.items() if k != "n"}))
    with pytest.raises(CheckpointError, match="not a readable metrics file"):
        RunDir(busy).scores()
