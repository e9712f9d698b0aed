"""Training throughput (images/s) of whole networks, on the CPU or a GPU, data on the device.

The step is cxrlab's: uint8 images already on the device (as with ``--preload``), the
model's own preprocessing, autocast at the resolved precision, channels_last for CNNs,
cross-entropy, backward, Adam. Synthetic images, so the figure is the model's and the
device's, not the disk's. Prints one line per model with images/s and peak GPU memory.

    python benchmarks/train_throughput.py --models resnet18,resnet34,vit_b_16 --batch 128
    python benchmarks/train_throughput.py --device cpu --models resnet18 --batch 32 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet34,vit_b_16")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    args = p.parse_args()

    import torch

    from cxrlab.models import create_model
    from cxrlab.runtime import autocast, resolve_device, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = resolve_precision(args.precision, device)
    torch.backends.cudnn.benchmark = True  # as cxrlab train does on CUDA
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"{machine_line(torch.get_num_threads())}; {device} ({gpu}); "
          f"precision {str(amp or 'fp32').removeprefix('torch.')}; batch {args.batch}; "
          f"{args.size}px; median of {args.steps} steps")  # fmt: skip

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for name in args.models.split(","):
        model = create_model(name, 4, "none", image_size=args.size).to(device)
        cnn = not name.startswith(("vit", "timm:vit"))
        cl = args.channels_last == "on" or (args.channels_last == "auto" and cnn)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        step_model = torch.compile(model) if args.compile else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (args.batch, 1, args.size, args.size), dtype=torch.uint8,
                          generator=g).to(device)  # fmt: skip
        y = torch.randint(0, 4, (args.batch,), generator=g).to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        model.train()
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            with autocast(device, amp):
                logits = step_model(x.float())
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        ips = args.batch / statistics.median(times)
        mem = (f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak"
               if device.type == "cuda" else "")  # fmt: skip
        print(f"{name:<20} {ips:9.1f} images/s  channels_last={cl}  {mem}", flush=True)
        del model, step_model, opt


if __name__ == "__main__":
    main()
