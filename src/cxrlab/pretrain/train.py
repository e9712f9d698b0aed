"""``cxrlab pretrain``: self-supervised pretraining of a backbone on unlabelled X-rays.

One loop, read in one sitting: the images are decoded once (cached, as for ``train``);
each step draws two views of every image of the batch (:data:`cxrlab.augment.AUGMENTS`'s
``pretrain``: crops of 30-100 % of the area, rotation, intensity, gamma, blur, noise, tone
curves), and the method (:mod:`cxrlab.pretrain.methods`) pulls the two views' embeddings
together. **No horizontal flips**: left and right are anatomy on a chest X-ray (the heart,
situs, the side markers), and a flip-invariant backbone would have to unlearn them.

Watched each epoch (``history.csv``): the loss, the embedding spread (0 = collapse, about 1
= healthy; :func:`~cxrlab.pretrain.methods.embedding_spread`) and a k-NN accuracy of the
backbone's features (cosine, ``knn_k`` neighbours; bank: training images, queries:
validation images, labels used only here), also measured before the first epoch. A
checkpoint after every epoch makes the run resumable (``resume=True``); the views depend
only on (seed, epoch, step), so a resumed run draws what an unbroken one would.

The run folder: ``backbone.safetensors`` (the backbone without a classifier head, loaded by
``--weights pretrained:RUN``), ``pretrain_card.json``, ``history.csv``, ``split.csv``,
``images.csv`` (every image it saw, with its content hash) and ``signatures.npz`` (their
perceptual signatures, so that later runs find copies of their evaluation images among
them; :mod:`cxrlab.pretrain.leakage`), and ``metrics.json``, written last.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .. import run_files
from ..augment import augment_batch, step_generator
from ..data import prepare_data
from ..data.dedup import signatures
from ..errors import CheckpointError, DataError
from ..models import CxrClassifier, create_model, forward_images
from ..runtime import resolve_device, versions
from ..utils import atomic_write_bytes, atomic_write_rows, hash_strings, write_json
from .card import PRETRAIN_FORMAT, PretrainCard, PretrainConfig
from .methods import METHODS, embedding_spread, require_lightly

__all__ = ["COLLAPSE", "knn_accuracy", "pretrain"]

#: An embedding spread under this (at an epoch's end) is reported as collapse.
COLLAPSE = 0.1


def pretrain(config: PretrainConfig, out: str | Path, *, resume: bool = False) -> PretrainCard:
    """Pretrain ``config.model`` self-supervised; write the run folder ``out``.

    Raises:
        CheckpointError: ``out`` holds a finished run, or an unfinished one and not
            ``resume``, or a checkpoint made with other settings.
        DataError: fewer images than one batch.
    """
    require_lightly()
    out = Path(out)
    checkpoint = out / run_files.CHECKPOINT
    if (out / run_files.METRICS).exists():
        raise CheckpointError(f"{out} holds a finished pretraining run; choose another --out")
    if checkpoint.exists() and not resume:
        raise CheckpointError(
            f"{out} holds an unfinished pretraining run; pass --resume to go on, or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    split_file = out / run_files.SPLIT
    data = prepare_data(config.data, split_file=split_file if split_file.exists() else None,
                        progress=config.progress, **config.split_options())  # fmt: skip
    data.split.save(split_file)
    parts = ("train",) if config.use == "train" else ("train", "val", "test")
    rows = np.array(sorted(i for p in parts for i in data.split.indices(p)), dtype=np.int64)
    if len(rows) < config.batch_size:
        raise DataError(
            f"Pretraining needs at least one batch: {len(rows)} image(s) in "
            f"{'the training split' if config.use == 'train' else 'the data'}, batch_size "
            f"{config.batch_size}"
        )
    images = data.images.array
    labels = np.asarray(data.split.labels(), dtype=np.int64)
    bank = _draw(data.split.indices("train"), labels, config.knn_images, config.seed)
    queries = _draw(data.split.indices("val"), labels, config.knn_images, config.seed + 1)

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    backbone = create_model(config.model, max(2, len(data.classes)), config.init,
                            image_size=config.image_size, seed=config.seed).drop_head()  # fmt: skip
    with torch.no_grad():
        feat_dim = backbone.eval()(torch.zeros(2, 1, config.image_size, config.image_size)).shape[1]
    model = METHODS[config.method](backbone, feat_dim, config.proj_dim, config.hidden_dim,
                                   config.momentum).to(device)  # fmt: skip
    if config.channels_last and not config.model.startswith(("vit", "timm:vit")):
        model.to(memory_format=torch.channels_last)
    base_lr = config.lr * config.batch_size / 256
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=base_lr,
                          momentum=0.9, weight_decay=config.weight_decay)  # fmt: skip
    history: list[dict[str, float]] = []
    start, initial, seconds = 0, {}, 0.0
    if resume and checkpoint.exists():
        start, history, initial, seconds = _restore(checkpoint, model, opt, config)
        tqdm.write(f"Resuming {out} after epoch {start} of {config.epochs}")
    elif len(queries):
        initial = knn_accuracy(backbone, images, bank, queries, labels, config.knn_k, device)
        tqdm.write(f"k-NN accuracy before pretraining: {initial['accuracy']:.3f} "
                   f"(balanced {initial['balanced_accuracy']:.3f})")  # fmt: skip
    steps = len(rows) // config.batch_size
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(rows)
        loss_sum, spread_sum = 0.0, 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not config.progress)  # fmt: skip
        for step in bar:
            idx = np.sort(order[step * config.batch_size : (step + 1) * config.batch_size])
            x = torch.from_numpy(np.ascontiguousarray(images[idx]))[:, None].float()
            v1 = augment_batch(x, step_generator(config.seed, epoch, 2 * step), "pretrain")
            v2 = augment_batch(x, step_generator(config.seed, epoch, 2 * step + 1), "pretrain")
            progress = (epoch * steps + step) / (config.epochs * steps)
            loss, z = model.step(v1.to(device), v2.to(device), progress)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            spread_sum += embedding_spread(z)
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.4f}")
        train_s = time.perf_counter() - t0
        row: dict[str, float] = {"epoch": epoch + 1, "loss": loss_sum / steps,
                                 "embedding_spread": spread_sum / steps, "lr": lr}  # fmt: skip
        if len(queries):
            knn = knn_accuracy(backbone, images, bank, queries, labels, config.knn_k, device)
            row |= {"knn_accuracy": knn["accuracy"],
                    "knn_balanced_accuracy": knn["balanced_accuracy"]}  # fmt: skip
        row |= {"seconds": time.perf_counter() - t0,
                "images_per_s": steps * config.batch_size / train_s}  # fmt: skip
        history.append(row)
        seconds += row["seconds"]
        collapse = "  COLLAPSED" if row["embedding_spread"] < COLLAPSE else ""
        knn_text = f", k-NN {row['knn_accuracy']:.3f}" if "knn_accuracy" in row else ""
        tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}, spread "
                   f"{row['embedding_spread']:.3f}{knn_text} ({row['seconds']:.0f} s)"
                   f"{collapse}")  # fmt: skip
        _save_checkpoint(checkpoint, model, opt, config, epoch + 1, history, initial, seconds)
    return _finish(out, config, data, rows, backbone, history, initial, seconds,
                   bank, queries)  # fmt: skip


def _draw(indices: list[int], labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Up to ``cap`` of ``indices``, the same share of each class, drawn with ``seed``."""
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) <= cap:
        return idx
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        keep.append(rng.choice(members, max(1, round(cap * len(members) / len(idx))),
                               replace=False))  # fmt: skip
    return np.sort(np.concatenate(keep))


