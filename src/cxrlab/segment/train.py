"""``cxrlab segment train``: a lung or infection segmenter from images with masks.

One loop, as the classifier's: the images and masks are decoded once (cached), each epoch
trains on the training split with augmentation that moves every mask with its image, and the
weights with the best validation Dice are kept. The loss is binary cross-entropy plus soft
Dice (per image, or over the batch: ``dice``); with ``ema``, a moving average of the weights
is what is validated and kept. The test split (less copies of training or validation images,
which a dataset's own folders may hold) is scored once at the end with the post-processing
every command applies.

- ``target="lungs"``: validation Dice per image at 0.5; tested with
  :func:`~cxrlab.segment.masks.clean_mask` (:mod:`~cxrlab.segment.evaluate`).
- ``target="infection"``: every image with an infection mask, empty ones included, so that
  "no infection" is learned. Each validation image's mask is cleaned
  (:func:`~cxrlab.segment.masks.clean_infection`, inside the reference lungs); the epoch
  kept is the one with the best Dice on the validation images *with* infection among the
  epochs that call under 1 % of the lungs infected on at least 90 % of the validation images
  *without* (:data:`~cxrlab.segment.infection.FP_AIM`,
  :data:`~cxrlab.segment.infection.FP_SHARE`); while no epoch does, the best mean Dice over
  all validation images (an image without infection scoring 1 when nothing is called
  infected, 0 otherwise). ``history.csv`` has all three numbers per epoch. Tested as
  :mod:`~cxrlab.segment.infection` describes. With ``context="lungs"`` the reference lung
  mask is an input too (moved with its image by the augmentation); images without a valid
  lung mask are then left out, and counted.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .. import run_files
from ..augment import augment_pair, step_generator
from ..data import decoded_masks, prepare_data
from ..data.masks import DecodedMasks
from ..engine.optim import build_ema
from ..errors import DataError
from ..runtime import resolve_device
from ..utils import atomic_write_rows, write_json
from .card import TARGETS, SegmentConfig, SegmenterCard, SegmenterData, SegmenterTraining
from .evaluate import copies_of_seen, predict_probs, score_masks, summarise_scores
from .infection import FP_AIM, FP_SHARE, score_infection, summarise_infection
from .masks import clean_infection
from .metrics import dice
from .model import LungSegmenter, base_card, load_segmenter, save_segmenter

__all__ = ["SegmentConfig", "train_segmenter"]


def _dice_loss(logits: torch.Tensor, target: torch.Tensor, over: str = "image") -> torch.Tensor:
    """Soft Dice loss over each image, averaged (``over="image"``), or over all the batch's
    pixels at once (``"batch"``, where an image without a mask adds only to the
    denominator)."""
    p = logits.sigmoid().flatten(1 if over == "image" else 0)
    t = target.flatten(1 if over == "image" else 0)
    inter = (p * t).sum(-1)
    return (1 - (2 * inter + 1) / (p.sum(-1) + t.sum(-1) + 1)).mean()


def train_segmenter(config: SegmentConfig, out: str | Path) -> SegmenterCard:
    """Train a segmenter of ``config.target``; writes ``model.safetensors``,
    ``segmenter_card.json``, ``history.csv``, ``split.csv`` and the test evaluation to
    ``out``. Returns the card.

    Raises:
        DataError: the data has no image with a valid mask of the target in its training
            or validation split.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    data = prepare_data(config.data, split_file=out / run_files.SPLIT, split_seed=config.split_seed,
                        image_size=config.image_size, split_source=config.split_source,
                        progress=config.progress)  # fmt: skip
    kind = TARGETS[config.target]
    masks = decoded_masks(data.report.root, data.split.records, config.image_size, kind,
                          progress=config.progress)  # fmt: skip
    lungs = masks if kind == "lung" else decoded_masks(
        data.report.root, data.split.records, config.image_size, "lung", progress=config.progress
    )  # fmt: skip
    rows = {s: [i for i in data.split.indices(s) if masks.status[i] == "ok"]
            for s in ("train", "val", "test")}  # fmt: skip
    tqdm.write(f"{kind.capitalize()} masks: {masks.summary()}")
    if config.context == "lungs":  # the lungs are an input: images without them cannot be used
        without = {s: sum(lungs.status[i] != "ok" for i in r) for s, r in rows.items()}
        rows = {s: [i for i in r if lungs.status[i] == "ok"] for s, r in rows.items()}
        if any(without.values()):
            tqdm.write("left out for want of a valid lung mask (the context): "
                       + ", ".join(f"{s} {n}" for s, n in without.items()))  # fmt: skip
    for s in ("train", "val"):
        if not rows[s]:
            raise DataError(
                f"No {s} image of {data.report.root} has a valid {kind} mask "
                f"({masks.summary()}); a segmenter learns from images with {kind} masks beside "
                "them"
            )
    if kind == "infection" and not any(masks.array[i].any() for i in rows["train"]):
        raise DataError(
            f"Every training infection mask of {data.report.root} is empty: there is no "
            "infection to learn"
        )
    device = resolve_device(config.device)
    model = LungSegmenter(config.encoder, config.weights, config.decoder,
                          config.context).to(device)  # fmt: skip
    context = lungs.array if config.context == "lungs" else None
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    ema = build_ema(config.ema, model)
    kept: LungSegmenter = model if ema is None else ema.module  # validated and saved
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    images, ref = data.images.array, masks.array
    history: list[dict[str, float]] = []
    best: tuple[tuple[int, float], int] = ((-1, -1.0), 0)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        loss_sum, n = _segmenter_epoch(model, opt, images, ref, rows["train"], config, epoch,
                                       device, context, ema)  # fmt: skip
        sched.step()
        probs = predict_probs(kept, images, rows["val"], config.batch_size, context)
        scores = _val_scores(probs, rows["val"], ref, lungs, config.target)
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(1, n), **scores,
                        "lr": opt.param_groups[0]["lr"], "seconds": seconds,
                        "images_per_s": n / seconds})  # fmt: skip
        mark, key = "", _choice(scores)
        if key > best[0]:
            best, mark = (key, epoch + 1), "  *best"
            save_segmenter(out, kept, base_card(kept, config.image_size, config.target))
        speed = n / seconds
        shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
        tqdm.write(f"epoch {epoch + 1:3d}/{config.epochs}  train loss {loss_sum / max(1, n):.4f}"
                   f"  {shown}  {seconds:.1f}s  {speed:.1f} img/s{mark}")  # fmt: skip
    atomic_write_rows(out / run_files.HISTORY, history)
    best_model, _ = load_segmenter(out)
    best_model.to(device)
    # a dataset's own folders may put copies of one image on both sides
    seen, copies = copies_of_seen(out / run_files.SPLIT, data.report.root, data, rows["test"],
                                  ("train", "val"), progress=config.progress)  # fmt: skip
    if seen:
        tqdm.write(f"test: {len(seen)} copies of training or validation images left out "
                   f"({copies['exact']} exact, {copies['near']} near)")  # fmt: skip
        rows["test"] = [i for i in rows["test"] if i not in seen]
    if config.target == "lungs":
        test = summarise_scores(score_masks(best_model, data, masks, rows["test"],
                                            config.batch_size))  # fmt: skip
    else:
        probs = predict_probs(best_model, images, rows["test"], config.batch_size, context)
        test = summarise_infection(score_infection(probs, data, masks, lungs, rows["test"]))
    test["left_out_copies"] = copies
    card = dataclasses.replace(
        base_card(model, config.image_size, config.target),
        partial=False,
        data=SegmenterData(root=str(data.report.root), data_hash=data.report.fingerprint(),
                           split_hash=data.split.fingerprint(), split_source=data.split.source,
                           images={s: len(r) for s, r in rows.items()}, masks=masks.summary()),
        training=SegmenterTraining(config=config, best_epoch=best[1], best_val_dice=best[0][1],
                                   train_seconds=time.perf_counter() - started),
        test=test["overall"],
    )  # fmt: skip
    save_segmenter(out, best_model, card)
    write_json(out / run_files.METRICS, test)
    tqdm.write(f"test: {test_line(test['overall'], config.target)} -> {out}")
    return card


