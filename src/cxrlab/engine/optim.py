"""Optimizers and the learning-rate schedule of the training loop."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import RunState
from .train_config import TrainConfig

__all__ = ["build_ema", "build_optimizer", "lr_at"]


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum when ``momentum > 0``) over ``params``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )


def build_ema(decay: float, model: nn.Module) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights, updated once per step with
    ``decay`` (``--ema``), BatchNorm statistics included; ``None`` when ``decay`` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def lr_at(
    cfg: TrainConfig, state: RunState, global_step: int, total_steps: int, steps_per_epoch: int
) -> float:
    """Learning rate: base x plateau scale x linear warmup x cosine decay (if chosen)."""
    lr = cfg.lr * state.lr_scale
    warmup = cfg.warmup_epochs * steps_per_epoch
    if warmup and global_step < warmup:
        lr *= (global_step + 1) / warmup
    if cfg.scheduler == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * global_step / max(1, total_steps)))
    return lr
