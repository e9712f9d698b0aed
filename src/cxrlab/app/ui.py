"""The browser page of ``cxrlab serve``: a Gradio Blocks app over :class:`ModelService`.

Gradio is the library this field uses for model demos (Hugging Face Spaces, torchxrayvision's
and timm's demos). The page keeps everything on the machine: a theme with system fonts only
(Gradio's default theme loads Google Fonts), analytics off, results rendered as HTML with the
Grad-CAM overlays inline (``data:`` URIs), no CDN.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .service import DISCLAIMER, ImageOutcome, ModelService

# before gradio is imported anywhere: no usage statistics leave the machine
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = ["PREDICTED", "build_blocks", "results_html", "theme"]

#: How long uploads and result files are kept on the server, in seconds.
KEEP_SECONDS = 600

#: The Grad-CAM choice that explains each image's predicted class.
PREDICTED = "predicted class"

CSS = """
.cxr-banner {background:#fff4e5; border:1px solid #f0a020; border-radius:6px;
             padding:8px 12px; color:#5a3800; font-weight:600}
.cxr-image {border:1px solid #ddd; border-radius:6px; padding:8px; margin-bottom:12px}
.cxr-file {font-weight:600; margin-bottom:6px; word-break:break-all}
.cxr-models {display:flex; flex-wrap:wrap; gap:16px}
.cxr-model {flex:1 1 260px; max-width:420px}
.cxr-model-name {font-size:0.85em; color:#555}
.cxr-pred {font-size:1.2em; font-weight:700; margin:2px 0 6px}
.cxr-bar-row {display:flex; align-items:center; gap:6px; font-size:0.85em; margin:2px 0}
.cxr-bar-label {width:120px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap}
.cxr-bar {flex:1; background:#eee; height:12px; border-radius:3px; overflow:hidden}
.cxr-bar > div {background:#2f6fb0; height:100%}
.cxr-bar-top > div {background:#d0641c}
.cxr-bar-value {width:48px; text-align:right; font-variant-numeric:tabular-nums}
.cxr-cam {width:100%; max-width:320px; margin-top:6px; image-rendering:auto}
.cxr-note {font-size:0.8em; color:#777}
.cxr-ood {font-size:0.85em; color:#8a4b00; background:#fff4e0; border-left:3px solid #e08a00;
          padding:4px 6px; margin:4px 0}
.cxr-error {color:#a01010; font-weight:600}
"""


def theme() -> Any:
    """Gradio's default look with system fonts only: no request to a font CDN."""
    import gradio as gr

    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def _bars(probs: dict[str, float], top: str) -> str:
    rows = []
    for cls, p in probs.items():
        extra = " cxr-bar-top" if cls == top else ""
        rows.append(
            f'<div class="cxr-bar-row"><span class="cxr-bar-label" title="{html.escape(cls)}">'
            f"{html.escape(cls)}</span>"
            f'<span class="cxr-bar{extra}"><div style="width:{100 * p:.1f}%"></div></span>'
            f'<span class="cxr-bar-value">{100 * p:.1f}%</span></div>'
        )
    return "".join(rows)


def results_html(outcomes: Sequence[ImageOutcome]) -> str:
    """One block per image; in it, the models side by side: class, bars, Grad-CAM."""
    if not outcomes:
        return ""
    parts = []
    for o in outcomes:
        body = [f'<div class="cxr-file">{html.escape(o.file)}</div>']
        if o.error is not None:
            body.append(
                f'<div class="cxr-error">Could not use this file: {html.escape(o.error)}</div>'
            )
        else:
            cols = []
            for m in o.outputs:
                col = [
                    f'<div class="cxr-model-name">{html.escape(m.model)}</div>',
                    f'<div class="cxr-pred">{html.escape(m.predicted)}</div>',
                ]
                if m.ood:
                    col.append(
                        '<div class="cxr-ood" role="alert">Unlike the images this model was '
                        f"trained on (shift score {m.ood_score:.2f}): its answer here is less "
                        "trustworthy than its test scores suggest.</div>"
                    )
                col.append(_bars(m.probs, m.predicted))
                if m.cam_png is not None:
                    data = base64.b64encode(m.cam_png).decode("ascii")
                    alt = f"Grad-CAM for {m.cam_class}"
                    col.append(
                        f'<img class="cxr-cam" alt="{html.escape(alt)}" '
                        f'src="data:image/png;base64,{data}">'
                    )
                if m.note:
                    col.append(f'<div class="cxr-note">{html.escape(m.note)}</div>')
                cols.append(f'<div class="cxr-model">{"".join(col)}</div>')
            body.append(f'<div class="cxr-models">{"".join(cols)}</div>')
            if o.infection is not None:
                body.append(_infection_html(o))
        parts.append(f'<div class="cxr-image">{"".join(body)}</div>')
    return f'<div class="cxr-results">{"".join(parts)}</div>'


def _infection_html(o: ImageOutcome) -> str:
    """The infection overlay and its severity, or why there is none."""
    sev = o.infection or {}
    if sev.get("grade") is None:
        text = f"No severity: the lung mask is {html.escape(str(sev.get('lungs', '')))}"
    else:
        text = (
            f"Extent grade {sev['grade']} of 8: {100 * sev['infection_fraction']:.0f} % of the "
            f"lungs infected (right {100 * sev['right_lung_fraction']:.0f} %, left "
            f"{100 * sev['left_lung_fraction']:.0f} %)"
        )
    img = ""
    if o.infection_png is not None:
        data = base64.b64encode(o.infection_png).decode("ascii")
        img = (f'<img class="cxr-cam" alt="infection (red) inside the lungs (green)" '
               f'src="data:image/png;base64,{data}">')  # fmt: skip
    return (f'<div class="cxr-model"><div class="cxr-model-name">Infection</div>'
            f'<div class="cxr-note">{text}</div>{img}</div>')  # fmt: skip


def _remove_older_than(folder: Path, seconds: float) -> None:
    for sub in folder.iterdir():
        try:
            if time.time() - sub.stat().st_mtime > seconds:
                shutil.rmtree(sub, ignore_errors=True)
        except OSError:
            pass  # removed by a concurrent request


def build_blocks(service: ModelService) -> Any:
    """The Gradio page: upload, class to explain, results, CSV download, model cards."""
    import gradio as gr

    downloads = Path(tempfile.mkdtemp(prefix="cxrlab-serve-"))

    def classify(files: list[str] | None, cam_choice: str) -> tuple[str, Any]:
        if not files:
            raise gr.Error("Choose one or more X-ray files first.")
        cam_class = None if cam_choice in (None, PREDICTED) else cam_choice
        outcomes = service.classify([(Path(f).name, f) for f in files], True, cam_class)
        bad = [o for o in outcomes if o.error is not None]
        if bad:
            gr.Warning(
                f"{len(bad)} of {len(outcomes)} file(s) could not be used: "
                + "; ".join(f"{o.file}: {o.error}" for o in bad[:3])
            )
        # a fresh folder per request: concurrent users never share a download; folders of
        # earlier requests go after KEEP_SECONDS (Gradio has copied them into its cache)
        _remove_older_than(downloads, KEEP_SECONDS)
        out = Path(tempfile.mkdtemp(dir=downloads)) / "predictions.csv"
        out.write_text(service.to_csv(outcomes))
        return results_html(outcomes), gr.DownloadButton(value=str(out), visible=True)

    names = ", ".join(m.name for m in service.models)
    # uploads (X-rays are personal data) and results leave Gradio's cache after KEEP_SECONDS
    with gr.Blocks(title="cxrlab", analytics_enabled=False,
                   delete_cache=(KEEP_SECONDS, KEEP_SECONDS)) as blocks:  # fmt: skip
        gr.HTML(f'<div class="cxr-banner" id="cxr-banner">{html.escape(DISCLAIMER)}</div>')
        gr.Markdown(f"## cxrlab: chest X-ray classifier\nModels: {html.escape(names)}")
        with gr.Tab("Classify"):
            with gr.Row():
                files = gr.File(
                    label="X-ray images (PNG, JPEG, 16-bit PNG, TIFF, DICOM)",
                    file_count="multiple",
                    type="filepath",
                    elem_id="cxr-files",
                )
                with gr.Column(scale=0, min_width=240):
                    cam_choice = gr.Dropdown(
                        [PREDICTED, *service.classes],
                        value=PREDICTED,
                        label="Grad-CAM explains",
                        elem_id="cxr-cam-class",
                    )
                    button = gr.Button("Classify", variant="primary", elem_id="cxr-classify")
                    download = gr.DownloadButton(
                        "Download predictions (CSV)", visible=False, elem_id="cxr-download"
                    )
            results = gr.HTML(elem_id="cxr-results")
        with gr.Tab("Model cards"):
            for m in service.models:
                gr.Markdown(m.card_markdown(), elem_classes=["cxr-card"])
        button.click(classify, [files, cam_choice], [results, download], api_name="classify")
    return blocks
