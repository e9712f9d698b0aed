"""The ``cxrlab`` command: a thin layer over the Python API.

Each command parses its options, calls one API function and prints the result. Errors a user
can cause print one line (``cxrlab: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .errors import CxrlabError, TrainingInterrupted

app = typer.Typer(
    name="cxrlab",
    help="Chest X-ray classification and transfer-learning studies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(
    help="Scan, split, cache, synthesise and download datasets.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
study_app = typer.Typer(
    help="Run a grid of trainings from a TOML file and report on it.", no_args_is_help=True
)
app.add_typer(study_app, name="study")
analyze_app = typer.Typer(
    help="Analyses of finished runs: why pretraining helps.", no_args_is_help=True
)
app.add_typer(analyze_app, name="analyze")
segment_app = typer.Typer(
    help="Lung segmentation: train a segmenter, score it, and write masks for any dataset.",
    no_args_is_help=True,
)
app.add_typer(segment_app, name="segment")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Chest X-ray classification and transfer-learning studies."""


_ExternalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--external",
        help="After training, score every run on this dataset too: NAME=PATH (repeatable); "
        "copies of training images are left out first.",
    ),
]
_ExternalMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--external-class-map",
        help="An external set's class map: NAME=DATASET_CLASS=MODEL_CLASS,... "
        "('-': not scored), e.g. quex=Non-COVID=-,COVID-19=COVID.",
    ),
]


def _external_sets(external: list[str] | None, maps: list[str] | None) -> tuple:
    from .engine.external import parse_external, parse_external_maps

    by_name = parse_external_maps(maps or [])
    sets = tuple(parse_external(text, by_name) for text in external or [])
    unknown = sorted(set(by_name) - {e.name for e in sets})
    if unknown:
        raise CxrlabError(f"--external-class-map names {unknown[0]!r}, which no --external names")
    return sets


def _parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise CxrlabError(
            f"--ratios must be three comma-separated numbers like 0.7,0.15,0.15, got {text!r}"
        )
    return parts  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- data
