"""The training loop: a config to a finished run folder, in three phases.

``train(config, out)`` runs :func:`_prepare` (data: scan, split, decoded cache; the model,
frozen and on its device; optimizer, loss, checkpoint; frozen features), :func:`_fit` (the
epochs) and :func:`_finish` (test the best model and write the run folder). After every
epoch it validates, keeps the best weights by validation loss, and writes a resumable
checkpoint; Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and stops.
Every random choice (sample order, augmentation, dropout) is derived from
``(seed, epoch, step)``, so a run resumed in the middle of an epoch ends with exactly the
same weights as an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .. import run_files
from ..augment import augment_batch, step_generator
from ..data import PreparedData, prepare_data
from ..engine.batches import ImageBatches, predict_batches, sampling_strata
from ..engine.checkpoint import (
    RunState,
    graceful_stop,
    load_checkpoint,
    save_checkpoint,
)
from ..engine.distributed import Distributed, init_distributed, sync_batchnorm
from ..engine.features import TrainableRest, build_frozen_features, feature_cache_plan
from ..engine.optim import build_ema, build_optimizer, lr_at
from ..engine.tracking import Tracker, open_trackers, require_trackers
from ..engine.train_config import TrainConfig
from ..errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from ..evaluation import (
    classification_metrics,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_loss,
)
from ..evaluation.calibration import apply_temperature, fit_temperature, nll, plot_reliability
from ..freeze import FreezeReport, apply_freeze
from ..models import CxrClassifier, create_model, get_spec, parse_weights
from ..models.init import InitReport
from ..runs.card import Calibration, PretrainingRecord, RunCard
from ..runs.folder import (
    RunDir,
    build_card,
    load_run_model,
    save_model,
    save_weights,
    write_predictions,
)
from ..runs.heldout import score_holdout, split_sources
from ..runs.scoring import segmenter_masks
from ..runtime import autocast, resolve_device, resolve_precision
from ..shift.report import holdout_shift
from ..utils import atomic_write_text, write_json

__all__ = ["TrainResult", "train"]

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "images_per_s",
)


@dataclass
class TrainResult:
    """A finished run: its folder, test metrics, per-epoch history and model card."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    card: RunCard


def _log(message: str) -> None:
    tqdm.write(message)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _should_preload(mode: str, device: torch.device, *subsets: ImageBatches) -> bool:
    if mode != "auto":
        return mode == "on"
    if device.type != "cuda":
        return False  # on the CPU the memory-mapped cache already is in memory
    need = sum(s.array[:1].nbytes * len(s.indices) for s in subsets)
    free, _ = torch.cuda.mem_get_info(device)
    return need < free / 4


