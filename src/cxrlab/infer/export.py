"""``cxrlab export``: ONNX, a ``torch.export`` program or TorchScript, each checked against
PyTorch before it is kept.

``exported`` (``.pt2``) is PyTorch's own deployable format: ``torch.export.load(path).module()``
runs it without cxrlab. ``torchscript`` (``.pt``) stays for runtimes that only read
TorchScript; PyTorch has deprecated ``torch.jit.trace``, so it warns when exporting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import COVID_RADIOGRAPHY_CLASSES, draw_phantom
from ..errors import CxrlabError
from ..runs import load_run_model
from ..runs.folder import require_whole_images
from ..runs.scoring import ScoringRun, open_run
from ..utils import strict_json, write_json

__all__ = ["FORMATS", "export_model"]

FORMATS = ("onnx", "exported", "torchscript")
TOLERANCE = 1e-4


class _WithSoftmax(nn.Module):
    """The model's probabilities, with the run's calibration temperature applied."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image).float() / self.temperature
        return logits.softmax(dim=1)  # (B, K) probabilities


class _Average(nn.Module):
    """An ensemble: the mean of its members' (calibrated) probabilities."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(image) for m in self.members]).mean(0)  # (B, K)


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    """torch.export's shape spec: the ``image`` input takes any batch size."""
    return {"image": {0: torch.export.Dim("batch")}}


def _check_images(size: int, n: int = 8) -> np.ndarray:
    """A batch of phantom X-rays at the model's size (no data needed to check an export)."""
    from ..data import resize_gray8

    classes = COVID_RADIOGRAPHY_CLASSES
    draw = max(64, size)
    images = [draw_phantom(classes[i % 4], np.random.default_rng([7, i]), draw) for i in range(n)]
    return np.stack([resize_gray8(img, size) for img in images])


def export_model(
    run_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    fmt: str,
    out: str | os.PathLike[str],
) -> dict[str, Any]:
    """Export a run's model and write ``<out>.json`` describing its input and output.

    The exported model takes ``image``: ``(N, 1, H, W)`` uint8 grayscale (0..255) and returns
    ``probabilities``: ``(N, K)`` float32; resizing to ``H x W`` happens before, normalisation
    inside. After exporting, the file is run on a batch of images and compared with PyTorch;
    a maximum absolute difference of the probabilities above 1e-4 deletes it and fails.

    ``run_dir`` may be an ensemble folder or several run folders: the exported model then
    averages the members' calibrated probabilities.
    """
    if fmt not in FORMATS:
        raise CxrlabError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = open_run(run_dir)
    model, temperature = _probabilities_model(run)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pixels = _check_images(run.image_size)
    x = torch.from_numpy(pixels)[:, None]  # (N, 1, H, W) uint8
    with torch.no_grad():
        reference = model(x).numpy()
    got = _export(fmt, model, x, out, _onnx_metadata(run, temperature))
    diff = float(np.abs(np.asarray(got) - reference).max())
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)
        raise CxrlabError(
            f"The {fmt} export differs from PyTorch by {diff:.2e} (> {TOLERANCE}) "
            "in its probabilities; nothing was written"
        )
    meta = _description(run, fmt, temperature)
    meta["parity"] = {"images": len(pixels), "max_abs_diff": diff, "tolerance": TOLERANCE}
    write_json(out.with_suffix(".json"), meta)
    return meta


def _probabilities_model(run: ScoringRun) -> tuple[nn.Module, float | None]:
    """The run's (or its members' averaged) calibrated probabilities as one module, and the
    temperature of a single run (``None`` for an ensemble: one per member).

    Raises:
        CheckpointError: a member trained on images with lungs removed, kept or cropped.
    """
    wrapped = []
    for member in run.members:
        m, card = load_run_model(member)
        require_whole_images(card, member, "an exported model")
        wrapped.append(_WithSoftmax(m.cpu(), card.temperature))
    model = (wrapped[0] if len(wrapped) == 1 else _Average(wrapped)).eval()
    return model, (wrapped[0].temperature if len(wrapped) == 1 else None)


