from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import main
from cxrlab.data import draw_phantom, scan_dataset, write_synthetic_dataset
from cxrlab.errors import DataError


def test_synth_is_deterministic_and_in_kaggle_layout(tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "a"),
                "--per-class",
                "3",
                "--size",
                "64",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    assert "Wrote 12 phantom images" in capsys.readouterr().out
    write_synthetic_dataset(tmp_path / "b", per_class=3, seed=5, size=64, progress=False)
    files_a = sorted((tmp_path / "a").rglob("*.png"))
    files_b = sorted((tmp_path / "b").rglob("*.png"))
    assert len(files_a) == 12
    assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]
    write_synthetic_dataset(tmp_path / "c", per_class=3, seed=6, size=64, progress=False)
    assert files_a[0].read_bytes() != sorted((tmp_path / "c").rglob("*.png"))[0].read_bytes()
    report = scan_dataset(tmp_path / "a", progress=False)
    assert report.known_database and report.invalid == []
    assert report.class_counts() == dict.fromkeys(report.classes, 3)


def test_drawing_in_worker_processes_writes_the_same_files(tmp_path: Path) -> None:
    """Large sets are drawn by several processes; each image has its own generator, so the
    files (images and masks) are byte for byte those of one process."""
    kw = dict(per_class=50, seed=2, size=32, masks=True, progress=False)
    write_synthetic_dataset(tmp_path / "one", workers=1, **kw)
    write_synthetic_dataset(tmp_path / "two", workers=2, **kw)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert len(one) == 400 and one == two
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
               for f in one)  # fmt: skip


def test_same_seed_same_patient_finding_only_in_the_lungs() -> None:
    # With one seed, each class draws the same patient; the finding is the only difference.
    for i in range(6):
        normal = draw_phantom("Normal", np.random.default_rng([1, i]), 64).astype(float)
        for label in ("COVID", "Lung_Opacity", "Viral Pneumonia"):
            diff = draw_phantom(label, np.random.default_rng([1, i]), 64).astype(float) - normal
            assert diff.max() > 3, label  # a visible finding, denser than lung
            assert np.abs(diff[:, :3]).max() == 0 and np.abs(diff[:, -3:]).max() == 0
            assert diff[:5].std() < 1  # nothing changes above the lungs


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="Unknown phantom class"):
        draw_phantom("Cat", np.random.default_rng(0))
    with pytest.raises(DataError, match="per-class"):
        write_synthetic_dataset("unused", per_class=0)


def _phantom_tensors(n: int, seed: int):
    import torch
    from PIL import Image

    from cxrlab.data import COVID_RADIOGRAPHY_CLASSES

    xs, ys = [], []
    for ci, cls in enumerate(COVID_RADIOGRAPHY_CLASSES):
        for i in range(n):
            img = draw_phantom(cls, np.random.default_rng([seed, ci, i]), 128)
            xs.append(np.asarray(Image.fromarray(img).resize((64, 64), Image.BILINEAR)))
            ys.append(ci)
    return torch.tensor(np.stack(xs)).float().unsqueeze(1) / 255, torch.tensor(ys)


def test_phantoms_are_learnable_but_not_trivial() -> None:
    """A small CNN trained briefly is well above chance (25 %) and well below 100 %."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    xtr, ytr = _phantom_tensors(50, seed=1)
    xte, yte = _phantom_tensors(25, seed=2)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(64 * 16, 4),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(14):
        net.train()
        perm = torch.randperm(len(ytr), generator=g)
        for b in range(0, len(ytr), 16):
            idx = perm[b : b + 16]
            loss = nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(xte).argmax(1) == yte).float().mean().item()
    assert 0.4 < accuracy < 0.95, accuracy


def test_phantoms_count_is_chosen_by_name(tmp_path: Path, monkeypatch) -> None:
    from cxrlab.data.prepare import resolve_data

    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))
    root = resolve_data("phantoms:10")
    assert root.name == "COVID-19_Radiography_Dataset"
    assert scan_dataset(root, progress=False).class_counts() == dict.fromkeys(
        ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"), 10
    )
    assert resolve_data("phantoms:10") == root  # generated once, then reused
    assert resolve_data(tmp_path / "x") == tmp_path / "x"  # a folder stays a folder
    for bad in ("phantoms:", "phantoms:ten", "phantoms:-5", "phantoms:9", "phantoms:@128"):
        with pytest.raises(DataError, match="phantoms:N"):
            resolve_data(bad)
    # @SIZE: drawn at that size, in a cache folder of its own
    small = resolve_data("phantoms:10@64")
    assert small != root
    report = scan_dataset(small, progress=False)
    assert len(report.records) == 40
    assert {(r.width, r.height) for r in report.records} == {(64, 64)}
    assert {(r.width, r.height) for r in scan_dataset(root, progress=False).records} == {(256, 256)}
    for bad in ("phantoms:10@", "phantoms:10@32", "phantoms:10@2000", "phantoms:10@big"):
        with pytest.raises(DataError, match="phantoms:N@SIZE"):
            resolve_data(bad)
    # a real folder of that name wins over the phantoms, and says so
    monkeypatch.chdir(tmp_path)
    for name in ("phantoms:12", "phantoms"):
        (tmp_path / name).mkdir()
        with pytest.warns(UserWarning, match=f"Using the folder ./{name}"):
            assert resolve_data(name) == Path(name)
