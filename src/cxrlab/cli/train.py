"""``cxrlab train`` and ``cxrlab pretrain``: their options are the fields of
:class:`~cxrlab.engine.TrainConfig` and :class:`~cxrlab.pretrain.PretrainConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..engine.train_config import TrainConfig
from ..pretrain.card import PretrainConfig
from .common import (
    ExternalMapOpt,
    ExternalOpt,
    ResumeOpt,
    app,
    config_from_options,
    external_sets,
    with_config_options,
)


@app.command("train", no_args_is_help=False)
@with_config_options(TrainConfig)
def train_cmd(
    out: Annotated[Path, typer.Option(help="Run folder to write.", rich_help_panel="Runtime")] = (
        Path("runs/train")
    ),
    resume: ResumeOpt = False,
    external: ExternalOpt = None,
    external_class_map: ExternalMapOpt = None,
    shift_reference: Annotated[
        bool,
        typer.Option(
            help="Keep what 'cxrlab shift' and 'predict' need to flag new images "
            "(<out>/shift/: one pass over the run's images).",
            rich_help_panel="Runtime",
        ),
    ] = True,
    **options: Any,
) -> None:
    """Train one classifier; writes metrics, figures, weights and a model card to --out."""
    from ..runs.external_sets import evaluate_externals
    from ..shift.reference import store_reference
    from ..training import train

    sets = external_sets(external, external_class_map)
    config = config_from_options(TrainConfig, options, section="train ")
    train(config, out, resume=resume)
    if shift_reference:
        typer.echo(store_reference(out, device=config.device, progress=config.progress))
    evaluate_externals(out, sets, device=config.device, progress=config.progress,
                       echo=typer.echo)  # fmt: skip


@app.command("pretrain", no_args_is_help=False)
@with_config_options(PretrainConfig)
def pretrain_cmd(
    out: Annotated[Path, typer.Option(help="Run folder to write.", rich_help_panel="Runtime")] = (
        Path("runs/pretrain")
    ),
    resume: ResumeOpt = False,
    **options: Any,
) -> None:
    """Self-supervised pretraining (SimSiam or BYOL) of a backbone on X-rays, labels
    ignored; use it with --weights pretrained:OUT in train and study."""
    from ..pretrain import pretrain

    config = config_from_options(PretrainConfig, options, section="pretrain ")
    card = pretrain(config, out, resume=resume)
    knn = card.final.get("knn_accuracy")
    before = card.initial.get("accuracy")
    typer.echo(
        f"Wrote {out}: {card.images} images, {card.epochs} epochs in {card.train_seconds:.0f} s; "
        f"loss {card.final['loss']:.4f}, embedding spread {card.final['embedding_spread']:.3f}"
        + (f", k-NN accuracy {before:.3f} -> {knn:.3f}" if knn is not None and before else "")
        + ("; COLLAPSED (the embeddings lost their spread)" if card.collapsed else "")
    )
