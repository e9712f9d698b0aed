"""Summarise scripts/segment_sweep.sh's runs, choose each target's variant on validation (mean over
seeds of the number each run chose its epoch by; finished runs first), pack what comes back:

    python scripts/segment_sweep_pick.py RUNS_FOLDER OUT_FOLDER
"""

import csv
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxrlab.segment.train import _choice

W, OUT = Path(sys.argv[1]), Path(sys.argv[2])
OUT.mkdir(parents=True, exist_ok=True)
LINE = re.compile(r"epoch\s+(\d+)/(\d+)\s+train loss ([\d.]+)\s+(.*?)\s+([\d.]+)s\s+([\d.]+) img/s")


def history(run: Path) -> list[dict]:
    f = run / "history.csv"
    if f.is_file():
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f.open())]
    rows = []
    log = W / f"{run.name}.log"
    for m in LINE.finditer(log.read_text() if log.is_file() else ""):
        vals = dict(zip(m.group(4).split()[::2], map(float, m.group(4).split()[1::2])))
        rows.append(
            {
                "epoch": float(m.group(1)),
                "train_loss": float(m.group(3)),
                **vals,
                "seconds": float(m.group(5)),
                "images_per_s": float(m.group(6)),
            }
        )
    return rows


runs = {}
for run in sorted(p for p in W.iterdir() if p.is_dir()):
    h = history(run)
    if not h:
        runs[run.name] = {"epochs_done": 0}
        continue
    keys = [_choice({k: v for k, v in r.items() if k.startswith("val_")}) for r in h]
    best = max(range(len(h)), key=lambda i: keys[i])
    metrics = run / "metrics.json"
    test = json.loads(metrics.read_text()) if metrics.is_file() else None
    card = run / "segmenter_card.json"
    c = json.loads(card.read_text()) if card.is_file() else {}
    runs[run.name] = {
        "epochs_done": len(h),
        "best_epoch": best + 1,
        "key": list(keys[best]),
        "val": {k: v for k, v in h[best].items() if k.startswith("val_")},
        "seconds_per_epoch": float(np.median([r["seconds"] for r in h])),
        "train_seconds": (c.get("training") or {}).get("train_seconds"),
        "finished": bool(c) and not c.get("partial", False),
        "test": None
        if test is None
        else {
            "overall": {k: v for k, v in test["overall"].items() if k != "images"},
            "per_class": test.get("per_class"),
            "left_out_copies": test.get("left_out_copies"),
        },
    }

groups = defaultdict(list)
for name, r in runs.items():
    groups[re.sub(r"-s\d+$", "", name)].append(r)
choice = {}
for target in ("lungs", "inf"):
    scored = {}
    for g, rs in groups.items():
        if not g.startswith(target) or not all(r.get("epochs_done") for r in rs):
            continue
        scored[g] = (
            all(r["finished"] for r in rs),
            min(r["key"][0] for r in rs),
            float(np.mean([r["key"][1] for r in rs])),
        )
    if scored:
        choice[target] = max(scored, key=lambda g: scored[g])
        print(target, "variants (finished, constraint held, mean validation number):")
        for g, k in sorted(scored.items(), key=lambda kv: kv[1], reverse=True):
            print(f"  {g:24s} {k}")
summary = {"runs": runs, "choice": choice}
(OUT / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
for name, r in runs.items():
    t = (r.get("test") or {}).get("overall") or {}
    d = (t.get("dice") or {}).get("mean")
    print(
        f"{name:26s} epochs {r.get('epochs_done')} best {r.get('best_epoch')} "
        f"val {r.get('key')} {r.get('seconds_per_epoch', 0):.1f}s/ep test dice {d}"
    )
subprocess.run(
    [
        "tar",
        "czf",
        str(OUT / "results.tgz"),
        "--exclude=model.safetensors",
        "--exclude=.model.safetensors.tmp",
        "-C",
        str(W),
        ".",
    ],
    check=False,
)
for target, g in choice.items():
    run = f"{g}-s0"
    tar = OUT / f"model-{target}.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(W), run], check=False)
    subprocess.run(
        ["split", "-b", "15m", "-d", str(tar), str(OUT / f"model-{target}.tar.")], check=False
    )
    tar.unlink()
