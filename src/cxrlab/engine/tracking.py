"""Experiment tracking: a run's numbers in TensorBoard and MLflow, beside its run folder.

The run folder stays the record (``history.csv``, ``metrics.json``, the card); trackers copy
what the field's dashboards show. ``--log tensorboard`` writes, per run,

- scalars per epoch (``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val``,
  ``lr``, ``speed/images_per_s``) and the test metrics (``test/*``);
- the loss curves, confusion matrix and reliability diagram as images;
- the hyperparameters with the final metrics (``hparams/*``), so that TensorBoard's HParams
  view compares the cells of a study;

``--log mlflow`` logs the same parameters and per-epoch metrics to an MLflow run and the
whole run folder as its artifacts. MLflow's store is ``MLFLOW_TRACKING_URI`` when set, else a
local SQLite file, ``<log_dir>/mlflow.db`` (MLflow 3 refuses its old ``./mlruns`` file store
unless told otherwise, and recommends SQLite for local use); nothing needs a server.

Both libraries are optional: a missing one is named in one line with the extra to install.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import run_files
from ..errors import ConfigError, CxrlabError

__all__ = ["TRACKERS", "Tracker", "open_trackers", "parse_log", "require_trackers"]

TRACKERS = ("tensorboard", "mlflow")

#: The final metrics trackers record (test split), with their names there.
FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "nll", "loss")


def parse_log(text: str | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> ``("tensorboard", "mlflow")``; ``none`` or empty: ``()``."""
    names = [t.strip().lower() for t in (text or "").split(",") if t.strip()]
    names = [n for n in names if n != "none"]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"log={text!r} (--log): unknown tracker {unknown[0]!r}; choose from "
            f"{', '.join(TRACKERS)} (comma-separated) or none"
        )
    return tuple(dict.fromkeys(names))


def require_trackers(log: str | None) -> None:
    """Fail early, in one line naming the extra, when a tracker's library is missing."""
    for name in parse_log(log):
        try:
            if name == "tensorboard":
                import tensorboard  # noqa: F401
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            else:
                import mlflow  # noqa: F401
                import sqlalchemy  # noqa: F401  (MLflow's local SQLite store)
        except ImportError as e:
            raise CxrlabError(
                f"log={name!r} (--log {name}) needs {e.name or name}: pip install 'cxrlab[{name}]'"
            ) from e


