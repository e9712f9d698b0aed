"""Lung masks, split-folder datasets (COVID-QU-Ex), near-duplicates and planted shortcuts."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.cli import main
from cxrlab.data import (
    apply_lung_mask,
    decoded_masks,
    find_layout,
    prepare_data,
    scan_dataset,
    write_synthetic_dataset,
)
from cxrlab.data.dedup import near_duplicates, signatures
from cxrlab.data.split import load_split
from cxrlab.data.synth import draw_phantom, draw_phantom_with_mask
from cxrlab.errors import DataError

from conftest import CLASSES, random_gray, write_png


def _lung_mask(size: int, w: int | None = None) -> np.ndarray:
    m = np.zeros((size, w or size), np.uint8)
    m[size // 4 : 3 * size // 4, (w or size) // 8 : 3 * (w or size) // 8] = 255
    return m


def test_masks_are_matched_checked_and_resized(kaggle_db: Path) -> None:
    """Kaggle layout: masks beside images, 24 px masks for 32 px images, every fault named."""
    for cls in CLASSES:
        for i in range(6):
            write_png(kaggle_db / cls / "masks" / f"{cls}-{i + 1}.png", _lung_mask(24))
    (kaggle_db / "COVID" / "masks" / "COVID-1.png").unlink()  # missing
    write_png(kaggle_db / "COVID" / "masks" / "COVID-2.png", np.zeros((24, 24), np.uint8))  # empty
    write_png(kaggle_db / "COVID" / "masks" / "COVID-3.png", _lung_mask(24, 12))  # wrong shape
    (kaggle_db / "COVID" / "masks" / "COVID-4.png").write_bytes(b"not a png")  # unreadable
    write_png(kaggle_db / "COVID" / "masks" / "COVID-99.png", _lung_mask(24))  # no image
    report = scan_dataset(kaggle_db, progress=False)
    masks = decoded_masks(report.root, report.records, 32, progress=False)
    status = dict(zip((r.path for r in report.records), masks.status))
    assert status["COVID/images/COVID-1.png"].startswith("missing")
    assert status["COVID/images/COVID-2.png"].startswith("empty")
    assert status["COVID/images/COVID-3.png"] == "wrong size (12x24 mask for a 32x32 image)"
    assert status["COVID/images/COVID-4.png"].startswith("unreadable")
    assert masks.extra == ("COVID/masks/COVID-99.png",)
    assert int(masks.valid.sum()) == 4 * 6 - 4
    assert masks.summary().startswith("20 of 24 images have a valid lung mask")
    # a valid 24 px mask resized to the 32 px cache keeps its shape: columns 4..11, rows 8..23
    ok = next(i for i, s in enumerate(masks.status) if s == "ok")
    rows, cols = np.nonzero(masks.array[ok])
    assert set(np.unique(masks.array)) == {0, 1}
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 23, 4, 11)
    with pytest.raises(DataError, match=r"--lungs remove needs a valid lung mask .* 4 of 24"):
        masks.require(range(len(report.records)), "--lungs remove")
    with pytest.raises(DataError, match="lung mask"):
        prepare_data(kaggle_db, image_size=32, lungs="remove", progress=False)


def test_data_masks_command_lists_problems(kaggle_db: Path, capsys) -> None:
    write_png(kaggle_db / "Normal" / "masks" / "Normal-1.png", _lung_mask(32))
    assert main(["data", "masks", str(kaggle_db)]) == 0
    out = capsys.readouterr().out
    assert "1 of 24 images have a valid lung mask (empty: 23)" in out
    assert "COVID/images/COVID-1.png: empty" in out


def test_apply_lung_mask_fills_from_the_visible_pixels() -> None:
    img = np.zeros((1, 4, 4), np.uint8)
    img[0, :, :2] = 200  # the "lung" half is bright
    img[0, :, 2:] = 10
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, :, :2] = 1
    removed = apply_lung_mask(img, mask, "remove", "mean")
    assert (removed[0, :, :2] == 10).all() and (removed[0, :, 2:] == 10).all()  # no leak of 200
    only = apply_lung_mask(img, mask, "only", "mean")
    assert (only[0] == 200).all()
    noise_a = apply_lung_mask(img, mask, "remove", "noise", seeds=[3])
    noise_b = apply_lung_mask(img, mask, "remove", "noise", seeds=[3])
    assert (noise_a == noise_b).all() and (noise_a[0, :, 2:] == 10).all()
    assert (apply_lung_mask(img, mask, "keep") == img).all()
    with pytest.raises(DataError, match="Unknown lung mode"):
        apply_lung_mask(img, mask, "hide")


def _qu_ex(root: Path, per_split: dict[str, int]) -> Path:
    """A COVID-QU-Ex-like tree: Train/Val/Test/<class>/{images,lung masks}/."""
    db = root / "Infection Segmentation Data"
    k = 0
    for split, n in per_split.items():
        for cls in ("COVID-19", "Non-COVID", "Normal"):
            for i in range(n):
                k += 1
                write_png(db / split / cls / "images" / f"{cls}_{i}.png", random_gray(k, 24))
                write_png(db / split / cls / "lung masks" / f"{cls}_{i}.png", _lung_mask(24))
                write_png(db / split / cls / "infection masks" / f"{cls}_{i}.png",
                          np.zeros((24, 24), np.uint8))  # fmt: skip
    return db


def test_split_folders_are_one_dataset_with_its_own_split(tmp_path: Path) -> None:
    db = _qu_ex(tmp_path, {"Train": 4, "Val": 2, "Test": 3})
    layout = find_layout(tmp_path)
    assert layout.root == db and layout.has_split_folders
    assert layout.class_names == ("COVID-19", "Non-COVID", "Normal")
    report = scan_dataset(tmp_path, progress=False)
    assert len(report.records) == 27  # masks are never images
    data = prepare_data(tmp_path, image_size=24, split_file=tmp_path / "s.csv", progress=False)
    assert data.split.source == "folders"
    assert data.split.counts()["test"] == {"COVID-19": 3, "Non-COVID": 3, "Normal": 3}
    assert all(a == r.path.split("/")[0].lower() for a, r in
               zip(data.split.assignment, data.split.records))  # fmt: skip
    assert load_split(tmp_path / "s.csv").source == "folders"
    fresh = prepare_data(tmp_path, image_size=24, split_source="stratified", progress=False)
    assert fresh.split.source == "stratified" and fresh.split.assignment != data.split.assignment
    masks = decoded_masks(report.root, data.split.records, 24, progress=False)
    assert masks.valid.all()
    sick = decoded_masks(report.root, data.split.records, 24, "infection", progress=False)
    assert sick.valid.all() and not sick.array.any()  # empty infection masks: no infection
    # lungs removed: every image of the prepared data has its lung field filled
    hidden = prepare_data(tmp_path, image_size=24, lungs="remove", progress=False)
    lung = masks.array.astype(bool)
    for i in range(3):
        assert len(np.unique(hidden.images.array[i][lung[i]])) == 1
        assert (hidden.images.array[i][~lung[i]] == data.images.array[i][~lung[i]]).all()
    with pytest.raises(DataError, match="no Train/Val/Test folders"):
        prepare_data(tmp_path / "Infection Segmentation Data" / "Train", split_source="folders",
                     image_size=24, progress=False)  # fmt: skip


def test_near_duplicates_find_resized_and_recropped_copies() -> None:
    rng = np.random.default_rng(0)
    base = [np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).resize(
        (96, 96), Image.BICUBIC)) for _ in range(6)]  # fmt: skip
    resized = np.asarray(Image.fromarray(base[0]).resize((64, 64), Image.BILINEAR))
    resized = np.asarray(Image.fromarray(resized).resize((96, 96), Image.BILINEAR))
    recropped = np.asarray(Image.fromarray(base[1][2:, 2:]).resize((96, 96), Image.BILINEAR))
    a = signatures(np.stack(base))
    b = signatures(np.stack([resized, recropped, *base[2:4]]))  # a 2 % re-crop
    pairs = {(i, j) for i, j, _, _ in near_duplicates(a, b)}
    assert {(0, 0), (1, 1), (2, 2), (3, 3)} <= pairs
    assert not {(i, j) for i, j in pairs if i >= 4}  # unrelated images are not copies
    assert near_duplicates(a) == []  # six different images


def test_phantom_masks_and_planted_marker(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path, per_class=3, size=64, masks=True, shortcut="marker",
                                   progress=False)  # fmt: skip
    for cls in CLASSES:
        for i in (1, 2, 3):
            img = np.asarray(Image.open(root / cls / "images" / f"{cls}-{i}.png"))
            mask = np.asarray(Image.open(root / cls / "masks" / f"{cls}-{i}.png"))
            assert set(np.unique(mask)) == {0, 255} and 0.1 < (mask > 0).mean() < 0.5
            k = CLASSES.index(cls)
            tag = img[2:5, int(64 * (0.1 + 0.22 * k)) + 2 : int(64 * (0.22 + 0.22 * k)) - 1]
            assert (tag == 240).all()  # the class's tag sits where its class puts it
            assert not mask[:6].any()  # and outside the lungs
    # without a shortcut the image is exactly the plain phantom
    for cls in CLASSES:
        plain = draw_phantom(cls, np.random.default_rng([1, 2]), 64)
        image, _ = draw_phantom_with_mask(cls, np.random.default_rng([1, 2]), 64)
        assert (plain == image).all()
    with pytest.raises(DataError, match="Unknown shortcut"):
        write_synthetic_dataset(tmp_path / "x", per_class=1, shortcut="ruler", progress=False)


@pytest.mark.realdata
def test_real_masks_and_copies_between_datasets(masks_root: Path, sample_root: Path) -> None:
    """COVID-QU-Ex: 1,500 images, every lung mask valid, its own split; and the sample shares
    re-sized copies with it, each under the matching class."""
    data = prepare_data(masks_root, image_size=64, progress=False)
    assert data.split.source == "folders" and len(data.split.records) == 1500
    assert data.split.counts()["train"] == {"COVID-19": 300, "Non-COVID": 300, "Normal": 300}
    masks = decoded_masks(data.report.root, data.split.records, 64, progress=False)
    assert masks.valid.all() and not masks.extra
    assert 0.15 < masks.array.mean() < 0.4  # lung fields cover a fifth to a third of an image
    sample = prepare_data(sample_root, image_size=64, progress=False)
    pairs = near_duplicates(signatures(sample.images.array), signatures(data.images.array))
    assert len(pairs) > 50
    same = {("COVID", "COVID-19"), ("Lung_Opacity", "Non-COVID"),
            ("Viral Pneumonia", "Non-COVID"), ("Normal", "Normal")}  # fmt: skip
    labels = [(sample.split.records[i].label, data.split.records[j].label) for i, j, _, _ in pairs]
    assert sum(pair in same for pair in labels) / len(labels) > 0.95


def test_crop_to_lungs_cuts_the_box_plus_margin_and_resizes_back() -> None:
    import numpy as np
    import pytest
    from PIL import Image

    from cxrlab.data.masks import crop_boxes, crop_to_lungs
    from cxrlab.errors import DataError

    masks = np.zeros((2, 100, 100), np.uint8)
    masks[0, 20:80, 10:40] = 1  # right lung
    masks[0, 25:70, 60:90] = 1  # left lung: the box is rows 20-79, columns 10-89
    masks[1, 0:100, 0:100] = 1
    boxes = crop_boxes(masks, margin=0.05)
    assert boxes[0].tolist() == [15, 85, 5, 95] and boxes[1].tolist() == [0, 100, 0, 100]
    images = np.random.default_rng(0).integers(0, 256, (2, 100, 100), dtype=np.uint8)
    out = crop_to_lungs(images, boxes)
    want = np.asarray(Image.fromarray(images[0, 15:85, 5:95]).resize((100, 100), Image.BILINEAR))
    assert np.array_equal(out[0], want) and np.array_equal(out[1], images[1])
    tiny = np.zeros((1, 100, 100), np.uint8)
    tiny[0, 40:50, 40:50] = 1  # a 10 % box: nothing to crop to
    with pytest.raises(DataError, match="will not crop to it"):
        crop_boxes(tiny)
    with pytest.raises(DataError, match="empty"):
        crop_boxes(np.zeros((1, 10, 10), np.uint8))