@dataclass
class _Run:
    """One training run between its phases: what :func:`_prepare` builds, :func:`_fit`
    updates and :func:`_finish` writes out."""

    config: TrainConfig
    out: Path
    ddp: Distributed
    log: Callable[[str], None]
    device: torch.device
    amp: torch.dtype | None
    data: PreparedData
    train_b: ImageBatches  # training images (or their frozen features)
    val_b: ImageBatches
    test_b: ImageBatches  # always whole images: the test runs the full saved model
    model: CxrClassifier
    freeze: FreezeReport
    net: nn.Module  # the model, or only its trainable rest on cached frozen features
    forward: Callable[[torch.Tensor], torch.Tensor]  # ``net`` as training calls it (DDP, compile)
    ema: AveragedModel | None  # the moving average of the weights (--ema), or None
    eval_net: nn.Module  # what validation runs: ``net``, or the same over the averaged weights
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    criterion: nn.Module
    state: RunState
    started: float  # perf_counter() at the start of this session
    wall_before: float  # wall seconds of earlier sessions of an interrupted run
    features: np.ndarray | None = None  # the frozen prefix's output for every image, if cached
    n_frozen: int = 0
    pretraining: PretrainingRecord | None = None  # --weights pretrained:RUN, checked
    tracker: Tracker = field(default_factory=Tracker)  # --log: TensorBoard and/or MLflow

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    @property
    def strata(self) -> np.ndarray | None:
        """What sampling balances (--balance; --class-balance sampler is ``class``)."""
        mode = "class" if self.config.class_balance == "sampler" else self.config.balance
        return sampling_strata(mode, self.data.split)

    @property
    def kept_model(self) -> CxrClassifier:
        """The weights a checkpoint of the best epoch keeps: the average, when there is one."""
        return self.model if self.ema is None else self.ema.module  # type: ignore[return-value]


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    on_step: Callable[[int, int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train one classifier and write its run folder.

    Three phases, each a function of its own: :func:`_prepare` (data, model, freezing,
    optimizer, checkpoint, frozen features), :func:`_fit` (the epochs: train, validate, keep
    the best weights, checkpoint) and :func:`_finish` (test the best model, write metrics,
    predictions and figures).

    Args:
        config: every setting of the run.
        out: the run folder. It receives ``config.json``, ``split.csv``, ``history.csv``,
            ``model.safetensors`` + ``model_card.json`` (best by validation loss),
            ``metrics.json`` and ``predictions.csv`` (test split), ``loss.png`` and
            ``confusion_matrix.png``.
        resume: continue the interrupted run in ``out`` (a finished run is returned as is).
        on_step: called as ``on_step(epoch, step, model)`` after every optimisation step.

    Raises:
        TrainingInterrupted: after Ctrl-C/SIGTERM, once the checkpoint is saved.
        TrainingError: the loss became NaN or infinite.

    Example:
        >>> cfg = TrainConfig(model="efficientnet_lite0", freeze="head", epochs=3)
        >>> result = train(cfg, "runs/lite0-head")  # doctest: +SKIP
        >>> result.metrics["accuracy"]  # doctest: +SKIP
    """
    run = _prepare(config, Path(out), resume)
    if isinstance(run, TrainResult):  # --resume of a finished run
        return run
    if run.ddp.main:
        run.tracker = _open_tracker(run)
    status = "FAILED"
    try:
        _fit(run, on_step)
        result = _finish(run)
        if run.ddp.main and config.holdout_source:
            _score_holdout(run, result)
        run.tracker.finish(result.metrics, result.run_dir)  # a no-op Tracker off rank 0
        status = "FINISHED"
        return result
    except TrainingInterrupted:
        status = "KILLED"
        raise
    finally:
        run.tracker.close(status)


def _score_holdout(run: _Run, result: TrainResult) -> None:
    """The held-out source on its validation and test splits (``holdout.json``)."""
    held = score_holdout(result.run_dir, run.config, shift=holdout_shift,
                         progress=run.config.progress)  # fmt: skip
    assert held is not None
    for split in ("val", "test"):
        m = held[split]
        run.log(f"held-out source {held['source']} ({split}, {m['n']} images): accuracy "
                f"{m['accuracy']:.4f}  balanced {m['balanced_accuracy']:.4f}  loss "
                f"{m['nll']:.4f}")  # fmt: skip


def _open_tracker(run: _Run) -> Tracker:
    """The trackers of ``--log``, told the run's settings (and what they resolved to)."""
    config = run.config
    tracker = open_trackers(config.log, run.out, log_dir=config.log_dir,
                            run_name=config.log_name, experiment=config.log_experiment)  # fmt: skip
    params = {k: v for k, v in config.to_dict().items()
              if k not in ("progress", "log", "log_dir", "log_name", "log_experiment")}  # fmt: skip
    params["weights_source"] = run.model.weights_source  # type: ignore[attr-defined]
    params["train_images"] = len(run.train_b.indices)
    params["frozen_units"] = len(run.freeze.frozen_units)
    tracker.start(params)
    return tracker


def _prepare(config: TrainConfig, out: Path, resume: bool) -> _Run | TrainResult:
    """Phase 1: scan/split/decode the data, build and freeze the model, the optimizer and the
    loss, restore a checkpoint, and compute the frozen prefix once when it can be cached.

    Returns the finished run's result instead when ``resume`` finds one.
    """
    started = time.perf_counter()
    get_spec(config.model)  # an unknown model fails now, not after scanning the data
    require_trackers(config.log)  # and a tracker that is not installed
    ddp = init_distributed(config.device)  # a no-op unless started by torchrun
    log = _log if ddp.main else (lambda message: None)
    if ddp.main:
        RunDir(out).prepare(resume)
    ddp.barrier()
    if resume and RunDir(out).finished:
        return _finished(out)
    device, amp = _runtime(config, ddp)
    data, batches = _data(config, out, resume, ddp, log)
    pretraining = _pretraining(config, data, log)
    model, freeze = _model(config, out, resume, data, ddp, log)
    log(
        f"{config.model} ({model.weights_source}) on {device}"  # type: ignore[attr-defined]
        f"{' with ' + str(amp).removeprefix('torch.') + ' autocast' if amp else ''}; "
        f"{len(data.classes)} classes; train/val/test = "
        + "/".join(str(len(b.indices)) for b in batches)
        + " images"
    )
    log(freeze.summary())
    _place(model, config, ddp, device, log)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(config, params)
    criterion = _loss(config, batches[0], len(data.classes), device)
    ema = build_ema(config.ema, model)
    state = RunState(history=[])
    if resume and (out / run_files.CHECKPOINT).exists():
        state = load_checkpoint(out / run_files.CHECKPOINT, model, opt, config, ema)
        if not ddp.main:  # the checkpoint's partial-epoch sums are global, kept by rank 0
            state.loss_sum, state.correct, state.seen = 0.0, 0, 0
        log(f"Resuming at epoch {state.epoch + 1}, step {state.step}")
    prefix = _frozen_prefix(config, model, freeze, data, batches, ddp, device, amp, log)
    train_b, val_b = prefix.train_b, prefix.val_b
    eval_net = prefix.net  # validation runs the averaged weights when there are some
    if ema is not None:
        eval_net = (TrainableRest(ema.module, prefix.n_frozen) if prefix.features is not None  # type: ignore[arg-type]
                    else ema.module)  # fmt: skip
    if _should_preload(config.preload, device, train_b, val_b):
        for b in (train_b, val_b):
            b.preload(device)
        log(f"Training and validation data preloaded on {device}")
    forward = _forward(prefix.net, config, ddp, device, log)
    if ddp.main:
        _write_config(out, config, device, amp, model, data, train_b, freeze, prefix.note)
    return _Run(config=config, out=out, ddp=ddp, log=log, device=device, amp=amp, data=data,
                train_b=train_b, val_b=val_b, test_b=batches[2], model=model, freeze=freeze,
                net=prefix.net, forward=forward, ema=ema, eval_net=eval_net, params=params,
                opt=opt, criterion=criterion, state=state, started=started,
                wall_before=state.wall_seconds, features=prefix.features,
                n_frozen=prefix.n_frozen, pretraining=pretraining)  # fmt: skip


def _pretraining(config: TrainConfig, data: PreparedData,
                 log: Callable[[str], None]) -> PretrainingRecord | None:  # fmt: skip
    """For ``--weights pretrained:RUN``: that run, checked not to have seen this run's
    validation or test images (exact or near copies) unless ``--allow-transductive``."""
    ws = parse_weights(config.weights)
    if ws.kind != "pretrained":
        return None
    from ..pretrain import read_pretrain_card
    from ..pretrain.leakage import seen_by_pretraining

    try:
        card = read_pretrain_card(ws.path)
    except CheckpointError as e:
        raise ConfigError(f"weights={config.weights!r}: {e}") from e
    rows = sorted(data.split.indices("val") + data.split.indices("test"))
    records = data.split.records
    pixels = np.asarray(data.whole_images().array[rows]) if rows else np.zeros((0, 1, 1), np.uint8)
    seen = seen_by_pretraining(ws.path, [records[i].hash for i in rows], pixels)
    if len(seen):
        what = (f"the pretraining run {ws.path} saw {len(seen)} of this run's {len(rows)} "
                f"validation and test images ({len(seen.exact)} exact, {len(seen.near)} near "
                f"copies; e.g. {records[rows[seen.rows[0]]].path})")  # fmt: skip
        if not config.allow_transductive:
            raise ConfigError(
                f"{what[0].upper()}{what[1:]}: scores on them would be transductive. Pretrain "
                "with --use train and this run's data and split options, or pass "
                "--allow-transductive (the card and report then say so)"
            )
        log(f"Transductive (--allow-transductive): {what}")
    return PretrainingRecord(run=str(ws.path), method=card.method, init=card.init,
                             images=card.images, images_hash=card.images_hash,
                             weights_sha256=card.weights_sha256, eval_images_seen=len(seen),
                             allow_transductive=config.allow_transductive)  # fmt: skip


def _runtime(config: TrainConfig, ddp: Distributed) -> tuple[torch.device, torch.dtype | None]:
    """Threads, the device (this process's GPU under torchrun) and the autocast precision."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if ddp.active and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
    if device.type == "cuda":  # one input size for the whole run: let cuDNN time its kernels
        torch.backends.cudnn.benchmark = True
    return device, resolve_precision(config.precision, device)


def _data(config: TrainConfig, out: Path, resume: bool, ddp: Distributed,
          log: Callable[[str], None]) -> tuple[PreparedData, tuple[ImageBatches, ...]]:  # fmt: skip
    """The data, scanned, split and decoded once (a resumed run reuses its own split), and
    its train/val/test batches."""
    split_file = out / run_files.SPLIT if resume else config.split_file
    if not ddp.main:
        ddp.barrier()  # rank 0 scans, splits and decodes first; the others reuse its caches
    (train_data, class_map, sources_csv, patients), _ = split_sources(config)
    options = config.split_options() | {  # the training sources' own, without a held-out one
        "class_map": class_map,
        "sources_csv": sources_csv,
        "patients": patients,
    }
    data = prepare_data(train_data, split_file=split_file, lungs=config.lungs,
                        doubtful=config.doubtful, mask_provider=segmenter_masks(config.masks_from),
                        progress=config.progress, **options)  # fmt: skip
    groups, joined = data.split.joined()
    if groups:
        log(f"Split: {groups} near-copy group(s) of {joined} images, each kept in one split")
    who = data.split.patient_summary()
    if who["patients"]:
        log(f"Split: {who['images']} images of {who['patients']} known patients; "
            f"{who['grouped_patients']} patients with several images ({who['grouped_images']} "
            "images) each kept in one split"
            + (f"; {who['across']} patients span splits (the split was not drawn here)"
               if who["across"] else ""))  # fmt: skip
    if data.masks is not None:
        log(f"Lungs {config.lungs}: {data.masks.summary()}")
    if ddp.main:
        data.split.save(out / run_files.SPLIT)
        ddp.barrier()
    labels = np.asarray(data.split.labels(), dtype=np.int64)
    rows = {
        "train": data.split.train_subset(config.train_size),
        "val": data.split.indices("val"),
        "test": data.split.indices("test"),
    }
    batches = tuple(ImageBatches(data.images.array, rows[s], labels, config.batch_size,
                                 drop_single=s == "train") for s in rows)  # fmt: skip
    for name, b in zip(rows, batches):
        if not len(b.indices):
            raise ConfigError(
                f"The {name} split is empty; use more images or other split ratios "
                "(ratios, --ratios)"
            )
    return data, batches


def _model(config: TrainConfig, out: Path, resume: bool, data: PreparedData, ddp: Distributed,
           log: Callable[[str], None]) -> tuple[CxrClassifier, FreezeReport]:  # fmt: skip
    """The model: its weights (drawn from the seed), a head for the data's classes, and the
    freezing; ``--keep-init`` writes the starting weights."""
    torch.manual_seed(config.seed)
    restoring = resume and (out / run_files.CHECKPOINT).exists()  # the checkpoint holds the weights
    model = create_model(
        config.model,
        len(data.classes),
        "none" if restoring and parse_weights(config.weights).pretrained else config.weights,
        image_size=config.image_size,
        seed=config.seed,
    )
    if restoring:  # describe the weights the run started from, not the placeholder
        first = json.loads((out / run_files.CONFIG).read_text())["resolved"]
        model.weights_source = first["weights_source"]  # type: ignore[attr-defined]
        saved = first.get("initialisation")
        model.init_report = InitReport(**saved) if saved else None  # type: ignore[attr-defined]
    elif (drawn := model.init_report) is not None:  # type: ignore[attr-defined]
        log(f"Initialisation: {drawn.summary()}")
    freeze = apply_freeze(model, config.freeze, config.freeze_bn)
    if config.keep_init and ddp.main and not restoring:
        save_weights(out, model, config.model, data.classes, file=run_files.INIT)
    return model, freeze


def _place(model: CxrClassifier, config: TrainConfig, ddp: Distributed, device: torch.device,
           log: Callable[[str], None]) -> None:  # fmt: skip
    """The model on its device, in its memory format, with SyncBatchNorm under torchrun."""
    model.to(device)
    cnn = not config.model.startswith(("vit", "timm:vit"))
    # channels_last: +35-50 % CNN throughput on this project's 2-core CPU, standard on GPUs
    if config.channels_last == "on" or (
        config.channels_last == "auto" and cnn and device.type in ("cuda", "cpu")
    ):
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and not ddp.active:
        log("--sync-bn has no effect in a single process")
    elif config.sync_bn:  # before the optimizer and the checkpoint see the modules
        n_sync = sync_batchnorm(model, model.frozen_modules, device)
        log(f"SyncBatchNorm: {n_sync} training BatchNorm layers use the global batch")


def _loss(config: TrainConfig, train_b: ImageBatches, n_classes: int,
          device: torch.device) -> nn.Module:  # fmt: skip
    """Cross-entropy, with class weights for ``--class-balance weighted_loss``."""
    class_weights = None
    if config.class_balance == "weighted_loss":
        counts = np.bincount(train_b.subset_labels, minlength=n_classes)
        class_weights = torch.tensor(len(counts) and counts.sum() / (len(counts) * counts),
                                     dtype=torch.float32, device=device)  # fmt: skip
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)


@dataclass
class _Prefix:
    """What training runs on: the whole model on images, or its trainable rest on the
    frozen prefix's output computed once per image."""

    net: nn.Module
    train_b: ImageBatches
    val_b: ImageBatches
    n_frozen: int
    note: str  # why the cache is or is not used
    features: np.ndarray | None = None


def _frozen_prefix(config: TrainConfig, model: CxrClassifier, freeze: FreezeReport,
                   data: PreparedData, batches: tuple[ImageBatches, ...], ddp: Distributed,
                   device: torch.device, amp: torch.dtype | None,
                   log: Callable[[str], None]) -> _Prefix:  # fmt: skip
    """A frozen, deterministic prefix runs once per image instead of once per epoch."""
    train_b, val_b = batches[0], batches[1]
    n_frozen = len(freeze.frozen_units)
    cached, why = feature_cache_plan(model, n_frozen, config.augment, config.freeze_bn,
                                     config.feature_cache)  # fmt: skip
    if not cached:
        if n_frozen:
            log(f"Frozen-feature cache not used: {why}")
        return _Prefix(model, train_b, val_b, n_frozen, f"not used: {why}")
    t0 = time.perf_counter()
    if not ddp.main:
        ddp.barrier()
    feats = build_frozen_features(model, n_frozen, data.images, device=device, amp=amp,
                                  batch_size=max(64, config.batch_size),
                                  dtype=config.feature_dtype, progress=config.progress)  # fmt: skip
    labels = train_b.labels
    train_b, val_b = (ImageBatches(feats.array, b.indices, labels, config.batch_size,
                                   drop_single=b.drop_single, add_channel=False)
                      for b in (train_b, val_b))  # fmt: skip
    if ddp.main:
        ddp.barrier()
    log(
        f"Frozen-feature cache: {why}; features {tuple(feats.array.shape[1:])} of "
        f"{len(feats.array)} images ready in {time.perf_counter() - t0:.1f}s"
    )
    return _Prefix(TrainableRest(model, n_frozen), train_b, val_b, n_frozen, why, feats.array)


def _forward(net: nn.Module, config: TrainConfig, ddp: Distributed, device: torch.device,
             log: Callable[[str], None]) -> Callable[[torch.Tensor], torch.Tensor]:  # fmt: skip
    """``net`` as training calls it: DistributedDataParallel under torchrun, compiled with
    ``--compile``."""
    forward = net
    if ddp.active:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(net, device_ids=ids)
        log(f"DistributedDataParallel: {ddp.world} processes, each on 1/{ddp.world} of a batch")
    return _CompiledOrEager(forward, log) if config.compile else forward


class _CompiledOrEager:
    """``torch.compile(net)``, or ``net`` itself from the first call on which compiling
    fails (no C++ compiler, an unsupported platform or operator), with one line saying so.

    A graph is compiled before it runs, so a failure leaves the batch unseen, and it is run
    again eagerly: training goes on as it would have without ``compile``.
    """

    def __init__(self, net: nn.Module, log: Callable[[str], None]) -> None:
        from torch._dynamo.exc import BackendCompilerFailed  # Inductor's errors included

        self.net, self.log, self._failed = net, log, BackendCompilerFailed
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = torch.compile(net)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except self._failed as e:
                cause = getattr(e, "inner_exception", None) or e.__cause__ or e
                text = str(cause).strip().splitlines()
                reason = f"{type(cause).__name__}: {text[0] if text else ''}"[:200]
                self.log(f"torch.compile is unavailable here ({reason}); training without it, "
                         "as with compile=False (no --compile)")  # fmt: skip
                self.compiled = None
        return self.net(x)


def _write_config(out: Path, config: TrainConfig, device: torch.device, amp: torch.dtype | None,
                  model: CxrClassifier, data: PreparedData, train_b: ImageBatches,
                  freeze: FreezeReport, cache_note: str) -> None:  # fmt: skip
    """``config.json``: the settings, and what they resolved to on this machine."""
    write_json(out / run_files.CONFIG, {
        "config": config.to_dict(),
        "resolved": {
            "device": str(device),
            "precision": str(amp or "fp32").removeprefix("torch."),
            "weights_source": model.weights_source,  # type: ignore[attr-defined]
            "initialisation": init.to_dict() if (init := model.init_report) else None,  # type: ignore[attr-defined]
            "train_images": len(train_b.indices),
            "classes": list(data.classes),
            "freeze": freeze.to_dict(),
            "frozen_feature_cache": cache_note,
            "split_hash": data.split.fingerprint(),
            "data_hash": data.report.fingerprint(),
            "data_root": str(data.report.root),
        },
    })  # fmt: skip


def _fit(run: _Run, on_step: Callable[[int, int, nn.Module], None] | None) -> None:
    """Phase 2: the epochs. Each trains on every batch (resumable mid-epoch), validates on
    the full validation set, keeps the best weights by validation loss, and checkpoints."""
    config, state, ddp = run.config, run.state, run.ddp
    steps = len(run.train_b)
    stop = {"stop": False}
    with graceful_stop(stop):
        while state.epoch < config.epochs:
            lr = _train_epoch(run, steps, stop, on_step)
            _end_epoch(run, lr)
            ddp.barrier()


def _train_epoch(
    run: _Run,
    steps: int,
    stop: dict[str, bool],
    on_step: Callable[[int, int, nn.Module], None] | None,
) -> float:
    """One epoch of optimisation steps from ``state.step`` on; returns the last lr."""
    config, state, ddp = run.config, run.state, run.ddp
    epoch = state.epoch
    total_steps = steps * config.epochs
    run.model.train()
    order = run.train_b.order(config.seed, epoch, run.strata)
    bar = tqdm(
        total=steps,
        initial=state.step,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=not config.progress or None,
    )
    t0 = time.perf_counter()
    # the last step's rate, for a session resumed after the epoch's final step
    lr = lr_at(config, state, epoch * steps + max(state.step - 1, 0), total_steps, steps)
    for x, y in run.train_b.batches(order, start=state.step, part=ddp.shard):
        lr = lr_at(config, state, epoch * steps + state.step, total_steps, steps)
        for group in run.opt.param_groups:
            group["lr"] = lr
        loss, correct, n = _step(run, x, y, len(order))
        state.step += 1
        state.loss_sum += loss * n
        state.correct += correct
        state.seen += n
        bar.update(1)
        elapsed = state.seconds + time.perf_counter() - t0
        bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}", lr=f"{lr:.2e}",
                        img_s=f"{state.seen / max(elapsed, 1e-9):.0f}")  # fmt: skip
        if on_step is not None:
            on_step(epoch, state.step, run.model)
        (stopping_now,) = ddp.any(stop["stop"])
        if stopping_now:
            bar.close()
            _interrupt(run, t0)
    bar.close()
    state.seconds += time.perf_counter() - t0
    return lr


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor, n_order: int) -> tuple[float, int, int]:
    """One optimisation step on a batch (augmented with the step's own seed): the batch's
    mean loss, correct predictions and size.

    Raises:
        TrainingError: the loss is not finite (on any rank).
    """
    config, state, ddp, device = run.config, run.state, run.ddp, run.device
    gen = step_generator(config.seed, state.epoch, state.step)
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # dropout
    x = x.to(device, non_blocking=True).float()  # (B, 1, H, W) in 0..255
    y = y.to(device, non_blocking=True)
    if config.augment != "none":
        x = augment_batch(x, gen, config.augment)
    with autocast(device, run.amp):
        logits = run.forward(x)  # (B, K)
    loss = run.criterion(logits.float(), y)
    if ddp.active:  # DDP averages over ranks: weight by this rank's share
        n_global = min(config.batch_size, n_order - state.step * config.batch_size)
        loss_for_grad = loss * (ddp.world * len(y) / n_global)
    else:
        loss_for_grad = loss
    (nonfinite,) = ddp.any(not bool(torch.isfinite(loss)))
    if nonfinite:
        raise TrainingError(
            f"The loss became {loss.item()} at epoch {state.epoch + 1}, step "
            f"{state.step + 1}; stopped. The last good checkpoint is kept in "
            f"{run.out} (best model: {run_files.MODEL}). Try a lower learning rate (lr, --lr) or "
            "gradient clipping (grad_clip=1, --grad-clip 1)"
        )
    run.opt.zero_grad(set_to_none=True)
    loss_for_grad.backward()
    if config.grad_clip:
        nn.utils.clip_grad_norm_(run.params, config.grad_clip)
    run.opt.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    return loss.item(), int((logits.argmax(1) == y).sum()), len(y)


