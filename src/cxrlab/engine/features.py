"""The frozen-feature cache: a frozen prefix of the network runs once per image, not per epoch.

When a run freezes the first K units of its backbone and nothing random happens before them
(no augmentation; frozen BatchNorm in eval mode), their output for an image never changes
during training. cxrlab then computes it once for every image, stores it in a memory-mapped
file, and trains only the rest of the network on it. With every unit frozen (``--freeze
head``) the pooled feature vector is stored and each epoch is a linear layer's work.

The file's name is a hash of the frozen weights and buffers, the preprocessing, the cut point
and the decoded images, so runs that share a frozen prefix and data (the seeds of a study
cell, or different heads on one backbone) share one cache, and nothing stale is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import DecodedImages
from ..models import CxrClassifier, get_spec
from ..models.stages import Stages, stages
from ..runtime import autocast
from ..utils import cache_dir
from .batches import ImageBatches

__all__ = [
    "FrozenFeatures",
    "TrainableRest",
    "build_frozen_features",
    "feature_cache_plan",
    "prefix_features",
]


def _stages(model: CxrClassifier) -> Stages | None:
    return stages(model.net, get_spec(model.model_name).arch)  # type: ignore[attr-defined]


def feature_cache_plan(model: CxrClassifier, n_frozen: int, augment: str, freeze_bn: str,
                       mode: str = "auto") -> tuple[bool, str]:  # fmt: skip
    """Whether the frozen prefix may be cached, and why (not)."""
    if mode == "off":
        return False, "--feature-cache off"
    if n_frozen == 0:
        return False, "nothing is frozen"
    if augment != "none":
        return False, f"--augment {augment} changes the input of the frozen layers every epoch"
    if freeze_bn != "frozen":
        return False, "--freeze-bn update lets frozen BatchNorm statistics change"
    if _stages(model) is None:
        return False, f"{model.model_name} has no stage chain to cut"  # type: ignore[attr-defined]
    return True, f"the first {n_frozen} of {len(model.units)} units are frozen and deterministic"


class TrainableRest(nn.Module):
    """The part of a :class:`CxrClassifier` after a frozen prefix: features -> logits."""

    def __init__(self, model: CxrClassifier, n_frozen: int) -> None:
        super().__init__()
        self.model = model
        self.n_frozen = n_frozen
        units, self._pool, self._classifier = _stages(model)
        self._units = units[n_frozen:]
        self.pooled = n_frozen == len(units)  # the cache holds pooled vectors

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features.float()  # stored as float16 (--feature-dtype float16) or float32
        if not self.pooled:
            for unit in self._units:
                h = unit(h)
            h = self._pool(h)
        return self._classifier(h)  # (B, K)


@torch.no_grad()
def _prefix(model: CxrClassifier, chain: Stages, n_frozen: int, x: torch.Tensor) -> torch.Tensor:
    units, pool, _ = chain
    h = model.preprocess(x)
    for unit in units[:n_frozen]:
        h = unit(h)
    return pool(h) if n_frozen == len(units) else h


def prefix_features(model: CxrClassifier, n_frozen: int, x: torch.Tensor) -> torch.Tensor | None:
    """The output of the first ``n_frozen`` units for ``(B, 1, H, W)`` uint8 ``x`` (pooled
    when every unit is), the input :class:`TrainableRest` takes; ``None`` where the model has
    no stage chain to cut."""
    chain = _stages(model)
    return None if chain is None else _prefix(model, chain, n_frozen, x)


def _frozen_state_hash(model: CxrClassifier, n_frozen: int) -> str:
    """Hash of everything that determines the prefix's output: weights, buffers, preprocessing."""
    trainable = {n for n, p in model.net.named_parameters() if p.requires_grad}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([model.model_name, n_frozen,  # type: ignore[attr-defined]
                         model.preprocess_config.to_dict()], default=str).encode())  # fmt: skip
    for name, tensor in model.net.state_dict().items():
        if name in trainable:
            continue  # trained parameters (the head, later blocks) do not affect the prefix
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class FrozenFeatures:
    """A finished feature cache: ``array[i]`` is the prefix output for image row ``i``."""

    array: np.ndarray
    path: Path
    n_frozen: int


def build_frozen_features(
    model: CxrClassifier,
    n_frozen: int,
    images: DecodedImages,
    *,
    device: torch.device,
    amp: torch.dtype | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = True,
) -> FrozenFeatures:
    """Run the frozen prefix over every cached image once (or reuse an existing cache)."""
    key = hashlib.blake2b(
        f"{_frozen_state_hash(model, n_frozen)}|{images.key}|{images.size}|{dtype}|{amp}".encode(),
        digest_size=16,
    ).hexdigest()
    directory = cache_dir() / "features"
    path = directory / f"{key}.{dtype}"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        try:
            shape = tuple(json.loads(meta_path.read_text())["shape"])
            arr = np.memmap(path, dtype=dtype, mode="r", shape=shape)
            return FrozenFeatures(arr, path, n_frozen)
        except (OSError, ValueError, KeyError):
            pass  # rebuild
    directory.mkdir(parents=True, exist_ok=True)
    chain = _stages(model)
    assert chain is not None, "feature_cache_plan() accepts only models with a stage chain"
    was_training = model.training
    model.eval()
    rows = ImageBatches(images.array, list(range(len(images))), np.zeros(len(images), int),
                        batch_size)  # fmt: skip
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    os.close(fd)
    out: np.memmap | None = None
    try:
        start = 0
        for x, _ in tqdm(rows.batches(), total=len(rows), desc="Caching frozen features",
                         unit="batch", leave=False, disable=not progress or None):  # fmt: skip
            x = x.to(device, non_blocking=True)
            with autocast(device, amp):
                f = _prefix(model, chain, n_frozen, x).float()
            f = f.contiguous().cpu().numpy().astype(dtype)
            if out is None:
                shape = (len(images), *f.shape[1:])
                out = np.memmap(tmp, dtype=dtype, mode="w+", shape=shape)
            out[start : start + len(f)] = f
            start += len(f)
        assert out is not None
        out.flush()
        meta = {"shape": list(out.shape), "dtype": dtype, "n_frozen": n_frozen}
        meta_path.write_text(json.dumps(meta))
        del out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    shape = tuple(json.loads(meta_path.read_text())["shape"])
    return FrozenFeatures(np.memmap(path, dtype=dtype, mode="r", shape=shape), path, n_frozen)
