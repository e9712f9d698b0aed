"""The training configuration: every knob of ``cxrlab train`` in one typed object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..data.options import DataOptions
from ..errors import ConfigError
from ..freeze import BN_MODES, parse_freeze
from ..typed_config import from_dict, option

__all__ = ["TrainConfig"]

#: Settings that may differ between the sessions of one run (resume) or one study cell.
_MACHINE_LOCAL = frozenset(
    {
        "progress",
        "threads",
        "device",
        "data",
        "split_file",
        "log",
        "log_dir",
        "log_name",
        "log_experiment",
    }
)


#: Help panels of ``cxrlab train --help``.
_D, _M, _T, _R, _L = "Data", "Model", "Training", "Runtime", "Tracking"


def _plain(value: Any) -> Any:
    """Tuples as lists, so a value read back from JSON compares equal to the original."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class TrainConfig(DataOptions):
    """One training run. Defaults follow the original experiment: Adam, lr 1e-3,
    cross-entropy, 10 epochs, 224 px.

    Data:
        data, class_map, sources_csv, split_seed, ratios, split_source, near_copies,
            patients, image_size: :class:`~cxrlab.data.options.DataOptions`' fields, which
            ``cxrlab pretrain`` shares.
        holdout_source: leave this source of ``data`` out of training, and score it
            afterwards on its own validation and test splits (``holdout.json``; see
            :mod:`cxrlab.runs.heldout`).
        split_file: a manifest from ``cxrlab data split`` (used if it exists, else written).
        train_size: train on part of the training split: a fraction in (0, 1] of each class,
            or a whole count per class (``50``). Stratified and nested (the 10 % lies inside
            the 30 %), the same images for every seed; validation and test are unchanged.
        lungs: ``keep``; ``remove`` trains and tests on images whose lung fields are filled
            with the mean of the rest of the image; ``only`` on images where everything
            outside the lungs is filled (a shortcut check: how much of the data can be learned
            with no lung tissue at all); ``crop`` trains and tests on images cut to the lungs'
            bounding box plus a 5 % margin, resized back (the literature's usual
            preprocessing). Needs lung masks beside the images, or ``masks_from``.
        masks_from: a lung segmenter run (``cxrlab segment train``) whose masks ``lungs``
            uses instead of mask files; its doubtful masks count as missing. The card records
            the segmenter, and evaluation runs it again.
        doubtful: an image without a valid lung mask (missing, empty, judged doubtful) when
            ``lungs`` needs one: ``refuse`` stops with the reason; ``skip`` leaves it out
            before the split, says how many, and the card counts them.
    Model:
        model: a registry name (``cxrlab models``) or ``timm:<arch>``.
        weights: ``imagenet``; ``none`` (random init); ``stats`` (statistics transfer: every
            backbone tensor drawn from the mean and std of its pretrained tensor, norms
            reset); ``imagenet:K`` (transfusion: the first K units pretrained, statistics
            transfer above); ``pretrained:RUN`` (the backbone of a finished ``cxrlab pretrain``
            run, :mod:`cxrlab.pretrain`); or a weights file.
        allow_transductive: accept ``pretrained:RUN`` weights whose pretraining saw this
            run's validation or test images (exactly or as near copies); without it they are
            refused. The card records how many it saw either way.
        freeze: ``none``, ``head``, a fraction such as ``0.5``, or ``last:K``.
        freeze_bn: ``frozen`` (frozen BatchNorm keeps its statistics) or ``update``.
    Optimisation:
        epochs, batch_size, lr, optimizer, weight_decay, momentum (SGD only),
        scheduler (``none``/``cosine``/``plateau``), warmup_epochs, grad_clip (0 = off),
        label_smoothing, class_balance (``none``/``weighted_loss``/``sampler``),
        balance (sampling weights: ``class``, ``source`` or ``source_class``, so each class,
        source or (source, class) cell is drawn alike; ``class`` is ``class_balance =
        "sampler"``),
        augment (``none``; ``light``: small affine, brightness/contrast; ``xray``: larger
        affine, contrast and gamma; ``acquisition``: ``xray`` plus tone curves, histogram
        equalisation, blur/sharpen, noise, resampling, JPEG, border frames; never flips),
        early_stopping (patience in epochs on validation loss, 0 = off),
        ema (decay of an exponential moving average of the weights per step, e.g. 0.998;
        validation, the kept checkpoint and the test use the averaged weights; 0 = off).
    Evaluation:
        calibrate: fit a temperature on the validation split after training (temperature
            scaling); stored in the model card, used by ``predict`` and ``export``, reported
            beside the uncalibrated test metrics. It never changes a predicted class.
        tta: test-time augmentation: the test, the calibration fit, ``evaluate`` and
            ``predict`` average the probabilities of five views (the image, zoomed 5 % in
            and out, shifted 3 % left and right; no flips). Validation during training does
            not use it.
    Speed:
        feature_cache: ``auto`` computes a frozen, deterministic prefix of the network once
            per image and trains the rest on the stored output; ``off`` always runs the
            whole network.
        feature_dtype: storage of cached features (``float32`` or ``float16``).
        preload: ``auto`` copies the training and validation images (or features) to a
            CUDA device once when they take less than a quarter of its free memory; ``on``
            always (any device), ``off`` never.
    Runtime:
        seed: training seed (initialisation, order, augmentation).
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        precision: ``auto`` (bf16 autocast on CUDA and on CPUs with bf16 support), ``fp32``,
            ``bf16``. On a CPU with native bf16 it speeds up dense convolutions (ResNet-18:
            1.8x) but can slow depthwise ones at small inputs (EfficientNet-Lite0 at 64 px:
            0.6x; BENCHMARKS.md): time both with ``benchmarks/train_throughput.py``.
        channels_last: ``auto`` (on for CNNs, on CUDA and on the CPU), ``on``, ``off``.
        compile: wrap the model in ``torch.compile``.
        sync_bn: under ``torchrun`` on CUDA, BatchNorm layers that train compute their
            statistics over the whole global batch (``nn.SyncBatchNorm``) instead of each
            process's share. PyTorch supports it on GPUs only.
        threads: CPU threads for torch (0 = torch's default).
        keep_init: also write the weights the run started from (``init.safetensors``), for
            ``cxrlab analyze reuse`` (weight change, CKA to the initialisation, re-init).
        progress: show progress bars.
    Tracking (see :mod:`cxrlab.engine.tracking`):
        log: ``none``, ``tensorboard``, ``mlflow`` or both (``tensorboard,mlflow``).
        log_dir: where trackers write (TensorBoard: ``<log_dir>/<log_name>``, default
            ``<run folder>/tensorboard``; MLflow: ``<log_dir>/mlflow.db``, default beside the
            run folder).
        log_name: the run's name there (default: the run folder's name).
        log_experiment: the MLflow experiment (default ``cxrlab``; a study uses its name).
    """

    # ---- data (and those of DataOptions)
    holdout_source: str | None = option(
        None, "Train on every source but this one, then score it (holdout.json).", panel=_D
    )
    split_file: str | None = option(
        None, "Manifest from 'cxrlab data split' (made if missing).", panel=_D
    )
    train_size: float = option(
        1.0,
        "Part of the training split: a fraction (0.1) or a count per class (50); stratified, "
        "nested, the same for every seed.", panel=_D)  # fmt: skip
    lungs: Literal["keep", "remove", "only", "crop"] = option(
        "keep",
        "remove or only: train on images with the lungs (or all else) filled; crop: cut to "
        "the lungs' box; all need lung masks.", panel=_D)  # fmt: skip
    masks_from: str | None = option(
        None, "A lung segmenter run whose masks --lungs uses (for data without masks).", panel=_D
    )
    doubtful: Literal["refuse", "skip"] = option(
        "refuse", "An image without a valid lung mask: stop, or leave it out.", panel=_D
    )
    # ---- model
    model: str = option("resnet18", "See 'cxrlab models'.", panel=_M)
    weights: str = option(
        "imagenet",
        "imagenet; none; stats (statistics transfer); imagenet:K (first K units pretrained, "
        "stats above); pretrained:RUN (a 'cxrlab pretrain' run's backbone); or a weights "
        "file.", panel=_M)  # fmt: skip
    allow_transductive: bool = option(
        False,
        "Accept pretrained:RUN weights whose pretraining saw validation or test images of "
        "this run (the card and report then say so); refused otherwise.", panel=_M)  # fmt: skip
    freeze: str = option("none", "none, head, 0.5, 0.75, last:K.", panel=_M)
    freeze_bn: Literal["frozen", "update"] = option(
        "frozen", "frozen: frozen BatchNorm keeps its statistics.", panel=_M
    )
    # ---- training
    epochs: int = option(10, "Epochs.", panel=_T)
    batch_size: int = option(32, "Images per step.", panel=_T)
    lr: float = option(1e-3, "Learning rate.", panel=_T)
    optimizer: Literal["adam", "adamw", "sgd"] = option("adam", "Optimizer.", panel=_T)
    weight_decay: float = option(0.0, "Weight decay.", panel=_T)
    momentum: float = option(0.9, "SGD momentum.", panel=_T)
    scheduler: Literal["none", "cosine", "plateau"] = option("none", "LR schedule.", panel=_T)
    warmup_epochs: int = option(0, "Linear warm-up epochs.", panel=_T)
    grad_clip: float = option(0.0, "Max grad norm, 0=off.", panel=_T)
    label_smoothing: float = option(0.0, "Label smoothing.", panel=_T)
    class_balance: Literal["none", "weighted_loss", "sampler"] = option(
        "none", "Class imbalance: loss weights or a class-balanced sampler.", panel=_T
    )
    balance: Literal["none", "class", "source", "source_class"] = option(
        "none", "Sampling weights: each class, source or (source, class) cell alike.", panel=_T
    )
    augment: Literal["none", "light", "xray", "acquisition"] = option(
        "none",
        "light (small affine, brightness/contrast); xray (larger, plus gamma); acquisition "
        "(xray, tone curves, blur, noise, resampling, JPEG, frames). Never flips.",
        panel=_T)  # fmt: skip
    early_stopping: int = option(0, "Patience in epochs, 0=off.", panel=_T)
    ema: float = option(0.0, "Weight moving average decay per step (e.g. 0.998), 0=off.", panel=_T)
    calibrate: bool = option(
        True, "Fit a temperature on the validation split after training.", panel=_T
    )
    tta: bool = option(False, "Test-time augmentation: average 5 views (no flips).", panel=_T)
    feature_cache: Literal["auto", "off"] = option(
        "auto", "auto: run a frozen prefix once per image.", panel=_R
    )
    feature_dtype: Literal["float32", "float16"] = option(
        "float32", "Cached features' dtype.", panel=_R
    )
    preload: Literal["auto", "on", "off"] = option(
        "auto", "auto (CUDA, if it fits), on, off: data on the device once.", panel=_R
    )
    # ---- runtime
    seed: int = option(0, "Training seed.", panel=_R)
    device: str = option("auto", "auto, cpu, cuda, cuda:N, mps.", panel=_R)
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "Autocast precision.", panel=_R)
    channels_last: Literal["auto", "on", "off"] = option("auto", "Memory format.", panel=_R)
    compile: bool = option(False, "torch.compile the model.", panel=_R)
    sync_bn: bool = option(False, "torchrun on GPUs: SyncBatchNorm for training BN.", panel=_R)
    threads: int = option(0, "CPU threads, 0=default.", panel=_R)
    keep_init: bool = option(
        False, "Also keep the starting weights (init.safetensors) for 'analyze reuse'.", panel=_R
    )
    progress: bool = option(True, "Progress bars.", panel=_R)
    # ---- tracking
    log: str = option("none", "none, tensorboard, mlflow, or tensorboard,mlflow.", panel=_L)
    log_dir: str | None = option(
        None, "Tracker folder (default: OUT/tensorboard; MLflow: mlflow.db beside OUT).", panel=_L
    )
    log_name: str | None = option(None, "Run name there (default: OUT's name).", panel=_L)
    log_experiment: str | None = option(None, "MLflow experiment (default cxrlab).", panel=_L)

    def __post_init__(self) -> None:
        from .tracking import parse_log

        parse_freeze(self.freeze)
        parse_log(self.log)
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.early_stopping >= 0, "early_stopping must be >= 0 (0 = off)"),
            (0 <= self.ema < 1, "ema must be in [0, 1) (a decay such as 0.998; 0 = off)"),
            (self.image_size >= 32, "image_size must be at least 32"),
            (self.threads >= 0, "threads must be >= 0"),
            (
                self.train_size > 0
                and (self.train_size <= 1 or float(self.train_size).is_integer()),
                "train_size must be a fraction in (0, 1] or a whole count per class",
            ),
            (self.freeze_bn in BN_MODES, f"freeze_bn must be one of {BN_MODES}"),
            (
                self.balance == "none" or self.class_balance != "sampler",
                "class_balance = sampler and balance both draw samples: choose one",
            ),
            (
                not self.masks_from or self.lungs != "keep",
                "masks_from gives lung masks to --lungs remove|only|crop; with lungs keep "
                "nothing uses them",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_dict(cls, data: dict[str, Any], section: str = "") -> TrainConfig:
        """Build from a plain dict (a TOML table), rejecting unknown keys."""
        return from_dict(cls, data, section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(key, saved value, this value)`` for each setting that differs from ``saved``.

        ``saved`` is an earlier run's ``to_dict()`` (read back from JSON or a checkpoint).
        Where the data lives, the device, threads and progress bars may differ between
        machines and are not compared (a run folder's split.csv pins the images); a setting
        newer than the saved run compares as its default.
        """
        ours = self.to_dict()
        saved = {**TrainConfig().to_dict(), **saved}
        return [(k, saved[k], ours[k]) for k in sorted(ours)
                if k not in _MACHINE_LOCAL and _plain(saved[k]) != _plain(ours[k])]  # fmt: skip

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