def _interrupt(run: _Run, t0: float) -> None:
    """Stop in the middle of an epoch: save a checkpoint to resume from, then raise.

    Raises:
        TrainingInterrupted: always.
    """
    state = run.state
    state.seconds += time.perf_counter() - t0
    state.loss_sum, state.correct, state.seen = run.ddp.sum(
        state.loss_sum, state.correct, state.seen
    )
    if run.ddp.main:
        state.wall_seconds = run.wall_seconds()
        save_checkpoint(
            run.out / run_files.CHECKPOINT, run.model, run.opt, state, run.config, run.ema
        )
    raise TrainingInterrupted(
        f"Stopped at epoch {state.epoch + 1}, step {state.step}; checkpoint saved in "
        f"{run.out}. Continue it with the same settings and resume=True (--resume)"
    )


def _end_epoch(run: _Run, lr: float) -> None:
    """Validate, record the epoch, keep the best model, adjust the schedule, checkpoint."""
    config, state, ddp, out = run.config, run.state, run.ddp, run.out
    epoch = state.epoch
    state.loss_sum, state.correct, state.seen = ddp.sum(state.loss_sum, state.correct, state.seen)
    val_loss, val_acc = 0.0, 0.0
    if ddp.main:  # the full validation set, once
        probs, yv, val_loss = predict_batches(run.eval_net, run.val_b, run.device, run.amp)
        val_acc = float((probs.argmax(1) == yv).mean())
    val_loss, val_acc = ddp.broadcast((val_loss, val_acc))
    row = {
        "epoch": epoch + 1,
        "train_loss": state.loss_sum / state.seen,
        "train_acc": state.correct / state.seen,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": lr,
        "seconds": state.seconds,
        "images_per_s": state.seen / max(state.seconds, 1e-9),
    }
    assert state.history is not None
    state.history.append(row)
    if ddp.main:
        _write_history(out / run_files.HISTORY, state.history)
        run.tracker.epoch(row)
    improved = val_loss < state.best_val_loss - 1e-6
    if improved:
        state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, epoch + 1, 0
    if improved and ddp.main:
        card = build_card(config, run.data, run.kept_model, run.freeze, state.best_epoch,
                          state.best_val_loss, run.device, run.amp,
                          pretraining=run.pretraining)  # fmt: skip
        save_model(out, run.kept_model, card)
    elif not improved:
        state.bad_epochs += 1
        if config.scheduler == "plateau" and state.bad_epochs % 2 == 0:
            state.lr_scale *= 0.1
    run.log(
        f"epoch {epoch + 1:>3}/{config.epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.3f}  val loss {val_loss:.4f} acc {val_acc:.3f}  "
        f"lr {lr:.1e}  {state.seconds:.1f}s  {row['images_per_s']:.0f} img/s"
        f"{'  *best' if improved else ''}"
    )
    state.epoch, state.step = epoch + 1, 0
    state.loss_sum, state.correct, state.seen, state.seconds = 0.0, 0, 0, 0.0
    if config.early_stopping and state.bad_epochs >= config.early_stopping:
        state.epoch = config.epochs
        run.log(f"Early stopping: no better validation loss for {state.bad_epochs} epochs")
    if ddp.main:
        state.wall_seconds = run.wall_seconds()
        save_checkpoint(out / run_files.CHECKPOINT, run.model, run.opt, state, config, run.ema)


