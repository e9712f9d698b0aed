"""Would a run have seen the source it never trained on coming, and does adapting help there?

Reproduces the held-out numbers of docs/shift.md from a finished study whose cells hold
sources out (``holdout_source``, e.g. configs/robust.toml):

    python scripts/heldout_shift.py runs/robust --cell nokids-b25dcf [--rescore]

For each finished run that held a source out (and whose id contains a ``--cell`` text):

1. ``--rescore``: scores the held-out source again (``holdout.json``), as a run trained now
   would: patients kept together in its split, other images of the run's patients left out,
   and the shift report of its validation and test splits.
2. Reads from ``holdout.json``: accuracy, per-class recall, each shift signal's AUROC
   (held-out images against the run's own test images), the batch test's power and false
   alarms, and the accuracy estimated without labels against the true one.
3. Adapts the run without labels (``cxrlab adapt``'s methods) to the held-out source's
   validation split (half read, half scored: where a method is chosen) and to its test split
   (half read, half scored: what is reported), and scores both halves before and after.

4. ``--labels 0 5 10 25 50 --draws 3``: adapts it to the held-out source's test split with N
   labelled images per class (``cxrlab adapt --labels N``; draws 0..D-1 of the labelled
   images, half of the split read, the other half scored), and scores, on that scored half,
   the study's run of the same seed that trained with the source from the start
   (``--with-source TEXT``, the text of its run id, e.g. ``full-cdd637``; ``--all-seeds``:
   every seed of it): calibrated probabilities, one plain view, for both, on the scored
   images that none of the compared runs saw (a run trained with the source saw part of the
   source's split drawn here, and copies of the adapted runs' training images).

Prints a Markdown summary over the runs (mean ± std over seeds) and writes every number to
``<study>/heldout_shift.json``, each run as soon as it is measured (runs measured by an
earlier call are kept; ``--summary``
prints the tables of what it holds). Nothing here chooses anything on a test split: the signals
and methods are compared on the validation columns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab import run_files
from cxrlab.adapt import METHODS, adapt_run
from cxrlab.data import prepare_data
from cxrlab.errors import CxrlabError
from cxrlab.evaluation import classification_metrics
from cxrlab.runs import open_run
from cxrlab.runs.folder import load_card, load_run_model
from cxrlab.runs.heldout import score_holdout, split_sources
from cxrlab.shift import SIGNALS
from cxrlab.shift.reference import calibrated_probs
from cxrlab.shift.report import holdout_shift

warnings.simplefilter("ignore")


def _split_folders(run_dir: Path, config: Any, tmp: Path) -> dict[str, Path]:
    """The held-out source's validation and test splits as class folders of links (drawn as
    :func:`cxrlab.runs.heldout.score_holdout` draws them)."""
    _, held = split_sources(config)
    data, class_map, sources_csv, patients = held
    prepared = prepare_data(data, class_map=class_map, sources_csv=sources_csv,
                            split_seed=config.split_seed, ratios=config.ratios,
                            near_copies=config.near_copies, patients=patients,
                            image_size=config.image_size, progress=False)  # fmt: skip
    out = {}
    for split in ("val", "test"):
        folder = tmp / run_dir.name / split
        for i in prepared.split.indices(split):
            r = prepared.split.records[i]
            link = folder / r.label / Path(r.path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((prepared.report.root / r.path).resolve(), link)
        out[split] = folder
    return out


def _adaptation(run_dir: Path, folders: dict[str, Path], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, folder in folders.items():
        for method in (m for m in METHODS if m != "none"):
            dest = tmp / f"{run_dir.name}-{split}-{method.replace('+', '_')}"
            shutil.rmtree(dest, ignore_errors=True)
            rec = adapt_run(run_dir, folder, dest, method=method, progress=False).record
            out.setdefault(split, {})[method] = rec["site_test"]
    return out


KEYS = ("n", "accuracy", "macro_f1", "ece", "nll")


def _prepared(folder: Path, image_size: int) -> Any:
    """A class folder as one split of everything (its images decoded at ``image_size``)."""
    return prepare_data(folder, image_size=image_size, split_seed=0, ratios=(1.0, 0.0, 0.0),
                        progress=False)  # fmt: skip


def _scores(run_dir: Path, prepared: Any, rows: list[int]) -> dict[str, Any]:
    """Calibrated, plain-view metrics of ``run_dir`` on the images of ``prepared`` at
    ``rows``."""
    model, card = load_run_model(run_dir)
    y = np.array([card.classes.index(prepared.split.records[i].label) for i in rows])
    probs = calibrated_probs(model, prepared.images.array[rows], card.temperature)
    m = classification_metrics(y, probs, card.classes)
    return {k: m[k] for k in KEYS}


def _held_out_from_all(runs: list[Path], prepared: Any, paths: list[str]) -> list[int]:
    """The rows of ``prepared`` at ``paths`` less every image one of ``runs`` is not held
    out from: copies of its training or validation images and other images of its patients.
    A run trained with the source saw part of the held-out source's split, drawn on that
    source alone."""
    where = {r.path: i for i, r in enumerate(prepared.split.records)}
    rows = [where[p] for p in paths]
    seen: set[str] = set()
    for run in runs:
        seen |= open_run(run).not_held_out(prepared, rows).paths
    return [i for i in rows if prepared.split.records[i].path not in seen]


def _labelled(run_dir: Path, folder: Path, labels: list[int], draws: int,
              with_source: list[Path], tmp: Path) -> list[dict[str, Any]]:  # fmt: skip
    """Adaptation with N labelled images per class, each N and draw; the runs trained with the
    source from the start (every seed given), all scored on the same images: the scored half
    less what any of them saw (``common``)."""
    out, dests, scored = [], [], []
    for n in labels:
        for draw in range(draws if n else 1):
            dest = tmp / f"{run_dir.name}-labels{n}-{draw}"
            shutil.rmtree(dest, ignore_errors=True)
            try:
                rec = adapt_run(run_dir, folder, dest, labels=n, seed=draw, progress=False).record
            except CxrlabError as e:  # e.g. more labels than a class holds in the pool
                print(f"   N={n} draw {draw}: {e}", flush=True)
                break
            site = [line.split(",") for line in (dest / "site_split.csv").read_text().splitlines()]
            scored = [r[0] for r in site[2:] if r[-1] == "test"]
            a = rec["adaptation"]
            row = {"labels": n, "draw": draw, "scope": a["scope"], "pool": a["pool"],
                   "before": rec["site_test"]["before"], "after": rec["site_test"]["after"],
                   "cv": a["changed"].get("fine_tune", {}).get("cv", {})}  # fmt: skip
            print(f"   N={n} draw {draw}: scope {a['scope'] or '-'}, accuracy "
                  f"{row['before']['accuracy']:.3f} -> {row['after']['accuracy']:.3f}",
                  flush=True)  # fmt: skip
            out.append(row)
            dests.append(dest)
    if not with_source or not scored:
        return out
    for other in with_source:
        while not (other / "metrics.json").is_file():  # still training: wait for it
            time.sleep(60)
    # the scored half is the same for every N and draw; every model is scored on its images
    # that none of the runs saw (the adapted runs' own numbers above leave out only what
    # their parent saw)
    prepared = _prepared(folder, load_card(run_dir).image_size)
    common = _held_out_from_all([run_dir, *with_source], prepared, scored)
    print(f"   {len(common)} of the {len(scored)} scored images held out from every run",
          flush=True)  # fmt: skip
    refs = {o.name: _scores(o, prepared, common) for o in with_source}
    for name, ref in refs.items():
        print(f"   trained with the source ({name}): accuracy {ref['accuracy']:.3f}", flush=True)
    seed = run_dir.name.rsplit("-s", 1)[-1]
    own = next((v for k, v in refs.items() if k.endswith(f"-s{seed}")), None)
    before = _scores(run_dir, prepared, common)
    for row, dest in zip(out, dests):
        row["common"] = {"before": before, "after": _scores(dest, prepared, common)}
        row["with_source"] = own
        row["with_source_seeds"] = refs
        shutil.rmtree(dest, ignore_errors=True)
    return out


def _labelled_summary(rows: list[dict[str, Any]]) -> str:
    have = [r for r in rows if r.get("labelled")]
    if not have:
        return ""
    lines = ["", f"Labelled adaptation on the held-out test split (half read, half scored; "
             f"{len(have)} run(s), mean ± std over runs x draws). Last two columns: on the "
             "scored images that no run compared saw (the run trained with the source saw "
             "part of the held-out source's split, drawn on that source alone):", "",
             "| N per class | accuracy | macro-F1 | ECE | scope chosen | accuracy, images no "
             "run saw | trained with the source: accuracy there |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in sorted({x["labels"] for r in have for x in r["labelled"]}):
        got = [x for r in have for x in r["labelled"] if x["labels"] == n]
        scopes = {}
        for x in got:
            scopes[x["scope"] or "-"] = scopes.get(x["scope"] or "-", 0) + 1
        ref = [x["with_source"]["accuracy"] for x in got if x.get("with_source")]
        common = [x["common"]["after"]["accuracy"] for x in got if x.get("common")]
        lines.append(f"| {n} | {_ms([x['after']['accuracy'] for x in got])} | "
                     f"{_ms([x['after']['macro_f1'] for x in got])} | "
                     f"{_ms([x['after']['ece'] for x in got])} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(scopes.items()))} | "
                     f"{_ms(common) if common else 'n/a'} | "
                     f"{_ms(ref) if ref else 'n/a'} |")  # fmt: skip
    got = [x for r in have for x in r["labelled"] if x["labels"] == 0]
    if got:
        common = [x["common"]["before"]["accuracy"] for x in got if x.get("common")]
        lines.append(f"| (before) | {_ms([x['before']['accuracy'] for x in got])} | "
                     f"{_ms([x['before']['macro_f1'] for x in got])} | "
                     f"{_ms([x['before']['ece'] for x in got])} | | "
                     f"{_ms(common) if common else 'n/a'} | |")  # fmt: skip
    seeds = {k: v for r in have for x in r["labelled"]
             for k, v in x.get("with_source_seeds", {}).items()}  # fmt: skip
    if seeds:
        each = ", ".join(f"{k[-2:]} {v['accuracy']:.3f}" for k, v in sorted(seeds.items()))
        n = sorted({v["n"] for v in seeds.values()})
        lines += ["", f"Trained with the source, every seed, on the images no run saw "
                      f"({', '.join(map(str, n))}): "
                      f"{_ms([v['accuracy'] for v in seeds.values()])} ({each})"]  # fmt: skip
    return "\n".join(lines)


def _row(run_dir: Path, held: dict[str, Any], adapted: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run_dir.name, "source": held["source"]}
    for split in ("val", "test"):
        m = held[split]
        row[f"{split}_n"] = m["n"]
        row[f"{split}_accuracy"] = m["accuracy"]
        row[f"{split}_recall"] = {c: v["recall"] for c, v in m.get("per_class", {}).items()}
        row[f"{split}_excluded"] = [m.get("excluded_copies", 0), m.get("excluded_patients", 0)]
        s = m.get("shift", {})
        if "error" in s or not s:
            row[f"{split}_shift_error"] = s.get("error", "no shift report")
            continue
        row[f"{split}_auroc"] = {k: s["signals"][k]["auroc"] for k in (*SIGNALS, "combined")}
        row[f"{split}_flagged"] = {k: s["signals"][k]["flagged_share"]
                                   for k in (*SIGNALS, "combined")}  # fmt: skip
        row[f"{split}_power"] = s["two_sample"]["power"]
        row[f"{split}_p_value"] = s["two_sample"]["p_value"]
        row[f"{split}_estimated_accuracy"] = s["estimated_accuracy"]
        row[f"{split}_estimated_ci"] = s["estimated_accuracy_ci"]
        row[f"{split}_true_accuracy"] = s["true_accuracy"]
        row["false_alarm"] = s["control"]["false_alarm"]
        row["control_estimated"] = s["control"]["estimated_accuracy"]
        row["control_true"] = s["control"]["true_accuracy"]
    row["adaptation"] = adapted
    return row


def _ms(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if np.isnan(v).all():
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def _pair(rows: list[dict[str, Any]], get: Any) -> str:
    """``validation | test`` cells of one quantity over the runs."""
    return " | ".join(_ms([get(r, split) for r in rows]) for split in ("val", "test"))


def _summary(rows: list[dict[str, Any]]) -> str:
    classes = [c for c, v in rows[0]["test_recall"].items() if v is not None]
    lines = [f"{len(rows)} run(s): {', '.join(r['run'] for r in rows)}", "",
             "| held out | validation | test |", "|---|---|---|"]  # fmt: skip
    for split_name, key in (("images scored", "n"),):
        lines.append(
            f"| {split_name} | "
            + " | ".join(", ".join(str(r[f"{s}_{key}"]) for r in rows) for s in ("val", "test"))
            + " |"
        )
    lines.append("| left out: copies, other images of seen patients | " + " | ".join(
        "; ".join(f"{r[f'{s}_excluded'][0]}, {r[f'{s}_excluded'][1]}" for r in rows)
        for s in ("val", "test")) + " |")  # fmt: skip
    lines.append(f"| accuracy | {_pair(rows, lambda r, s: r[f'{s}_accuracy'])} |")
    for c in classes:
        lines.append(f"| {c} recall | {_pair(rows, lambda r, s, c=c: r[f'{s}_recall'][c])} |")
    lines += ["", "| signal | AUROC, validation | AUROC, test | flagged, validation | "
              "flagged, test |", "|---|---|---|---|---|"]  # fmt: skip
    for sig in (*SIGNALS, "combined"):
        auroc = _pair(rows, lambda r, s, g=sig: r[f"{s}_auroc"][g])
        flagged = _pair(rows, lambda r, s, g=sig: r[f"{s}_flagged"][g])
        lines.append(f"| {sig} | {auroc} | {flagged} |")
    lines += ["", "| batch test (ks) | validation | test | in distribution (false alarm) |",
              "|---|---|---|---|"]  # fmt: skip
    for n in rows[0]["false_alarm"]:
        cells = [_ms([r[f"{s}_power"].get(n, np.nan) for r in rows]) for s in ("val", "test")]
        cells.append(_ms([r["false_alarm"][n] for r in rows]))
        lines.append(f"| batch of {n} | {' | '.join(cells)} |")
    lines.append(f"| accuracy estimated (ATC) | "
                 f"{_pair(rows, lambda r, s: r[f'{s}_estimated_accuracy'])} | "
                 f"{_ms([r['control_estimated'] for r in rows])} |")  # fmt: skip
    lines.append(f"| true accuracy | {_pair(rows, lambda r, s: r[f'{s}_true_accuracy'])} | "
                 f"{_ms([r['control_true'] for r in rows])} |")  # fmt: skip
    lines += ["", "| adaptation (half read, half scored) | validation: accuracy | validation: "
              "ECE | test: accuracy | test: ECE |", "|---|---|---|---|---|"]  # fmt: skip
    measured = [r for r in rows if r["adaptation"].get("val")]  # --no-unlabelled: none

    def before_after(split: str, method: str, key: str) -> str:
        got = [r["adaptation"][split][method] for r in measured if method in r["adaptation"][split]]
        if not got or any(g["before"] is None for g in got):
            return "n/a"
        return f"{_ms([g['before'][key] for g in got])} -> {_ms([g['after'][key] for g in got])}"

    methods = dict.fromkeys(m for r in measured for m in r["adaptation"]["val"])
    lines.append(f"(runs measured: {', '.join(r['run'][-2:] for r in measured) or 'none'})")
    for method in methods:
        cells = [before_after(s, method, k) for s in ("val", "test") for k in ("accuracy", "ece")]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--cell", action="append", default=[], help="run id text to keep")
    parser.add_argument("--rescore", action="store_true", help="score the held-out source again")
    parser.add_argument("--summary", action="store_true",
                        help="only print the tables of <study>/heldout_shift.json")  # fmt: skip
    parser.add_argument(
        "--labels",
        type=int,
        nargs="*",
        default=[],
        help="labelled images per class to adapt with (e.g. 0 5 10 25 50)",
    )
    parser.add_argument("--draws", type=int, default=3, help="draws of the labelled images")
    parser.add_argument(
        "--with-source", default="", help="run id text of the cell that trained with the source"
    )
    parser.add_argument("--all-seeds", action="store_true",
                        help="score every seed of --with-source on the same half (not only "
                             "this run's seed)")  # fmt: skip
    parser.add_argument("--no-unlabelled", action="store_true",
                        help="skip the unlabelled methods (step 3)")  # fmt: skip
    args = parser.parse_args()
    saved = args.study / "heldout_shift.json"
    if args.summary:
        print(_by_source(json.loads(saved.read_text())))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_dir in sorted((args.study / "runs").iterdir()):
            if not (run_dir / "metrics.json").is_file():
                continue
            if args.cell and not any(c in run_dir.name for c in args.cell):
                continue
            config = load_card(run_dir).training.config
            if not config.holdout_source:
                continue
            print(f"== {run_dir.name}", flush=True)
            if args.rescore or not (run_dir / run_files.HOLDOUT).is_file():
                score_holdout(run_dir, config, shift=holdout_shift, progress=False)
            held = json.loads((run_dir / run_files.HOLDOUT).read_text())
            folders = _split_folders(run_dir, config, Path(tmp))
            earlier = {r["run"]: r for r in _saved(saved)}.get(run_dir.name, {})
            adapted = (earlier.get("adaptation", {}) if args.no_unlabelled
                       else _adaptation(run_dir, folders, Path(tmp)))  # fmt: skip
            row = _row(run_dir, held, adapted)
            if args.labels:
                seed = run_dir.name.rsplit("-s", 1)[-1]
                ref = [d for d in (args.study / "runs").iterdir()
                       if args.with_source and args.with_source in d.name and d.is_dir()
                       and (args.all_seeds or d.name.endswith(f"-s{seed}"))]  # fmt: skip
                row["labelled"] = _labelled(run_dir, folders["test"], args.labels, args.draws,
                                            ref, Path(tmp))  # fmt: skip
            elif "labelled" in earlier:
                row["labelled"] = earlier["labelled"]
            rows.append(row)
            _save(saved, row)  # each run as it is measured: a stopped call keeps the others
    if not rows:
        print(
            f"No finished run in {args.study / 'runs'} held a source out"
            + (f" and matches --cell {' '.join(args.cell)}" if args.cell else "")
        )
        return
    print(_by_source(_saved(saved)))


def _save(path: Path, row: dict[str, Any]) -> None:
    """Write ``row`` into the saved runs (read again now: several calls may share the file),
    replacing an earlier row of the same run."""
    rows = [r for r in _saved(path) if r["run"] != row["run"]] + [row]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, path)


def _by_source(rows: list[dict[str, Any]]) -> str:
    """The summary of each held-out source's runs."""
    out = []
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        out.append(f"## {source} held out\n\n{_summary(mine)}{_labelled_summary(mine)}\n")
    return "\n".join(out)


def _saved(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


if __name__ == "__main__":
    main()
