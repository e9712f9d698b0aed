"""The model registry: names, how each model is built, and its ordered blocks.

Every model is described by a :class:`ModelSpec`. :func:`create_model` builds it with
``weights="imagenet"`` (the library's own ImageNet weights), ``"none"`` (random init) or a
local file, sizes the classifier to the dataset's classes, and wraps it in
:class:`~cxrlab.models.classifier.CxrClassifier` together with the preprocessing the weights
expect. Each model's parameters are grouped into ordered *units* (stem, then each residual or
transformer block), so a freezing policy means the same thing for every architecture.

Any timm model can be used as ``timm:<name>`` (its units come from timm's own
``group_matcher``).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .classifier import CxrClassifier, PreprocessConfig
from .init import parse_weights, statistics_transfer
from .weights import (
    efficientnet_lite0_package_state_dict,
    load_into,
    load_state_dict_file,
    pretrained_backbone,
    timm_imagenet,
    torchvision_imagenet_state_dict,
)

__all__ = ["MODELS", "ModelSpec", "create_model", "get_spec", "list_models", "register_model"]

Units = tuple[list[str], list[list[str]], list[str]]  # (unit names, unit params, head params)


@dataclass(frozen=True)
class ModelSpec:
    """What cxrlab knows about one model name.

    Attributes:
        name: the registry name (``resnet18``).
        source: ``"torchvision"`` or ``"timm"``.
        arch: the library's own name (``resnet18``, ``tf_efficientnet_lite0``).
        description: one line for ``cxrlab models``.
        fixed_size: the only input size the ImageNet weights accept, if any.
        offline_imagenet: a loader of ImageNet weights that needs no network.
    """

    name: str
    source: str
    arch: str
    description: str
    fixed_size: int | None = None
    offline_imagenet: Callable[[nn.Module], dict[str, torch.Tensor]] | None = field(
        default=None, repr=False
    )


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in MODELS:
        raise ValueError(f"Model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"resnet*"``)."""
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; ``timm:<arch>`` gives an ad-hoc spec for any timm model."""
    if name in MODELS:
        return MODELS[name]
    if name.startswith("timm:"):
        import timm

        arch = name.removeprefix("timm:")
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"timm has no model {arch!r}{hint}")
        return ModelSpec(name, "timm", arch, f"timm {arch}")
    close = difflib.get_close_matches(name, list(MODELS), n=1)
    hint = f" did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"Unknown model {name!r}.{hint} Available: {', '.join(list_models())}, "
        "or timm:<any timm model name>"
    )


# ---------------------------------------------------------------------------- unit layouts
def _params_under(net: nn.Module, prefixes: list[str]) -> list[str]:
    return [
        n
        for n, _ in net.named_parameters()
        if any(n == p or n.startswith(p + ".") for p in prefixes)
    ]


def _resnet_units(net: nn.Module) -> Units:
    names, groups = ["stem"], [["conv1", "bn1"]]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for i in range(len(getattr(net, layer))):
            names.append(f"{layer}.{i}")
            groups.append([f"{layer}.{i}"])
    return names, [_params_under(net, g) for g in groups], _params_under(net, ["fc"])


def _torchvision_vit_units(net: nn.Module) -> Units:
    layers = [f"encoder.layers.{n}" for n, _ in net.encoder.layers.named_children()]
    names = ["stem"] + [p.rsplit(".", 1)[-1] for p in layers]
    groups = [["conv_proj", "class_token", "encoder.pos_embedding"]] + [[p] for p in layers]
    groups[-1].append("encoder.ln")  # the final norm trains with the last block
    return names, [_params_under(net, g) for g in groups], _params_under(net, ["heads"])


def _timm_units(net: nn.Module) -> Units:
    from timm.models import group_parameters

    head_prefix = net.pretrained_cfg.get("classifier", "head")
    prefixes = [head_prefix] if isinstance(head_prefix, str) else list(head_prefix)
    head = _params_under(net, prefixes)
    groups = [
        [p for p in params if p not in head]
        for params in group_parameters(net, net.group_matcher(coarse=False)).values()
    ]
    groups = [g for g in groups if g]
    names = ["stem"] + [g[0].rsplit(".", 2)[0] if "." in g[0] else g[0] for g in groups[1:]]
    return names, groups, head


# --------------------------------------------------------------------------------- building
def _build_torchvision(spec: ModelSpec, num_classes: int, imagenet: bool, image_size: int):
    import torchvision

    weights_enum = torchvision.models.get_model_weights(spec.arch).DEFAULT
    kwargs = {}
    if spec.arch.startswith("vit_"):
        kwargs["image_size"] = image_size
    net = torchvision.models.get_model(spec.arch, weights=None, num_classes=1000, **kwargs)
    if imagenet:
        state = torchvision_imagenet_state_dict(weights_enum, spec.name)
        net.load_state_dict(state)
    # a fresh head for our classes, initialised like the library initialises it
    if spec.arch.startswith("resnet"):
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        units = _resnet_units(net)
    elif spec.arch.startswith("vit_"):
        net.heads.head = nn.Linear(net.heads.head.in_features, num_classes)
        nn.init.zeros_(net.heads.head.weight)  # as torchvision's ViT does
        nn.init.zeros_(net.heads.head.bias)
        units = _torchvision_vit_units(net)
    else:  # pragma: no cover - only registered torchvision archs reach here
        raise ConfigError(f"No block layout for torchvision {spec.arch}")
    tf = weights_enum.transforms()
    return net, units, tuple(tf.mean), tuple(tf.std), 3


def _build_timm(spec: ModelSpec, num_classes: int, imagenet: bool, image_size: int):
    import timm

    kwargs = {}
    cfg = timm.get_pretrained_cfg(spec.arch)
    if "vit" in spec.arch or "deit" in spec.arch:  # position embeddings sized to the input
        kwargs["img_size"] = image_size
    if imagenet and spec.offline_imagenet is None:
        hub = cfg.hf_hub_id if cfg is not None else None
        net = timm_imagenet(
            lambda: timm.create_model(
                spec.arch, pretrained=True, num_classes=num_classes, **kwargs
            ),
            spec.arch,
            hub,
        )
    else:
        net = timm.create_model(spec.arch, pretrained=False, **kwargs)
        if imagenet:
            assert spec.offline_imagenet is not None
            net.load_state_dict(spec.offline_imagenet(net))
        net.reset_classifier(num_classes)
    pc = net.pretrained_cfg
    return (
        net,
        _timm_units(net),
        tuple(pc["mean"]),
        tuple(pc["std"]),
        net.pretrained_cfg.get("input_size", (3,))[0],
    )


def create_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike[str] = "imagenet",
    *,
    image_size: int = 224,
    seed: int = 0,
) -> CxrClassifier:
    """Build a chest X-ray classifier.

    Args:
        name: a registry name (see :func:`list_models`) or ``timm:<arch>``.
        num_classes: outputs of the new classifier head.
        weights: ``"imagenet"``, ``"none"`` (random init), ``"stats"`` (statistics transfer:
            every backbone tensor redrawn from the pretrained tensor's mean and std),
            ``"imagenet:K"`` (transfusion: the first K units pretrained, statistics transfer
            above; see :mod:`cxrlab.models.init`), or a path to a ``.safetensors``/``.pt``
            file (a backbone state dict, or a cxrlab ``model.safetensors``).
        image_size: the square input size.
        seed: seeds the statistics-transfer draw (``stats``, ``imagenet:K``).

    Returns:
        A :class:`CxrClassifier` with ``weights_source`` set to a description of the weights
        and ``init_report`` to what an initialisation redrew (``None`` if nothing).

    Example:
        >>> model = create_model("efficientnet_lite0", num_classes=4)  # offline ImageNet
        >>> model(torch.zeros(2, 1, 224, 224, dtype=torch.uint8)).shape
        torch.Size([2, 4])
    """
    spec = get_spec(name)
    if num_classes < 2:
        raise ConfigError(f"A classifier needs at least 2 classes, got {num_classes}")
    wname = str(weights)
    ws = parse_weights(wname)
    if ws.kind == "file" and not Path(wname).expanduser().is_file():
        raise ConfigError(
            "weights (--weights) must be 'imagenet', 'none', 'stats', 'imagenet:K', "
            f"'pretrained:RUN' or an existing file; {wname!r} is none of these"
        )
    if spec.fixed_size and image_size != spec.fixed_size and ws.pretrained:
        raise ConfigError(
            f"{name} ImageNet weights need {spec.fixed_size}px input; "
            f"use --image-size {spec.fixed_size}"
        )
    build = _build_torchvision if spec.source == "torchvision" else _build_timm
    net, (unit_names, units, head), mean, std, in_chans = build(
        spec, num_classes, ws.pretrained, image_size
    )
    origin = "offline package checkpoint" if spec.offline_imagenet else f"{spec.source} weights"
    init_report = None
    if ws.kind == "pretrained":
        state, source = pretrained_backbone(ws.path, name)
        load_into(net, state, head, source=source, model_name=name)
    elif ws.kind == "file":
        path = Path(wname).expanduser()
        state = load_state_dict_file(path)
        head_loaded = load_into(net, state, head, source=str(path), model_name=name)
        source = f"file {path}" + ("" if head_loaded else " (classifier head re-initialised)")
    elif ws.kind in ("stats", "transfusion"):
        init_report = statistics_transfer(net, unit_names, units, keep=ws.keep, seed=seed)
        source = f"{wname} ({init_report.method} of imagenet, {origin}, seed {seed})"
    else:
        source = {"imagenet": f"imagenet ({origin})", "none": "none (random init)"}[wname]
    preprocess = PreprocessConfig(image_size=image_size, in_chans=in_chans, mean=mean, std=std)
    model = CxrClassifier(net, preprocess, units, head, unit_names)
    model.weights_source = source  # type: ignore[attr-defined]
    model.init_report = init_report  # type: ignore[attr-defined]
    model.model_name = name  # type: ignore[attr-defined]
    return model


# ------------------------------------------------------------------------------ the registry
def _lite0_offline(net: nn.Module) -> dict[str, torch.Tensor]:
    return efficientnet_lite0_package_state_dict([len(stage) for stage in net.blocks])


for _spec in (
    ModelSpec("resnet18", "torchvision", "resnet18", "ResNet-18 (original study)"),
    ModelSpec("resnet34", "torchvision", "resnet34", "ResNet-34 (original study)"),
    ModelSpec("resnet50", "torchvision", "resnet50", "ResNet-50"),
    ModelSpec("vit_b_16", "torchvision", "vit_b_16", "ViT-B/16 (original study)", fixed_size=224),
    ModelSpec(
        "efficientnet_lite0",
        "timm",
        "tf_efficientnet_lite0",
        "EfficientNet-Lite0; ImageNet weights work offline",
        offline_imagenet=_lite0_offline,
    ),
    ModelSpec("vit_tiny", "timm", "vit_tiny_patch16_224", "ViT-Tiny/16 (CPU-sized ViT studies)"),
    ModelSpec("vit_small", "timm", "vit_small_patch16_224", "ViT-Small/16"),
):
    register_model(_spec)
