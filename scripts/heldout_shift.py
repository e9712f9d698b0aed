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

Prints a Markdown summary over the runs (mean ± std over seeds) and writes every number to
``<study>/heldout_shift.json`` (runs measured by an earlier call are kept; ``--summary``
prints the tables of what it holds). Nothing here chooses anything on a test split: the signals
and methods are compared on the validation columns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.adapt import METHODS, adapt_run
from cxrlab.data import prepare_data
from cxrlab.engine.holdout import HOLDOUT_FILE, score_holdout, split_sources
from cxrlab.engine.rundir import load_card
from cxrlab.shift import SIGNALS

warnings.simplefilter("ignore")


def _split_folders(run_dir: Path, config: Any, tmp: Path) -> dict[str, Path]:
    """The held-out source's validation and test splits as class folders of links (drawn as
    :func:`cxrlab.engine.holdout.score_holdout` draws them)."""
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
        for method in METHODS:
            dest = tmp / f"{run_dir.name}-{split}-{method.replace('+', '_')}"
            shutil.rmtree(dest, ignore_errors=True)
            rec = adapt_run(run_dir, folder, dest, method=method, progress=False).record
            out.setdefault(split, {})[method] = rec["site_test"]
    return out


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
    first = rows[0]["adaptation"]

    def before_after(split: str, method: str, key: str) -> str:
        got = [r["adaptation"][split][method] for r in rows]
        if any(g["before"] is None for g in got):
            return "n/a"
        return f"{_ms([g['before'][key] for g in got])} -> {_ms([g['after'][key] for g in got])}"

    for method in first["val"]:
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
    args = parser.parse_args()
    saved = args.study / "heldout_shift.json"
    if args.summary:
        print(_summary(json.loads(saved.read_text())))
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
            if args.rescore or not (run_dir / HOLDOUT_FILE).is_file():
                score_holdout(run_dir, config, progress=False)
            held = json.loads((run_dir / HOLDOUT_FILE).read_text())
            adapted = _adaptation(run_dir, _split_folders(run_dir, config, Path(tmp)), Path(tmp))
            rows.append(_row(run_dir, held, adapted))
    old = json.loads(saved.read_text()) if saved.is_file() else []
    done = {r["run"] for r in rows}
    rows = [r for r in old if r["run"] not in done] + rows  # runs measured earlier are kept
    saved.write_text(json.dumps(rows, indent=2) + "\n")
    print(_summary(rows))


if __name__ == "__main__":
    main()
