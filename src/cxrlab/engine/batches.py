"""Batches from the decoded-image cache, and a model's predictions over them.

No ``DataLoader`` and no per-epoch decoding: a batch is a slice of the uint8 cache (a
memory-mapped array), moved to the device as uint8 (4x less traffic than float) and
augmented there as one tensor operation (:mod:`cxrlab.augment`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..augment import tta_views
from ..data.split import Split
from ..runtime import autocast

__all__ = ["ImageBatches", "predict_batches", "sampling_strata"]


class ImageBatches:
    """Batches of ``(x, y)`` for a subset of a decoded-image cache.

    Args:
        array: the cache, ``(N, H, W)`` uint8 (memory-mapped).
        indices: rows of this subset (for example the training split).
        labels: the class index of every row of ``array``.
        batch_size: images per batch.
        drop_single: skip a last batch of one image (BatchNorm cannot train on it).
        add_channel: yield ``(B, 1, H, W)`` from ``(N, H, W)`` images; ``False`` for arrays
            that already have their full per-row shape (frozen features).
    """

    def __init__(
        self,
        array: np.ndarray,
        indices: list[int],
        labels: np.ndarray,
        batch_size: int,
        drop_single: bool = False,
        add_channel: bool = True,
    ) -> None:
        self.array = array
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self.drop_single = drop_single
        self.add_channel = add_channel

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.indices)
        if self.drop_single and n > 1 and n % self.batch_size == 1:
            n -= 1
        return math.ceil(n / self.batch_size)

    def preload(self, device: torch.device) -> None:
        """Copy this subset's rows to ``device`` once; batches are then sliced there.

        On a GPU this removes every host-to-device copy after the first (the whole database
        at 224 px is about 1 GB as uint8).
        """
        rows = np.sort(self.indices)
        data = torch.from_numpy(np.ascontiguousarray(self.array[rows])).to(device)
        self._device_rows = {int(r): i for i, r in enumerate(rows)}
        self._device_data = data  # (N_subset, ...) on the device

    @property
    def preloaded(self) -> bool:
        return getattr(self, "_device_data", None) is not None

    @property
    def subset_labels(self) -> np.ndarray:
        return self.labels[self.indices]

    def order(self, seed: int, epoch: int, strata: np.ndarray | None = None, *,
              balanced: bool = False) -> np.ndarray:  # fmt: skip
        """This epoch's sample order: a seeded permutation, or, given ``strata`` (a stratum
        id per dataset row: its class, source, or (source, class) cell), draws with
        replacement that take every stratum alike; ``balanced`` is ``strata`` = the class."""
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        if balanced and strata is None:
            strata = self.labels
        if strata is not None:
            y = np.asarray(strata)[self.indices]
            counts = np.bincount(y)
            weights = torch.as_tensor(1.0 / counts[y], dtype=torch.float64)
            pick = torch.multinomial(weights, len(y), replacement=True, generator=g)
        else:
            pick = torch.randperm(len(self.indices), generator=g)
        return self.indices[pick.numpy()]

    def batches(
        self,
        order: np.ndarray | None = None,
        start: int = 0,
        part: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: ``x`` is ``(B, 1, H, W)`` uint8, ``y`` is ``(B,)`` int64.

        Args:
            order: row order (default: the subset in its own order, for evaluation).
            start: the first batch to yield (resuming in the middle of an epoch).
            part: picks this process's share of each batch's rows (distributed training).
        """
        order = self.indices if order is None else order
        for b in range(start, len(self)):
            rows = np.sort(order[b * self.batch_size : (b + 1) * self.batch_size])
            if part is not None:
                rows = part(rows)
            if self.preloaded:
                where = torch.tensor([self._device_rows[int(r)] for r in rows])
                x = self._device_data[where.to(self._device_data.device)]  # already on device
            else:
                x = torch.from_numpy(np.ascontiguousarray(self.array[rows]))  # (B, H, W) uint8
            y = torch.from_numpy(self.labels[rows])
            yield (x.unsqueeze(1) if self.add_channel else x), y


def sampling_strata(balance: str, split: Split) -> np.ndarray | None:
    """A stratum id per record for :meth:`ImageBatches.order`: its class (``class``), its
    source (``source``) or its (source, class) cell (``source_class``); ``None`` for
    ``none`` (a plain shuffle)."""
    if balance == "none":
        return None
    labels = np.asarray(split.labels(), dtype=np.int64)
    if balance == "class":
        return labels
    sources = [split.source_of(i) for i in range(len(split.records))]
    keys = sources if balance == "source" else [f"{s}\t{y}" for s, y in zip(sources, labels)]
    return np.unique(np.asarray(keys), return_inverse=True)[1].astype(np.int64)


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    batches: ImageBatches,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    *,
    desc: str = "",
    progress: bool = False,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities for every image of ``batches`` (in subset order).

    With ``tta`` the probabilities of :func:`~cxrlab.augment.tta_views` are averaged
    (images only, not cached features).

    Returns:
        ``(probs, y_true, mean_loss)``: ``probs`` is ``(N, K)`` float32, ``y_true`` ``(N,)``,
        and ``mean_loss`` the mean cross-entropy.
    """
    was_training = model.training
    model.eval()
    probs, ys, loss_sum = [], [], 0.0
    for x, y in tqdm(
        batches.batches(),
        total=len(batches),
        desc=desc,
        leave=False,
        disable=not progress or None,
        unit="batch",
    ):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if tta:  # the average probability of the views
            with autocast(device, amp_dtype):
                views = [model(v).float() for v in tta_views(x.float())]
            p = torch.stack([v.softmax(dim=1) for v in views]).mean(0)  # (B, K)
            loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum").item()
        else:
            with autocast(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            p = logits.softmax(dim=1)
        probs.append(p.cpu())
        ys.append(y.cpu())
    model.train(was_training)
    n = max(1, len(batches.indices))
    return torch.cat(probs).numpy(), torch.cat(ys).numpy(), loss_sum / n
