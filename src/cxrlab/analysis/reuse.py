"""Why pretraining helps: feature-reuse measurements over finished runs.

``analyze_reuse(runs, out=DIR)`` measures, per unit (the stem and each residual or
transformer block, the units the freezing policies count), over the same test images:

1. **CKA** (:mod:`cxrlab.analysis.cka`): each fine-tuned model against the weights it
   started from, and fine-tuned models against each other (weight transfer vs statistics
   transfer vs random init, same seed and training size).
2. **Weight change**: ``||w - w0|| / ||w0||`` of each unit's parameters.
3. **Re-initialisation robustness**: each unit reset on its own to its initial weights, and
   to a fresh random draw, and the test accuracy without retraining.
4. **k-NN probe**: each unit's output, average-pooled and L2-normalised, classified by a
   weighted k-NN (``k`` nearest by cosine similarity, votes ``exp(sim / T)``; Wu et al.
   2018) with the training split as the bank.
5. **Summary**: per model, freezing and training size, the gain of pretraining over random
   init and the share of it that statistics transfer recovers, with bootstrap intervals
   over seeds.

Each model reads its layer outputs in one pass per image. Units the model shares with its
initialisation (a frozen prefix, bit for bit) are not run again for the initialisation:
their outputs, Grams and CKA (1) are taken from the fine-tuned pass, and resetting such a
unit changes nothing, so it is not recomputed. Measurements 1-3 need the weights a run
started from (``init.safetensors``, written by ``--keep-init``); runs without them get the
rest and say so.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import run_files
from ..errors import ConfigError, CxrlabError
from ..models import CxrClassifier, create_model, get_spec, parse_weights
from ..models.stages import stages
from ..runs.card import RunCard
from ..runs.ensemble import check_members
from ..runs.folder import load_card, load_run_model
from ..runs.scoring import open_run
from ..runtime import resolve_device
from .cka import batch_bounds, cka_from_hsic, gram, hsic_matrix
from .report import write_reuse
from .result import ReuseResult

__all__ = [
    "ReuseResult",
    "analyze_reuse",
    "init_kind",
    "knn_accuracy",
    "transfer_summary",
    "unit_tensor_names",
    "weight_change",
]

#: How a run's initialisation is named in tables and figures (Matsoukas et al.'s terms).
KIND_NAMES = {"WT": "weight transfer", "ST": "statistics transfer", "RI": "random init",
              "XR-WT": "X-ray pretraining continued from ImageNet",
              "XR-RI": "X-ray pretraining from scratch"}  # fmt: skip


def init_kind(card: RunCard) -> str:
    """``WT`` (ImageNet weights), ``ST`` (statistics transfer), ``RI`` (random init),
    ``TF<K>`` (transfusion, first K units pretrained), ``XR-WT`` / ``XR-RI`` (a ``cxrlab
    pretrain`` backbone, its pretraining started from ImageNet / from scratch) or ``file``,
    from a model card."""
    ws = parse_weights(card.training.config.weights)
    if ws.kind == "pretrained":
        return "XR-WT" if card.pretraining and card.pretraining.init == "imagenet" else "XR-RI"
    return {"imagenet": "WT", "stats": "ST", "none": "RI", "file": "file"}.get(
        ws.kind, f"TF{ws.keep}"
    )


def unit_tensor_names(model: CxrClassifier) -> list[list[str]]:
    """Per unit, the names (in ``model.net``) of its parameters and of its modules' buffers
    (BatchNorm running statistics belong to the unit of the BatchNorm's weights)."""
    buffers = [n for n, _ in model.net.named_buffers()]
    out = []
    for params in model.units:
        owners = {p.rsplit(".", 1)[0] for p in params if "." in p}
        out.append(list(params) + [b for b in buffers if b.rsplit(".", 1)[0] in owners])
    return out


def weight_change(model: CxrClassifier, init: CxrClassifier) -> list[float]:
    """``||w - w0||_2 / ||w0||_2`` over each unit's parameters (NaN where ``w0`` is zero)."""
    now = {n: p.detach() for n, p in model.net.named_parameters()}
    start = {n: p.detach() for n, p in init.net.named_parameters()}
    out = []
    for params in model.units:
        diff = sum(float((now[p].double() - start[p].double()).pow(2).sum()) for p in params)
        base = sum(float(start[p].double().pow(2).sum()) for p in params)
        out.append(float(np.sqrt(diff / base)) if base > 0 else float("nan"))
    return out


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Weighted k-NN accuracy on L2-normalised features (cosine similarity).

    Each query takes its ``k`` most similar bank rows; each votes for its class with weight
    ``exp(similarity / temperature)``.
    """
    num_classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
    bank = nn.functional.normalize(bank.float(), dim=1)
    query = nn.functional.normalize(query.float(), dim=1)
    k = min(k, len(bank))
    sims, idx = (query @ bank.T).topk(k, dim=1)  # (Q, k)
    votes = torch.zeros(len(query), num_classes, dtype=torch.float64)
    votes.scatter_add_(1, bank_labels[idx], (sims.double() / temperature).exp())
    return float((votes.argmax(1) == query_labels).double().mean())


def _pool(h: torch.Tensor) -> torch.Tensor:
    """Average over the spatial positions (B, C, H, W) or the tokens (B, N, D)."""
    if h.ndim == 4:
        return h.mean(dim=(2, 3))
    if h.ndim == 3:
        return h.mean(dim=1)
    return h.reshape(h.shape[0], -1)


@dataclass
class _Loaded:
    path: Path
    name: str  # short id for tables: the folder name
    card: RunCard
    model: CxrClassifier
    init: CxrClassifier | None
    kind: str
    chain: Any  # (units, pool, classifier) of ``model``
    names: list[list[str]]  # tensor names per unit
    init_note: str | None = None  # where ``init`` came from when rebuilt, or why it is None


def _load(path: Path, name: str) -> _Loaded:
    model, card = load_run_model(path)
    chain = stages(model.net, get_spec(card.model).arch)
    if chain is None:
        raise ConfigError(
            f"{path}: cxrlab cannot split {card.model} into units for a layer analysis"
        )
    note = None
    if (path / run_files.INIT).is_file():
        init, _ = load_run_model(path, file=run_files.INIT)
    else:
        init, note = rebuild_init(card)
    run = _Loaded(
        path, path.name, card, model, init, init_kind(card), chain, unit_tensor_names(model), note
    )
    frozen = len(card.freeze.frozen_units)
    if init is not None and note is not None and _same_prefix(run) < frozen:
        run.init = None  # its frozen units must be the rebuilt weights, bit for bit
        run.init_note = (f"no {run_files.INIT}, and weights rebuilt from its seed differ from its "
                         "frozen units")  # fmt: skip
    return run


def rebuild_init(card: RunCard) -> tuple[CxrClassifier | None, str]:
    """The weights a run started from, drawn again from its card (the model, its ImageNet or
    statistics-transfer weights, its seed), as training drew them, for a run trained without
    ``--keep-init``; or ``None`` and why they cannot be rebuilt here."""
    weights, seed = card.training.config.weights, card.seed
    try:
        init = _draw(card, weights, seed)
    except CxrlabError as e:
        return None, f"no {run_files.INIT}, and its starting weights cannot be rebuilt here: {e}"
    source = init.weights_source  # type: ignore[attr-defined]
    if source != card.weights:
        return None, (f"no {run_files.INIT}; its starting weights came from {card.weights!r}, "
                      f"rebuilt they would come from {source!r}")  # fmt: skip
    drawn = init.init_report  # type: ignore[attr-defined]
    if drawn != card.initialisation:
        return (
            None,
            f"no {run_files.INIT}, and a new draw does not match its recorded initialisation",
        )
    return (
        init,
        f"no {run_files.INIT}: starting weights rebuilt from its seed {seed} and {weights!r}",
    )


def _same_prefix(run: _Loaded) -> int:
    """How many leading units of the run are bit for bit its initialisation."""
    if run.init is None:
        return 0
    now, start = run.model.net.state_dict(), run.init.net.state_dict()
    for u, names in enumerate(run.names):
        if not all(torch.equal(now[n], start[n]) for n in names):
            return u
    return len(run.names)


def _run_units(chain: Any, h: torch.Tensor, first: int = 0) -> list[torch.Tensor]:
    outs = []
    for unit in chain[0][first:]:
        h = unit(h)
        outs.append(h)
    return outs


def _logits(chain: Any, h: torch.Tensor, first: int) -> torch.Tensor:
    """Run the units from ``first`` on, then pool and classify."""
    units, pool, classifier = chain
    for unit in units[first:]:
        h = unit(h)
    return classifier(pool(h))


class _Swap:
    """Temporarily copy another model's tensors of one unit into ``model.net``."""

    def __init__(self, model: CxrClassifier, names: list[str], source: dict[str, torch.Tensor]):
        refs = dict(model.net.named_parameters()) | dict(model.net.named_buffers())
        self.items = [(refs[n], source[n]) for n in names]
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> None:
        self.saved = [t.detach().clone() for t, _ in self.items]
        with torch.no_grad():
            for t, s in self.items:
                t.copy_(s)

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for (t, _), s in zip(self.items, self.saved):
                t.copy_(s)


def _draw(card: RunCard, weights: str, seed: int) -> CxrClassifier:
    """The run's architecture with ``weights``, drawn as training draws it (the seed, then
    the model), without touching the global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_model(card.model, len(card.classes), weights, seed=seed,
                            image_size=card.image_size)  # fmt: skip


def _fresh_state(card: RunCard, seed: int) -> dict[str, torch.Tensor]:
    """A fresh random initialisation of the run's architecture (for the random re-init)."""
    return _draw(card, "none", seed).net.state_dict()


def _stratified_rows(rows: np.ndarray, labels: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of ``rows``, the same share of every class, in the original order."""
    if limit is None or limit >= len(rows):
        return rows
    keep = []
    for c in np.unique(labels[rows]):
        mine = rows[labels[rows] == c]
        n = max(1, round(limit * len(mine) / len(rows)))
        keep.extend(mine[np.linspace(0, len(mine) - 1, n).round().astype(int)])
    return np.array(sorted(set(keep)), dtype=np.int64)


def _names(paths: list[Path]) -> list[str]:
    """Short, unique names for the runs: folder names, with their parent where they clash."""
    short = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if short.count(p.name) > 1 else p.name for p in paths]


@torch.no_grad()
def analyze_reuse(
    runs: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str = "test",
    max_images: int | None = 300,
    bank_images: int | None = 2000,
    batch_size: int = 50,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    reinit: bool = True,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> ReuseResult:
    """Feature-reuse measurements over finished runs (see the module docstring).

    Args:
        runs: run folders that share one split, input size and class list.
        out: where ``reuse.json``, ``reuse.md``, ``reuse_units.csv`` and figures go.
        data: the dataset (default: the first run's own).
        split: the images measured (``test``; ``val`` to keep the test set untouched).
        max_images: at most this many of them, the same share of every class.
        bank_images: at most this many training images as the k-NN bank.
        batch_size: CKA minibatch size (at least 4; the same batches for every model).
        knn_k: the k-NN probe's neighbours.
        knn_temperature: the temperature of its vote.
        reinit: run the re-initialisation robustness check (the slowest measurement).
        seed: seeds the fresh random draw of the re-initialisation check.

    Raises:
        ConfigError: no runs, or an architecture cxrlab cannot split into units.
        CheckpointError: a folder is not a finished run, or runs with other splits, input
            sizes, classes or lungs modes than the first (they are measured on one
            preparation of the same images).
    """
    if not runs:
        raise ConfigError("analyze reuse needs at least one run folder")
    paths = [Path(p) for p in runs]
    cards = [load_card(p) for p in paths]  # checked before any model is loaded
    check_members(paths, cards, "a layer analysis compares models on the same images")
    imgs = _measured_images(paths[0], data, split, max_images, bank_images, batch_size, device,
                            progress)  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    grams: dict[str, list[torch.Tensor]] = {}  # model key -> per batch (U, n, n)
    table: list[dict[str, Any]] = []
    run_rows: list[dict[str, Any]] = []
    unit_names: dict[str, list[str]] = {}
    for path, name in tqdm(list(zip(paths, _names(paths))), desc="Runs",
                           disable=not progress or None, unit="run"):  # fmt: skip
        run = _load(path, name)  # one run's models in memory at a time
        unit_names[run.name] = list(run.model.unit_names)
        m = _measure(run, imgs, reinit, seed)
        grams[run.name] = m.own
        if m.start:
            grams[run.name + "#init"] = m.start
        knn = _knn(run, imgs, m.pooled, knn_k, knn_temperature, batch_size)
        info, rows, note = _rows(run, m, knn, len(imgs.rows))
        run_rows.append(info)
        table += rows
        notes += note
        del run, m
    pairs = _pairs(unit_names, run_rows, grams)
    summary = transfer_summary(run_rows, seed=seed)
    result = ReuseResult(out, run_rows, table, pairs, summary, notes)
    write_reuse(result, n_images=len(imgs.rows), split=split, bank=len(imgs.bank_rows), k=knn_k)
    return result


@dataclass
class _Images:
    """The measured images (the same batches for every model) and the k-NN bank."""

    array: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    bank_rows: np.ndarray
    bounds: list[tuple[int, int]]
    device: torch.device

    @property
    def y(self) -> torch.Tensor:
        return torch.from_numpy(self.labels[self.rows])

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """``(B, 1, H, W)`` uint8 images of ``rows`` on the device."""
        return torch.from_numpy(np.ascontiguousarray(self.array[rows]))[:, None].to(self.device)


def _measured_images(first: Path, data: Any, split: str, max_images: int | None,
                     bank_images: int | None, batch_size: int, device: str,
                     progress: bool) -> _Images:  # fmt: skip
    """The runs' data as the first run was trained (size, lungs), and the rows measured."""
    # the run's own split (not every image): its training images are the k-NN bank
    prepared = open_run(first).prepare(data, "train", progress=progress)
    labels = np.asarray(prepared.split.labels(), dtype=np.int64)
    rows = _stratified_rows(np.array(prepared.split.indices(split)), labels, max_images)
    bank_rows = _stratified_rows(np.array(prepared.split.indices("train")), labels, bank_images)
    return _Images(prepared.images.array, labels, rows, bank_rows,
                   batch_bounds(len(rows), batch_size), resolve_device(device))  # fmt: skip


@dataclass
class _Measured:
    """One run's activations on the measured images, and its re-initialisation scores."""

    own: list[torch.Tensor]  # per batch: (U, n, n) Grams of the trained model's units
    start: list[torch.Tensor]  # the same for its starting weights (empty without them)
    pooled: list[list[torch.Tensor]]  # per unit, per batch: pooled features (k-NN queries)
    accuracy: float
    shared: int  # leading units bit for bit the starting weights
    reset_ok: dict[str, np.ndarray] | None  # per unit: right answers with it reset


def _measure(run: _Loaded, imgs: _Images, reinit: bool, seed: int) -> _Measured:
    """Every unit's Gram (trained and starting weights), pooled features, accuracy, and the
    accuracy with each unit reset to its starting or to fresh random weights."""
    model, chain, y = run.model.to(imgs.device).eval(), run.chain, imgs.y
    n_units, shared = len(run.names), _same_prefix(run)
    if run.init is not None:
        run.init.to(imgs.device).eval()
    init_chain = stages(run.init.net, get_spec(run.card.model).arch) if run.init else None
    fresh = _fresh_state(run.card, seed) if reinit and run.init is not None else None
    init_state = run.init.net.state_dict() if run.init is not None else None
    own, start = [], []
    pooled: list[list[torch.Tensor]] = [[] for _ in range(n_units)]
    correct = 0
    reset_ok = {"init": np.zeros(n_units), "random": np.zeros(n_units)}
    for a, b in imgs.bounds:
        x = model.preprocess(imgs.batch(imgs.rows[a:b]))
        outs = _run_units(chain, x)
        own.append(torch.stack([gram(h) for h in outs]))
        for u, h in enumerate(outs):
            pooled[u].append(_pool(h).float().cpu())
        pred = chain[2](chain[1](outs[-1])).argmax(1).cpu()
        ok = int((pred == y[a:b]).sum())
        correct += ok
        if init_chain is not None:
            h0 = x if shared == 0 else outs[shared - 1]
            later = _run_units(init_chain, h0, shared) if shared < n_units else []
            start.append(torch.stack([gram(h) for h in outs[:shared]] + [gram(h) for h in later]))
        if fresh is None or init_state is None:
            continue
        for u in range(n_units):
            h_in = x if u == 0 else outs[u - 1]
            for variant, source in (("init", init_state), ("random", fresh)):
                if variant == "init" and u < shared:
                    reset_ok[variant][u] += ok  # an unchanged unit: the same predictions
                    continue
                with _Swap(model, run.names[u], source):
                    p = _logits(chain, h_in, u).argmax(1).cpu()
                reset_ok[variant][u] += int((p == y[a:b]).sum())
    return _Measured(own, start, pooled, correct / len(imgs.rows), shared,
                     reset_ok if fresh is not None else None)  # fmt: skip


def _knn(run: _Loaded, imgs: _Images, pooled: list[list[torch.Tensor]], k: int,
         temperature: float, batch_size: int) -> list[float]:  # fmt: skip
    """Per unit, the k-NN probe's accuracy: the training images through the same model as
    the bank, the measured images as queries."""
    bank: list[list[torch.Tensor]] = [[] for _ in pooled]
    for a, b in batch_bounds(len(imgs.bank_rows), max(batch_size, 4)):
        x = run.model.preprocess(imgs.batch(imgs.bank_rows[a:b]))
        for u, h in enumerate(_run_units(run.chain, x)):
            bank[u].append(_pool(h).float().cpu())
    yb = torch.from_numpy(imgs.labels[imgs.bank_rows])
    return [knn_accuracy(torch.cat(bank[u]), yb, torch.cat(pooled[u]), imgs.y, k=k,
                         temperature=temperature, num_classes=len(run.card.classes))
            for u in range(len(pooled))]  # fmt: skip


def _rows(run: _Loaded, m: _Measured, knn: list[float],
          n_images: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:  # fmt: skip
    """The run's row, its per-unit rows (a missing number null with its reason), notes."""
    n_units = len(run.names)
    change = weight_change(run.model, run.init) if run.init is not None else [np.nan] * n_units
    cka_init = list(np.diag(_cka(m.own, m.start))) if m.start else [np.nan] * n_units
    notes, why_null = [], {}
    if run.init is None:
        why = f"{run.init_note}; train with --keep-init"
        notes.append(f"{run.name}: {why}: CKA to its initialisation, weight change and "
                     "re-initialisation left out")  # fmt: skip
        why_null = dict.fromkeys(("cka_to_init", "weight_change", "reset_to_init_accuracy",
                                  "reset_to_random_accuracy"), why)  # fmt: skip
    elif run.init_note:
        notes.append(f"{run.name}: {run.init_note}")
    if run.init is not None and m.reset_ok is None:
        skipped = "the re-initialisation check was not run (reinit=False)"
        why_null |= dict.fromkeys(("reset_to_init_accuracy", "reset_to_random_accuracy"), skipped)
    cfg = run.card.training.config
    info = {
        "run": run.name,
        "path": str(run.path),
        "model": run.card.model,
        "init": run.kind,
        "freeze": cfg.freeze,
        "train_size": float(cfg.train_size),
        "seed": run.card.seed,
        "accuracy": m.accuracy,
        "units_shared_with_init": m.shared,
    }
    reset = m.reset_ok or {}
    rows = [{
        **{k: info[k] for k in ("run", "model", "init", "freeze", "train_size", "seed")},
        "unit_index": u,
        "unit": run.model.unit_names[u],
        "cka_to_init": float(cka_init[u]),
        "weight_change": float(change[u]),
        "knn_accuracy": knn[u],
        "accuracy": m.accuracy,
        "reset_to_init_accuracy": reset["init"][u] / n_images if reset else np.nan,
        "reset_to_random_accuracy": reset["random"][u] / n_images if reset else np.nan,
        **({"why_null": why_null} if why_null else {}),
    } for u in range(n_units)]  # fmt: skip
    return info, rows, notes


def _cka(a: list[torch.Tensor], b: list[torch.Tensor]) -> np.ndarray:
    """``(U_a, U_b)`` CKA between every unit of two models, from per-batch Grams."""
    xy = sum(hsic_matrix(ga, gb) for ga, gb in zip(a, b))
    xx = sum(torch.diagonal(hsic_matrix(g, g)) for g in a)
    yy = sum(torch.diagonal(hsic_matrix(g, g)) for g in b)
    return cka_from_hsic(xy.numpy(), xx.numpy(), yy.numpy())  # type: ignore[union-attr]


def _pairs(
    unit_names: dict[str, list[str]],
    info: list[dict[str, Any]],
    grams: dict[str, list[torch.Tensor]],
) -> list[dict[str, Any]]:
    """CKA matrices between runs that differ only in their initialisation."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(info):
        groups[(r["model"], r["freeze"], r["train_size"], r["seed"])].append(i)
    out = []
    for members in groups.values():
        for i, j in ((i, j) for i in members for j in members if i < j):
            a, b = info[i], info[j]
            if a["init"] == b["init"]:
                continue
            m = _cka(grams[a["run"]], grams[b["run"]])
            out.append(
                {
                    "a": a["run"],
                    "b": b["run"],
                    "a_init": a["init"],
                    "b_init": b["init"],
                    "model": a["model"],
                    "freeze": a["freeze"],
                    "train_size": a["train_size"],
                    "seed": a["seed"],
                    "units": unit_names[a["run"]],
                    "cka": m.tolist(),
                }
            )
    return out


def _boot_means(accs: list[float], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Bootstrap means of one arm's seeds (resampled on their own)."""
    v = np.array(accs)
    return v[rng.integers(0, len(v), (resamples, len(v)))].mean(1)


def _ci(values: np.ndarray, arms: dict[str, list[float]], *kinds: str) -> list[float] | None:
    """The 95 % bootstrap interval of ``values``, or ``None`` where one of ``kinds`` has a
    single seed (no replication, no interval)."""
    if not all(len(arms[k]) >= 2 for k in kinds):
        return None
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def transfer_summary(
    runs: list[dict[str, Any]], *, resamples: int = 5000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per model, freezing and training size: the gain of weight transfer over random init,
    and the share of it recovered by statistics transfer, with 95 % bootstrap intervals
    over seeds (each arm's seeds resampled on their own); where there are X-ray pretrained
    arms, what X-ray pretraining adds: ``xr_wt_gain`` (XR-WT over WT, pretraining continued
    from ImageNet against ImageNet alone) and ``xr_ri_gain`` (XR-RI over RI, pretraining from
    scratch against none), each with its interval.

    ``share = (ST - RI) / (WT - RI)``; it is only meaningful when the gain is clearly above
    zero, which the interval of the gain shows. With one seed in an arm there is no
    interval (``None``).
    """
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        groups[(r["model"], r["freeze"], r["train_size"])][r["init"]].append(r["accuracy"])
    rng = np.random.default_rng(seed)
    out = []
    for (model, freeze, size), arms in sorted(groups.items()):
        row: dict[str, Any] = {"model": model, "freeze": freeze, "train_size": size}
        for kind, accs in sorted(arms.items()):
            row[f"{kind}_accuracy"] = float(np.mean(accs))
            row[f"{kind}_seeds"] = len(accs)
        boot = {k: _boot_means(v, rng, resamples) for k, v in sorted(arms.items())}
        for key, (better, base) in {"xr_wt_gain": ("XR-WT", "WT"),
                                    "xr_ri_gain": ("XR-RI", "RI")}.items():  # fmt: skip
            if better in arms and base in arms:
                row[key] = row[f"{better}_accuracy"] - row[f"{base}_accuracy"]
                row[f"{key}_ci"] = _ci(boot[better] - boot[base], arms, better, base)
        if "WT" in arms and "RI" in arms:
            gain = boot["WT"] - boot["RI"]
            row["gain"] = row["WT_accuracy"] - row["RI_accuracy"]
            row["gain_ci"] = _ci(gain, arms, "WT", "RI")
            if "ST" in arms:
                with np.errstate(divide="ignore", invalid="ignore"):
                    share = (boot["ST"] - boot["RI"]) / gain
                share = share[np.isfinite(share)]
                point = row["gain"]
                row["st_share"] = (
                    (row["ST_accuracy"] - row["RI_accuracy"]) / point if point else None
                )
                row["st_share_ci"] = _ci(share, arms, "WT", "ST", "RI") if len(share) else None
        out.append(row)
    return out