def _export(fmt: str, model: nn.Module, x: torch.Tensor, out: Path,
            onnx_meta: dict[str, str]) -> np.ndarray:  # fmt: skip
    """Write ``model`` to ``out`` in ``fmt`` and return what the written file computes for
    ``x`` (read back with that format's own runtime)."""
    if fmt == "onnx":
        _export_onnx(model, x, out)
        _embed_metadata(out, onnx_meta)
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        if fmt == "exported":
            program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_batch())
            torch.export.save(program, str(out))
            return torch.export.load(str(out)).module()(x).numpy()
        scripted = torch.jit.trace(model, x[:1])
        scripted.save(str(out))
        return torch.jit.load(str(out))(x).numpy()


def _description(run: ScoringRun, fmt: str, temperature: float | None) -> dict[str, Any]:
    """The sidecar JSON: what the exported file takes and returns, and where it came from."""
    card, size, pre = run.card, run.image_size, run.card.preprocessing
    return {
        "format": fmt, "model": card.model, "architecture": card.architecture,
        "classes": list(card.classes),
        "input": {"name": "image", "shape": ["N", 1, size, size], "dtype": "uint8",
                  "description": "grayscale X-ray, 0..255, resized to the square size "
                                 f"({pre.resize or 'bilinear'}); normalisation is inside "
                                 "the model"},
        "output": {"name": "probabilities", "shape": ["N", len(card.classes)],
                   "dtype": "float32"},
        "normalisation": {"channel_mode": pre.channel_mode, "mean": list(pre.mean),
                          "std": list(pre.std), "formula": "(x / 255 - mean) / std per channel"},
        "calibration": {"temperature": temperature,
                        "note": "applied inside the exported model (logits / T, per member)"},
        "members": [str(m.resolve()) for m in run.members],
        "test_time_augmentation": {"run_uses_it": any(c.tta for c in run.member_cards),
                                   "note": "the exported model scores one view per image"},
        "source_run": str(run.path.resolve()),
    }  # fmt: skip


def _onnx_metadata(run: ScoringRun, temperature: float | None) -> dict[str, str]:
    """What :class:`~cxrlab.infer.Predictor` needs to use the file alone, as ONNX strings."""
    card = run.card.to_dict()
    summary = {k: card.get(k) for k in ("format", "model", "architecture", "classes",
                                        "preprocessing", "weights", "members", "description")
               if card.get(k) is not None}  # fmt: skip
    summary["calibration"] = {"temperature": temperature}
    return {
        "cxrlab.classes": json.dumps(list(run.classes)),
        "cxrlab.image_size": str(run.image_size),
        "cxrlab.card": json.dumps(strict_json(summary), allow_nan=False),
    }


def _embed_metadata(out: Path, meta: dict[str, str]) -> None:
    """Write ``meta`` into the ONNX file and make it one self-contained file.

    The torch.export-based exporter may keep the weights in ``<out>.data`` beside the model;
    a model far below ONNX's 2 GB protobuf limit is folded back into one file a user can copy
    alone.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(out), load_external_data=False)
    external = {
        out.parent / entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    load_external_data_for_model(model, str(out.parent))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    if model.ByteSize() >= 1_900_000_000:  # over the protobuf limit: weights stay beside it
        onnx.save_model(model, str(out), save_as_external_data=True, location=out.name + ".data")
        return
    onnx.save_model(model, str(out))
    for path in external:  # the exporter's external-data file(s), now inside the model
        path.unlink(missing_ok=True)


def _export_onnx(model: nn.Module, x: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise CxrlabError(
            "ONNX export needs onnx and onnxruntime: pip install 'cxrlab[export]'"
        ) from e
    kwargs = {"input_names": ["image"], "output_names": ["probabilities"]}
    try:  # the torch.export-based exporter (the default since torch 2.9)
        torch.onnx.export(model, (x,), str(out), dynamo=True, verbose=False, external_data=False,
                          dynamic_shapes=_dynamic_batch(), **kwargs)  # fmt: skip
    except Exception:  # older torch, or a model torch.export cannot trace: TorchScript exporter
        torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=17,
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                          **kwargs)  # fmt: skip
