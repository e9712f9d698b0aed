"""``cxrlab segment ...``: the lung segmenter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..segment.card import SegmentConfig
from .common import Progress, config_from_options, segment_app, with_config_options


@segment_app.command("train")
@with_config_options(SegmentConfig)
def segment_train(
    out: Annotated[Path, typer.Option(help="Run folder to write.", rich_help_panel="Runtime")] = (
        Path("runs/lungs")
    ),
    **options: Any,
) -> None:
    """Train a U-Net lung segmenter (Dice + BCE, kept by validation Dice)."""
    from ..segment.train import train_segmenter

    config = config_from_options(SegmentConfig, options, section="segment train ")
    card = train_segmenter(config, out)
    typer.echo(f"Wrote {out} (test Dice {card.test_dice:.4f})")


@segment_app.command("evaluate")
def segment_evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by 'cxrlab segment train'.")],
    data: Annotated[
        str | None, typer.Option(help="Dataset with masks of the segmenter's target.")
    ] = None,
    split: Annotated[str, typer.Option(help="test, val, train or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Folder for the results.")] = None,
    lungs: Annotated[
        Path | None,
        typer.Option(
            help="For an infection segmenter: a lung segmenter whose masks it is kept in "
            "(the whole chain; default: the reference lung masks)."
        ),
    ] = None,
    progress: Progress = True,
) -> None:
    """Dice, IoU and 95 % Hausdorff distance per image and per class; the worst images.
    An infection segmenter: Dice on images with infection, the false-positive area on those
    without, and the infected share and grade against the reference's."""
    from ..segment.evaluate import evaluate_segmenter

    r = evaluate_segmenter(run_dir, data, split=split, out=out, lungs=lungs, progress=progress)
    if r["target"] == "infection":
        _infection_table(r)
    else:
        _lung_table(r)
    if r["left_out_without_mask"]:
        typer.echo(f"{r['left_out_without_mask']} image(s) without a valid reference mask left out")
    copies = r["left_out_copies"]
    if copies["exact"] or copies["near"]:
        typer.echo(f"{copies['exact'] + copies['near']} copies of images it trained on (or "
                   f"chose its epoch by) left out: {copies['exact']} exact, "
                   f"{copies['near']} near")  # fmt: skip
    if copies["note"]:
        typer.echo(f"note: {copies['note']}")
    typer.echo(f"Wrote {Path(r['files']['metrics']).parent}")


def _lung_table(r: dict) -> None:
    typer.echo(f"{'class':<18}{'images':>7}{'Dice':>18}{'IoU':>18}{'HD95 (px)':>18}")
    blocks = {**r["per_class"], "all": r["overall"]}
    for name, b in blocks.items():
        cells = [f"{b[m]['mean']:.3f} ± {b[m]['std']:.3f}" if b[m]["n"] else "-"
                 for m in ("dice", "iou", "hd95")]  # fmt: skip
        typer.echo(f"{name:<18}{b['n']:>7}" + "".join(f"{c:>18}" for c in cells))


def _infection_table(r: dict) -> None:
    def num(v: float | None, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    head = ["images", "infected", "Dice (infected)", "FP area", "FP < 1 %", "Spearman", "kappa"]
    typer.echo(f"{'class':<18}" + "".join(f"{h:>16}" for h in head))
    for name, b in {**r["per_class"], "all": r["overall"]}.items():
        d = b["dice"]
        cells = [
            str(b["n"]), str(b["n_infected"]),
            f"{d['mean']:.3f} ± {d['std']:.3f}" if d["n"] else "-",
            num(b["fp_area"]["mean"], ".4f"), num(b["fp_under_aim"], ".1%"),
            num(b["spearman"]), num(b["kappa"]),
        ]  # fmt: skip
        typer.echo(f"{name:<18}" + "".join(f"{c:>16}" for c in cells))
    rho = r["overall"]["spearman_infected"]
    if rho is not None:
        typer.echo(f"Spearman over the images with infection only: {rho:.3f}")
    typer.echo(
        "FP area: the share of the lungs called infected on images whose reference mask is "
        "empty; Spearman: predicted against true infected share; kappa: the 0-8 extent grade "
        "(quadratic weights)"
    )


@segment_app.command("predict")
def segment_predict(
    run_dir: Annotated[Path, typer.Argument(help="A segmenter run folder.")],
    data: Annotated[Path, typer.Argument(help="A dataset folder (any layout 'data scan' reads).")],
    out: Annotated[Path, typer.Option(help="New folder: the dataset's layout with masks.")],
    doubtful: Annotated[
        str, typer.Option(help="skip: doubtful masks are not put beside their image; keep.")
    ] = "skip",
    lungs: Annotated[
        Path | None,
        typer.Option(
            help="For an infection segmenter: a lung segmenter run (default: the "
            "dataset's own lung masks)."
        ),
    ] = None,
    progress: Progress = True,
) -> None:
    """Write a mask beside every image (the Kaggle layout), with a verdict on each. An
    infection segmenter writes infection masks and severity.csv (the infected share of each
    lung and a RALE-style extent grade 0-8)."""
    from ..segment.predict import predict_masks

    r = predict_masks(run_dir, data, out, lungs=lungs, doubtful=doubtful,  # type: ignore[arg-type]
                      progress=progress)  # fmt: skip
    if "severity" in r:
        grades = ", ".join(f"{g}: {n}" for g, n in r["severity"].items()) or "none"
        typer.echo(f"{r['written']} of {r['images']} infection masks written to {out}; "
                   f"{len(r['doubtful'])} without a sure lung mask; grades {grades} "
                   f"(severity.csv)")  # fmt: skip
        for d in r["doubtful"][:20]:
            typer.echo(f"  {d['path']}: {d['reasons']}")
        if len(r["doubtful"]) > 20:
            typer.echo(f"  ... {len(r['doubtful']) - 20} more in {out / 'severity.csv'}")
        return
    unused = " (not used)" if doubtful == "skip" else ""
    typer.echo(f"{r['written']} of {r['images']} masks written to {out}; "
               f"{len(r['doubtful'])} doubtful{unused}")  # fmt: skip
    for d in r["doubtful"][:20]:
        typer.echo(f"  {d['path']}: {d['reasons']}")
    if len(r["doubtful"]) > 20:
        typer.echo(f"  ... {len(r['doubtful']) - 20} more in {out / 'masks.csv'}")