@data_app.command("scan")
def data_scan(
    root: Annotated[
        list[str],
        typer.Argument(help="Dataset folder (or the folder above it); several: [NAME=]PATH each."),
    ],
    class_map: Annotated[
        list[str] | None,
        typer.Option(help="A source's class map: NAME=FROM=TO,... (TO '-' drops); repeatable."),
    ] = None,
    sources_csv: Annotated[
        list[str] | None,
        typer.Option(help="NAME=FILE: a CSV of path,source naming finer sources."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-decode every file.")] = False,
) -> None:
    """Count classes and find invalid files, duplicates and label conflicts; with several
    sources, the class x source table and its confounds."""
    from .data import scan_dataset
    from .data.prepare import resolve_data
    from .utils import strict_json

    folder = resolve_data(root, class_map or (), sources_csv or ())
    report = scan_dataset(folder, use_cache=not no_cache, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(strict_json(report.to_dict()), indent=2, allow_nan=False))
        return
    from .data.summary import format_scan_report

    typer.echo(format_scan_report(report))


@data_app.command("split")
def data_split(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option(help="Manifest CSV to write.")] = Path("split.csv"),
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    ratios: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.7,0.15,0.15",
    holdout_all: Annotated[
        bool, typer.Option("--holdout-all", help="Every image is test (external set).")
    ] = False,
    near_copies: Annotated[
        bool,
        typer.Option(help="Keep near copies (re-saved, re-sized, re-cropped) in one split."),
    ] = True,
) -> None:
    """Write a reproducible, stratified train/val/test manifest."""
    from .data import make_split, near_copy_groups, scan_dataset
    from .data.summary import format_split_counts

    report = scan_dataset(root)
    groups = near_copy_groups(report) if near_copies and not holdout_all else None
    split = make_split(report, ratios=_parse_ratios(ratios), seed=seed, holdout_all=holdout_all,
                       groups=groups)  # fmt: skip
    split.save(out)
    typer.echo(format_split_counts(split))
    typer.echo(f"Wrote {out} (split hash {split.fingerprint()})")


@data_app.command("cache")
def data_cache(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    size: Annotated[int, typer.Option(help="Square image size in pixels.")] = 224,
) -> None:
    """Decode every valid image once into the uint8 cache used by training."""
    from .data import decoded_images, scan_dataset

    report = scan_dataset(root)
    images = decoded_images(report.root, report.records, size)
    typer.echo(f"{len(images)} images at {size}x{size} px in {images.path}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into.")],
    per_class: Annotated[int, typer.Option(help="Images per class.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    size: Annotated[int, typer.Option(help="Image side length in pixels.")] = 256,
    masks: Annotated[
        bool, typer.Option("--masks", help="Also write lung masks (<Class>/masks/).")
    ] = False,
    shortcut: Annotated[
        str | None,
        typer.Option(help="Plant a shortcut: 'marker' (a class-dependent tag outside the lungs)."),
    ] = None,
) -> None:
    """Write a four-class synthetic chest X-ray phantom dataset (Kaggle layout)."""
    from .data import write_synthetic_dataset

    root = write_synthetic_dataset(
        out, per_class=per_class, seed=seed, size=size, masks=masks, shortcut=shortcut
    )
    extras = " with lung masks" * masks + f" and a planted {shortcut}" * bool(shortcut)
    typer.echo(f"Wrote {4 * per_class} phantom images{extras} to {root}")


@data_app.command("masks")
def data_masks(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    kind: Annotated[str, typer.Option(help="lung or infection.")] = "lung",
    size: Annotated[int, typer.Option(help="Size the masks are resized to.")] = 224,
    max_list: Annotated[int, typer.Option(help="Problems listed at most.")] = 20,
) -> None:
    """Find and check the masks beside a dataset's images (missing, empty, wrong size, extra)."""
    from .data import decoded_masks, scan_dataset

    report = scan_dataset(root)
    masks = decoded_masks(report.root, report.records, size, kind)
    typer.echo(masks.summary())
    bad = [(r.path, s) for r, s in zip(report.records, masks.status) if s != "ok"]
    for path, reason in bad[:max_list]:
        typer.echo(f"  {path}: {reason}")
    for path in masks.extra[:max_list]:
        typer.echo(f"  {path}: mask without an image")
    hidden = max(0, len(bad) - max_list) + max(0, len(masks.extra) - max_list)
    if hidden:
        typer.echo(f"  ... {hidden} more not shown (--max-list)")


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option(help="Folder to put the dataset in.")] = Path("data"),
) -> None:
    """Download the COVID-19 Radiography Database from Kaggle (needs credentials)."""
    from .data import download_database

    root = download_database(out)
    typer.echo(f"Downloaded to {root}; use --data {root}")


# ------------------------------------------------------------------------------ models
@app.command("models")
def models_list(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'resnet*'.")] = "*",
) -> None:
    """List the registered models (any timm model also works as timm:<name>)."""
    from .models import MODELS, list_models

    for name in list_models(pattern):
        spec = MODELS[name]
        typer.echo(f"{name:<20} {spec.source:<12} {spec.description}")


# ------------------------------------------------------------------------------- train
_T = "Training"
_D = "Data"
_M = "Model"
_R = "Runtime"
_L = "Tracking"


