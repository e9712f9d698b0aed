"""A whole study grid, the usual notebook way (one run per cell) and as one cxrlab study.

Issue 6, benchmark 4: every cell of a study file is trained by the notebook reference of
``reference_vs_cxrlab.py`` (ImageFolder + PIL decode every epoch + DataLoader(num_workers=2)
+ a plain fp32 loop), each in its own process; then ``cxrlab study run`` trains the same
cells in one process with a cold cache folder. The script prints each cell's wall time both
ways, the totals, and each pipeline's peak RSS.

    python benchmarks/study_vs_reference.py --study configs/original.toml \\
        --data ../shared/cxr-sample/COVID-19_Radiography_Dataset --epochs 2 \\
        --weights none --per-class 100

``--weights none`` replaces ImageNet weights by random ones (for machines without the
torchvision downloads; the time per image does not depend on the weights). ``--per-class N``
trains on the first N images of each class (symbolic links in a temporary folder), to fit a
slow machine; both pipelines then see the same images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line


def subset(root: str, per_class: int) -> str:
    """A temporary dataset folder linking the first ``per_class`` images of each class."""
    from cxrlab.data.layout import find_layout

    out = Path(tempfile.mkdtemp(prefix="cxrlab-subset-"))
    for cls in find_layout(root).classes:
        folder = out / cls.name / "images"
        folder.mkdir(parents=True)
        for f in cls.files()[:per_class]:
            (folder / f.name).symlink_to(f.resolve())
    return str(out)


def load(args: argparse.Namespace):  # -> StudyConfig
    from cxrlab.study import load_study_config

    study = load_study_config(args.study, data=args.data, epochs=args.epochs, seeds=1)
    if args.weights:
        cells = tuple(
            dataclasses.replace(c, config=dataclasses.replace(c.config, weights=args.weights))
            for c in study.cells
        )
        study = dataclasses.replace(study, cells=cells)
    return study


def child(args: argparse.Namespace) -> dict:
    """One pipeline in this process: a reference cell (``--cell``) or the cxrlab study."""
    study = load(args)
    if args.which == "reference":
        from reference_vs_cxrlab import reference

        cfg = next(c.config for c in study.cells if c.id == args.cell)
        ns = argparse.Namespace(data=cfg.data, model=cfg.model, weights=cfg.weights,
                                freeze=cfg.freeze, epochs=cfg.epochs, batch=cfg.batch_size,
                                size=cfg.image_size, threads=args.threads)  # fmt: skip
        return reference(ns)
    import torch

    from cxrlab.study import run_study

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="cxrlab-study-"))
    t0 = time.perf_counter()
    run_study(study, out, progress=False)
    wall = time.perf_counter() - t0
    cells = {}
    for c in study.cells:
        m = json.loads((out / "runs" / c.id / "metrics.json").read_text())
        cells[c.id] = {"wall_s": m["wall_seconds"], "test_accuracy": m["accuracy"]}
    return {"wall_s": wall, "cells": cells}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="configs/original.toml")
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--weights", default=None, help="replace every cell's weights (e.g. none)")
    p.add_argument("--per-class", type=int, default=0, help="only the first N images per class")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--which", choices=["both", "reference", "cxrlab"], default="both")
    p.add_argument("--cell", default="")
    args = p.parse_args()
    if args.which != "both":
        out = child(args)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return

    data = subset(args.data, args.per_class) if args.per_class else args.data
    argv = ["--study", args.study, "--data", data, "--epochs", str(args.epochs),
            "--threads", str(args.threads)]  # fmt: skip
    argv += ["--weights", args.weights] if args.weights else []
    study = load(argparse.Namespace(**{**vars(args), "data": data}))
    print(
        f"{machine_line(args.threads)}; {args.study}, {len(study.cells)} cells, "
        f"{args.epochs} epochs, weights={args.weights or 'as in the study'}, data={data}"
        f"{f' ({args.per_class} per class)' if args.per_class else ''}",
        flush=True,
    )

    def run(which: str, cell: str = "", cache: str | None = None) -> dict:
        env = dict(os.environ, CXRLAB_CACHE=cache or tempfile.mkdtemp(prefix="cxrlab-bench-"))
        cmd = [sys.executable, __file__, *argv, "--which", which, "--cell", cell]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{which} {cell} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    ref_cache = tempfile.mkdtemp(prefix="cxrlab-bench-ref-")  # the split only, not timed
    ref = {}
    for c in study.cells:
        ref[c.id] = run("reference", c.id, ref_cache)
        print(f"reference {c.id:<28} {ref[c.id]['wall_s']:8.1f} s  "
              f"peak RSS {ref[c.id]['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    cxr = run("cxrlab")
    print(f"{'cell':<28} {'reference s':>12} {'cxrlab s':>10} {'ratio':>6}  accuracy")
    for c in study.cells:
        r, x = ref[c.id]["wall_s"], cxr["cells"][c.id]["wall_s"]
        acc = cxr["cells"][c.id]["test_accuracy"]
        print(f"{c.id:<28} {r:12.1f} {x:10.1f} {r / x:5.2f}x  {acc:.3f}")
    total_ref = sum(r["wall_s"] for r in ref.values())
    print(f"{'total (sum of reference runs)':<28} {total_ref:12.1f} {cxr['wall_s']:10.1f} "
          f"{total_ref / cxr['wall_s']:5.2f}x  (cxrlab: the whole study command)")  # fmt: skip
    peak_ref = max(r["peak_rss_mib"] for r in ref.values())
    print(f"peak RSS: reference {peak_ref:.0f} MiB (largest cell), "
          f"cxrlab {cxr['peak_rss_mib']:.0f} MiB (the study process)")  # fmt: skip


if __name__ == "__main__":
    main()
