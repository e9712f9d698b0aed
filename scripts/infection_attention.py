"""Do the models look at the disease, and do those that travel look at it more?

Audits finished runs on COVID-QU-Ex (``../shared/cxr-masks``: infection masks beside its
COVID-19 images) with ``cxrlab audit --check infection --split all``, then prints one table:
per group of runs (the text of the run folder's name before ``-s<seed>``), the accuracy on
the scored images (copies of the runs' training images left out by the audit), the accuracy
on the COVID-19 images with infection, and how much Grad-CAM lies on the infection (energy
ratio, 1 = chance; pointing game), mean ± std over seeds:

    python scripts/infection_attention.py RUN [RUN ...] --data ../shared/cxr-masks \\
        --class-map "COVID-19=COVID,Non-COVID=Pneumonia" --out runs/infection-audits

An audit already written to ``OUT/<run name>/audit.json`` is read, not run again
(``--again`` runs it anyway). Nothing here chooses anything: it describes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def audit(run: Path, data: str, class_map: str, out: Path, again: bool, cam_images: int) -> dict:
    """The run's infection audit on ``data`` (run now unless already written)."""
    target = out / run.name
    found = target / "audit.json"
    if again or not found.is_file():
        cmd = [sys.executable, "-m", "cxrlab", "audit", str(run), "--data", data, "--split",
               "all", "--check", "infection", "--out", str(target), "--cam-images",
               str(cam_images), "--no-progress"]  # fmt: skip
        if class_map:
            cmd += ["--class-map", class_map]
        subprocess.run(cmd, check=True)
    return json.loads(found.read_text())


def group_of(name: str) -> str:
    """The run's name without its seed."""
    return re.sub(r"-s\d+$", "", name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--class-map", default="")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cam-images", type=int, default=200)
    ap.add_argument("--again", action="store_true")
    args = ap.parse_args(argv)
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in args.runs:
        report = audit(run, args.data, args.class_map, args.out, args.again, args.cam_images)
        check = report["checks"]["infection"]
        if "skipped" in check:
            print(f"{run.name}: skipped ({check['skipped']})")
            continue
        row = {
            "run": run.name,
            "accuracy": report["normal"]["accuracy"],
            "n": report["normal"]["n"],
            "accuracy_infected": check["accuracy_infected"],
            "n_infected": check["n_infected"],
            "ratio": check["ratio"],
            "ratio_ci": check["ratio_ci"],
            "pointing": check["pointing"],
            "area": check["area_share"],
            "cams": check["n"],
        }
        groups[group_of(run.name)].append(row)
        print(f"{run.name}: accuracy {row['accuracy']:.3f} on {row['n']}; COVID-19 with "
              f"infection {row['accuracy_infected']:.3f} of {row['n_infected']}; energy ratio "
              f"{row['ratio']:.2f} [{row['ratio_ci'][0]:.2f}, {row['ratio_ci'][1]:.2f}], "
              f"pointing {row['pointing']:.0%} on {row['cams']} maps (infection "
              f"{row['area']:.0%} of the lungs)")  # fmt: skip

    def ms(rows: list[dict], key: str, fmt: str = ".3f") -> str:
        v = np.array([r[key] for r in rows], dtype=float)
        sd = f" ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else ""
        return f"{v.mean():{fmt}}{sd}"

    print(
        "\n| runs | seeds | accuracy (scored images) | COVID-19 with infection called COVID "
        "| energy ratio on the infection | pointing game | infection's share of the lungs |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        print(f"| {name} | {len(rows)} | {ms(rows, 'accuracy')} | {ms(rows, 'accuracy_infected')}"
              f" | {ms(rows, 'ratio', '.2f')} | {ms(rows, 'pointing', '.2f')} | "
              f"{ms(rows, 'area', '.2f')} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
