"""Lung segmenter throughput (images/s): training steps and inference, by input size.

The network is ``cxrlab segment``'s (U-Net, EfficientNet-Lite0 encoder, light decoder) on
synthetic uint8 images, so the figure is the model's and the CPU's, not the disk's. Each
training step is a forward pass, a backward pass and an Adam step on a batch; inference is
one batch of 16 without gradients. Memory layout: the model's own (channels-last), or
``--layout contiguous`` to compare.

    python benchmarks/segment_throughput.py --sizes 256,192,128 --threads 2
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
    p.add_argument("--sizes", default="256,192,128")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layout", default="both", choices=["both", "channels_last", "contiguous"])
    args = p.parse_args()

    import torch

    from cxrlab.segment.model import LungSegmenter

    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    layouts = ["contiguous", "channels_last"] if args.layout == "both" else [args.layout]
    for layout in layouts:
        model = LungSegmenter("efficientnet_lite0", "none")
        if layout == "contiguous":
            model = model.to(memory_format=torch.contiguous_format)
        opt = torch.optim.Adam(model.parameters())
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.randint(0, 256, (args.batch, 1, size, size), dtype=torch.uint8)
            model.train()
            model(x).mean().backward()  # warm-up
            opt.step()
            opt.zero_grad()
            t = time.perf_counter()
            for _ in range(args.steps):
                model(x).mean().backward()
                opt.step()
                opt.zero_grad()
            train = args.batch * args.steps / (time.perf_counter() - t)
            model.eval()
            with torch.no_grad():
                batch = torch.randint(0, 256, (16, 1, size, size), dtype=torch.uint8)
                model(batch)
                t = time.perf_counter()
                model(batch)
                infer = 16 / (time.perf_counter() - t)
            print(f"{layout:<14} {size:>4} px  train {train:6.1f} img/s  "
                  f"inference {infer:6.1f} img/s")  # fmt: skip


if __name__ == "__main__":
    main()