def test_line(overall: dict, target: str) -> str:
    """One line of a segmenter's scores (``overall`` of its summary)."""

    def num(block: dict | None, fmt: str = ".4f") -> str:
        v = (block or {}).get("mean")
        return "n/a" if v is None else format(v, fmt)

    if target == "lungs":
        return (f"Dice {num(overall['dice'])}  IoU {num(overall['iou'])}  HD95 "
                f"{num(overall['hd95'], '.2f')} px on {overall['n']} images")  # fmt: skip
    fp = overall["fp_under_aim"]
    rho, kappa = overall["spearman"], overall["kappa"]
    return (
        f"infection Dice {num(overall['dice'])} on {overall['n_infected']} images with "
        f"infection; false-positive area {num(overall['fp_area'])} of the lungs on "
        f"{overall['fp_area']['n']} without"
        + (f" ({fp:.0%} under 1 %)" if fp is not None else "")
        + f"; Spearman {'n/a' if rho is None else f'{rho:.3f}'}, grade kappa "
        + ("n/a" if kappa is None else f"{kappa:.3f}")
    )


def _segmenter_epoch(model: nn.Module, opt: torch.optim.Optimizer, images: np.ndarray,
                     ref: np.ndarray, train: list[int], config: SegmentConfig, epoch: int,
                     device: torch.device,
                     context: np.ndarray | None = None,
                     ema: AveragedModel | None = None) -> tuple[float, int]:  # fmt: skip
    """One epoch over the training images with valid masks, in a seeded order, each batch
    augmented with its own seed (``context``: the lung masks, moved with their images;
    ``ema``: the moving average, updated after each step): ``(summed loss, images seen)``."""
    model.train()
    order = torch.randperm(len(train), generator=step_generator(config.seed, epoch, -1))
    train_rows = np.asarray(train)[order.numpy()]
    loss_sum, n = 0.0, 0
    batches = range(0, len(train_rows), config.batch_size)
    for step, start in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}", leave=False,
                                      disable=not config.progress or None)):  # fmt: skip
        idx = np.sort(train_rows[start : start + config.batch_size])
        if len(idx) < 2:
            continue  # BatchNorm cannot train on one image
        x = torch.from_numpy(np.asarray(images[idx])).unsqueeze(1).float().to(device)
        y = torch.from_numpy(np.asarray(ref[idx])).unsqueeze(1).float().to(device)
        lung = None
        if context is not None:
            lung = torch.from_numpy(np.asarray(context[idx])).unsqueeze(1).float().to(device)
        if config.augment != "none":
            both = y if lung is None else torch.cat([y, lung], dim=1)
            x, both = augment_pair(x, both, step_generator(config.seed, epoch, step),
                                   config.augment)  # fmt: skip
            y, lung = both[:, :1], (None if lung is None else both[:, 1:])
        logits = model(x, lung)
        loss = F.binary_cross_entropy_with_logits(logits, y) + _dice_loss(logits, y, config.dice)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.item() * len(idx)
        n += len(idx)
    return loss_sum, n