@app.command("train", no_args_is_help=False)
def train_cmd(
    out: Annotated[Path, typer.Option(help="Run folder to write.", rich_help_panel=_R)] = Path(
        "runs/train"
    ),
    data: Annotated[
        list[str],
        typer.Option(
            help="Dataset folder, or 'phantoms' / 'phantoms:N' (synthetic, N per class); "
            "repeat as [NAME=]PATH to train on several sources.",
            rich_help_panel=_D,
        ),
    ] = ["phantoms"],  # noqa: B006 - typer reads the default, never mutates it
    class_map: Annotated[
        list[str] | None,
        typer.Option(
            help="A source's class map: NAME=FROM=TO,... (TO '-' drops a class); repeatable.",
            rich_help_panel=_D,
        ),
    ] = None,
    sources_csv: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=FILE: a CSV of path,source naming finer sources of a source's images.",
            rich_help_panel=_D,
        ),
    ] = None,
    holdout_source: Annotated[
        str | None,
        typer.Option(
            help="Train on every source but this one, then score it (holdout.json).",
            rich_help_panel=_D,
        ),
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(
            help="Manifest from 'cxrlab data split' (made if missing).", rich_help_panel=_D
        ),
    ] = None,
    split_seed: Annotated[int, typer.Option(help="Seed of a new split.", rich_help_panel=_D)] = 0,
    ratios: Annotated[str, typer.Option(help="train,val,test.", rich_help_panel=_D)] = (
        "0.7,0.15,0.15"
    ),
    split_source: Annotated[
        str,
        typer.Option(
            help="auto (the dataset's Train/Val/Test folders if any), folders, stratified.",
            rich_help_panel=_D,
        ),
    ] = "auto",
    near_copies: Annotated[
        bool,
        typer.Option(
            help="Keep near copies (re-saved, re-sized, re-cropped images) in one split.",
            rich_help_panel=_D,
        ),
    ] = True,
    image_size: Annotated[int, typer.Option(help="Input size (px).", rich_help_panel=_D)] = 224,
    train_size: Annotated[
        float,
        typer.Option(
            help="Part of the training split: a fraction (0.1) or a count per class (50); "
            "stratified, nested, the same for every seed.",
            rich_help_panel=_D,
        ),
    ] = 1.0,
    lungs: Annotated[
        str,
        typer.Option(
            help="keep; remove or only: train on images with the lungs (or all else) filled; "
            "crop: cut to the lungs' box; all need lung masks.",
            rich_help_panel=_D,
        ),
    ] = "keep",
    masks_from: Annotated[
        str | None,
        typer.Option(
            help="A lung segmenter run whose masks --lungs uses (for data without masks).",
            rich_help_panel=_D,
        ),
    ] = None,
    doubtful: Annotated[
        str,
        typer.Option(
            help="An image without a valid lung mask: refuse (stop) or skip (leave it out).",
            rich_help_panel=_D,
        ),
    ] = "refuse",
    model: Annotated[str, typer.Option(help="See 'cxrlab models'.", rich_help_panel=_M)] = (
        "resnet18"
    ),
    weights: Annotated[
        str,
        typer.Option(
            help="imagenet; none; stats (statistics transfer); imagenet:K (first K units "
            "pretrained, stats above); or a weights file.",
            rich_help_panel=_M,
        ),
    ] = "imagenet",
    freeze: Annotated[
        str, typer.Option(help="none, head, 0.5, 0.75, last:K.", rich_help_panel=_M)
    ] = "none",
    freeze_bn: Annotated[
        str,
        typer.Option(
            help="frozen: frozen BatchNorm keeps its statistics; update.", rich_help_panel=_M
        ),
    ] = "frozen",
    epochs: Annotated[int, typer.Option(rich_help_panel=_T)] = 10,
    batch_size: Annotated[int, typer.Option(rich_help_panel=_T)] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate.", rich_help_panel=_T)] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adam, adamw, sgd.", rich_help_panel=_T)] = "adam",
    weight_decay: Annotated[float, typer.Option(rich_help_panel=_T)] = 0.0,
    momentum: Annotated[float, typer.Option(help="SGD momentum.", rich_help_panel=_T)] = 0.9,
    scheduler: Annotated[
        str, typer.Option(help="none, cosine, plateau.", rich_help_panel=_T)
    ] = "none",
    warmup_epochs: Annotated[int, typer.Option(rich_help_panel=_T)] = 0,
    grad_clip: Annotated[float, typer.Option(help="Max grad norm, 0=off.", rich_help_panel=_T)] = (
        0.0
    ),
    label_smoothing: Annotated[float, typer.Option(rich_help_panel=_T)] = 0.0,
    class_balance: Annotated[
        str, typer.Option(help="none, weighted_loss, sampler.", rich_help_panel=_T)
    ] = "none",
    balance: Annotated[
        str,
        typer.Option(
            help="Sampling weights: none; class, source or source_class (each cell alike).",
            rich_help_panel=_T,
        ),
    ] = "none",
    augment: Annotated[
        str,
        typer.Option(
            help="none; light (small affine, brightness/contrast); xray (larger, plus gamma); "
            "acquisition (xray, tone curves, blur, noise, resampling, JPEG, frames). Never flips.",
            rich_help_panel=_T,
        ),
    ] = "none",
    early_stopping: Annotated[
        int, typer.Option(help="Patience in epochs, 0=off.", rich_help_panel=_T)
    ] = 0,
    ema: Annotated[
        float,
        typer.Option(
            help="Weight moving average decay per step (e.g. 0.998), 0=off.", rich_help_panel=_T
        ),
    ] = 0.0,
    calibrate: Annotated[
        bool,
        typer.Option(
            help="Fit a temperature on the validation split after training.", rich_help_panel=_T
        ),
    ] = True,
    tta: Annotated[
        bool,
        typer.Option(
            help="Test-time augmentation: average 5 views (no flips).", rich_help_panel=_T
        ),
    ] = False,
    feature_cache: Annotated[
        str,
        typer.Option(help="auto: run a frozen prefix once per image; off.", rich_help_panel=_R),
    ] = "auto",
    feature_dtype: Annotated[
        str, typer.Option(help="float32 or float16 cached features.", rich_help_panel=_R)
    ] = "float32",
    preload: Annotated[
        str,
        typer.Option(
            help="auto (CUDA, if it fits), on, off: data on the device once.", rich_help_panel=_R
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Training seed.", rich_help_panel=_R)] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.", rich_help_panel=_R)] = (
        "auto"
    ),
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16.", rich_help_panel=_R)] = (
        "auto"
    ),
    channels_last: Annotated[str, typer.Option(help="auto, on, off.", rich_help_panel=_R)] = (
        "auto"
    ),
    compile: Annotated[
        bool, typer.Option(help="torch.compile the model.", rich_help_panel=_R)
    ] = False,
    sync_bn: Annotated[
        bool,
        typer.Option(help="torchrun on GPUs: SyncBatchNorm for training BN.", rich_help_panel=_R),
    ] = False,
    threads: Annotated[int, typer.Option(help="CPU threads, 0=default.", rich_help_panel=_R)] = 0,
    keep_init: Annotated[
        bool,
        typer.Option(
            help="Also keep the starting weights (init.safetensors) for 'analyze reuse'.",
            rich_help_panel=_R,
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run in --out.", rich_help_panel=_R)
    ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars.", rich_help_panel=_R)] = True,
    log: Annotated[
        str,
        typer.Option(help="none, tensorboard, mlflow, or tensorboard,mlflow.", rich_help_panel=_L),
    ] = "none",
    log_dir: Annotated[
        str | None,
        typer.Option(
            help="Tracker folder (default: OUT/tensorboard; MLflow: mlflow.db beside OUT).",
            rich_help_panel=_L,
        ),
    ] = None,
    log_name: Annotated[
        str | None, typer.Option(help="Run name there (default: OUT's name).", rich_help_panel=_L)
    ] = None,
    log_experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default cxrlab).", rich_help_panel=_L)
    ] = None,
    external: _ExternalOpt = None,
    external_class_map: _ExternalMapOpt = None,
) -> None:
    """Train one classifier; writes metrics, figures, weights and a model card to --out."""
    options = dict(locals())  # first line: exactly the command's options
    from .engine import TrainConfig, train
    from .engine.external import evaluate_externals

    out_dir, resume_run = options.pop("out"), options.pop("resume")
    sets = _external_sets(options.pop("external"), options.pop("external_class_map"))
    options["ratios"] = _parse_ratios(ratios)
    options["split_file"] = str(split_file) if split_file else None
    options["data"] = data[0] if len(data) == 1 else tuple(data)
    options["class_map"], options["sources_csv"] = tuple(class_map or ()), tuple(sources_csv or ())
    config = TrainConfig.from_dict(options, section="train ")
    train(config, out_dir, resume=resume_run)
    evaluate_externals(out_dir, sets, device=config.device, progress=config.progress,
                       echo=typer.echo)  # fmt: skip


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Annotated[
        list[Path],
        typer.Argument(help="A run folder, an ensemble folder, or several runs (averaged)."),
    ],
    data: Annotated[
        str | None,
        typer.Option(help="Dataset folder (default: the run's own)."),
    ] = None,
    split: Annotated[
        str, typer.Option(help="test, val, train (the run's split) or all (every image).")
    ] = "test",
    out: Annotated[
        Path | None,
        typer.Option(help="Write the metrics JSON here."),
    ] = None,
    class_map: Annotated[
        str | None,
        typer.Option(
            help="Map dataset classes to the model's: 'COVID-19=COVID,Non-COVID=-' "
            "('-': not scored, only where its images went)."
        ),
    ] = None,
    keep_copies: Annotated[
        bool,
        typer.Option("--keep-copies", help="Score external images that copy training images too."),
    ] = False,
    batch_size: Annotated[int, typer.Option()] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Metrics of a trained model (or ensemble) on its test split or on another dataset."""
    from .engine import evaluate_run
    from .evaluation.external import parse_class_map
    from .evaluation.report import format_evaluation

    source = run_dir if len(run_dir) > 1 else run_dir[0]
    m = evaluate_run(source, data, split=split, out=out, batch_size=batch_size, device=device,
                     class_map=parse_class_map(class_map), exclude_copies=not keep_copies,
                     progress=progress)  # fmt: skip
    typer.echo(format_evaluation(m))
    if out:
        typer.echo(f"Wrote {out}")


@app.command("audit")
def audit_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by 'cxrlab train'.")],
    out: Annotated[Path | None, typer.Option(help="Folder to write (default RUN_DIR/audit).")] = (
        None
    ),
    data: Annotated[
        str | None, typer.Option(help="Dataset to audit on (default: the run's own).")
    ] = None,
    split: Annotated[
        str, typer.Option(help="test, val, train (the run's split) or all (every image).")
    ] = "test",
    check: Annotated[
        list[str] | None,
        typer.Option(help="Run only this check (copies, lungs, cam, probes, source); repeatable."),
    ] = None,
    class_map: Annotated[
        str | None,
        typer.Option(help="Map dataset classes to the model's: 'COVID-19=COVID,Non-COVID=-'."),
    ] = None,
    cam_images: Annotated[
        int, typer.Option(help="Grad-CAM maps at most, spread over the classes (0: all).")
    ] = 200,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of noise fills, CAM subset, probe folds.")] = 0,
    masks_from: Annotated[
        Path | None,
        typer.Option(help="A lung segmenter run: its masks for data without masks."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Shortcut audit: lungs removed, Grad-CAM in the lungs, acquisition probes, copies."""
    from .audit import CHECKS, run_audit
    from .evaluation.external import parse_class_map

    result = run_audit(run_dir, data, split=split, out=out, checks=check or CHECKS,
                       class_map=parse_class_map(class_map), cam_images=cam_images or None,
                       device=device, seed=seed, masks_from=masks_from,
                       progress=progress)  # fmt: skip
    for key, finding in result.findings.items():
        typer.echo(f"{key}: {finding}")
    typer.echo(f"Wrote {result.files['markdown']} and {result.files['json']}")


