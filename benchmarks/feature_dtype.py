"""Does storing frozen features as float16 change the metrics? fp16 vs fp32, against seed noise.

Trains the same frozen-prefix cell with ``feature_dtype = float32`` and ``float16`` for
several seeds (the seeds of one dtype share one feature cache), then prints every run's test
metrics, the fp16-minus-fp32 difference per seed, and the spread between seeds of the fp32
runs, which is the run-to-run noise the difference is to be judged against.

    python benchmarks/feature_dtype.py --data ../shared/cxr-sample/COVID-19_Radiography_Dataset \\
        --model efficientnet_lite0 --weights imagenet --freeze head --epochs 10 --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_cell_options, machine_line

KEYS = ("accuracy", "macro_f1", "auroc", "nll")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cell_options(p)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()

    import torch

    from cxrlab.training import TrainConfig, train

    torch.set_num_threads(args.threads)
    print(f"{machine_line(args.threads)}; {args.model} {args.weights} freeze={args.freeze} "
          f"epochs={args.epochs} batch={args.batch} {args.size}px")  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="cxrlab-fp16-"))
    runs: dict[tuple[str, int], dict] = {}
    for dtype in ("float32", "float16"):
        for seed in range(args.seeds):
            cfg = TrainConfig(data=args.data, model=args.model, weights=args.weights,
                              freeze=args.freeze, epochs=args.epochs, batch_size=args.batch,
                              image_size=args.size, seed=seed, feature_dtype=dtype,
                              progress=False)  # fmt: skip
            t0 = time.perf_counter()
            r = train(cfg, out / f"{dtype}-s{seed}")
            m = {k: r.metrics[k] for k in KEYS}
            m["val_loss"] = [h["val_loss"] for h in r.history]
            runs[dtype, seed] = m
            print(f"{dtype} seed {seed}: " + "  ".join(f"{k} {m[k]:.4f}" for k in KEYS)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip

    print("\nfp16 - fp32, same seed (largest per-epoch |val loss difference| last):")
    for seed in range(args.seeds):
        a, b = runs["float32", seed], runs["float16", seed]
        dv = max(abs(x - y) for x, y in zip(a["val_loss"], b["val_loss"]))
        print(f"seed {seed}: " + "  ".join(f"{k} {b[k] - a[k]:+.4f}" for k in KEYS)
              + f"  val loss {dv:.2e}")  # fmt: skip
    if args.seeds > 1:
        print("seed-to-seed spread of the fp32 runs (max - min):")
        fp32 = [runs["float32", s] for s in range(args.seeds)]
        print("  ".join(f"{k} {max(r[k] for r in fp32) - min(r[k] for r in fp32):.4f}"
                        for k in KEYS))  # fmt: skip
        sd = statistics.stdev(runs["float32", s]["accuracy"] for s in range(args.seeds))
        print(f"fp32 accuracy standard deviation over seeds: {sd:.4f}")


if __name__ == "__main__":
    main()
