"""Forward throughput of the backbones under each numeric format, on this machine.

Why cxrlab picks fp32 + channels_last on CPUs without native bf16: run this and compare.

    python benchmarks/cpu_kernels.py --threads 2 --batch 32 --size 224 --repeats 3

Prints one line per (model, format) with the median images/s over the repeats, and the
machine, torch version and thread count.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from cxrlab.models import create_model
from cxrlab.runtime import cpu_supports_bf16


def images_per_second(model: torch.nn.Module, x: torch.Tensor, repeats: int, bf16: bool) -> float:
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model(x)
            else:
                model(x)
            if i:  # the first pass warms up
                times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, native bf16: {cpu_supports_bf16()}, "
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
        f"{args.size}px, median of {args.repeats}"
    )
    x = torch.randint(0, 256, (args.batch, 1, args.size, args.size), dtype=torch.uint8)
    for name in args.models.split(","):
        model = create_model(name, 4, "none", image_size=args.size).eval()
        fp32 = images_per_second(model, x, args.repeats, bf16=False)
        bf16 = images_per_second(model, x, args.repeats, bf16=True)
        model = model.to(memory_format=torch.channels_last)
        cl = images_per_second(model, x, args.repeats, bf16=False)
        print(
            f"{name:<20} fp32 {fp32:7.1f} img/s   fp32+channels_last {cl:7.1f} img/s "
            f"({cl / fp32:.2f}x)   bf16 autocast {bf16:7.1f} img/s ({bf16 / fp32:.2f}x)"
        )


if __name__ == "__main__":
    main()
