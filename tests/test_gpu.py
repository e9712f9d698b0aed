"""The CUDA paths: bf16 autocast, channels_last, data preloaded on the GPU, the feature cache.

Skipped without a CUDA GPU (CI and most laptops); every CPU path is tested elsewhere. Run on a
GPU machine with ``python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cxrlab.data import write_synthetic_dataset
from cxrlab.runs import evaluate_run
from cxrlab.training import TrainConfig, train

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; the CPU paths are tested elsewhere"
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return write_synthetic_dataset(out, per_class=12, seed=1, size=72, progress=False)


def cfg(data: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), model="resnet18", weights="none", image_size=64, epochs=2,
                batch_size=8, progress=False, device="cuda")  # fmt: skip
    return TrainConfig(**(base | kw))


def resolved(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["resolved"]


def test_cuda_bf16_channels_last_preload_trains_like_the_cpu(phantoms: Path, tmp_path: Path,
                                                             capsys) -> None:  # fmt: skip
    gpu = train(cfg(phantoms, freeze="0.5", feature_cache="off"), tmp_path / "gpu")
    out = capsys.readouterr().out
    r = resolved(tmp_path / "gpu")
    assert r["device"].startswith("cuda")
    assert r["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "fp32")
    assert "preloaded on cuda" in out  # the tiny set fits: data on the device once
    cpu = train(cfg(phantoms, freeze="0.5", feature_cache="off", device="cpu", precision="fp32"),
                tmp_path / "cpu")  # fmt: skip
    # same data order and initialisation; bf16 rounding moves the losses a little only
    first_gpu, first_cpu = gpu.history[0]["train_loss"], cpu.history[0]["train_loss"]
    assert first_gpu == pytest.approx(first_cpu, rel=0.05)
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in gpu.history)
    # the saved model evaluates to the reported metrics on the GPU
    again = evaluate_run(tmp_path / "gpu", device="cuda", progress=False)
    assert again["confusion_matrix"] == gpu.metrics["confusion_matrix"]


def test_cuda_feature_cache_matches_full_forward_in_fp32(phantoms: Path, tmp_path: Path) -> None:
    c = cfg(phantoms, freeze="0.5", precision="fp32")
    cached = train(c, tmp_path / "cached")
    plain = train(c.replace(feature_cache="off"), tmp_path / "plain")
    assert resolved(tmp_path / "cached")["frozen_feature_cache"].startswith("the first")
    for a, b in zip(cached.history, plain.history):  # cuDNN may pick other kernels: loose
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)


def test_vit_trains_on_cuda_with_autocast(phantoms: Path, tmp_path: Path) -> None:
    result = train(cfg(phantoms, model="vit_tiny", image_size=64, freeze="last:2", epochs=1),
                   tmp_path / "vit")  # fmt: skip
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert resolved(tmp_path / "vit")["frozen_feature_cache"].startswith("the first")
