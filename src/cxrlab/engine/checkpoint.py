"""A run's resumable state: the checkpoint file's contents, graceful stops.

A checkpoint holds the model, the optimizer and a :class:`RunState` (epoch, step within it,
partial sums, best validation loss, history), so a run stopped in the middle of an epoch
continues exactly where it stopped. Checkpoints are written atomically and read with
``weights_only=True``: a run folder never executes pickled code.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointError
from ..utils import atomic_write_bytes
from .train_config import TrainConfig

__all__ = [
    "RunState",
    "graceful_stop",
    "load_checkpoint",
    "save_checkpoint",
]


@dataclass
class RunState:
    """Everything a checkpoint must restore besides the model and optimizer."""

    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # batches of that epoch already done
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs without improvement (early stopping, plateau)
    lr_scale: float = 1.0  # multiplied by 0.1 on a plateau
    history: list[dict[str, float]] | None = None
    wall_seconds: float = 0.0  # wall time of the run up to this checkpoint (all sessions)


@contextlib.contextmanager
def graceful_stop(flag: dict[str, bool]) -> Iterator[None]:
    """SIGINT/SIGTERM set ``flag["stop"]``; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, frame: object) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        tqdm.write(
            f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
            "(press Ctrl-C again to stop at once)"
        )

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    state: RunState,
    cfg: TrainConfig,
    ema: nn.Module | None = None,
) -> None:
    """Write the model, optimizer, run state, config (and weight average) atomically."""
    payload = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "state": dict(state.__dict__),
        "config": cfg.to_dict(),
    }
    if ema is not None:
        payload["ema"] = ema.state_dict()
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    ema: nn.Module | None = None,
) -> RunState:
    """Restore ``model``, ``opt`` (and ``ema``) from ``path`` and return the run state.

    Raises:
        CheckpointError: unreadable file, other settings than ``cfg``, or another model.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"Cannot read the checkpoint {path} ({type(e).__name__}); "
            "start a new run in another folder (out, --out)"
        ) from e
    diff = cfg.differences(payload["config"])
    if diff:
        k, then, now = diff[0]
        raise CheckpointError(
            f"Cannot resume: the checkpoint in {path.parent} was made with "
            f"{k}={then!r}, now {k}={now!r} ({len(diff)} setting(s) "
            "differ); resume with the same settings, or train in another folder (out, --out)"
        )
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"The checkpoint in {path.parent} does not fit this model: {str(e).splitlines()[0]}"
        ) from e
    opt.load_state_dict(payload["optimizer"])
    if ema is not None:
        ema.load_state_dict(payload["ema"])
    return RunState(**payload["state"])
