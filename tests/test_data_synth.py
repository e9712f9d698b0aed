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
