"""The model every cxrlab run trains: X-ray preprocessing in front of a vision backbone.

Keeping the preprocessing inside the module means a saved model takes the same input
everywhere (training, evaluation, prediction, ONNX): a ``(B, 1, H, W)`` uint8 tensor of
grayscale pixels. Grayscale meets a 3-channel ImageNet stem by repeating the channel, then
each channel is normalised with the weights' own mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["CxrClassifier", "Preprocess", "PreprocessConfig", "forward_images"]


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels become the network's input; recorded in every model card."""

    image_size: int
    in_chans: int  # channels the backbone's first layer expects
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_mode: str = "repeat"  # grayscale is repeated to ``in_chans`` channels
    input_dtype: str = "uint8"  # the model's input: (B, 1, H, W) uint8 in 0..255
    resize: str = ""  # filled in by the data layer (see cxrlab.data.RESIZE_METHOD)

    def to_dict(self) -> dict:
        return asdict(self)


class Preprocess(nn.Module):
    """``(B, 1, H, W)`` uint8 (or float in 0..255) -> normalised ``(B, C, H, W)`` float."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_chans: int = 3) -> None:
        super().__init__()
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean/std need {in_chans} values, got {len(mean)}/{len(std)}")
        self.in_chans = in_chans
        # x / 255 then (x - mean) / std, folded into one multiply-add
        scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))
        shift = -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.scale.dtype)  # (B, 1, H, W)
        if self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)  # (B, 1, H, W) -> (B, C, H, W), no copy
        return x * self.scale + self.shift


class CxrClassifier(nn.Module):
    """Preprocessing + backbone, with the backbone's ordered blocks for freezing.

    Attributes:
        net: the torchvision or timm model, its classifier sized to ``num_classes``.
        units: ordered blocks of ``net`` (stem first), each a list of parameter names.
        head: the classifier's parameter names.
    """

    def __init__(
        self,
        net: nn.Module,
        preprocess: PreprocessConfig,
        units: list[list[str]],
        head: list[str],
        unit_names: list[str],
    ) -> None:
        super().__init__()
        self.preprocess = Preprocess(preprocess.mean, preprocess.std, preprocess.in_chans)
        self.net = net
        self.preprocess_config = preprocess
        self.units = units
        self.unit_names = unit_names
        self.head = head
        self._frozen_modules: list[nn.Module] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))  # (B, num_classes) logits

    @property
    def head_module(self) -> str:
        """The name (inside ``net``) of the module that owns the classifier head's weight;
        what it receives are the pooled features (or a ViT's class token)."""
        return self.head[0].rsplit(".", 1)[0]

    def drop_head(self) -> CxrClassifier:
        """Replace the classifier head by an identity, in place: the model then returns the
        ``(B, D)`` features its head would receive (self-supervised pretraining trains
        these). Returns the model."""
        self.net.set_submodule(self.head_module, nn.Identity())
        self.head = []
        return self

    def set_frozen_modules(self, modules: list[nn.Module]) -> None:
        """Modules that stay in eval mode even while the model trains (frozen BatchNorm)."""
        self._frozen_modules = list(modules)
        self.train(self.training)

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """The modules held in eval mode (see :meth:`set_frozen_modules`)."""
        return list(self._frozen_modules)

    def train(self, mode: bool = True) -> CxrClassifier:
        super().train(mode)
        for m in self._frozen_modules:
            m.eval()
        return self


@torch.no_grad()
def forward_images(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> torch.Tensor:
    """What ``model`` returns, as float32 on the CPU, for ``(N, H, W)`` uint8 images (those of
    ``rows`` only, in that order, when given), one plain view each, in eval mode and without
    gradients; the model's training mode is restored afterwards. A classifier gives its
    logits, a headless backbone (:meth:`CxrClassifier.drop_head`) its pooled features."""
    order = np.arange(len(images)) if rows is None else np.asarray(rows)
    was = model.training
    model.eval().to(device)
    out = []
    try:
        for start in range(0, len(order), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[order[start : start + batch_size]]))
            out.append(model(x[:, None].to(device)).float().cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)
