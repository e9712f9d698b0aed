"""The audit's model checks: copies of training images, lungs removed, where Grad-CAM looks
(in the lungs, and on the infection).

Each function takes the model and the images it is audited on and returns a JSON-ready dict
with the numbers and a one-line ``finding`` that states them against chance and against the
model's normal score, with a 95 % interval. None of them changes the model or its run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data import apply_lung_mask
from ..engine.batches import ImageBatches
from ..errors import CxrlabError
from ..evaluation.intervals import bootstrap_interval, wilson_interval
from ..models import CxrClassifier, forward_images
from ..runs.evaluate import predict_batches
from ..shift.reference import captured_features

__all__ = [
    "LUNG_VARIANTS",
    "cam_in_lungs",
    "cam_on_infection",
    "chance_accuracy",
    "infection_attention",
    "lungs_removed",
    "mass_inside",
    "predict",
]

#: The images the lungs check shows the model: (mode, fill) of :func:`apply_lung_mask`.
LUNG_VARIANTS: dict[str, tuple[str, str]] = {
    "lungs removed (mean fill)": ("remove", "mean"),
    "lungs removed (noise fill)": ("remove", "noise"),
    "lungs only (mean fill outside)": ("only", "mean"),
}


def predict(
    model: CxrClassifier,
    images: np.ndarray,
    device: torch.device,
    amp: torch.dtype | None,
    batch_size: int = 64,
    tta: bool = False,
) -> np.ndarray:
    """``(N, K)`` probabilities for ``(N, H, W)`` uint8 images (``tta``: as the run tests)."""
    batches = ImageBatches(
        images, list(range(len(images))), np.zeros(len(images), np.int64), batch_size
    )
    probs, _, _ = predict_batches(model, batches, device, amp, tta=tta)
    return probs


@torch.no_grad()
def penultimate_features(
    model: CxrClassifier, images: np.ndarray, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """``(N, D)`` float32: what the model's classifier head receives for ``(N, H, W)`` uint8
    images (the pooled features, or a ViT's class token)."""
    with captured_features(model) as captured:
        forward_images(model, images, device=device, batch_size=batch_size)
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def chance_accuracy(y: np.ndarray) -> float:
    """The accuracy of always answering the most common class."""
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    right = pred == y
    present = [c for c in np.unique(y)]

    def balanced(idx: np.ndarray) -> float:
        yy, pp = y[idx], pred[idx]
        return float(np.mean([(pp[yy == c] == c).mean() for c in present if (yy == c).any()]))

    return {
        "accuracy": float(right.mean()),
        "accuracy_ci": wilson_interval(int(right.sum()), len(y)),
        "balanced_accuracy": balanced(np.arange(len(y))),
        "balanced_accuracy_ci": bootstrap_interval(balanced, len(y)),
    }


def lungs_removed(
    model: CxrClassifier,
    images: np.ndarray,
    masks: np.ndarray,
    y: np.ndarray,
    device: torch.device,
    amp: torch.dtype | None = None,
    *,
    seeds: Sequence[int] | None = None,
    batch_size: int = 64,
    tta: bool = False,
) -> dict[str, Any]:
    """The model's scores on the same images with the lungs hidden, or all but the lungs.

    Args:
        images: ``(N, H, W)`` uint8 as the model normally sees them.
        masks: ``(N, H, W)`` 0/1 lung masks.
        y: ``(N,)`` true model-class indices.
        seeds: per-image seeds of the noise fill (default: the row index).

    Returns:
        ``{"n", "chance", "original": scores, "variants": {name: scores + retained}}`` where
        ``retained`` is the share of the original above-chance accuracy a variant keeps
        (1 = nothing lost, 0 = chance), with a bootstrap interval paired on images.
    """
    chance = chance_accuracy(y)
    base_pred = predict(model, images, device, amp, batch_size, tta).argmax(1)
    out: dict[str, Any] = {
        "n": len(y),
        "chance": chance,
        "original": _scores(y, base_pred),
        "variants": {},
    }
    for name, (mode, fill) in LUNG_VARIANTS.items():
        hidden = apply_lung_mask(images, masks, mode, fill, seeds)
        pred = predict(model, hidden, device, amp, batch_size, tta).argmax(1)
        scores = _scores(y, pred)

        def retained(idx: np.ndarray, pred: np.ndarray = pred) -> float:
            base = (base_pred[idx] == y[idx]).mean() - chance
            return float(((pred[idx] == y[idx]).mean() - chance) / base) if base > 0 else np.nan

        scores["retained"] = retained(np.arange(len(y)))
        scores["retained_ci"] = bootstrap_interval(retained, len(y))
        scores["agreement_with_original"] = float((pred == base_pred).mean())
        out["variants"][name] = scores
    removed = out["variants"]["lungs removed (mean fill)"]
    lo, hi = removed["accuracy_ci"]
    orig = out["original"]["accuracy"]
    kept = removed["retained"]
    ci = f"[{_pct(removed['retained_ci'][0])}, {_pct(removed['retained_ci'][1])}]"
    if not np.isfinite(kept):
        verdict = "the model is not above chance with the lungs either"
    elif kept <= 0:
        verdict = f"nothing of its above-chance accuracy survives ({_pct(kept)} kept, {ci})"
    else:
        verdict = f"it keeps {_pct(kept)} {ci} of its above-chance accuracy with no lung tissue"
    out["finding"] = (
        f"With the lungs removed (mean fill) the model scores accuracy {removed['accuracy']:.3f} "
        f"[{lo:.3f}, {hi:.3f}] on {len(y)} images, against {orig:.3f} with the lungs and "
        f"{chance:.3f} by chance: {verdict}."
    )
    return out


def mass_inside(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``(N,)`` share of each heat map's mass inside its mask (NaN for an all-zero map)."""
    cams = np.asarray(cams, dtype=np.float64)
    total = cams.sum(axis=(1, 2))
    inside = (cams * np.asarray(masks, dtype=bool)).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x * 100:.0f} %"


def _pick(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Up to ``limit`` rows, spread evenly over the classes, in a seeded order."""
    rows = np.arange(len(y))
    if limit is None or limit >= len(y):
        return rows
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(rows[y == c]) for c in np.unique(y)]
    picked: list[int] = []
    depth = 0
    while len(picked) < limit:
        picked += [int(p[depth]) for p in per_class if depth < len(p)][: limit - len(picked)]
        depth += 1
    return np.sort(np.array(picked))


def _cam_shares(
    model: CxrClassifier, images: np.ndarray, masks: np.ndarray, rows: np.ndarray, batch_size: int
) -> tuple[list[float], list[float], list[np.ndarray], list[int]]:
    """Per image of ``rows``: the share of its Grad-CAM mass (predicted class) inside the
    lungs, the lungs' share of the image, the map (float16) and the predicted class."""
    from ..infer.cam import gradcam

    model = model.cpu().eval()
    shares, areas, maps, preds = [], [], [], []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        with torch.no_grad():
            pred = model(torch.from_numpy(np.ascontiguousarray(images[batch]))[:, None]).argmax(1)
        cams = gradcam(model, images[batch], pred.tolist())  # (B, H, W) in [0, 1]
        shares += mass_inside(cams, masks[batch]).tolist()
        areas += [float(m.mean()) for m in masks[batch]]
        maps += [cam.astype(np.float16) for cam in cams]
        preds += pred.tolist()
    return shares, areas, maps, preds


def cam_in_lungs(
    model: CxrClassifier,
    images: np.ndarray,
    masks: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    *,
    limit: int | None = 200,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """The share of each image's Grad-CAM mass (predicted class) that lies inside the lungs.

    A map spread evenly over the image would put ``lung area`` of its mass in the lungs; a
    model that looks at the lungs puts far more. Runs on the CPU, on up to ``limit`` images
    spread over the classes.

    Returns:
        ``{"n", "share", "share_ci", "lung_area", "per_class": {class: {...}}, "rows",
        "shares", "maps"}`` (``rows``/``shares``/``maps`` for the figures), or
        ``{"skipped": reason}`` when Grad-CAM has no layer to explain for this model.
    """
    from ..infer.cam import target_layer

    try:
        target_layer(model)
    except CxrlabError as e:
        return {"skipped": str(e)}
    rows = _pick(y, limit, seed)
    shares, areas, maps, preds = _cam_shares(model, images, masks, rows, batch_size)
    share, area = np.array(shares), np.array(areas)
    ok = np.isfinite(share)

    def mean_share(idx: np.ndarray) -> float:
        v = share[idx]
        return float(np.nanmean(v)) if np.isfinite(v).any() else np.nan

    yy = y[rows]
    per_class = {}
    for c in np.unique(yy):
        idx = np.flatnonzero((yy == c) & ok)
        if not len(idx):
            continue
        per_class[classes[int(c)]] = {
            "n": len(idx),
            "share": float(share[idx].mean()),
            "share_ci": bootstrap_interval(
                lambda i, idx=idx: float(share[idx][i].mean()), len(idx)
            ),
            "lung_area": float(area[idx].mean()),
        }
    overall = mean_share(np.arange(len(share)))
    ci = bootstrap_interval(mean_share, len(share))
    lowest = min(per_class.items(), key=lambda kv: kv[1]["share"]) if per_class else None
    finding = (
        f"On {int(ok.sum())} images, {_pct(overall)} [{_pct(ci[0])}, {_pct(ci[1])}] of the "
        f"Grad-CAM mass for the predicted class falls inside the lungs, which cover "
        f"{_pct(float(area.mean()))} of the image (what an evenly spread map would give)"
    )
    if lowest is not None:
        finding += f"; least inside for {lowest[0]} ({_pct(lowest[1]['share'])})"
    return {
        "n": int(ok.sum()),
        "no_map": int((~ok).sum()),
        "share": overall,
        "share_ci": ci,
        "lung_area": float(area.mean()),
        "per_class": per_class,
        "finding": finding + ".",
        "rows": rows.tolist(),
        "shares": share.tolist(),
        "predicted": preds,
        "maps": maps,
    }


def infection_attention(
    cams: np.ndarray, infection: np.ndarray, lungs: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per map: how much of it lies on the infection, against chance.

    Args:
        cams: ``(N, H, W)`` non-negative heat maps.
        infection: ``(N, H, W)`` infection masks (nonzero inside), none empty.
        lungs: ``(N, H, W)`` lung masks; without them, the whole image stands for the lungs.

    Returns:
        ``{"energy_share", "area_share", "ratio", "hit"}``, each ``(N,)``: the share of a
        map's mass inside the lungs that lies on the infection, the infection's share of the
        lungs, their ratio (1: a map spread evenly over the lungs; NaN for a map with no mass
        in the lungs) and whether the map's peak falls on the infection (the pointing game).
    """
    cams = np.asarray(cams, dtype=np.float64)
    sick = np.asarray(infection) != 0
    where = np.ones_like(sick) if lungs is None else (np.asarray(lungs) != 0) | sick
    inside = (cams * where).sum(axis=(1, 2))
    on = (cams * sick).sum(axis=(1, 2))
    area = sick.sum(axis=(1, 2)) / where.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(inside > 0, on / inside, np.nan)
        ratio = share / area
    peaks = cams.reshape(len(cams), -1).argmax(1)
    hit = sick.reshape(len(sick), -1)[np.arange(len(sick)), peaks]
    return {"energy_share": share, "area_share": area, "ratio": ratio, "hit": hit}


def cam_on_infection(
    model: CxrClassifier,
    images: np.ndarray,
    infection: np.ndarray,
    lungs: np.ndarray | None,
    *,
    limit: int | None = 200,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Whether the model's Grad-CAM (for the class it predicts) lands on the infection.

    Give it the correctly classified images whose infection mask is not empty (the caller
    chooses them). Runs on the CPU, on up to ``limit`` of them (a seeded draw).

    Returns:
        ``{"n", "ratio", "ratio_ci", "ratio_median", "energy_share", "area_share",
        "pointing", "pointing_ci", "pointing_chance", "finding", "rows", "ratios", "hits",
        "maps"}`` (``rows`` into ``images``; ``maps`` for the figures),
        or ``{"skipped": reason}`` (no such image, or no layer to explain).
    """
    from ..infer.cam import gradcam, target_layer

    if not len(images):
        return {"skipped": "no correctly classified image with an infection mask"}
    try:
        target_layer(model)
    except CxrlabError as e:
        return {"skipped": str(e)}
    rows = np.arange(len(images))
    if limit is not None and limit < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    model = model.cpu().eval()
    cams = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        with torch.no_grad():
            pred = model(torch.from_numpy(np.ascontiguousarray(images[batch]))[:, None]).argmax(1)
        cams.append(gradcam(model, images[batch], pred.tolist()))
    found = infection_attention(np.concatenate(cams), infection[rows],
                                None if lungs is None else lungs[rows])  # fmt: skip
    ratio, hit, area = found["ratio"], found["hit"], found["area_share"]
    ok = np.isfinite(ratio)

    def mean_ratio(idx: np.ndarray) -> float:
        v = ratio[idx]
        return float(np.nanmean(v)) if np.isfinite(v).any() else np.nan

    mean = mean_ratio(np.arange(len(ratio)))
    lo, hi = bootstrap_interval(mean_ratio, len(ratio), seed=seed)
    hits = int(hit.sum())
    p_lo, p_hi = wilson_interval(hits, len(hit))
    chance = float(area.mean())
    where = "the lungs" if lungs is not None else "the image"
    finding = (
        f"On {len(rows)} correctly classified images with infection, the Grad-CAM mass in "
        f"{where} lies on the infection {mean:.2f} [{lo:.2f}, {hi:.2f}] times as much as a "
        f"map spread evenly over {where} would put there (1 = chance; the infection covers "
        f"{_pct(chance)} of {where}); the map's peak falls on the infection in "
        f"{_pct(hits / len(hit))} [{_pct(p_lo)}, {_pct(p_hi)}] of them."
    )
    return {
        "n": int(ok.sum()),
        "ratio": mean,
        "ratio_ci": (lo, hi),
        "ratio_median": float(np.nanmedian(ratio)) if ok.any() else np.nan,
        "energy_share": float(np.nanmean(found["energy_share"])) if ok.any() else np.nan,
        "area_share": chance,
        "pointing": hits / len(hit),
        "pointing_ci": (p_lo, p_hi),
        "pointing_chance": chance,
        "within": "lungs" if lungs is not None else "image",
        "finding": finding,
        "rows": rows.tolist(),
        "ratios": ratio.tolist(),
        "hits": hit.astype(bool).tolist(),
        "maps": [m.astype(np.float16) for m in np.concatenate(cams)],
    }
