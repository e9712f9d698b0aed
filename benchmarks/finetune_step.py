"""The whole-network fine-tuning step of a recipe on the CPU: eager against compiled, and
at several input sizes, with where the time goes.

The step is the recipe's own (``configs/strong.toml`` by default): its augmentation, the
model's preprocessing, channels_last, label-smoothed cross-entropy, backward, its optimizer
and the EMA update of the weights, at ``--precision`` (fp32 by default: what ``auto``
resolves to on a CPU without native bf16). Synthetic uint8
images, so the figure is the model's and the CPU's. Prints the CPU's flags and the
instruction set in effect: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` restricts
ATen, oneDNN and Inductor's generated code to AVX2 on a newer CPU (an emulation of an
AVX2-only CPU: same kernels, not the same memory system).

    python benchmarks/finetune_step.py --sizes 224,192,160 --compile
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/finetune_step.py
    python benchmarks/finetune_step.py --profile --sizes 224   # the top operators
    python benchmarks/finetune_step.py --sizes 224 --batches 16,32,64
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line

ROOT = Path(__file__).resolve().parents[1]


def cpu_line() -> str:
    """The CPU's vector and matrix extensions, and any restriction of them in effect."""
    import torch

    flags = {
        "avx2": torch.cpu._is_avx2_supported(),
        "avx512": torch.cpu._is_avx512_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
    }
    has = ", ".join(k for k, v in flags.items() if v) or "none of avx2/avx512/amx"
    limits = {
        k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ
    }
    used = torch.backends.cpu.get_cpu_capability()
    restricted = f"; restricted by {limits}" if limits else ""
    return f"# CPU has {has}; ATen kernels in use: {used}{restricted}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "configs" / "strong.toml"),
                   help="a study file; its first cell's settings make the step")  # fmt: skip
    p.add_argument("--sizes", default="224,160", help="input sizes, comma-separated")
    p.add_argument("--batches", default="",
                   help="batch sizes, comma-separated (default: the recipe's)")  # fmt: skip
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                   help="fp32 is what 'auto' resolves to on a CPU without native bf16")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="also time torch.compile's step")
    p.add_argument("--profile", action="store_true", help="print the top operators (eager)")
    p.add_argument("--steps", type=int, default=8, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from cxrlab.runtime import resolve_precision
    from cxrlab.study.study_config import load_study_config

    torch.set_num_threads(args.threads)
    cell = load_study_config(args.recipe).cells[0]
    cfg = cell.config
    amp = resolve_precision(args.precision, torch.device("cpu"))
    print(machine_line(torch.get_num_threads()))
    print(cpu_line())
    print(f"# {cell.model}, {Path(args.recipe).name}: {cfg.optimizer} lr {cfg.lr}, augment "
          f"{cfg.augment}, label smoothing {cfg.label_smoothing}, ema {cfg.ema}; its batch "
          f"{cfg.batch_size}; {str(amp or 'fp32').removeprefix('torch.')}; median of "
          f"{args.steps} steps")  # fmt: skip
    modes = ("eager", "compiled") if args.compile else ("eager",)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [cfg.batch_size]
    sizes = (int(s) for s in args.sizes.split(","))
    for size, batch, mode in itertools.product(sizes, batches, modes):
        timer = StepTimer(cell.model, cfg, size, amp, compiled=mode == "compiled", batch=batch)
        t0 = time.perf_counter()
        for i in range(args.warmup):
            timer.step(i)
        first = time.perf_counter() - t0
        parts = [timer.step(args.warmup + i) for i in range(args.steps)]
        med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
        total = sum(med.values())
        split = "  ".join(f"{k} {v * 1000:.0f}" for k, v in med.items())
        ips = batch / total
        print(f"{size:>4} px  batch {batch:<3} {mode:<8} {ips:6.1f} img/s  "
              f"step {total * 1000:.0f} ms ({split} ms)  warm-up {first:.0f} s",
              flush=True)  # fmt: skip
        if args.profile and mode == "eager":
            timer.profile()


class StepTimer:
    """One model, optimizer and EMA, stepped on one synthetic batch; times each part."""

    def __init__(self, model_name: str, cfg, size: int, amp, *, compiled: bool, batch: int) -> None:
        import torch
        from torch import nn

        from cxrlab.engine.optim import build_ema, build_optimizer
        from cxrlab.models import create_model

        self.model = create_model(model_name, 4, "none", image_size=size)
        self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.opt = build_optimizer(cfg, list(self.model.parameters()))
        self.ema = build_ema(cfg, self.model)
        self.loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=g)
        self.y = torch.randint(0, 4, (batch,), generator=g)
        self.cfg, self.amp = cfg, amp

    def step(self, i: int) -> dict[str, float]:
        import torch

        from cxrlab.augment import augment_batch
        from cxrlab.runtime import autocast

        t = [time.perf_counter()]
        x = self.x.float()
        if self.cfg.augment != "none":
            x = augment_batch(x, torch.Generator().manual_seed(i), self.cfg.augment)
        t.append(time.perf_counter())
        with autocast(torch.device("cpu"), self.amp):
            logits = self.forward(x)
        loss = self.loss(logits.float(), self.y)
        t.append(time.perf_counter())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        t.append(time.perf_counter())
        return dict(zip(("augment", "forward", "backward", "optimizer+ema"),
                        (b - a for a, b in itertools.pairwise(t))))  # fmt: skip

    def profile(self, steps: int = 3) -> None:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                self.step(1000 + i)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        print(table, flush=True)


if __name__ == "__main__":
    main()
