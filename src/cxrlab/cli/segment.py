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
    data: Annotated[str | None, typer.Option(help="Dataset with lung masks.")] = None,
    split: Annotated[str, typer.Option(help="test, val, train or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Folder for the results.")] = None,
    progress: Progress = True,
) -> None:
    """Dice, IoU and 95 % Hausdorff distance per image and per class; the worst images."""
    from ..segment.evaluate import evaluate_segmenter

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
    progress: Progress = True,
) -> None:
    """Write a lung mask beside every image (the Kaggle layout), with a verdict on each."""
    from ..segment.predict import predict_masks

    r = predict_masks(run_dir, data, out, doubtful=doubtful, progress=progress)  # type: ignore[arg-type]
    unused = " (not used)" if doubtful == "skip" else ""
    typer.echo(f"{r['written']} of {r['images']} masks written to {out}; "
               f"{len(r['doubtful'])} doubtful{unused}")  # fmt: skip
    for d in r["doubtful"][:20]:
        typer.echo(f"  {d['path']}: {d['reasons']}")
    if len(r["doubtful"]) > 20:
        typer.echo(f"  ... {len(r['doubtful']) - 20} more in {out / 'masks.csv'}")
