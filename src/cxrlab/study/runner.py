"""Running a study: every cell on the same saved split, resumable, shardable.

Folder layout (``OUT``)::

    study.toml            the study file as given
    study.json            the resolved cells and overrides
    split.csv             the one split every cell trains and tests on
    runs/<cell id>/       one ``cxrlab train`` run folder per cell
    runs/<cell id>/external/<set>.json   the cell scored on each external set ([study] external)
    results.csv, summary.md, comparisons.csv, figures/, report.html   (the report)

Re-running the same command skips finished cells and resumes an interrupted one from its
checkpoint; an external set added to a finished study is scored without retraining.
``cell`` and ``shard`` select a subset, so several processes or machines can share one
folder: each cell is claimed with a lock file before it runs. ``jobs`` runs several cells at
once on one machine, each in its own process with its share of the CPU cores: small cells
(the demo's 64 px images) use two cores better as two one-thread cells than as one
two-thread cell (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import run_files
from ..data import PreparedData, prepare_data
from ..errors import ConfigError, CxrlabError
from ..freeze import parse_freeze
from ..runs.external_sets import ExternalSet
from ..runs.folder import RunDir
from ..runs.scoring import open_run
from ..shift.reference import store_reference
from ..training import train
from ..utils import atomic_write_text, usable_cpus, write_json
from .final import choose_final
from .study_config import ADAPTED_DIR, Cell, StudyConfig

__all__ = ["StudyProgress", "parse_shard", "run_study", "select_cells"]


@dataclass(frozen=True)
class StudyProgress:
    """What one call of :func:`run_study` did."""

    out: Path
    total: int
    finished: int  # cells of the whole study with results
    ran: list[str]
    skipped: list[str]  # already finished
    busy: list[str]  # locked by another process

    @property
    def complete(self) -> bool:
        return self.finished == self.total


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; shards are numbered from 1."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = 0
    if not (n >= 1 and 1 <= i <= n):
        raise ConfigError(f"--shard must look like i/n with 1 <= i <= n, got {text!r}")
    return i, n


def select_cells(
    cells: Sequence[Cell], cell_ids: Sequence[str] = (), shard: str | None = None
) -> list[Cell]:
    """The cells to run: those named (ids or id prefixes), then every n-th for a shard."""
    chosen = list(cells)
    if cell_ids:
        chosen = [c for c in cells if any(c.id == w or c.id.startswith(w + "-") for w in cell_ids)]
        missing = [w for w in cell_ids if not any(c.id == w or c.id.startswith(w + "-")
                                                  for c in cells)]  # fmt: skip
        if missing:
            raise ConfigError(
                f"No cell {missing[0]!r} in this study; cells are: {', '.join(c.id for c in cells)}"
            )
    if shard:
        i, n = parse_shard(shard)
        chosen = [c for k, c in enumerate(chosen) if k % n == i - 1]
    return chosen


def _claim(lock: Path) -> bool:
    """Create ``lock`` exclusively; take over a lock left by a dead process on this host."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            host, _, pid = lock.read_text().partition(":")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)
                continue
            return False
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_same_settings(cell: Cell, run_dir: Path) -> None:
    import json

    cfg_file = run_dir / run_files.CONFIG
    if not cfg_file.exists():
        return
    diff = cell.config.differences(json.loads(cfg_file.read_text())["config"])
    if diff:
        k, then, now = diff[0]
        raise ConfigError(
            f"Cell {cell.id} in {run_dir.parent.parent} was run with {k}="
            f"{then!r}, the study now asks for {k}={now!r}; use a new "
            "--out for changed settings"
        )


def _needs_audit(study: StudyConfig, run_dir: Path) -> bool:
    cell_checks = _cell_checks(study)
    return bool(cell_checks) and not (run_dir / run_files.AUDIT_DIR / run_files.AUDIT_JSON).exists()


def _cell_checks(study: StudyConfig) -> tuple[str, ...]:
    """The audit checks run on each cell (the probes look at the data: once per study)."""
    if study.audit is None:
        return ()
    return tuple(c for c in study.audit.checks if c != "probes")


def _audit_cell(study: StudyConfig, run_dir: Path, progress: bool) -> None:
    from ..audit import run_audit

    assert study.audit is not None
    tqdm.write(f"== auditing {run_dir.name}")
    run_audit(run_dir, split=study.audit.split, out=run_dir / run_files.AUDIT_DIR,
              checks=_cell_checks(study), cam_images=study.audit.cam_images or None,
              progress=progress)  # fmt: skip