def knn_accuracy(backbone: CxrClassifier, images: np.ndarray, bank: np.ndarray,
                 queries: np.ndarray, labels: np.ndarray, k: int,
                 device: torch.device) -> dict[str, float]:  # fmt: skip
    """The accuracy (and balanced accuracy) of a cosine k-NN vote over ``bank``'s features
    for ``queries``' labels (scikit-learn's brute-force neighbours)."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(bank)), metric="cosine",
                               algorithm="brute")  # fmt: skip
    knn.fit(forward_images(backbone, images, bank, device=device).numpy(), labels[bank])
    pred = knn.predict(forward_images(backbone, images, queries, device=device).numpy())
    truth = labels[queries]
    return {"accuracy": float((pred == truth).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(truth, pred))}  # fmt: skip


def _comparable(config: PretrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in PretrainConfig.RUNTIME}


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     config: PretrainConfig, epoch: int, history: list[dict[str, float]],
                     initial: dict[str, float], seconds: float) -> None:  # fmt: skip
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "history": history, "initial": initial, "seconds": seconds,
                "config": _comparable(config)}, buf)  # fmt: skip
    atomic_write_bytes(path, buf.getvalue())


def _restore(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
             config: PretrainConfig) -> tuple[int, list, dict, float]:  # fmt: skip
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Cannot read the checkpoint {path} ({type(e).__name__}); "
                              "pretrain in another folder (--out)") from e  # fmt: skip
    now = _comparable(config)
    diff = [k for k in now if payload["config"].get(k) != now[k]]
    if diff:
        k, then = diff[0], payload["config"].get(diff[0])
        raise CheckpointError(
            f"Cannot resume {path.parent}: it was pretrained with {k}={then!r}, now "
            f"{k}={now[k]!r}; resume with the same settings, or use another --out"
        )
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    return payload["epoch"], payload["history"], payload["initial"], payload["seconds"]


def _finish(out: Path, config: PretrainConfig, data, rows: np.ndarray, backbone: CxrClassifier,
            history: list[dict[str, float]], initial: dict[str, float], seconds: float,
            bank: np.ndarray, queries: np.ndarray) -> PretrainCard:  # fmt: skip
    """Write the backbone, the images seen, the card and (last) ``metrics.json``."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.net.state_dict().items()}
    meta = {"format": PRETRAIN_FORMAT, "model": config.model, "method": config.method,
            "init": config.init, "image_size": str(config.image_size),
            "epochs": str(config.epochs)}  # fmt: skip
    weights = out / run_files.BACKBONE
    save_file(state, str(weights), metadata=meta)
    split, records = data.split, data.split.records
    parts = {i: p for p in ("train", "val", "test") for i in split.indices(p)}
    atomic_write_rows(out / run_files.PRETRAIN_IMAGES, [
        {"path": records[i].path, "source": split.source_of(i), "split": parts[i],
         "label": records[i].label, "hash": records[i].hash} for i in rows
    ])  # fmt: skip
    sig = signatures(np.asarray(data.whole_images().array[rows]))
    buf = io.BytesIO()
    np.savez_compressed(buf, hashes=sig.hashes, thumbs=sig.thumbs.astype(np.float16))
    atomic_write_bytes(out / run_files.PRETRAIN_SIGNATURES, buf.getvalue())
    atomic_write_rows(out / run_files.HISTORY, history)
    last = history[-1]
    final = {k: last[k] for k in ("loss", "embedding_spread", "knn_accuracy",
                                  "knn_balanced_accuracy") if k in last}  # fmt: skip
    card = PretrainCard(
        model=config.model, method=config.method, init=config.init,
        image_size=config.image_size, config=config,
        data={"root": str(data.report.root), "data_hash": data.report.fingerprint(),
              "split_hash": split.fingerprint(), "use": config.use,
              "classes": list(data.classes)},
        images_hash=hash_strings(sorted(records[i].hash for i in rows)), images=len(rows),
        weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        monitor={"bank": len(bank), "queries": len(queries), "k": config.knn_k,
                 "queries_seen": bool(config.use == "all" and len(queries))},
        initial=initial, final=final,
        collapsed=any(h["embedding_spread"] < COLLAPSE for h in history),
        epochs=len(history), train_seconds=round(seconds, 1), versions=versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    write_json(out / run_files.PRETRAIN_CARD, card.to_dict())
    write_json(out / run_files.METRICS, {"initial": initial, **final,
                                        "collapsed": card.collapsed})  # fmt: skip
    (out / run_files.CHECKPOINT).unlink(missing_ok=True)
    return card
