"""What the benchmark scripts share: the options of one training cell, and the machine line."""

from __future__ import annotations

import argparse
import os
import platform


def add_cell_options(
    parser: argparse.ArgumentParser,
    *,
    model: str = "efficientnet_lite0",
    weights: str = "imagenet",
    freeze: str = "head",
    epochs: int = 10,
) -> None:
    """``--data --model --weights --freeze --epochs --batch --size --threads``."""
    parser.add_argument("--data", required=True, help="a dataset folder (Kaggle layout or other)")
    parser.add_argument("--model", default=model)
    parser.add_argument("--weights", default=weights, help="imagenet, none or a weights file")
    parser.add_argument("--freeze", default=freeze)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)


def machine_line(threads: int) -> str:
    """``# <cpu>, <n> CPUs, <t> threads, torch <version>``: printed before every figure."""
    import torch

    cpu = platform.processor() or platform.machine()
    return f"# {cpu}, {os.cpu_count()} CPUs, {threads} threads, torch {torch.__version__}"