def _probe_data(study: StudyConfig, out: Path, progress: bool) -> None:
    """The acquisition probes of the study's split, once (every cell shares the data)."""
    from ..audit import run_audit

    assert study.audit is not None
    target = out / run_files.AUDIT_DIR
    if (target / run_files.AUDIT_JSON).exists():
        return
    done = next((out / "runs" / c.id for c in study.cells
                 if RunDir(out / "runs" / c.id).finished), None)  # fmt: skip
    lock = out / "runs" / "data-probes.lock"
    if done is None or not _claim(lock):
        return
    try:
        run_audit(done, split=study.audit.split, out=target, checks=("probes",),
                  progress=progress)  # fmt: skip
    finally:
        lock.unlink(missing_ok=True)


def _analyze(study: StudyConfig, out: Path, progress: bool) -> None:
    """The feature-reuse analysis over the study's runs (per cell and seed, the chosen
    trial), once; again only when the set of runs changed."""
    from ..analysis import analyze_reuse
    from .report.results import collect_results
    from .report.reuse import ANALYSIS_DIR, read_reuse

    assert study.analysis is not None
    runs = [out / "runs" / r["cell"] for r in collect_results(study, out).rows]
    done = read_reuse(out)
    if done is not None and sorted(r["path"] for r in done["runs"]) == sorted(map(str, runs)):
        return
    lock = out / "runs" / "analysis.lock"
    if not _claim(lock):
        return
    try:
        a = study.analysis
        tqdm.write(f"== feature-reuse analysis of {len(runs)} runs")
        analyze_reuse(runs, out=out / ANALYSIS_DIR, split=a.split,
                      max_images=a.max_images or None, bank_images=a.bank_images or None,
                      batch_size=a.batch_size, reinit=a.reinit, progress=progress)  # fmt: skip
    finally:
        lock.unlink(missing_ok=True)


class _Externals:
    """The study's external sets, each prepared once per input size and lungs mode, and
    every cell scored on each (see :mod:`cxrlab.runs.external_sets`). A set that cannot be
    read is one line, once, and the study goes on with the others."""

    def __init__(self, study: StudyConfig, classes: Sequence[str], own: str,
                 progress: bool) -> None:  # fmt: skip
        self.sets = study.settings.external
        self.classes = list(classes)
        self.own = own  # the fingerprint of the study's own data
        self.progress = progress
        self.failed: dict[str, str] = {}
        self._prepared: dict[tuple[Any, ...], PreparedData] = {}

    def _prepare(self, ext: ExternalSet, cell: Cell, run_dir: Path) -> PreparedData | None:
        """The set prepared as the finished cell's images were (its run's preparation is the
        cache key: cells that prepare alike share one preparation of the set)."""
        from ..runs.external_sets import prepare_external

        if ext.name in self.failed:
            return None
        try:
            preparation = open_run(run_dir).preparation(masks_from=cell.config.masks_from)
        except CxrlabError as e:
            tqdm.write(f"external {ext.name}: {cell.id}: skipped: {e}")
            return None
        key = (ext.name, *preparation.replace(doubtful="skip").key)
        if key not in self._prepared:
            try:
                prepared = prepare_external(ext, self.classes, preparation,
                                            progress=self.progress)  # fmt: skip
                if prepared.report.fingerprint() == self.own:
                    raise ConfigError(
                        f"{ext.data} is the study's own data; an external set must be other data"
                    )
                self._prepared[key] = prepared
            except CxrlabError as e:
                self.failed[ext.name] = str(e)
                tqdm.write(f"external {ext.name}: skipped for this study run: {e}")
                return None
        return self._prepared[key]

    def missing(self, cell: Cell, run_dir: Path) -> bool:
        """Whether a set has no current result for this finished cell."""
        from ..runs.external_sets import is_current

        return any(
            (prepared := self._prepare(ext, cell, run_dir)) is not None
            and not is_current(run_dir, ext, prepared)
            for ext in self.sets
        )

    def evaluate(self, cell: Cell, run_dir: Path) -> None:
        from ..runs.external_sets import describe_result, evaluate_external

        for ext in self.sets:
            prepared = self._prepare(ext, cell, run_dir)
            if prepared is None:
                continue
            try:
                result, computed = evaluate_external(run_dir, ext, prepared,
                                                     progress=self.progress)  # fmt: skip
            except CxrlabError as e:
                tqdm.write(f"external {ext.name}: {cell.id}: skipped: {e}")
                continue
            if computed:
                tqdm.write(f"{cell.id}: {describe_result(result)}")


