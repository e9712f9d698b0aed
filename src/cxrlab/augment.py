"""Augmentation done on the training device, shared by the classifier's trainer and the
lung segmenter's: one tensor operation per batch, drawn from a generator whose state depends
only on (seed, epoch, step), so that a run resumes anywhere with the same draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "ACQUISITION",
    "AUGMENTS",
    "augment_batch",
    "augment_pair",
    "light_augment",
    "step_generator",
    "tta_views",
]


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator whose state depends only on (seed, epoch, step): resumable anywhere."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 10_007 + step) % (2**63 - 1))


#: Augmentation strengths: rotation (degrees), scale, shift (fraction of the side), brightness
#: and contrast (fractions), gamma (the exponent's range, as a log factor; 0 = none).
AUGMENTS = {
    "light": {"rotate": 7, "scale": 0.05, "shift": 0.04, "brightness": 0.1, "contrast": 0.1,
              "gamma": 0.0},
    "xray": {"rotate": 10, "scale": 0.1, "shift": 0.06, "brightness": 0.1, "contrast": 0.15,
             "gamma": 0.25},
    # xray, then what differs between hospitals and detectors (see _acquisition)
    "acquisition": {"rotate": 10, "scale": 0.1, "shift": 0.06, "brightness": 0.1,
                    "contrast": 0.15, "gamma": 0.25, "acquisition": True},
    # self-supervised views (cxrlab.pretrain): a random crop of 30-100 % of the area
    # (zoom 1-1.8, placed anywhere inside the image), stronger intensity changes, then the
    # acquisition perturbations (blur, noise, tone curves)
    "pretrain": {"rotate": 10, "scale": 0.0, "shift": 0.0, "crop": 0.8, "brightness": 0.2,
                 "contrast": 0.3, "gamma": 0.4, "acquisition": True},
}  # fmt: skip
#: How often each acquisition perturbation is applied to an image, and how strongly.
ACQUISITION = {
    "curve": 0.5,  # a random monotone tone curve (5 knots)
    "equalize": 0.3,  # blend with the image's own histogram equalisation, up to half
    "blur_sharpen": 0.5,  # unsharp mask with an amount in [-1, 1] (blur below 0)
    "noise": 0.3,  # Gaussian noise, sd up to 6 grey levels
    "resample": 0.3,  # down to 35-90 % of the side and back up
    "jpeg": 0.3,  # JPEG re-compression at quality 30-90
    "frame": 0.3,  # black, white or grey borders of up to 6 % of the side
}


def _affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor,
            ty: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Rotate, scale and shift each image of ``x`` (border pixels fill the edges)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, generator: torch.Generator, kind: str = "light") -> torch.Tensor:
    """Small, X-ray-safe perturbations of a batch, on whatever device ``x`` is on.

    ``light``: per image, rotation within ±7°, scale 0.95-1.05, shift within ±4 %,
    brightness and contrast within ±10 %. ``xray``: rotation ±10°, scale 0.9-1.1, shift
    ±6 %, contrast ±15 % and a gamma between 0.78 and 1.28 (exposure and processing curves
    differ between hospitals and detectors). ``acquisition``: ``xray``, then per image tone
    curves, histogram equalisation, blur or sharpening, noise, resampling, JPEG and border
    frames (:data:`ACQUISITION`), so that how an image was taken stops telling the class.
    ``pretrain``: the views of self-supervised pretraining (a crop of 30-100 % of the area,
    rotation ±10°, brightness ±20 %, contrast ±30 %, gamma 0.67-1.49, then
    ``acquisition``'s perturbations).
    Never flips: left and right are anatomically
    meaningful (the heart, situs, the "L"/"R" markers), so a flipped X-ray is not a
    plausible X-ray of the same class.

    Args:
        x: ``(B, 1, H, W)`` float in 0..255.
        generator: a CPU generator (so results do not depend on the device).
    """
    return _augment(x, None, generator, kind)[0]


def augment_pair(
    x: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, kind: str = "light"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment_batch` for images with masks: each mask moves with its image (the
    same rotation, scale and shift, then thresholded at 0.5); brightness, contrast and gamma
    change the image only. ``masks``: ``(B, K, H, W)`` of 0 and 1 (``K`` masks per image, each
    moved alike)."""
    out, moved = _augment(x, masks, generator, kind)
    assert moved is not None
    return out, moved


def _augment(x: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator,
             kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    p = AUGMENTS[kind]
    b = x.shape[0]
    r = torch.rand(b, 6, generator=generator).to(x.device, x.dtype)  # (B, 6) in [0, 1)
    sym = r * 2 - 1  # in [-1, 1)
    geometry = (sym[:, 0] * math.radians(p["rotate"]), 1 + sym[:, 1] * p["scale"],
                sym[:, 2] * p["shift"], sym[:, 3] * p["shift"])  # fmt: skip
    if p.get("crop"):  # zoom in by 1..1+crop, the window anywhere inside the image
        zoom = 1 + r[:, 1] * p["crop"]
        room = 1 - 1 / zoom
        geometry = (geometry[0], zoom, sym[:, 2] * room, sym[:, 3] * room)
    if masks is None:
        x = _affine(x, *geometry)
    else:
        both = _affine(torch.cat([x, masks.to(x.dtype)], dim=1), *geometry)
        x, masks = both[:, :1], (both[:, 1:] >= 0.5).to(masks.dtype)
    brightness = (sym[:, 4] * p["brightness"] * 255).view(b, 1, 1, 1)
    contrast = (1 + sym[:, 5] * p["contrast"]).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0, 255)
    if p["gamma"]:
        g = torch.rand(b, generator=generator).to(x.device, x.dtype) * 2 - 1
        x = 255 * (x / 255) ** torch.exp(g * p["gamma"]).view(b, 1, 1, 1)
    if p.get("acquisition"):
        x = _acquisition(x, generator)
    return x, masks


def _acquisition(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What the audit's probes find the sources differ by, drawn per image (each with the
    probability in :data:`ACQUISITION`): a random tone curve, partial histogram
    equalisation, blur or sharpening, noise, down-and-up resampling, JPEG re-compression,
    and border frames. ``x``: ``(B, 1, H, W)`` float in 0..255; the result is too."""
    b, _, h, w = x.shape
    dev, dt = x.device, x.dtype

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    on = {k: draw(b) < p for k, p in ACQUISITION.items()}  # which images get which
    # a monotone tone curve through 5 knots with random steps (the identity on average)
    steps = draw(b, 4) + 0.25
    knots = torch.cat([torch.zeros(b, 1), steps.cumsum(1) / steps.sum(1, keepdim=True)], 1)
    amount_eq, amount_us = draw(b) * 0.5, draw(b) * 2 - 1
    noise_sd, side, quality = draw(b) * 6, 0.35 + draw(b) * 0.55, 30 + (draw(b) * 60).long()
    borders, fill = (draw(b, 4) * 0.06 * min(h, w)).long(), draw(b)
    noise = torch.randn(x.shape, generator=generator).to(dev, dt)
    # per-image look-up tables of 256 grey levels: the tone curve, then equalisation
    grey = torch.arange(256, dtype=torch.float64) / 255 * 4
    lo = grey.floor().clamp(0, 3).long()
    curve = knots[:, lo] + (grey - lo) * (knots[:, lo + 1] - knots[:, lo])  # (B, 256)
    q = x.round().clamp(0, 255).long().view(b, -1)
    toned = torch.gather((curve * 255).to(dev, dt), 1, q).view_as(x)
    x = torch.where(on["curve"].to(dev).view(b, 1, 1, 1), toned, x)
    if bool(on["equalize"].any()):
        q = x.round().clamp(0, 255).long().view(b, -1)
        hist = torch.zeros(b, 256, device=dev, dtype=dt).scatter_add_(
            1, q, torch.ones_like(x).view(b, -1)
        )
        cdf = hist.cumsum(1)
        low = torch.gather(cdf, 1, q.min(1, keepdim=True).values)
        eq = 255 * (torch.gather(cdf, 1, q) - low) / (cdf[:, -1:] - low).clamp(min=1)
        amount = torch.where(on["equalize"], amount_eq, 0).to(dev, dt)[:, None]
        x = (x.view(b, -1) + amount * (eq - x.view(b, -1))).view_as(x)
    out = []
    for i in range(b):
        img = x[i : i + 1]
        if on["blur_sharpen"][i]:
            img = img + float(amount_us[i]) * (img - _gaussian_blur(img))
        if on["noise"][i]:
            img = img + noise[i : i + 1] * float(noise_sd[i])
        if on["resample"][i]:
            small = (max(8, round(h * float(side[i]))), max(8, round(w * float(side[i]))))
            img = F.interpolate(F.interpolate(img, size=small, mode="area"), size=(h, w),
                                mode="bilinear", align_corners=False)  # fmt: skip
        if on["jpeg"][i]:
            img = _jpeg(img, int(quality[i]))
        if on["frame"][i]:
            top, bottom, left, right = (int(v) for v in borders[i])
            value = 0.0 if fill[i] < 0.4 else 255.0 if fill[i] < 0.6 else float(img.mean())
            img = img.clone()
            img[..., :top, :] = value
            img[..., h - bottom :, :] = value
            img[..., :, :left] = value
            img[..., :, w - right :] = value
        out.append(img.clamp(0, 255))
    return torch.cat(out)


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """A 5x5 Gaussian blur of ``(B, 1, H, W)`` (edges replicated)."""
    t = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 5)
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    return F.conv2d(x, k.view(1, 1, 5, 1))


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``(1, 1, H, W)`` float 0..255 through a JPEG encode and decode at ``quality``."""
    from torchvision.io import decode_jpeg, encode_jpeg

    u8 = x[0].round().clamp(0, 255).to("cpu", torch.uint8)
    return decode_jpeg(encode_jpeg(u8, quality=quality))[None].to(x.device, x.dtype)


def light_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """:func:`augment_batch` with the ``light`` strengths (kept for existing callers)."""
    return augment_batch(x, generator, "light")


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Test-time views of a ``(B, 1, H, W)`` float batch: the image, zoomed in and out by
    5 %, and shifted 3 % left and right. No flips (see :func:`augment_batch`)."""
    b = x.shape[0]
    zero, one = x.new_zeros(b), x.new_ones(b)
    views = [x]
    for scale, tx in ((1.05, 0.0), (0.95, 0.0), (1.0, 0.03), (1.0, -0.03)):
        views.append(_affine(x, zero, one * scale, one * tx, zero))
    return views