def _finish(run: _Run) -> TrainResult:
    """Phase 3: test the best saved model (rank 0, the whole test set, once), write the
    metrics, predictions, card and figures, and remove the checkpoint."""
    config, state, ddp, out, data = run.config, run.state, run.ddp, run.out, run.data
    if not ddp.main:
        ddp.barrier()
        ddp.close()
        return _finished(out, quiet=True)
    best, card = load_run_model(out, finished=False)  # metrics.json comes after the test
    best.to(run.device)
    test_net, test_b = _best_on(run, best, run.test_b.indices)
    probs, yt, test_loss = predict_batches(test_net, test_b, run.device, run.amp,
                                           desc="Testing", progress=config.progress,
                                           tta=config.tta)  # fmt: skip
    sources = [data.split.source_of(i) for i in run.test_b.indices]
    metrics = classification_metrics(yt, probs, data.classes, sources)
    if config.calibrate:
        metrics["calibration"] = _calibrate(run, best, probs, yt)
        card = card.replace(calibration=Calibration(**metrics["calibration"]))
    test_paths = [data.split.records[i].path for i in run.test_b.indices]
    write_predictions(out / run_files.PREDICTIONS, test_paths, yt, probs, data.classes)
    history = state.history or []
    metrics.update(
        {
            "split": "test",
            "loss": test_loss,
            "best_epoch": state.best_epoch,
            "train_images": len(run.train_b.indices),
            "epochs_run": len(history),
            "train_seconds": sum(h["seconds"] for h in history),
            "wall_seconds": run.wall_seconds(),  # data, features, training, testing; all sessions
        }
    )
    card = card.replace(training=replace(card.training, test_accuracy=metrics["accuracy"]))
    save_model(out, best, card)
    write_json(out / run_files.METRICS, metrics)
    weights = run.model.weights_source.split(" ")[0]  # type: ignore[attr-defined]
    title = f"{config.model}, {weights}, freeze={config.freeze}"
    plot_loss(history, out / run_files.LOSS_FIGURE, title=f"Loss: {title}")
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        data.classes,
        out / run_files.CONFUSION_FIGURE,
        title=f"{title}\ntest accuracy {metrics['accuracy']:.3f}",
    )
    (out / run_files.CHECKPOINT).unlink(missing_ok=True)
    run.log(
        f"test: accuracy {metrics['accuracy']:.4f}  balanced {metrics['balanced_accuracy']:.4f}"
        f"  macro-F1 {metrics['macro_f1']:.4f}  AUROC {metrics['auroc'] or float('nan'):.4f}"
        f"  ECE {metrics['ece']:.4f}  -> {out}"
    )
    if "per_source" in metrics:
        by = metrics["per_source"]["sources"]
        run.log("test by source (balanced accuracy): " + ", ".join(
            f"{name} {m['balanced_accuracy']:.3f} (n={m['n']})" for name, m in by.items())
            + f"; worst: {metrics['per_source']['worst']}")  # fmt: skip
    ddp.barrier()
    ddp.close()
    return TrainResult(out, metrics, history, card)