def _split_for(cell: Cell, shared: PreparedData, out: Path) -> Path:
    """The study's split, or for a cell that holds a source out, the same split without
    that source's images (``splits/without-<source>.csv``): every cell draws nothing anew."""
    held = cell.config.holdout_source
    if not held:
        return out / run_files.SPLIT
    path = out / "splits" / f"without-{held}.csv"
    if not path.exists():
        split = shared.split
        gone = {r.path for i, r in enumerate(split.records) if split.source_of(i) == held}
        path.parent.mkdir(parents=True, exist_ok=True)
        split.without(gone).save(path)
    return path


def _run_parallel(study: StudyConfig, todo: list[Cell], out: Path, splits: dict[str, Path],
                  classes: Sequence[str], own: str, log: str | None, jobs: int,
                  progress: bool) -> Iterator[tuple[str, str]]:  # fmt: skip
    """Run ``todo`` ``jobs`` cells at a time in worker processes; yield ``(cell id, outcome)``
    as cells finish. The first error stops the cells not yet started and is raised."""
    threads = max(1, usable_cpus() // jobs)
    tqdm.write(f"Running {len(todo)} cells, {jobs} at a time ({threads} CPU thread(s) each)")
    order = sorted(todo, key=_expected_cost, reverse=True)  # less idle time at the end
    context = multiprocessing.get_context("spawn")  # a clean torch in every worker
    bar = tqdm(total=len(todo), desc=f"study {study.settings.name}", unit="cell",
               disable=not progress or None)  # fmt: skip
    with bar, ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                  initargs=(threads, study, classes, own)) as pool:  # fmt: skip
        pending = {pool.submit(_run_cell_in_worker, cell, out, splits[cell.id], log): cell.id
                   for cell in order}  # fmt: skip
        while pending:
            finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                cell_id = pending.pop(future)
                if future.exception() is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise future.exception()  # type: ignore[misc]
                bar.update()
                yield cell_id, future.result()


def _finished(study: StudyConfig, cell: Cell, out: Path) -> bool:
    """Whether a cell has nothing left to do that can be told without preparing external
    sets: trained and audited, in a study without external sets."""
    run_dir = out / "runs" / cell.id
    return (RunDir(run_dir).finished and not _needs_audit(study, run_dir)
            and not study.settings.external)  # fmt: skip


def _expected_cost(cell: Cell) -> float:
    """A rough size of a cell's training, to start the longest first: epochs times the part
    of the network that runs forward and backward every epoch (a frozen part's features are
    computed once; a head alone costs next to nothing)."""
    policy = parse_freeze(cell.config.freeze)
    share = {"none": 1.0, "head": 0.05, "fraction": 1.0 - policy.value}.get(policy.kind, 0.5)
    return cell.config.epochs * share


#: A worker process's study and its external sets, set once by :func:`_init_worker`, so a
#: set is prepared once per worker, not once per cell.
_worker: dict[str, object] = {}


def _init_worker(threads: int, study: StudyConfig, classes: Sequence[str], own: str) -> None:
    import torch

    torch.set_num_threads(threads)
    _worker["study"] = study
    _worker["externals"] = _Externals(study, classes, own, progress=False)


class _Prefixed(io.TextIOBase):
    """A text stream that writes every line to ``target`` with ``prefix`` in front."""

    def __init__(self, target: io.TextIOBase, prefix: str) -> None:
        self.target, self.prefix, self.buffer = target, prefix, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.target.write(f"{self.prefix}{line}\n")
        self.target.flush()
        return len(text)

    def flush(self) -> None:
        if self.buffer:
            self.write("\n")


