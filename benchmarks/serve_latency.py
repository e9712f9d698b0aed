"""How long ``cxrlab serve`` takes to answer: one image per request, with and without Grad-CAM,
one user and several at once.

    python benchmarks/serve_latency.py runs/x [runs/y ...] --images DIR --requests 20

Starts the app on a free local port (``cxrlab.app.start_in_background``), posts images from
``--images`` to ``/api/predict`` and prints the median and 90th-percentile latency and the
throughput. Needs ``pip install 'cxrlab[app]'`` and ``requests``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine_line


def _post(url: str, path: Path, cam: bool) -> float:
    import requests

    t0 = time.perf_counter()
    with open(path, "rb") as f:
        r = requests.post(f"{url}/api/predict", files={"files": (path.name, f)},
                          data={"cam": str(cam).lower()}, timeout=600)  # fmt: skip
    r.raise_for_status()
    assert "error" not in r.json()["results"][0], r.text[:200]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="run folders, ensemble folders, .onnx files")
    parser.add_argument("--images", required=True, help="a folder of X-rays (searched recursively)")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--users", type=int, default=4, help="concurrent users in the last row")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from cxrlab.app import start_in_background

    torch.set_num_threads(args.threads)
    images = sorted(p for p in Path(args.images).rglob("*.png"))[: args.requests]
    if not images:
        raise SystemExit(f"no PNG images under {args.images}")
    print(machine_line(args.threads))
    print(f"# models: {', '.join(args.models)}; {len(images)} requests of one image each")
    print("| case | median s | p90 s | images/s |")
    print("|---|---|---|---|")
    with start_in_background(args.models) as server:
        _post(server.url, images[0], True)  # warm-up
        for cam, users in ((False, 1), (True, 1), (True, args.users)):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(users) as pool:
                times = list(pool.map(_post, [server.url] * len(images), images,
                                      [cam] * len(images)))  # fmt: skip
            wall = time.perf_counter() - t0
            p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
            case = f"{'with' if cam else 'without'} Grad-CAM, {users} user(s)"
            print(f"| {case} | {statistics.median(times):.3f} | {p90:.3f} | "
                  f"{len(images) / wall:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
