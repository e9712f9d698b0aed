"""Grad-CAM heat maps with the ``grad-cam`` package, for CNNs and ViTs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..errors import CxrlabError
from ..models import CxrClassifier, get_spec

__all__ = ["cam_overlay", "gradcam", "save_cam_overlay", "target_layer"]


def _vit_tokens_to_grid(prefix_tokens: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, T, D)`` tokens -> ``(B, D, h, w)``: drop class tokens, lay patches on their grid."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix_tokens:, :]  # (B, h*w, D)
        side = round(patches.shape[1] ** 0.5)
        return patches.reshape(patches.shape[0], side, side, -1).permute(0, 3, 1, 2)

    return reshape


def target_layer(model: CxrClassifier) -> tuple[nn.Module, Callable | None]:
    """The layer Grad-CAM explains, and the reshape ViT tokens need."""
    arch = get_spec(model.model_name).arch  # type: ignore[attr-defined]
    net = model.net
    if arch.startswith("resnet"):
        return net.layer4[-1], None
    if "efficientnet" in arch:
        return net.bn2, None
    if arch.startswith("vit_") and hasattr(net, "encoder"):
        return net.encoder.layers[-1].ln_1, _vit_tokens_to_grid(1)
    if hasattr(net, "blocks") and hasattr(net, "patch_embed"):
        return net.blocks[-1].norm1, _vit_tokens_to_grid(getattr(net, "num_prefix_tokens", 1))
    raise CxrlabError(f"Grad-CAM does not know which layer of {arch} to explain")


def gradcam(
    model: CxrClassifier, pixels: np.ndarray, class_index: int | Sequence[int] | None = None
) -> np.ndarray:
    """Grad-CAM maps for a batch of ``(B, H, W)`` uint8 images, each in ``[0, 1]``.

    Args:
        class_index: the class to explain, one for the batch or one per image (default: each
            image's predicted class).

    Raises:
        CxrlabError: the model's architecture has no known layer to explain.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = target_layer(model)
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(np.array(pixels, dtype=np.float32))[:, None].to(device)  # 0..255
    if class_index is None:
        targets = None
    else:
        index = [class_index] * len(x) if isinstance(class_index, int) else list(class_index)
        targets = [ClassifierOutputTarget(int(k)) for k in index]
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=targets)  # (B, H, W)
    return np.asarray(maps, dtype=np.float32)


def cam_overlay(pixels: np.ndarray, cam: np.ndarray, caption: str = "") -> Image.Image:
    """The X-ray with the heat map over it (jet colours, 40 % opacity), as an RGB image."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(pixels[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    overlay = Image.fromarray(show_cam_on_image(rgb, cam, use_rgb=True, image_weight=0.6))
    if caption:
        draw = ImageDraw.Draw(overlay)
        draw.rectangle((0, 0, overlay.width, 14), fill=(0, 0, 0))
        draw.text((3, 1), caption, fill=(255, 255, 255))
    return overlay


def save_cam_overlay(pixels: np.ndarray, cam: np.ndarray, out: str | os.PathLike[str],
                     caption: str = "") -> Path:  # fmt: skip
    """:func:`cam_overlay` written as a PNG."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cam_overlay(pixels, cam, caption).save(out)
    return out
