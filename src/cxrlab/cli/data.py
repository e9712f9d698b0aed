"""``cxrlab data ...`` and ``cxrlab models``: datasets and the model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import app, data_app, parse_ratios


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
    from ..data import scan_dataset
    from ..data.prepare import resolve_data
    from ..utils import strict_json

    folder = resolve_data(root, class_map or (), sources_csv or ())
    report = scan_dataset(folder, use_cache=not no_cache, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(strict_json(report.to_dict()), indent=2, allow_nan=False))
        return
    from ..data.summary import format_scan_report

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
    patients: Annotated[
        str | None,
        typer.Option(
            help="Patient rule: kermany, re:PATTERN, FILE.csv[#COLUMN] or none (default: "
            "Kermany file names where they appear); each patient's images stay in one split."
        ),
    ] = None,
) -> None:
    """Write a reproducible, stratified train/val/test manifest."""
    from ..data import make_split, near_copy_groups, scan_dataset
    from ..data.patients import patient_ids
    from ..data.summary import format_split_counts

    report = scan_dataset(root)
    groups = near_copy_groups(report) if near_copies and not holdout_all else None
    who = patient_ids(report.root, [r.path for r in report.records], [patients] if patients else [])
    split = make_split(report, ratios=parse_ratios(ratios), seed=seed, holdout_all=holdout_all,
                       groups=groups, patients=who)  # fmt: skip
    split.save(out)
    typer.echo(format_split_counts(split))
    typer.echo(f"Wrote {out} (split hash {split.fingerprint()})")


@data_app.command("cache")
def data_cache(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    size: Annotated[int, typer.Option(help="Square image size in pixels.")] = 224,
) -> None:
    """Decode every valid image once into the uint8 cache used by training."""
    from ..data import decoded_images, scan_dataset

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
    from ..data import write_synthetic_dataset

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
    from ..data import decoded_masks, scan_dataset

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
    from ..data import download_database

    root = download_database(out)
    typer.echo(f"Downloaded to {root}; use --data {root}")


# ------------------------------------------------------------------------------ models
@app.command("models")
def models_list(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'resnet*'.")] = "*",
) -> None:
    """List the registered models (any timm model also works as timm:<name>)."""
    from ..models import MODELS, list_models

    for name in list_models(pattern):
        spec = MODELS[name]
        typer.echo(f"{name:<20} {spec.source:<12} {spec.description}")
