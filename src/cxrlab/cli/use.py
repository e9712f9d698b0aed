"""``cxrlab predict``, ``cxrlab export`` and ``cxrlab serve``: using a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CxrlabError
from .common import BatchSize, Device, Doubtful, MasksFrom, Progress, app

# ------------------------------------------------------------------------------- use


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
    batch_size: BatchSize = 32,
    device: Device = "auto",
    masks_from: MasksFrom = None,
    doubtful: Doubtful = "skip",
    ood: Annotated[
        bool,
        typer.Option(
            help="Add ood_score and ood (1: unlike the run's training data, see 'cxrlab "
            "shift') as the CSV's last columns; --no-ood leaves them empty and runs faster."
        ),
    ] = True,
    infection: Annotated[
        Path | None,
        typer.Option(
            help="An infection segmenter run: add each image's infected share of the lungs "
            "(both, right, left) and its extent grade 0-8. Its lungs come from --masks-from, "
            "else the run's own lung segmenter."
        ),
    ] = None,
    progress: Progress = True,
) -> None:
    """Predict classes of X-rays; exit status 3 if any file was skipped.

    A run trained with --lungs runs its lung segmenter on every image first."""
    from ..infer import load, predict_paths

    predictor = load([model, *also] if also else model, device=device, masks_from=masks_from,
                     doubtful=doubtful)  # fmt: skip
    reader = _infection_reader(infection, masks_from, predictor) if infection else None
    result = predict_paths(predictor, paths, batch_size=batch_size, progress=progress, out=out,
                           ood=ood, infection=reader)  # fmt: skip
    if out is None:
        typer.echo(result.to_csv(), nl=False)
    else:
        typer.echo(f"Wrote {len(result.paths)} predictions to {out}")
    if result.ood_note:
        typer.echo(f"ood_score left empty: {result.ood_note}", err=True)
    elif result.ood:
        flagged = sum(result.ood)
        typer.echo(f"{flagged} of {len(result.ood)} image(s) look unlike the run's training "
                   "data (ood = 1): its answers there are less trustworthy", err=True)  # fmt: skip
    if cam is not None:
        _write_cams(predictor, result, cam, cam_class)
    for path, reason in result.skipped:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if result.skipped:
        typer.echo(f"{len(result.skipped)} input(s) skipped", err=True)
        raise typer.Exit(3)


def _infection_reader(infection: Path, masks_from: Path | None, predictor):
    """The infection segmenter with its lungs: ``--masks-from``, else the run's segmenter."""
    from ..segment.reading import InfectionReader

    lungs = masks_from or (predictor.lungs.segmenter if predictor.lungs is not None else None)
    if lungs is None:
        raise CxrlabError(
            "--infection needs a lung segmenter to find the lungs in: give one with "
            "--masks-from RUN (this run was trained without one)"
        )
    return InfectionReader(infection, lungs)


def _write_cams(predictor, result, folder: Path, cam_class: str | None) -> None:
    import numpy as np

    from ..infer import gradcam, save_cam_overlay

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
    from ..infer import export_model

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
    device: Device = "cpu",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload per request.")] = 50.0,
    masks_from: MasksFrom = None,
    doubtful: Doubtful = "skip",
    infection: Annotated[
        Path | None,
        typer.Option(
            help="An infection segmenter run: show each image's infection and its extent "
            "grade beside the probabilities (lungs from --masks-from, else the first run's "
            "own lung segmenter)."
        ),
    ] = None,
) -> None:
    """A local web app (Gradio) and JSON API: probabilities, Grad-CAM, model cards."""
    from ..app import serve

    serve(run_dir, host, port, device=device, max_upload_mb=max_upload_mb,
          masks_from=masks_from, doubtful=doubtful, infection=infection,
          echo=typer.echo)  # fmt: skip