def _run_cell_in_worker(cell: Cell, out: Path, split_file: Path, log: str | None) -> str:
    """One cell in a worker process; its output lines start with ``[<cell id>]``."""
    study, externals = _worker["study"], _worker["externals"]
    prefix = f"[{cell.id}] "
    with contextlib.redirect_stdout(_Prefixed(sys.stdout, prefix)) as o, \
            contextlib.redirect_stderr(_Prefixed(sys.stderr, prefix)) as e:  # fmt: skip
        try:
            return _run_cell(study, cell, out, split_file, externals, log,  # type: ignore[arg-type]
                             progress=False)  # fmt: skip
        finally:
            o.flush()
            e.flush()


def _write_study(study: StudyConfig, out: Path) -> None:
    """``study.toml`` as given and ``study.json``: the settings and every expanded cell."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if study.source:
        atomic_write_text(out / "study.toml", study.source)
    write_json(out / "study.json", {
        "settings": study.settings.__dict__
        | {"external": [e.to_dict() for e in study.settings.external]},
        "train": study.train, "overrides": study.overrides,
        "cells": [{"id": c.id, "label": c.label, "model": c.model, "seed": c.seed,
                   "config": c.config.to_dict()} for c in study.cells],
    })  # fmt: skip


def _shared_split(study: StudyConfig, out: Path, progress: bool) -> PreparedData:
    """The study's data and its one split (``split.csv``), made or checked before any cell
    starts."""
    first = study.cells[0].config
    return prepare_data(first.data, split_file=out / run_files.SPLIT, progress=progress,
                        **first.split_options())  # fmt: skip


def _run_cell(study: StudyConfig, cell: Cell, out: Path, split_file: Path,
              externals: _Externals, log: str | None, progress: bool) -> str:  # fmt: skip
    """Train one cell (or resume it), audit it and score it on the external sets, as far as
    still needed: ``"ran"``, ``"skipped"`` (already done) or ``"busy"`` (another process)."""
    run_dir = out / "runs" / cell.id
    _check_same_settings(cell, run_dir)
    trained = RunDir(run_dir).finished
    if (trained and not _needs_audit(study, run_dir) and not externals.missing(cell, run_dir)
            and not _adaptations(study, cell.id, out)):  # fmt: skip
        return "skipped"
    lock = out / "runs" / f"{cell.id}.lock"
    if not _claim(lock):
        tqdm.write(f"{cell.id}: running in another process ({lock.read_text()}); skipped")
        return "busy"
    try:
        if not trained:
            resume = (run_dir / run_files.CHECKPOINT).exists()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)  # started but not one epoch done: start again
            tqdm.write(f"== {cell.id} ({cell.label}){' resuming' if resume else ''}")
            cfg = cell.config.replace(split_file=str(split_file),
                                      progress=progress)  # fmt: skip
            if log is not None:
                cfg = cfg.replace(log=log)
            if cfg.log not in ("", "none"):  # one place per study: HParams compares cells
                cfg = cfg.replace(
                    log_dir=cfg.log_dir or str(out / "tracking"),
                    log_name=cell.id,
                    log_experiment=cfg.log_experiment or study.settings.name,
                )
            train(cfg, run_dir, resume=resume)
            tqdm.write(store_reference(run_dir, device=cfg.device, progress=progress))
        if _needs_audit(study, run_dir):
            _audit_cell(study, run_dir, progress)
        externals.evaluate(cell, run_dir)
        _adapt_cell(study, cell.id, run_dir, out, progress)
    finally:
        lock.unlink(missing_ok=True)
    return "skipped" if trained else "ran"


def _adaptations(study: StudyConfig, cell_id: str,
                 out: Path) -> list[tuple[Any, int, int, Path]]:  # fmt: skip
    """The ``[[study.adapt]]`` runs of a cell not made yet: (settings, labels, draw, folder)."""
    todo = []
    for spec in study.settings.adapt:
        for n, draw, name in spec.runs():
            dest = out / ADAPTED_DIR / cell_id / name
            if not (dest / run_files.ADAPTATION).is_file():
                todo.append((spec, n, draw, dest))
    return todo


def _adapt_cell(study: StudyConfig, cell_id: str, run_dir: Path, out: Path,
                progress: bool) -> None:  # fmt: skip
    """Adapt a finished cell to each ``[[study.adapt]]`` site (``cxrlab adapt``), as far as
    still needed; a site that cannot be adapted to is one line and the study goes on."""
    from ..adapt import adapt_run

    sets = {e.name: e for e in study.settings.external}
    failed: set[str] = set()
    for spec, n, draw, dest in _adaptations(study, cell_id, out):
        if spec.site in failed:
            continue
        ext = sets[spec.site]
        if not ext.data:
            tqdm.write(f"adapt {spec.site}: no folder given (--external {spec.site}=PATH); skipped")
            failed.add(spec.site)
            continue
        shutil.rmtree(dest, ignore_errors=True)  # a partial one from an interrupted study
        try:
            rec = adapt_run(run_dir, ext.data, dest, class_map=dict(ext.class_map), labels=n,
                            method=spec.method, seed=draw, test_share=spec.test_share,
                            split_seed=spec.split_seed, progress=progress).record  # fmt: skip
        except CxrlabError as e:
            tqdm.write(f"adapt {spec.site}: {cell_id}: skipped: {e}")
            shutil.rmtree(dest, ignore_errors=True)
            failed.add(spec.site)
            continue
        before, after = rec["site_test"]["before"], rec["site_test"]["after"]
        if before and after:
            tqdm.write(f"adapt {spec.site} (N={n}, draw {draw}): {cell_id}: accuracy "
                       f"{before['accuracy']:.4f} -> {after['accuracy']:.4f}")  # fmt: skip


def run_study(
    study: StudyConfig,
    out: str | os.PathLike[str],
    *,
    cells: Sequence[str] = (),
    shard: str | None = None,
    progress: bool = True,
    log: str | None = None,
    jobs: int | None = None,
) -> StudyProgress:
    """Run (or continue) the study's cells in ``out``.

    Args:
        study: the parsed study file (see :func:`~cxrlab.study.load_study_config`).
        out: the study folder; created if needed, reused if it exists.
        cells: only these cell ids (or id prefixes such as ``resnet18-in1k-head``).
        shard: ``"i/n"``: only every n-th of the selected cells, starting at the i-th.
        progress: show progress bars.
        log: trackers for every cell (overrides ``[train] log``); they write to
            ``<out>/tracking`` (TensorBoard: one folder per cell id; MLflow: ``mlflow.db``,
            the study's name as experiment).
        jobs: cells run at once, each in its own process with ``cores // jobs`` torch
            threads (default: ``[study] jobs``, else 1). Their output lines carry the cell
            id; the longest cells start first.
    """
    if log is not None:  # a bad or missing tracker fails before any data is prepared
        from ..engine.tracking import require_trackers

        require_trackers(log)
    if not study.settings.data:
        raise ConfigError(
            "This study names no dataset ([study] data is empty): pass "
            "--data PATH/TO/COVID-19_Radiography_Dataset"
        )
    out = Path(out)
    _write_study(study, out)
    shared = _shared_split(study, out, progress)  # one split for every cell, made first
    todo = select_cells(study.cells, cells, shard)
    splits = {cell.id: _split_for(cell, shared, out) for cell in todo}
    classes, own = shared.classes, shared.report.fingerprint()
    done: dict[str, list[str]] = {"ran": [], "skipped": [], "busy": []}
    jobs = min(jobs or study.settings.jobs, len(todo)) or 1
    if jobs > 1:  # finished cells are skipped here: no worker starts for a finished study
        already = [c for c in todo if _finished(study, c, out)]
        done["skipped"] += [c.id for c in already]
        todo = [c for c in todo if c not in already]
        jobs = min(jobs, len(todo))
    if jobs > 1:
        for cell_id, outcome in _run_parallel(study, todo, out, splits, classes, own, log,
                                              jobs, progress):  # fmt: skip
            done[outcome].append(cell_id)
    else:
        externals = _Externals(study, classes, own, progress)
        bar = tqdm(todo, desc=f"study {study.settings.name}", unit="cell",
                   disable=not progress or None)  # fmt: skip
        for cell in bar:
            bar.set_postfix_str(cell.id)
            outcome = _run_cell(study, cell, out, splits[cell.id], externals, log, progress)
            done[outcome].append(cell.id)
    if study.audit is not None and "probes" in study.audit.checks:
        _probe_data(study, out, progress)
    finished = sum(RunDir(out / "runs" / c.id).finished for c in study.cells)
    if study.analysis is not None and study.analysis.reuse and finished == len(study.cells):
        _analyze(study, out, progress)
    if finished == len(study.cells):
        choose_final(study, out)
    return StudyProgress(out, len(study.cells), finished, done["ran"], done["skipped"],
                         done["busy"])  # fmt: skip
