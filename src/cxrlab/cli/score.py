"""``cxrlab evaluate``, ``cxrlab audit`` and ``cxrlab analyze reuse``: scoring and
examining finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import BatchSize, Device, Progress, ScoreClassMap, ScoreSplit, analyze_app, app


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
    split: ScoreSplit = "test",
    out: Annotated[
        Path | None,
        typer.Option(help="Write the metrics JSON here."),
    ] = None,
    class_map: ScoreClassMap = None,
    keep_copies: Annotated[
        bool,
        typer.Option("--keep-copies", help="Score external images that copy training images too."),
    ] = False,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    image_size: Annotated[
        int | None,
        typer.Option(
            help="Test at this input size instead of the run's (a lower-resolution model may "
            "score better at a higher one); choose it on --split val."
        ),
    ] = None,
    progress: Progress = True,
) -> None:
    """Metrics of a trained model (or ensemble) on its test split or on another dataset."""
    from ..evaluation.other_data import parse_class_map
    from ..evaluation.report import format_evaluation
    from ..runs import evaluate_run

    source = run_dir if len(run_dir) > 1 else run_dir[0]
    m = evaluate_run(source, data, split=split, out=out, batch_size=batch_size, device=device,
                     class_map=parse_class_map(class_map), exclude_copies=not keep_copies,
                     image_size=image_size, progress=progress)  # fmt: skip
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
    split: ScoreSplit = "test",
    check: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this check (copies, lungs, cam, infection, probes, source); repeatable."
        ),
    ] = None,
    class_map: ScoreClassMap = None,
    cam_images: Annotated[
        int, typer.Option(help="Grad-CAM maps at most, spread over the classes (0: all).")
    ] = 200,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Seed of noise fills, CAM subset, probe folds.")] = 0,
    masks_from: Annotated[
        Path | None,
        typer.Option(help="A lung segmenter run: its masks for data without masks."),
    ] = None,
    progress: Progress = True,
) -> None:
    """Shortcut audit: lungs removed, Grad-CAM in the lungs, acquisition probes, copies."""
    from ..audit import CHECKS, run_audit
    from ..evaluation.other_data import parse_class_map

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
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Feature reuse: CKA to the initialisation and between models, weight change, re-init
    robustness and a k-NN probe per unit; the gain of pretraining and what statistics alone
    recover."""
    from ..analysis import analyze_reuse

    result = analyze_reuse(run_dirs, out=out, data=data, split=split,
                           max_images=max_images or None, bank_images=bank_images or None,
                           batch_size=batch_size, knn_k=knn_k, reinit=reinit, device=device,
                           progress=progress)  # fmt: skip
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"Wrote {out / 'reuse.md'} ({len(result.runs)} runs)")


@app.command("shift")
def shift_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by 'cxrlab train'.")],
    data: Annotated[
        str,
        typer.Option(
            help="The new images: class folders, or one folder of a site's unlabelled images "
            "(DIR/site/*.png)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Write the report here (JSON; Markdown and a figure beside it)."),
    ] = None,
    class_map: ScoreClassMap = None,
    signal: Annotated[
        str,
        typer.Option(help="ood_score's signal: combined, mahalanobis, knn, signature, confidence."),
    ] = "combined",
    test: Annotated[str, typer.Option(help="Batch two-sample test: ks, mmd or c2st.")] = "ks",
    keep: Annotated[
        float, typer.Option(help="Share of the run's validation images a threshold keeps.")
    ] = 0.95,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the power draws and intervals.")] = 0,
    progress: Progress = True,
) -> None:
    """Does new data look like the run's, and how accurate will the run be there (no labels
    needed)? Per-image scores, a batch test, the class mix and an accuracy estimate."""
    from ..evaluation.other_data import parse_class_map
    from ..runtime import resolve_device
    from ..shift import format_shift, shift_report, write_shift_report

    r = shift_report(run_dir, data, class_map=parse_class_map(class_map), signal=signal,
                     test=test, keep=keep, device=str(resolve_device(device)), seed=seed,
                     progress=progress)  # fmt: skip
    typer.echo(format_shift(r))
    if out:
        for path in write_shift_report(r, out):
            typer.echo(f"Wrote {path}")


@app.command("adapt")
def adapt_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by 'cxrlab train'.")],
    data: Annotated[
        str,
        typer.Option(help="The site's images: class folders, or one folder of its images."),
    ],
    out: Annotated[Path, typer.Option(help="The adapted run's folder (new).")],
    labels: Annotated[
        int,
        typer.Option(
            help="Labelled site images per class to fine-tune on (0: none), drawn "
            "from the adaptation pool by --seed, never from the site's test part."
        ),
    ] = 0,
    method: Annotated[
        str,
        typer.Option(
            help="The unlabelled part: prior (class priors by EM), bn (BatchNorm "
            "statistics), tent (bn, then entropy on BatchNorm's affine weights), "
            "bn+prior, tent+prior, or none (with --labels)."
        ),
    ] = "prior",
    scope: Annotated[
        str,
        typer.Option(
            help="What --labels fine-tunes: auto (chosen by cross-validation on "
            "the labelled images), none (temperature only), head, last or all."
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Draws the labelled images.")] = 0,
    class_map: ScoreClassMap = None,
    test_share: Annotated[
        float, typer.Option(help="Share of the site kept for scoring, never read to adapt.")
    ] = 0.5,
    split_seed: Annotated[int, typer.Option(help="Seed of the site's pool/test split.")] = 0,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Adapt a run to a new site with the site's own images (unlabelled, and N labelled per
    class); writes a new run."""
    from ..adapt import adapt_run
    from ..evaluation.other_data import parse_class_map
    from ..runtime import resolve_device

    result = adapt_run(run_dir, data, out, class_map=parse_class_map(class_map), labels=labels,
                       method=method, scope=scope, seed=seed, test_share=test_share,
                       split_seed=split_seed, device=str(resolve_device(device)),
                       progress=progress)  # fmt: skip
    rec = result.record
    a = rec["adaptation"]
    how = method if not labels else f"{method}, {labels} labelled per class, scope {a['scope']}"
    typer.echo(f"Adapted {run_dir} to {a['site']} ({how}) with {a['pool']} site images; "
               f"wrote {result.run_dir}")  # fmt: skip
    tuned = a["changed"].get("fine_tune")
    if tuned and tuned["cv"]:
        typer.echo(f"scope chosen by {tuned['folds']}-fold cross-validation (out-of-fold NLL): "
                   + ", ".join(f"{k} {v['nll']:.3f}" for k, v in tuned["cv"].items()))  # fmt: skip
    before, after = rec["site_test"]["before"], rec["site_test"]["after"]
    if before and after:
        typer.echo(f"site test ({before['n']} images it never read): accuracy "
                   f"{before['accuracy']:.4f} -> {after['accuracy']:.4f}, macro-F1 "
                   f"{before['macro_f1']:.4f} -> {after['macro_f1']:.4f}, ECE "
                   f"{before['ece']:.4f} -> {after['ece']:.4f}")  # fmt: skip
    else:
        typer.echo("The site's images carry no class the model knows: no score before/after")
