"""Using a trained model: a predictor for a run folder or an exported ONNX file.

Probabilities include the run's calibration temperature (fitted on its validation split;
an exported model carries it inside). Images are preprocessed exactly as in training, from
the model card: decoded safely to 8-bit grayscale with the full intensity range
(:func:`cxrlab.data.load_gray8`), resized with the data layer's resize, and fed to the model
as ``(B, 1, H, W)`` uint8. Normalisation lives inside the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..augment import tta_views
from ..data import load_gray8, resize_gray8, to_gray8
from ..errors import CheckpointError, CxrlabError
from ..runs.card import Card
from ..runtime import resolve_device

__all__ = ["Predictor", "load"]

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray


class Predictor:
    """Class probabilities for chest X-rays from a run folder, an ensemble or an ONNX export.

    Attributes:
        classes: output class names, in probability order.
        image_size: the square input size.
        source: the run folder, ensemble folder or ONNX file.
        members: for an ensemble, one predictor per member run (their probabilities are
            averaged); empty otherwise.

    Example:
        >>> p = cxrlab.load("runs/lite0-head")  # doctest: +SKIP
        >>> p.predict("xray.png")  # doctest: +SKIP
        {'COVID': 0.02, 'Lung_Opacity': 0.05, 'Normal': 0.9, 'Viral Pneumonia': 0.03}
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        device: str = "auto",
        *,
        masks_from: str | os.PathLike[str] | None = None,
        doubtful: str = "skip",
    ) -> None:
        from ..runs.ensemble import is_ensemble
        from ..runs.scoring import open_run

        sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        self.source = Path(sources[0])
        self.session = None
        self.model: torch.nn.Module | None = None
        self.members: list[Predictor] = []
        self.lungs: Any = None  # the run's lung preprocessing (segment.apply.RunLungs)
        #: the run's or ensemble's card (:mod:`cxrlab.runs.card`), read once; ``None`` for an
        #: ONNX file, whose exported summary is :attr:`exported`
        self.card: Card | None = None
        self.exported: dict[str, Any] | None = None
        self._ood: Any = None  # the shift scorer (cxrlab.shift.reference.OodScorer), once made
        #: why this predictor gives no ``ood_score`` ("" while none was asked for or it gives)
        self.ood_note = ""
        if len(sources) > 1 or is_ensemble(self.source):
            run = open_run(sources)
            self.members = [Predictor(m, device, masks_from=masks_from, doubtful=doubtful)
                            for m in run.members]  # fmt: skip
            self.lungs = self._shared_lungs()
            self.card = run.card
            self.classes = run.classes
            self.image_size = run.image_size
            self.device = self.members[0].device
        elif self.source.suffix == ".onnx":
            self._init_onnx()
        else:
            from ..runs import load_run_model

            run = open_run(self.source)
            self.model, card = load_run_model(self.source, card=run.member_cards[0])
            self.card = card
            self.lungs = run.whole_image_lungs(masks_from=masks_from, doubtful=doubtful)
            self.device = resolve_device(device)
            self.model.to(self.device).eval()
            self.classes: list[str] = list(card.classes)
            self.image_size = card.image_size
            # temperature scaling fitted on the run's validation split (1: none)
            self.temperature = card.temperature
            self.tta = card.tta  # test-time augmentation, if the run tests with it

    def card_data(self) -> dict[str, Any]:
        """The model card as JSON data (an ONNX file: the summary it carries)."""
        if self.card is None:
            return dict(self.exported or {})
        return self.card.to_dict()

    def _shared_lungs(self) -> Any:
        """The members' lung preprocessing, which they must share (one input for all)."""
        ways = {(m.lungs.lungs if m.lungs else "keep", str(m.lungs.segmenter) if m.lungs else "")
                for m in self.members}  # fmt: skip
        if len(ways) > 1:
            raise CheckpointError(
                f"The ensemble's members prepare images differently (lungs, segmenter: "
                f"{sorted(ways)}); members must share their lungs mode and segmenter"
            )
        return self.members[0].lungs

    def _init_onnx(self) -> None:
        """An exported model: classes and input size from the metadata inside the file
        (``cxrlab export`` writes them there), else from the JSON sidecar beside it."""
        if not self.source.is_file():
            raise CheckpointError(f"ONNX file {self.source} does not exist")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise CheckpointError(
                "Running ONNX models needs onnxruntime: pip install 'cxrlab[export]'"
            ) from e
        try:
            self.session = ort.InferenceSession(str(self.source),
                                                providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as e:  # not a readable ONNX protobuf
            raise CheckpointError(f"{self.source} is not a readable ONNX model ({e})") from e
        meta = self.session.get_modelmeta().custom_metadata_map  # cxrlab export writes cxrlab.*
        sidecar = self.source.with_suffix(".json")
        if "cxrlab.card" in meta:
            self.exported = json.loads(meta["cxrlab.card"])
            self.classes = json.loads(meta["cxrlab.classes"])
            self.image_size = int(meta["cxrlab.image_size"])
        elif sidecar.is_file():  # exported by an older cxrlab
            self.exported = json.loads(sidecar.read_text())
            self.classes = list(self.exported["classes"])
            self.image_size = int(self.exported["input"]["shape"][-1])
        else:
            raise CheckpointError(
                f"{self.source} was not exported by 'cxrlab export': it names no classes or "
                f"input size (no cxrlab metadata inside, no {sidecar.name} beside it)"
            )
        self.device = torch.device("cpu")

    # ---------------------------------------------------------------- preprocessing
    def to_pixels(self, image: ImageLike, name: str | None = None) -> np.ndarray:
        """One image as the model's ``(H, W)`` uint8 input: resized like the training cache,
        and, for a run trained with ``--lungs remove|only|crop``, its lungs found by the
        run's segmenter and treated as in training.

        Raises:
            ImageReadError: an unreadable file, or a lung mask that cannot be used
                (:class:`~cxrlab.segment.apply.DoubtfulMask`; ``name`` names the image).
        """
        if isinstance(image, (str, os.PathLike)):
            gray = load_gray8(image)
        elif isinstance(image, Image.Image):
            gray = to_gray8(image)
        else:
            arr = np.asarray(image)
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                gray = to_gray8(Image.fromarray(arr.astype(np.uint8)))
            elif arr.ndim == 2:
                gray = arr if arr.dtype == np.uint8 else to_gray8(Image.fromarray(arr))
            else:
                raise ValueError(f"Expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")
        gray = np.ascontiguousarray(gray)
        if self.lungs is not None:
            where = name or (str(image) if isinstance(image, (str, os.PathLike)) else "image")
            return self.lungs(gray, where)
        return resize_gray8(gray, self.image_size)

    # ---------------------------------------------------------------- prediction
    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """``(B, H, W)`` uint8 -> ``(B, K)`` probabilities."""
        return self._predict(pixels, evidence=False)[0]

    def _predict(self, pixels: np.ndarray, evidence: bool) -> tuple[np.ndarray, list[Any]]:
        """The probabilities and, with ``evidence``, each member's
        :class:`~cxrlab.shift.reference.ImageEvidence` read from the same forward pass
        (the plain view's features and probabilities); none for an ONNX file."""
        if self.members:  # an ensemble: the members' calibrated probabilities, averaged
            outs = [m._predict(pixels, evidence) for m in self.members]
            return np.mean([p for p, _ in outs], axis=0), [e for _, ev in outs for e in ev]
        x = np.array(pixels, dtype=np.uint8, copy=True)[:, None]  # (B, 1, H, W), writable
        if self.session is not None:
            name = self.session.get_inputs()[0].name
            return np.asarray(self.session.run(None, {name: x})[0], dtype=np.float32), []
        assert self.model is not None
        from ..shift.reference import ImageEvidence, captured_features, signatures

        xt = torch.from_numpy(x).to(self.device)
        views = tta_views(xt.float()) if self.tta else [xt]
        with torch.no_grad(), captured_features(self.model) as features:
            probs = [(self.model(v).float() / self.temperature).softmax(dim=1) for v in views]
        mean = torch.stack(probs).mean(0).cpu().numpy()
        if not evidence:
            return mean, []
        plain = ImageEvidence(features[0].numpy(), signatures(pixels), probs[0].cpu().numpy())
        return mean, [plain]

    def predict_with_ood(
        self, pixels: np.ndarray
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """``(B, H, W)`` uint8 -> ``(probs, (ood_score, ood) or None)`` in one forward pass
        per model (see :meth:`ood`)."""
        if self.ood_note or self.session is not None:
            return self.predict_pixels(pixels), self.ood(pixels)
        probs, evidence = self._predict(pixels, evidence=True)
        return probs, self.ood(pixels, evidence)

    def ood(
        self, pixels: np.ndarray, evidence: list[Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ood_score, ood)`` of ``(B, H, W)`` uint8 model inputs: how far each image lies
        from the run's training data (higher: further; see :mod:`cxrlab.shift`) and whether
        it is past the threshold that keeps 95 % of the run's validation images. ``None``
        where it cannot be told (an ONNX export, or a run whose data cannot be read to make
        its reference): :attr:`ood_note` says why."""
        if self.ood_note:
            return None
        members = self.members or [self]
        if self._ood is None:
            from ..shift.reference import OodScorer

            if any(m.model is None for m in members):
                self.ood_note = ("an ONNX export carries no reference for shift detection; "
                                 "give the run folder for ood_score")  # fmt: skip
                return None
            try:
                self._ood = OodScorer.for_runs([m.source for m in members], device=self.device)
            except CxrlabError as e:
                self.ood_note = f"no shift reference for {self.source}: {e}"
                return None
        if evidence is None:
            from ..shift.reference import image_evidence

            evidence = [image_evidence(m.model, pixels, m.temperature, device=m.device)
                        for m in members]  # fmt: skip
        return self._ood.score(evidence)

    def predict(self, image: ImageLike) -> dict[str, float]:
        """Probability of every class for one image (path, PIL image or array)."""
        probs = self.predict_pixels(self.to_pixels(image)[None])[0]
        return {c: float(p) for c, p in zip(self.classes, probs)}

    def predict_many(self, images: Sequence[ImageLike]) -> np.ndarray:
        """``(N, K)`` probabilities for several images."""
        return self.predict_pixels(np.stack([self.to_pixels(i) for i in images]))

    def describe(self) -> dict[str, Any]:
        out = {"source": str(self.source), "classes": self.classes, "image_size": self.image_size}
        if self.lungs is not None:
            out["lungs"] = {"mode": self.lungs.lungs, "segmenter": str(self.lungs.segmenter)}
        if self.members:
            out["members"] = [str(m.source) for m in self.members]
        return out


def load(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    device: str = "auto",
    *,
    masks_from: str | os.PathLike[str] | None = None,
    doubtful: str = "skip",
) -> Predictor:
    """A :class:`Predictor` for a run folder (``cxrlab train --out``), an ensemble folder, an
    ``.onnx`` export, or several run folders (an ensemble made on the fly).

    A run trained with ``--lungs remove|only|crop`` runs its lung segmenter on every image
    (or ``masks_from``, a segmenter run); ``doubtful`` says what to do with an image whose
    mask is doubtful: ``skip`` (raise :class:`~cxrlab.segment.apply.DoubtfulMask`) or
    ``keep`` (use it).
    """
    return Predictor(source, device, masks_from=masks_from, doubtful=doubtful)
