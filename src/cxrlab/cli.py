"""The ``cxrlab`` command: a thin layer over the Python API.

Each command parses its options, calls one API function and prints the result. Errors a user
can cause print one line (``cxrlab: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import CxrlabError

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
    root: Annotated[Path, typer.Argument(help="Dataset folder (or the folder above it).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-decode every file.")] = False,
) -> None:
    """Count classes and find invalid files, duplicates and label conflicts."""
    from .data import scan_dataset

    report = scan_dataset(root, use_cache=not no_cache, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
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
) -> None:
    """Write a reproducible, stratified train/val/test manifest."""
    from .data import make_split, scan_dataset
    from .data.summary import format_split_counts

    report = scan_dataset(root)
    split = make_split(report, ratios=_parse_ratios(ratios), seed=seed, holdout_all=holdout_all)
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
) -> None:
    """Write a four-class synthetic chest X-ray phantom dataset (Kaggle layout)."""
    from .data import write_synthetic_dataset

    root = write_synthetic_dataset(out, per_class=per_class, seed=seed, size=size)
    typer.echo(f"Wrote {4 * per_class} phantom images to {root}")


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option(help="Folder to put the dataset in.")] = Path("data"),
) -> None:
    """Download the COVID-19 Radiography Database from Kaggle (needs credentials)."""
    from .data import download_database

    root = download_database(out)
    typer.echo(f"Downloaded to {root}; use --data {root}")


# ------------------------------------------------------------------------------ entry points
def main(argv: Optional[list[str]] = None) -> int:  # noqa: UP045 - typer needs Optional
    """Run the CLI and return its exit status (for tests: ``main(["data", "scan", ...])``)."""
    try:
        app(args=argv, prog_name="cxrlab")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
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
