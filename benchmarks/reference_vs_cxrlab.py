"""One training cell, the usual notebook way and the cxrlab way, on the same images.

The reference is what a typical notebook does: torchvision ``ImageFolder`` + PIL decode and
resize every epoch + ``DataLoader(num_workers=2)`` + a plain fp32 loop over a model whose
frozen layers still run every epoch. cxrlab runs ``cxrlab.train`` with a fresh cache folder,
so its wall time includes scanning, decoding once and computing frozen features.

    python benchmarks/reference_vs_cxrlab.py --data ../shared/cxr-sample \\
        --model efficientnet_lite0 --freeze head --epochs 10

Both use the same train/val split (cxrlab's manifest), model, weights, batch size, epochs
and thread count; the script prints both wall times, images/s and peak RSS, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_cell_options, machine_line


def reference(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from cxrlab.data import prepare_data
    from cxrlab.freeze import apply_freeze
    from cxrlab.models import create_model

    torch.set_num_threads(args.threads)
    prepared = prepare_data(args.data, image_size=args.size, progress=False)  # split only
    root = prepared.report.root
    model = create_model(args.model, 4, args.weights, image_size=args.size)
    apply_freeze(model, args.freeze)
    net = model.net  # the notebook feeds normalised 3-channel tensors to the backbone
    pre = model.preprocess_config
    tf = transforms.Compose([
        transforms.Grayscale(num_output_channels=3),
        transforms.Resize((args.size, args.size)),
        transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std),
    ])  # fmt: skip
    folder = datasets.ImageFolder(str(root), transform=tf)
    index = {Path(p).relative_to(root).as_posix(): i for i, (p, _) in enumerate(folder.samples)}
    rec = prepared.split.records
    train_idx = [index[rec[i].path] for i in prepared.split.indices("train")]
    val_idx = [index[rec[i].path] for i in prepared.split.indices("val")]
    train_dl = DataLoader(Subset(folder, train_idx), batch_size=args.batch, shuffle=True,
                          num_workers=2)  # fmt: skip
    val_dl = DataLoader(Subset(folder, val_idx), batch_size=args.batch, num_workers=2)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    seen, train_s = 0, 0.0
    for _ in range(args.epochs):
        model.train()
        t_epoch = time.perf_counter()  # the training loop alone, data loading included
        for x, y in train_dl:
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        train_s += time.perf_counter() - t_epoch
        model.eval()
        with torch.no_grad():
            for x, _y in val_dl:
                net(x)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images_per_wall_s": seen / wall,
            "train_loop_images_per_s": seen / train_s}  # fmt: skip


def cxrlab_run(args: argparse.Namespace) -> dict:
    import torch

    from cxrlab.training import TrainConfig, train

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(data=args.data, model=args.model, weights=args.weights, freeze=args.freeze,
                      epochs=args.epochs, batch_size=args.batch, image_size=args.size,
                      progress=False)  # fmt: skip
    t0 = time.perf_counter()
    result = train(cfg, Path(tempfile.mkdtemp()) / "run")
    wall = time.perf_counter() - t0
    seen = sum(h["images_per_s"] * h["seconds"] for h in result.history)
    train_s = sum(h["seconds"] for h in result.history)
    return {"wall_s": wall, "images_per_wall_s": seen / wall,
            "train_loop_images_per_s": seen / train_s,
            "test_accuracy": result.metrics["accuracy"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cell_options(p)
    p.add_argument("--which", choices=["both", "reference", "cxrlab"], default="both")
    args = p.parse_args()
    if args.which != "both":  # one pipeline per process, so peak RSS is its own
        out = reference(args) if args.which == "reference" else cxrlab_run(args)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    print(f"{machine_line(args.threads)}; {args.model} weights={args.weights} "
          f"freeze={args.freeze} epochs={args.epochs} batch={args.batch} "
          f"{args.size}px")  # fmt: skip
    results = {}
    for which in ("reference", "cxrlab"):
        env = dict(os.environ)
        if which == "cxrlab":
            env["CXRLAB_CACHE"] = tempfile.mkdtemp(prefix="cxrlab-bench-")  # cold caches
        cmd = [sys.executable, __file__, *sys.argv[1:], "--which", which]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results[which] = json.loads(out.strip().splitlines()[-1])
        print(f"{which:<10} {results[which]}")
    ref, cxr = results["reference"], results["cxrlab"]
    print(f"speed-up, wall time (reference / cxrlab): {ref['wall_s'] / cxr['wall_s']:.2f}x")
    loop = cxr["train_loop_images_per_s"] / ref["train_loop_images_per_s"]
    print(f"speed-up, training-loop images/s (cxrlab / reference): {loop:.2f}x")


if __name__ == "__main__":
    main()
