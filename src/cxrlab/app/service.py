"""What the browser app and its HTTP API compute, free of any web framework.

:class:`ModelService` holds one or several trained models (run folders, ensemble folders,
ONNX exports) and turns uploaded files into :class:`ImageOutcome` records: each model's
calibrated class probabilities and, for PyTorch models, a Grad-CAM overlay. Every file is
decoded once with :func:`cxrlab.data.load_gray8` (16-bit, RGBA, JPEG under a PNG name, and
decompression bombs are handled there); a file that cannot be used becomes an outcome with an
``error`` and never an exception, so one bad upload cannot stop a server.

Requests from several users may arrive at once. Grad-CAM hooks into a model's layers, so each
model is used by one request at a time (a lock per model); different models run in parallel.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import run_files
from ..data.imageio import ImageReadError, load_gray8
from ..errors import CxrlabError
from ..evaluation.intervals import wilson_interval
from ..infer.cam import cam_overlay, gradcam
from ..infer.predictor import Predictor
from ..utils import strict_json

__all__ = ["DISCLAIMER", "ImageOutcome", "ModelOutput", "ModelService", "ServedModel"]

#: Shown on every page of the app and returned by the API.
DISCLAIMER = (
    "Research tool, not a diagnostic device. These models were trained on public research "
    "data and have not been validated for clinical use; do not use them to diagnose or treat "
    "anyone."
)

#: Uploads above this many pixels are refused before decoding (a radiograph has ~5-20 Mpx).
MAX_PIXELS = 50_000_000


@dataclass
class ModelOutput:
    """One model's answer for one image."""

    model: str
    probs: dict[str, float]
    cam_class: str | None = None
    cam_png: bytes | None = None  # the Grad-CAM overlay as a PNG, when computed
    note: str = ""  # why there is no Grad-CAM, for example
    ood_score: float | None = None  # how far from the training data (cxrlab.shift); None: n/a
    ood: bool | None = None  # past the run's threshold: unlike what the model trained on

    @property
    def predicted(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)

    def to_dict(self, with_cam: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "predicted": self.predicted,
            "probabilities": self.probs,
            "cam_class": self.cam_class,
            "ood_score": self.ood_score,
            "ood": self.ood,
        }
        if self.note:
            out["note"] = self.note
        if with_cam and self.cam_png is not None:
            import base64

            out["cam_png_base64"] = base64.b64encode(self.cam_png).decode("ascii")
        return out


@dataclass
class ImageOutcome:
    """Every model's answer for one uploaded file, or why the file could not be used."""

    file: str
    outputs: list[ModelOutput] = field(default_factory=list)
    error: str | None = None
    #: the infection's severity (an infection segmenter served), and its overlay as a PNG
    infection: dict[str, Any] | None = None
    infection_png: bytes | None = None

    def to_dict(self, with_cam: bool = False) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        out: dict[str, Any] = {"file": self.file,
                               "models": [o.to_dict(with_cam) for o in self.outputs]}  # fmt: skip
        if self.infection is not None:
            out["infection"] = dict(self.infection)
            if with_cam and self.infection_png is not None:
                import base64

                out["infection"]["overlay_png_base64"] = base64.b64encode(
                    self.infection_png
                ).decode("ascii")
        return out


