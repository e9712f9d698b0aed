"""``compile=True``: the compiled training step learns what the eager one does, and a
machine where compiling fails trains eagerly after one line saying so."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cxrlab.data import write_synthetic_dataset
from cxrlab.training import train

from conftest import tiny_config


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return write_synthetic_dataset(out, per_class=6, seed=3, size=32, progress=False)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Compiled graphs are cached per code object: each test starts and ends without any."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _losses(result) -> list[tuple[float, float]]:
    return [(row["train_loss"], row["val_loss"]) for row in result.history]


def test_a_compiled_step_gives_the_eager_losses(phantoms: Path, tmp_path: Path, capsys) -> None:
    # SGD: Adam's first update is g/|g|, which turns a rounding difference in a near-zero
    # gradient into a whole step of lr, and two exact runs would part after one step
    sgd = dict(batch_size=8, epochs=1, optimizer="sgd", lr=1e-3, momentum=0.9)
    eager = train(tiny_config(phantoms, **sgd), tmp_path / "eager")
    compiled = train(tiny_config(phantoms, **sgd, compile=True), tmp_path / "compiled")
    if "torch.compile is unavailable here" in capsys.readouterr().out:
        pytest.skip("torch.compile cannot compile on this machine (no C++ compiler?)")
    assert len(eager.history) == len(compiled.history) == 1
    for (train_e, val_e), (train_c, val_c) in zip(_losses(eager), _losses(compiled), strict=True):
        # The same arithmetic in another order: the first step agrees to float32 rounding
        # (1e-6), and each step multiplies the difference, as any change of summation order
        # does in a ResNet learning from scratch with BatchNorm over 8 images (1e-3 after
        # four steps), so one epoch of two steps is compared. A wrong gradient or a lost
        # BatchNorm update moves these losses by far more.
        assert train_c == pytest.approx(train_e, rel=1e-4)
        assert val_c == pytest.approx(val_e, rel=2e-3)
    assert compiled.metrics["accuracy"] == pytest.approx(eager.metrics["accuracy"], abs=1e-9)
    assert compiled.card.training.config.compile is True


def test_a_failed_compilation_trains_eagerly_after_one_line(
    phantoms: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found (simulated)")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net: real_compile(net, backend=no_compiler))
    eager = train(tiny_config(phantoms, batch_size=8, epochs=1), tmp_path / "eager")
    fallback = train(tiny_config(phantoms, batch_size=8, epochs=1, compile=True),
                     tmp_path / "fallback")  # fmt: skip
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "torch.compile is unavailable here" in line]
    assert len(lines) == 1, out
    assert "no C++ compiler found (simulated)" in lines[0]
    assert "compile=False" in lines[0]
    # the failed compilation ran nothing: the same batches, the same result, bit for bit
    assert _losses(fallback) == _losses(eager)
