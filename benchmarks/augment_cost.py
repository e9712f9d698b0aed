"""What augmentation costs per epoch: ``light``, ``xray`` and ``acquisition`` on batches of
uint8 X-ray-like images, timed alone (no model), so the figure is the augmentation's.

Each kind runs on ``--batches`` batches of ``--batch`` images per size; the cost per epoch
is the time per image times ``--images`` (the sample's 1,400 training images by default),
set beside the time the same epoch's training step takes (``--step-ips`` images/s, from
BENCHMARKS.md for the model and size at hand).

    python benchmarks/augment_cost.py --sizes 128,224 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="128,224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--images", type=int, default=1400)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import numpy as np
    import torch

    from cxrlab.augment import augment_batch
    from cxrlab.data import draw_phantom

    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    print(f"{'size':>5} {'kind':<12} {'ms/batch':>9} {'ms/image':>9} {'s/epoch':>8}")
    for size in map(int, args.sizes.split(",")):
        rng = np.random.default_rng(0)
        images = np.stack([draw_phantom("COVID", rng, size) for _ in range(args.batch)])
        x = torch.from_numpy(images).float()[:, None]
        for kind in ("light", "xray", "acquisition"):
            augment_batch(x, torch.Generator().manual_seed(0), kind)  # warm up
            start = time.perf_counter()
            for b in range(args.batches):
                augment_batch(x, torch.Generator().manual_seed(b), kind)
            per_batch = (time.perf_counter() - start) / args.batches
            per_image = per_batch / args.batch
            print(f"{size:>5} {kind:<12} {per_batch * 1e3:>9.1f} {per_image * 1e3:>9.2f} "
                  f"{per_image * args.images:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