def _val_scores(probs: np.ndarray, rows: list[int], ref: np.ndarray, lungs: DecodedMasks,
                target: str) -> dict[str, float]:  # fmt: skip
    """The validation numbers the best epoch is chosen by (see the module docstring):
    ``val_dice``, and for infection ``val_dice_infected`` and ``val_fp_ok`` (the share of
    images without infection under the false-positive aim)."""
    if target == "lungs":
        return {"val_dice": float(np.mean([dice(p >= 0.5, ref[i]) for p, i in zip(probs, rows)]))}
    found, sick, fp_ok = [], [], []
    for p, i in zip(probs, rows):
        lung = lungs.array[i] if lungs.status[i] == "ok" else None
        pred = clean_infection(p, lung)
        found.append(dice(pred, ref[i]))
        if ref[i].any():
            sick.append(found[-1])
        else:
            area = lung.sum() if lung is not None else pred.size
            fp_ok.append(pred.sum() / area < FP_AIM)
    return {"val_dice": float(np.mean(found)),
            "val_dice_infected": float(np.mean(sick)) if sick else float("nan"),
            "val_fp_ok": float(np.mean(fp_ok)) if fp_ok else 1.0}  # fmt: skip


def _choice(scores: dict[str, float]) -> tuple[int, float]:
    """What the best epoch maximises: for infection, ``(1, Dice on infected images)`` once
    the false-positive constraint holds, else ``(0, mean Dice)``; for lungs ``(0, Dice)``."""
    if "val_fp_ok" in scores and scores["val_fp_ok"] >= FP_SHARE:
        infected = scores["val_dice_infected"]
        if np.isfinite(infected):
            return (1, infected)
    return (0, scores["val_dice"])
