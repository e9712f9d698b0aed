"""Each backbone as a chain of stages, so a frozen prefix can run once and be cached.

``stages(net)`` returns ``(units, pool, classifier)``: ``units`` are callables, one per
freezing unit of :mod:`cxrlab.models.registry` (stem first; the last includes any final
norm or head convolution), ``pool`` turns the last feature map into a vector, and
``classifier`` is the head. ``classifier(pool(units[-1](...units[0](x))))`` is exactly
``net(x)`` (a test checks this for every registered model), so the network can be cut at
any unit boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Stages", "stages"]

Stage = Callable[[torch.Tensor], torch.Tensor]
Stages = tuple[list[Stage], Stage, nn.Module]


def _resnet(net: nn.Module) -> Stages:
    def stem(x: torch.Tensor) -> torch.Tensor:
        return net.maxpool(net.relu(net.bn1(net.conv1(x))))  # (B, 64, H/4, W/4)

    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    return [stem, *blocks], lambda x: torch.flatten(net.avgpool(x), 1), net.fc


def _tv_vit(net: nn.Module) -> Stages:
    def stem(x: torch.Tensor) -> torch.Tensor:
        x = net._process_input(x)  # (B, N, D) patch tokens
        x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return net.encoder.dropout(x + net.encoder.pos_embedding)

    layers = list(net.encoder.layers)
    last = layers[-1]
    units = [stem, *layers[:-1], lambda x: net.encoder.ln(last(x))]
    return units, lambda x: x[:, 0], net.heads


def _timm_efficientnet(net: nn.Module) -> Stages:
    blocks = [b for stage in net.blocks for b in stage]
    last = blocks[-1]
    units = [lambda x: net.bn1(net.conv_stem(x)), *blocks[:-1],
             lambda x: net.bn2(net.conv_head(last(x)))]  # fmt: skip
    return units, lambda x: net.forward_head(x, pre_logits=True), net.classifier


def _timm_vit(net: nn.Module) -> Stages:
    def stem(x: torch.Tensor) -> torch.Tensor:
        return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))

    blocks = list(net.blocks)
    last = blocks[-1]
    units = [stem, *blocks[:-1], lambda x: net.norm(last(x))]
    return units, lambda x: net.forward_head(x, pre_logits=True), net.head


def stages(net: nn.Module, arch: str) -> Stages | None:
    """The stage chain of ``net`` (library name ``arch``), or ``None`` if unknown."""
    if arch.startswith("resnet") and hasattr(net, "layer4"):
        return _resnet(net)
    if arch.startswith("vit_") and hasattr(net, "encoder"):
        return _tv_vit(net)
    if "efficientnet" in arch and hasattr(net, "conv_stem"):
        return _timm_efficientnet(net)
    if "vit" in arch and hasattr(net, "patch_embed") and hasattr(net, "blocks"):
        return _timm_vit(net)
    return None