@analyze_app.command("reuse")
def analyze_reuse_cmd(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run folders (one split, input size and class list).")
    ],
    out: Annotated[Path, typer.Option(help="Folder to write.")] = Path("runs/reuse"),
    data: Annotated[
        str | None, typer.Option(help="Dataset (default: the first run's own).")
    ] = None,
    split: Annotated[str, typer.Option(help="Images measured: test or val.")] = "test",
    max_images: Annotated[
        int, typer.Option(help="At most this many images, every class in proportion (0: all).")
    ] = 300,
    bank_images: Annotated[
        int, typer.Option(help="At most this many training images as the k-NN bank (0: all).")
    ] = 2000,
    batch_size: Annotated[int, typer.Option(help="CKA minibatch (>= 4).")] = 50,
    knn_k: Annotated[int, typer.Option(help="Neighbours of the k-NN probe.")] = 20,
    reinit: Annotated[
        bool, typer.Option(help="Re-initialisation robustness (the slowest measurement).")
    ] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Feature reuse: CKA to the initialisation and between models, weight change, re-init
    robustness and a k-NN probe per unit; the gain of pretraining and what statistics alone
    recover."""
    from .analysis import analyze_reuse

    result = analyze_reuse(run_dirs, out=out, data=data, split=split,
                           max_images=max_images or None, bank_images=bank_images or None,
                           batch_size=batch_size, knn_k=knn_k, reinit=reinit, device=device,
                           progress=progress)  # fmt: skip
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"Wrote {out / 'reuse.md'} ({len(result.runs)} runs)")


# ------------------------------------------------------------------------------- study
@study_app.command("run")
def study_run(
    config: Annotated[Path, typer.Argument(help="Study TOML file (see configs/).")],
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Dataset folder (overrides [study] data); repeat as NAME=PATH for sources."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Study folder (default: runs/<study name>)."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Override [train] epochs."),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(help="Override [study] seeds (0..N-1)."),
    ] = None,
    cell: Annotated[
        list[str] | None,
        typer.Option(help="Run only this cell id (or id prefix); repeatable."),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(help="Run only shard i/n of the cells (1-based), e.g. 2/4."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    log: Annotated[
        str | None,
        typer.Option(
            help="none, tensorboard, mlflow, or both: every cell logs to OUT/tracking "
            "(overrides [train] log)."
        ),
    ] = None,
    external: _ExternalOpt = None,
    external_class_map: _ExternalMapOpt = None,
    masks_from: Annotated[
        Path | None,
        typer.Option(help="A lung segmenter run: masks for cells with lungs remove|only|crop."),
    ] = None,
) -> None:
    """Run every cell of a study (skipping finished ones), then write the report."""
    from .study import build_report, load_study_config, run_study

    sets = _external_sets(external, external_class_map)
    study = load_study_config(config, data=data, epochs=epochs, seeds=seeds, external=sets,
                              masks_from=masks_from)  # fmt: skip
    out = out or Path("runs") / study.settings.name
    done = run_study(study, out, cells=cell or (), shard=shard, progress=progress, log=log)
    typer.echo(
        f"{done.finished}/{done.total} cells finished in {out} (ran {len(done.ran)}, "
        f"already done {len(done.skipped)}, busy elsewhere {len(done.busy)})"
    )
    if done.complete:
        report = build_report(out, study)
        typer.echo(f"Report: {report.files['report']}  summary: {report.files['summary']}")
    else:
        typer.echo(f"When every shard has finished: cxrlab study report {out}")


@study_app.command("report")
def study_report(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by 'cxrlab study run'.")],
) -> None:
    """Rebuild results.csv, summary.md, comparisons.csv, figures and report.html."""
    from .study import build_report

    if not (study_dir / "study.toml").is_file():
        raise CxrlabError(f"{study_dir} has no study.toml: not a folder of 'cxrlab study run'")
    report = build_report(study_dir)
    n = len(report.results.rows)
    typer.echo(
        f"{n} runs ({len(report.results.missing)} cells missing); report: {report.files['report']}"
    )


@study_app.command("cells")
def study_cells(
    config: Annotated[Path, typer.Argument(help="Study TOML file.")],
    seeds: Annotated[int | None, typer.Option(help="Override seeds.")] = None,
) -> None:
    """List the cell ids a study file expands to (for --cell and job arrays)."""
    from .study import load_study_config

    study = load_study_config(config, seeds=seeds)
    for c in study.cells:
        typer.echo(f"{c.id:<40} {c.label}")


# ------------------------------------------------------------------------------- use
_MasksFrom = Annotated[
    Path | None,
    typer.Option(help="For runs trained with --lungs: a lung segmenter run instead of theirs."),
]
_Doubtful = Annotated[
    str,
    typer.Option(help="An image whose lung mask is doubtful: skip it (say why) or keep it."),
]


@app.command("predict")
def predict_cmd(
    model: Annotated[
        str, typer.Argument(help="A run folder, an ensemble folder, or an .onnx export.")
    ],
    paths: Annotated[list[str], typer.Argument(help="Images, folders (recursive) or globs.")],
    also: Annotated[
        list[str] | None,
        typer.Option("--with", help="Another run folder to average with MODEL; repeatable."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write predictions as CSV here."),
    ] = None,
    cam: Annotated[
        Path | None,
        typer.Option(help="Write a Grad-CAM overlay per image into this folder."),
    ] = None,
    cam_class: Annotated[
        str | None,
        typer.Option(help="Explain this class (default: the predicted one)."),
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    masks_from: _MasksFrom = None,
    doubtful: _Doubtful = "skip",
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Predict classes of X-rays; exit status 3 if any file was skipped.

    A run trained with --lungs runs its lung segmenter on every image first."""
    from .infer import load, predict_paths

    predictor = load([model, *also] if also else model, device=device, masks_from=masks_from,
                     doubtful=doubtful)  # fmt: skip
    result = predict_paths(predictor, paths, batch_size=batch_size, progress=progress, out=out)
    if out is None:
        typer.echo(result.to_csv(), nl=False)
    else:
        typer.echo(f"Wrote {len(result.paths)} predictions to {out}")
    if cam is not None:
        _write_cams(predictor, result, cam, cam_class)
    for path, reason in result.skipped:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if result.skipped:
        typer.echo(f"{len(result.skipped)} input(s) skipped", err=True)
        raise typer.Exit(3)