class ServedModel:
    """One model of the app: a predictor, its card, a display name and a lock."""

    def __init__(self, source: str | os.PathLike[str], name: str, device: str = "cpu",
                 **lungs: Any) -> None:  # fmt: skip
        self.source = Path(source)
        self.name = name
        self.predictor = Predictor(source, device, **lungs)
        self.classes = list(self.predictor.classes)
        self.lock = threading.Lock()

    @property
    def torch_models(self) -> list[Any]:
        """The PyTorch networks behind the predictor (one per ensemble member); none for ONNX."""
        members = self.predictor.members or [self.predictor]
        return [m.model for m in members if m.model is not None]

    def analyze(self, gray: np.ndarray, cam: bool, cam_class: str | None) -> ModelOutput:
        """Probabilities for one decoded image and, if asked, its Grad-CAM overlay.

        Raises:
            ImageReadError: the run's lung mask of the image cannot be used.
        """
        pixels = self.predictor.to_pixels(gray, self.name)
        with self.lock:
            batch, shift = self.predictor.predict_with_ood(pixels[None])
            probs = batch[0]
            out = ModelOutput(self.name, {c: float(p) for c, p in zip(self.classes, probs)})
            if shift is not None:
                out.ood_score, out.ood = float(shift[0][0]), bool(shift[1][0])
            if not cam:
                return out
            target = out.predicted if cam_class is None else cam_class
            if target not in self.classes:
                out.note = f"this model has no class {target!r}"
                return out
            nets = self.torch_models
            if not nets:
                out.note = "Grad-CAM needs a PyTorch run folder, not an ONNX export"
                return out
            k = self.classes.index(target)
            # an ensemble: the mean of its members' maps (each in [0, 1]) for the class
            heat = np.mean([gradcam(net, pixels[None], k)[0] for net in nets], axis=0)
        caption = f"Grad-CAM: {target} (p={out.probs[target]:.2f})"
        if len(nets) > 1:
            out.note = f"Grad-CAM: the mean of the {len(nets)} members' maps"
        buf = io.BytesIO()
        cam_overlay(pixels, heat, caption).save(buf, format="PNG")
        out.cam_class, out.cam_png = target, buf.getvalue()
        return out

    # ---------------------------------------------------------------- model card
    def summary(self) -> dict[str, Any]:
        """The facts the app and ``GET /api/models`` show about this model."""
        card = self.predictor.card_data()
        source = self.source
        metrics = _read_json(source / run_files.METRICS) if source.is_dir() else None
        audit = source / run_files.AUDIT_DIR / run_files.AUDIT_MD if source.is_dir() else None
        kind = "onnx" if source.suffix == ".onnx" else "run"
        kind = "ensemble" if self.predictor.members else kind
        out: dict[str, Any] = {
            "name": self.name,
            "source": str(source),
            "kind": kind,
            "model": card.get("model"),
            "architecture": card.get("architecture"),
            "weights": card.get("weights"),
            "freeze": (card.get("freeze") or {}).get("policy"),
            "classes": self.classes,
            "image_size": self.predictor.image_size,
            "data": _data_summary(card.get("data")),
            "training": _training_summary(card.get("training")),
            "calibration": card.get("calibration"),
            "test_metrics": _metrics_summary(metrics),
            "members": [str(m.source) for m in self.predictor.members],
            "audit": _audit_lines(audit) if audit is not None and audit.is_file() else None,
        }
        return strict_json(out)  # old metrics.json files may hold NaN

    def card_markdown(self) -> str:
        """The model card as Markdown, for the app's "Model cards" panel."""
        s = self.summary()
        lines = [f"### {s['name']}", f"`{s['source']}`", ""]
        lines.append(
            f"- **Architecture**: {s['model']} ({s['architecture']}), {s['image_size']} px input"
        )
        if s["weights"]:
            lines.append(f"- **Initial weights**: {s['weights']}; frozen: {s['freeze'] or '-'}")
        if s["members"]:
            lines.append(
                f"- **Ensemble** of {len(s['members'])} runs (probabilities averaged): "
                + ", ".join(f"`{Path(m).name}`" for m in s["members"])
            )
        lines.append(f"- **Classes**: {', '.join(s['classes'])}")
        data = s["data"]
        if data:
            lines.append(
                f"- **Training data**: `{data['root']}` (hash {data['hash']}); "
                f"split {data['split']}; "
                + " / ".join(f"{n} {part}" for part, n in data["counts"].items())
                + " images"
            )
        tr = s["training"]
        if tr:
            lines.append(f"- **Training**: {tr}")
        tm = s["test_metrics"]
        if tm:
            lines.append(
                f"- **Test metrics** ({tm['n']} held-out images of its own split): "
                f"accuracy {tm['accuracy']:.3f} [95 % CI {tm['accuracy_ci'][0]:.3f}, "
                f"{tm['accuracy_ci'][1]:.3f}], macro-F1 {tm['macro_f1']:.3f}, "
                f"AUROC {tm['auroc']:.3f}"
            )
        else:
            lines.append(
                "- **Test metrics**: none stored with this model (`cxrlab evaluate "
                f"{s['source']} --out {s['source']}/metrics.json` adds them)"
            )
        cal = s["calibration"] or {}
        member_t = [
            m.get("temperature")
            for m in self.predictor.card_data().get("members", [])
            if isinstance(m, dict)
        ]
        if self.predictor.members:
            temps = ", ".join("none" if t is None else f"{t:.3f}" for t in member_t)
            lines.append(
                f"- **Calibration**: each member's own temperature ({temps}), fitted "
                "on the validation split, before averaging"
            )
        elif cal.get("temperature") is not None:
            text = f"- **Calibration**: temperature {cal['temperature']:.3f}"
            if "test_ece_before" in cal:
                text += (
                    f" (fitted on {cal.get('fitted_on', 'val')}; test ECE "
                    f"{cal['test_ece_before']:.3f} -> {cal['test_ece_after']:.3f})"
                )
            lines.append(text)
        else:
            lines.append("- **Calibration**: none (raw softmax probabilities)")
        if s["audit"]:
            lines.append("- **Shortcut audit** (`audit/audit.md`):")
            lines.extend(f"  {line}" for line in s["audit"])
        else:
            lines.append(
                "- **Shortcut audit**: none in this folder (`cxrlab audit RUN` writes one)"
            )
        return "\n".join(lines)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _data_summary(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return None
    counts = {part: sum(c.values()) for part, c in (data.get("counts") or {}).items()}
    split = f"{data.get('split_source', '?')}, seed {data.get('split_seed', '?')}"
    return {
        "root": data.get("root"),
        "hash": data.get("data_hash"),
        "split": split,
        "counts": counts,
    }


def _training_summary(training: dict[str, Any] | None) -> str | None:
    if not training:
        return None
    c = training.get("config") or {}
    parts = [
        f"{training.get('epochs', '?')} epochs (best {training.get('best_epoch', '?')})",
        f"{c.get('optimizer', '?')} lr {c.get('lr', '?')}",
        f"seed {training.get('seed')}",
    ]
    for key, label in (("augment", "augment"), ("ema", "EMA"), ("label_smoothing", "smoothing")):
        if c.get(key) not in (None, 0, 0.0, "none", False):
            parts.append(f"{label} {c[key]}")
    if c.get("tta"):
        parts.append("test-time augmentation")
    return ", ".join(parts)


def _metrics_summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics or "accuracy" not in metrics or "n" not in metrics:
        return None
    n = int(metrics["n"])
    ci = wilson_interval(round(metrics["accuracy"] * n), n)
    return {
        "n": n,
        "accuracy": metrics["accuracy"],
        "accuracy_ci": list(ci),
        "macro_f1": metrics.get("macro_f1"),
        "auroc": metrics.get("auroc"),
    }


def _audit_lines(path: Path) -> list[str]:
    """The one-line findings of ``audit.md`` (its bullet list)."""
    return [line for line in path.read_text().splitlines() if line.startswith("- **")]


def _display_names(sources: Sequence[Path]) -> list[str]:
    """Short unique names: the folder (or file) name, with parents added until unique."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in sources]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


class ModelService:
    """The models of one app, and the work each request asks of them.

    Args:
        sources: run folders, ensemble folders (a study's ``final/``) or ONNX exports.
        device: where the PyTorch models run (``cpu`` by default: a shared server should not
            hold a GPU idle).
        max_pixels: images above this many pixels are refused before decoding.
        masks_from, doubtful: for runs trained with ``--lungs``, as for :func:`cxrlab.load`.
        infection: an infection segmenter run: every image also gets its infection overlay
            and severity (:mod:`cxrlab.segment.reading`), its lungs found by ``masks_from``,
            else by the first model's own lung segmenter.

    Raises:
        CxrlabError: no source, or a source that is not a model (the message names it), or
            an infection segmenter without a lung segmenter.
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike[str]],
        device: str = "cpu",
        max_pixels: int = MAX_PIXELS,
        *,
        masks_from: str | os.PathLike[str] | None = None,
        doubtful: str = "skip",
        infection: str | os.PathLike[str] | None = None,
    ) -> None:
        paths = [Path(s) for s in sources]
        if not paths:
            raise CxrlabError("Give at least one run folder, ensemble folder or .onnx file")
        self.models = [ServedModel(p, n, device, masks_from=masks_from, doubtful=doubtful)
                       for p, n in zip(paths, _display_names(paths))]  # fmt: skip
        self.max_pixels = max_pixels
        # the classes any model knows, in first-seen order (for the Grad-CAM class choice)
        self.classes = list(dict.fromkeys(c for m in self.models for c in m.classes))
        self.infection: Any = None
        if infection is not None:
            from ..segment.reading import InfectionReader

            own = self.models[0].predictor.lungs
            lungs = masks_from or (own.segmenter if own is not None else None)
            if lungs is None:
                raise CxrlabError(
                    "--infection needs a lung segmenter to find the lungs in: give one with "
                    "--masks-from RUN"
                )
            self.infection = InfectionReader(infection, lungs, device)
            self.infection_lock = threading.Lock()

    def classify_file(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        cam: bool = True,
        cam_class: str | None = None,
    ) -> ImageOutcome:
        """Every model's answer for one file; a file that cannot be used gets ``error``."""
        outcome = ImageOutcome(name or Path(path).name)
        if cam_class is not None and cam_class not in self.classes:
            outcome.error = f"unknown class {cam_class!r} (the models know {self.classes})"
            return outcome
        try:
            gray = load_gray8(path, max_pixels=self.max_pixels)
        except ImageReadError as e:
            outcome.error = e.reason
            return outcome
        try:
            outcome.outputs = [m.analyze(gray, cam, cam_class) for m in self.models]
        except ImageReadError as e:  # a run's lung mask of this image is doubtful
            outcome.error = f"{e.path}: {e.reason}"
            return outcome
        if self.infection is not None:
            with self.infection_lock:
                reading = self.infection.read(gray)
            outcome.infection = reading.to_dict()
            buf = io.BytesIO()
            reading.overlay(gray).save(buf, format="PNG")
            outcome.infection_png = buf.getvalue()
        return outcome

    def classify(
        self,
        files: Sequence[tuple[str, str | os.PathLike[str]]],
        cam: bool = True,
        cam_class: str | None = None,
    ) -> list[ImageOutcome]:
        """:meth:`classify_file` for ``(name, path)`` pairs, in order."""
        return [self.classify_file(path, name, cam, cam_class) for name, path in files]

    def to_csv(self, outcomes: Sequence[ImageOutcome]) -> str:
        """One row per file and model: the prediction, every class probability, and last
        the shift score and flag (empty where a model cannot give them)."""
        from ..segment.reading import SEVERITY_COLUMNS, severity_cells

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        extra = list(SEVERITY_COLUMNS) if self.infection is not None else []
        w.writerow(["file", "model", "pred", *(f"p_{c}" for c in self.classes), "error",
                    "ood_score", "ood", *extra])  # fmt: skip
        for o in outcomes:
            if o.error is not None:
                w.writerow([o.file, "", "", *([""] * len(self.classes)), o.error, "", "",
                            *([""] * len(extra))])  # fmt: skip
            sev = severity_cells(o.infection) if extra else []
            for m in o.outputs:
                probs = [f"{m.probs[c]:.6f}" if c in m.probs else "" for c in self.classes]
                shift = ["", ""] if m.ood is None else [f"{m.ood_score:.6f}", int(m.ood)]
                w.writerow([o.file, m.model, m.predicted, *probs, "", *shift, *sev])
        return buf.getvalue()
