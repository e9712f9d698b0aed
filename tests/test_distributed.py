"""Two gloo processes on the CPU train exactly like one process on the same data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrlab.data import write_synthetic_dataset


@pytest.mark.parametrize("feature_cache", ["auto", "off"])
def test_two_process_ddp_matches_single_process(tmp_path: Path, feature_cache: str) -> None:
    data = write_synthetic_dataset(tmp_path / "ph", per_class=10, seed=1, size=48, progress=False)
    args = ["train", "--data", str(data), "--model", "resnet18", "--weights", "none",
            "--freeze", "head", "--feature-cache", feature_cache, "--image-size", "32",
            "--epochs", "2", "--batch-size", "8", "--precision", "fp32", "--device", "cpu",
            "--threads", "1", "--no-progress"]  # fmt: skip
    single = subprocess.run([sys.executable, "-m", "cxrlab", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cxrlab", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert "DistributedDataParallel: 2 processes" in two.stdout
    assert two.stdout.count("test: accuracy") == 1  # rank 0 alone tests and writes

    def load(run: str) -> tuple[dict, list[list[str]]]:
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        history = [line.split(",") for line in (tmp_path / run / "history.csv").read_text()
                   .splitlines()[1:]]  # fmt: skip
        return metrics, history

    m1, h1 = load("one")
    m2, h2 = load("two")
    assert m2["n"] == m1["n"]  # the full test set exactly once, no padding
    assert m2["confusion_matrix"] == m1["confusion_matrix"]
    assert m2["nll"] == pytest.approx(m1["nll"], abs=1e-5)
    for a, b in zip(h1, h2):
        assert [float(v) for v in a[1:5]] == pytest.approx([float(v) for v in b[1:5]], abs=1e-5)


def test_sync_batchnorm_replaces_only_the_batchnorm_that_trains() -> None:
    from torch import nn

    from cxrlab.engine.distributed import sync_batchnorm
    from cxrlab.errors import ConfigError
    from cxrlab.freeze import apply_freeze
    from cxrlab.models import create_model

    model = create_model("resnet18", 4, "none", image_size=64)
    apply_freeze(model, "0.5")
    frozen = model.frozen_modules
    keys = list(model.state_dict())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with pytest.raises(ConfigError, match="CUDA"):  # PyTorch's SyncBatchNorm is GPU-only
        sync_batchnorm(model, frozen, torch.device("cpu"))
    n = sync_batchnorm(model, frozen, torch.device("cuda"))  # module surgery needs no GPU
    synced = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    frozen_bn = {id(b) for m in frozen for b in m.modules() if isinstance(b, nn.BatchNorm2d)}
    assert n == len(synced) == len(bns) - len(frozen_bn) > 0
    still = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    assert {id(m) for m in still} == frozen_bn  # the very modules the freezing holds in eval
    model.train()
    assert all(not m.training for m in still) and all(m.training for m in synced)
    assert list(model.state_dict()) == keys  # run folders load into plain BatchNorm
    assert all(p.requires_grad for m in synced for p in m.parameters())


def test_sync_bn_on_cpu_processes_is_refused_clearly(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path / "ph", per_class=4, seed=1, size=40, progress=False)
    args = ["train", "--data", str(data), "--model", "resnet18", "--weights", "none",
            "--freeze", "0.5", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu", "--threads", "1", "--no-progress", "--sync-bn"]  # fmt: skip
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cxrlab", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode != 0
    assert "--sync-bn needs CUDA GPUs" in two.stderr