def _best_on(run: _Run, best: CxrClassifier, rows: list[int]) -> tuple[nn.Module, ImageBatches]:
    """The saved model and batches of ``rows`` to run it on: the cached frozen features and
    the trainable rest when there are some (the frozen prefix is not run a second time),
    else whole images. Test-time augmentation needs whole images."""
    labels = np.asarray(run.data.split.labels(), dtype=np.int64)
    bs = run.config.batch_size
    if run.features is None or run.config.tta:
        return best, ImageBatches(run.data.images.array, rows, labels, bs)
    rest = TrainableRest(best, run.n_frozen)
    return rest, ImageBatches(run.features, rows, labels, bs, add_channel=False)


def _calibrate(run: _Run, best: nn.Module, test_probs: np.ndarray, yt: np.ndarray) -> dict:
    """Temperature scaling fitted on the validation images through the saved model (on the
    cached frozen features where the run has them, see :func:`_best_on`); writes the
    reliability diagram of the test split before and after."""
    config, data = run.config, run.data
    net, val = _best_on(run, best, data.split.indices("val"))
    pv, yv, _ = predict_batches(net, val, run.device, run.amp, tta=config.tta)
    t = fit_temperature(pv, yv)
    calibrated = apply_temperature(test_probs, t)
    plot_reliability(test_probs, calibrated, yt, run.out / run_files.RELIABILITY_FIGURE, t)
    return {
        "temperature": t,
        "fitted_on": "val",
        "val_nll_before": nll(pv, yv),
        "val_nll_after": nll(apply_temperature(pv, t), yv),
        "test_nll_before": nll(test_probs, yt),
        "test_nll_after": nll(calibrated, yt),
        "test_ece_before": expected_calibration_error(test_probs, yt),
        "test_ece_after": expected_calibration_error(calibrated, yt),
    }


def _finished(out: Path, quiet: bool = False) -> TrainResult:

    metrics = RunDir(out).metrics()
    with open(out / run_files.HISTORY) as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    _, card = load_run_model(out)
    if not quiet:
        _log(f"{out} is already complete (test accuracy {metrics['accuracy']:.4f})")
    return TrainResult(out, metrics, history, card)
