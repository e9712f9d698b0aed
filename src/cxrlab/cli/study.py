"""``cxrlab study ...``: grids of trainings from a TOML file, and their reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CxrlabError
from .common import ExternalMapOpt, ExternalOpt, Progress, external_sets, study_app


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
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Cells run at once, each in its own process with its share of the CPU "
            "cores (overrides [study] jobs; default 1).",
        ),
    ] = None,
    progress: Progress = True,
    log: Annotated[
        str | None,
        typer.Option(
            help="none, tensorboard, mlflow, or both: every cell logs to OUT/tracking "
            "(overrides [train] log)."
        ),
    ] = None,
    external: ExternalOpt = None,
    external_class_map: ExternalMapOpt = None,
    masks_from: Annotated[
        Path | None,
        typer.Option(help="A lung segmenter run: masks for cells with lungs remove|only|crop."),
    ] = None,
) -> None:
    """Run every cell of a study (skipping finished ones), then write the report."""
    from ..study import build_report, load_study_config, run_study

    sets = external_sets(external, external_class_map)
    study = load_study_config(config, data=data, epochs=epochs, seeds=seeds, external=sets,
                              masks_from=masks_from)  # fmt: skip
    out = out or Path("runs") / study.settings.name
    done = run_study(
        study, out, cells=cell or (), shard=shard, progress=progress, log=log, jobs=jobs
    )
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
    from ..study import build_report

    if not (study_dir / "study.toml").is_file():
        raise CxrlabError(f"{study_dir} has no study.toml: not a folder of 'cxrlab study run'")
    report = build_report(study_dir)
    n = len(report.results.rows)
    typer.echo(
        f"{n} runs ({len(report.results.missing)} cells missing); report: {report.files['report']}"
    )


@study_app.command("final")
def study_final(
    study_dir: Annotated[Path, typer.Argument(help="A folder written by 'cxrlab study run'.")],
) -> None:
    """Choose the final model again and write final/ ('study report' only reads it)."""
    from ..study import choose_final, load_study_folder

    study = load_study_folder(study_dir)
    final = choose_final(study, study_dir)
    if final is None:
        raise CxrlabError(
            f"No final model for {study_dir}: [study] final is {study.settings.final!r}, or a "
            "cell has not finished, or no training type is a candidate"
        )
    typer.echo(f"Final model: {final}; rebuild the report with: cxrlab study report {study_dir}")


@study_app.command("cells")
def study_cells(
    config: Annotated[Path, typer.Argument(help="Study TOML file.")],
    seeds: Annotated[int | None, typer.Option(help="Override seeds.")] = None,
) -> None:
    """List the cell ids a study file expands to (for --cell and job arrays)."""
    from ..study import load_study_config

    study = load_study_config(config, seeds=seeds)
    for c in study.cells:
        typer.echo(f"{c.id:<40} {c.label}")
