"""--log tensorboard / mlflow: what was logged is read back from the event files and the store."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from cxrlab.cli import main
from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import ConfigError, CxrlabError, TrainingInterrupted
from cxrlab.study import parse_study_config, run_study
from cxrlab.training import train

from conftest import TINY_STUDY, tiny_config

pytest.importorskip("tensorboard", reason="pip install 'cxrlab[tensorboard]'")
pytest.importorskip("mlflow", reason="pip install 'cxrlab[mlflow]'")

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return write_synthetic_dataset(out, per_class=8, seed=2, size=40, progress=False)


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def _history(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _hparams(folder: Path) -> dict[str, object]:
    """The hyperparameters TensorBoard's HParams view shows for the run in ``folder``."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _events(folder).PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    out: dict[str, object] = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def test_tensorboard_and_mlflow_receive_the_run(phantoms: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "tracking"
    names = {"log_dir": str(log_dir), "log_name": "tiny-run", "log_experiment": "tests"}
    cfg = tiny_config(phantoms, epochs=2, lr=3e-3, log="tensorboard,mlflow", **names)
    result = train(cfg, tmp_path / "run")
    history = _history(result.run_dir)
    # TensorBoard: per-epoch scalars equal history.csv; test metrics; figures; hparams
    acc = _events(log_dir / "tiny-run")
    tags = acc.Tags()
    for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"),
                     ("accuracy/val", "val_acc"), ("lr", "lr")):  # fmt: skip
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-4)
    test_acc = acc.Scalars("test/accuracy")[-1].value
    assert test_acc == pytest.approx(result.metrics["accuracy"], abs=1e-6)
    assert {"loss", "confusion_matrix", "reliability"} <= set(tags["images"])
    hp = _hparams(log_dir / "tiny-run")
    assert hp["lr"] == pytest.approx(3e-3) and hp["model"] == "resnet18"
    assert hp["weights_source"].startswith("none") and hp["train_images"] > 0
    # MLflow: params, metric histories, final metrics, the run folder as artifacts
    client = MlflowClient(tracking_uri=f"sqlite:///{log_dir.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.003" and run.data.params["epochs"] == "2"
    val_loss = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in sorted(val_loss, key=lambda m: m.step)] == [1, 2]
    assert [m.value for m in sorted(val_loss, key=lambda m: m.step)] == pytest.approx(
        [h["val_loss"] for h in history],
        rel=1e-5,  # history.csv keeps 6 digits
    )
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.metrics["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model_card.json", "metrics.json", "history.csv", "model.safetensors"} <= artifacts
    state = json.loads((result.run_dir / "tracking.json").read_text())
    assert state["mlflow_run_id"] == run.info.run_id


def test_default_places_and_resume_continues_the_mlflow_run(phantoms: Path,
                                                            tmp_path: Path) -> None:  # fmt: skip
    cfg = tiny_config(phantoms, epochs=3, log="tensorboard,mlflow")

    def kill(epoch: int, step: int, model) -> None:
        if (epoch, step) == (1, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "run", on_step=kill)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("cxrlab").experiment_id])
    assert run.info.status == "KILLED" and run.info.run_name == "run"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    train(cfg, tmp_path / "run", resume=True)
    (run,) = client.search_runs([client.get_experiment_by_name("cxrlab").experiment_id])
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert steps == [1, 2, 3]  # one MLflow run, every epoch once
    tb = tmp_path / "run" / "tensorboard"  # default: inside the run folder
    assert sorted({e.step for e in _events(tb).Scalars("loss/val")}) == [1, 2, 3]


def test_missing_tracker_library_is_one_line(phantoms: Path, tmp_path: Path, monkeypatch,
                                             capsys) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(CxrlabError, match=r"pip install 'cxrlab\[mlflow\]'"):
        train(tiny_config(phantoms, log="mlflow"), tmp_path / "run")
    assert not (tmp_path / "run" / "split.csv").exists()  # refused before any work
    code = main(["train", "--data", str(phantoms), "--out", str(tmp_path / "cli"),
                 "--log", "mlflow", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "cxrlab[mlflow]" in err
    with pytest.raises(ConfigError, match="unknown tracker 'wandb'"):
        tiny_config(phantoms, log="tensorboard,wandb")


def test_study_cells_share_one_tracking_folder(phantoms: Path, tmp_path: Path) -> None:
    """Each cell is a run in <study>/tracking: one HParams table compares the cells."""
    study = parse_study_config(TINY_STUDY.format(data=phantoms).replace("seeds = 2", "seeds = 1"))
    run_study(study, tmp_path / "study", progress=False, log="tensorboard")
    tracking = tmp_path / "study" / "tracking"
    cells = sorted(p.name for p in tracking.iterdir())
    assert cells == sorted(c.id for c in study.cells) and len(cells) == 2
    freezes = {_hparams(tracking / c)["freeze"] for c in cells}
    assert freezes == {"none", "0.5"}