def _final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`FINAL_METRICS` a run has, as floats (a metric it lacks is left out)."""
    return {k: float(metrics[k]) for k in FINAL_METRICS if isinstance(metrics.get(k), (int, float))}


def _flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as scalars/strings (lists and None become text)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        else:
            out[k] = json.dumps(v) if v is not None else "none"
    return out


class Tracker:
    """What the trainer tells a tracker. The base class records nothing."""

    def start(self, params: Mapping[str, Any]) -> None:
        """The run's settings, once, before the first epoch."""

    def epoch(self, row: Mapping[str, float]) -> None:
        """One row of ``history.csv`` (``epoch`` is the 1-based step)."""

    def finish(self, metrics: Mapping[str, Any], run_dir: Path) -> None:
        """The test metrics and the finished run folder."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush; ``status`` is ``FINISHED``, ``FAILED`` or ``KILLED`` (interrupted)."""


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise CxrlabError(
                "log='tensorboard' (--log tensorboard) needs TensorBoard: "
                "pip install 'cxrlab[tensorboard]'"
            ) from e
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.params: dict[str, Any] = {}

    def start(self, params: Mapping[str, Any]) -> None:
        self.params = _flat_params(params)
        self.writer.add_text("config", "```\n" + json.dumps(dict(params), indent=1) + "\n```")

    def epoch(self, row: Mapping[str, float]) -> None:
        step = int(row["epoch"])
        for key, tag in (
            ("train_loss", "loss/train"),
            ("val_loss", "loss/val"),
            ("train_acc", "accuracy/train"),
            ("val_acc", "accuracy/val"),
            ("lr", "lr"),
            ("images_per_s", "speed/images_per_s"),
        ):
            if key in row:
                self.writer.add_scalar(tag, float(row[key]), step)
        self.writer.flush()

    def finish(self, metrics: Mapping[str, Any], run_dir: Path) -> None:
        from PIL import Image

        step = int(metrics.get("epochs_run", 0))
        final = {f"test/{k}": v for k, v in _final_metrics(metrics).items()}
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        for name in run_files.FIGURES:
            path = run_dir / name
            if path.is_file():
                img = np.asarray(Image.open(path).convert("RGB"))
                self.writer.add_image(name.removesuffix(".png"), img, step, dataformats="HWC")
        # the HParams view: one row per run, the hyperparameters beside the final metrics
        hp_metrics = {f"hparams/{k}": v for k, v in final.items()}
        self.writer.add_hparams(self.params, hp_metrics, run_name=".")
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(
        self, uri: str, experiment: str, run_name: str, artifacts: Path, run_dir: Path
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise CxrlabError(
                "log='mlflow' (--log mlflow) needs MLflow: pip install 'cxrlab[mlflow]'"
            ) from e
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)  # opens (or creates) the store
        except ImportError as e:
            raise CxrlabError(
                f"log='mlflow' (--log mlflow) needs {e.name} for its store: "
                "pip install 'cxrlab[mlflow]'"
            ) from e
        self.uri = uri
        state_path = run_dir / run_files.TRACKING
        saved = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.run_id = saved.get("mlflow_run_id") if saved.get("mlflow_uri") == uri else None
        if self.run_id is not None:  # a resumed run continues its MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(experiment)
            exp_id = (
                found.experiment_id
                if found
                else self.client.create_experiment(
                    experiment, artifact_location=artifacts.resolve().as_uri()
                )
            )
            run = self.client.create_run(
                exp_id, run_name=run_name, tags={"cxrlab.run_dir": str(run_dir.resolve())}
            )
            self.run_id = run.info.run_id
            state_path.write_text(
                json.dumps(
                    {"mlflow_uri": uri, "mlflow_run_id": self.run_id, "experiment": experiment}
                )
            )

    def start(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        todo = [Param(k, str(v)[:6000]) for k, v in _flat_params(params).items() if k not in logged]
        for i in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=todo[i : i + 100])

    def epoch(self, row: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(k, float(v), now, step) for k, v in row.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, metrics: Mapping[str, Any], run_dir: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = [Metric(f"test_{k}", v, now, 0) for k, v in _final_metrics(metrics).items()]
        self.client.log_batch(self.run_id, metrics=final)
        self.client.log_artifacts(self.run_id, str(run_dir))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


class _Many(Tracker):
    """Several trackers as one; each call goes to every tracker."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def start(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.start(params)

    def epoch(self, row: Mapping[str, float]) -> None:
        for t in self.trackers:
            t.epoch(row)

    def finish(self, metrics: Mapping[str, Any], run_dir: Path) -> None:
        for t in self.trackers:
            t.finish(metrics, run_dir)

    def close(self, status: str = "FINISHED") -> None:
        for t in self.trackers:
            t.close(status)


def open_trackers(
    log: str | None,
    run_dir: Path,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    run_name: str | None = None,
    experiment: str | None = None,
) -> Tracker:
    """The trackers ``log`` names, for the run written to ``run_dir``.

    Args:
        log: ``tensorboard``, ``mlflow``, both comma-separated, or ``none``.
        log_dir: where trackers write. TensorBoard: ``<log_dir>/<run_name>`` (default
            ``<run_dir>/tensorboard``); MLflow: ``<log_dir>/mlflow.db`` and
            ``<log_dir>/mlartifacts`` (default ``log_dir``: the run folder's parent).
        run_name: the run's name in the dashboards (default: the run folder's name).
        experiment: the MLflow experiment (default ``cxrlab``).

    Raises:
        CxrlabError: a named tracker's library is not installed (the message names the extra).
    """
    names = parse_log(log)
    name = run_name or run_dir.name
    trackers: list[Tracker] = []
    for tracker in names:
        if tracker == "tensorboard":
            tb_dir = Path(log_dir) / name if log_dir else run_dir / "tensorboard"
            trackers.append(TensorBoardTracker(tb_dir))
        else:
            root = Path(log_dir) if log_dir else run_dir.parent
            root.mkdir(parents=True, exist_ok=True)
            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root.resolve()}/mlflow.db"
            trackers.append(
                MLflowTracker(uri, experiment or "cxrlab", name, root / "mlartifacts", run_dir)
            )
    if len(trackers) == 1:
        return trackers[0]
    return _Many(trackers)