def _write_cams(predictor, result, folder: Path, cam_class: str | None) -> None:
    import numpy as np

    from .infer import gradcam, save_cam_overlay

    if predictor.model is None:
        raise CxrlabError(
            "--cam needs one run folder (a PyTorch model), not an ONNX file or an ensemble"
        )
    index = None
    if cam_class is not None:
        if cam_class not in predictor.classes:
            raise CxrlabError(f"--cam-class {cam_class!r} is not one of {predictor.classes}")
        index = predictor.classes.index(cam_class)
    from tqdm.auto import tqdm

    predictor.model.cpu()
    items = list(enumerate(zip(result.paths, result.probs)))
    for i, (path, probs) in tqdm(items, desc="Grad-CAM", unit="img", disable=None):
        pixels = predictor.to_pixels(path)
        k = int(np.argmax(probs)) if index is None else index
        heat = gradcam(predictor.model, pixels[None], k)[0]
        caption = f"Grad-CAM: {predictor.classes[k]} (p={probs[k]:.2f})"
        save_cam_overlay(pixels, heat, folder / f"{i:05d}-{Path(path).stem}.png", caption)
    typer.echo(f"Wrote {len(result.paths)} Grad-CAM overlays to {folder}")


@app.command("export")
def export_cmd(
    run_dir: Annotated[
        list[Path],
        typer.Argument(help="A run folder, an ensemble folder, or several runs (averaged)."),
    ],
    out: Annotated[Path, typer.Option(help="File to write (.onnx, .pt2 or .pt).")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx; exported (torch.export, .pt2); torchscript (.pt, deprecated by PyTorch).",
        ),
    ] = "onnx",
) -> None:
    """Export a trained model; checked against PyTorch (max |dp| <= 1e-4) before it is kept."""
    from .infer import export_model

    meta = export_model(run_dir if len(run_dir) > 1 else run_dir[0], format, out)
    typer.echo(
        f"Wrote {out} and {out.with_suffix('.json')} (max |dp| vs PyTorch "
        f"{meta['parity']['max_abs_diff']:.1e} on {meta['parity']['images']} images)"
    )


@app.command("serve")
def serve_cmd(
    run_dir: Annotated[
        list[Path],
        typer.Argument(help="Run folders, ensemble folders or .onnx files; shown side by side."),
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 shares it (no authentication).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 7860,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps, auto.")] = "cpu",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload per request.")] = 50.0,
    masks_from: _MasksFrom = None,
    doubtful: _Doubtful = "skip",
) -> None:
    """A local web app (Gradio) and JSON API: probabilities, Grad-CAM, model cards."""
    from .app import serve

    serve(run_dir, host, port, device=device, max_upload_mb=max_upload_mb,
          masks_from=masks_from, doubtful=doubtful, echo=typer.echo)  # fmt: skip


# ------------------------------------------------------------------------------ segment
@segment_app.command("train")
def segment_train(
    data: Annotated[str, typer.Option(help="A dataset with lung masks beside its images.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/lungs"),
    image_size: Annotated[int, typer.Option(help="Input size (px).")] = 256,
    epochs: Annotated[int, typer.Option()] = 12,
    batch_size: Annotated[int, typer.Option()] = 8,
    lr: Annotated[float, typer.Option()] = 1e-3,
    weights: Annotated[str, typer.Option(help="Encoder weights: imagenet or none.")] = "imagenet",
    augment: Annotated[str, typer.Option(help="none, light or xray.")] = "light",
    split_source: Annotated[str, typer.Option(help="auto, folders or stratified.")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads, 0=default.")] = 0,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Train a U-Net lung segmenter (Dice + BCE, kept by validation Dice)."""
    options = dict(locals())
    from .segment.train import SegmentConfig, train_segmenter

    run_dir = options.pop("out")
    card = train_segmenter(SegmentConfig.from_dict(options, "segment train "), run_dir)
    typer.echo(f"Wrote {run_dir} (test Dice {card['test']['dice']['mean']:.4f})")


@segment_app.command("evaluate")
def segment_evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by 'cxrlab segment train'.")],
    data: Annotated[str | None, typer.Option(help="Dataset with lung masks.")] = None,
    split: Annotated[str, typer.Option(help="test, val, train or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Folder for the results.")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Dice, IoU and 95 % Hausdorff distance per image and per class; the worst images."""
    from .segment.evaluate import evaluate_segmenter

    r = evaluate_segmenter(run_dir, data, split=split, out=out, progress=progress)
    typer.echo(f"{'class':<18}{'images':>7}{'Dice':>18}{'IoU':>18}{'HD95 (px)':>18}")
    blocks = {**r["per_class"], "all": r["overall"]}
    for name, b in blocks.items():
        cells = [f"{b[m]['mean']:.3f} ± {b[m]['std']:.3f}" if b[m]["n"] else "-"
                 for m in ("dice", "iou", "hd95")]  # fmt: skip
        typer.echo(f"{name:<18}{b['n']:>7}" + "".join(f"{c:>18}" for c in cells))
    if r["left_out_without_mask"]:
        typer.echo(f"{r['left_out_without_mask']} image(s) without a valid reference mask left out")
    typer.echo(f"Wrote {Path(r['files']['metrics']).parent}")


@segment_app.command("predict")
def segment_predict(
    run_dir: Annotated[Path, typer.Argument(help="A segmenter run folder.")],
    data: Annotated[Path, typer.Argument(help="A dataset folder (any layout 'data scan' reads).")],
    out: Annotated[Path, typer.Option(help="New folder: the dataset's layout with masks.")],
    doubtful: Annotated[
        str, typer.Option(help="skip: doubtful masks are not put beside their image; keep.")
    ] = "skip",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Write a lung mask beside every image (the Kaggle layout), with a verdict on each."""
    from .segment.predict import predict_masks

    r = predict_masks(run_dir, data, out, doubtful=doubtful, progress=progress)  # type: ignore[arg-type]
    unused = " (not used)" if doubtful == "skip" else ""
    typer.echo(f"{r['written']} of {r['images']} masks written to {out}; "
               f"{len(r['doubtful'])} doubtful{unused}")  # fmt: skip
    for d in r["doubtful"][:20]:
        typer.echo(f"  {d['path']}: {d['reasons']}")
    if len(r["doubtful"]) > 20:
        typer.echo(f"  ... {len(r['doubtful']) - 20} more in {out / 'masks.csv'}")


# ------------------------------------------------------------------------------ entry points
def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (for tests: ``main(["data", "scan", ...])``)."""
    try:
        app(args=argv, prog_name="cxrlab")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except TrainingInterrupted as e:
        typer.echo(f"cxrlab: {e}", err=True)
        return 130
    except CxrlabError as e:
        typer.echo(f"cxrlab: error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("cxrlab: interrupted", err=True)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
