import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.data import ImageReadError, load_gray8

from conftest import png_with_declared_size


def test_modes_convert_to_gray8(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))  # (16, 32)
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 128)])).save(tmp_path / "rgba.png")
    for name in ("l.png", "rgb.png", "rgba.png"):
        out = load_gray8(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (16, 32)
        np.testing.assert_array_equal(out, gray)


def test_16bit_uses_full_range_and_does_not_turn_white(tmp_path: Path) -> None:
    # 12-bit detector data stored in 16 bits: values 0..4095
    deep = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_gray8(tmp_path / "deep.png")
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.05  # not saturated
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # monotone ramp preserved


def test_jpeg_content_under_png_name(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), 100, np.uint8)).save(buf, format="JPEG")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    out = load_gray8(tmp_path / "x.png")
    assert out.shape == (20, 30) and abs(int(out.mean()) - 100) <= 2


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("empty", "empty file"),
        ("text", "not an image"),
        ("truncated", "truncated"),
        ("bomb", "decompression bomb"),
    ],
)
def test_bad_files_raise_with_reason(tmp_path: Path, kind: str, reason: str) -> None:
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("Patient notes, not an image\n")
    elif kind == "truncated":
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        png_with_declared_size(path, 100_000, 100_000)
    with pytest.raises(ImageReadError, match=reason) as info:
        load_gray8(path)
    assert info.value.path == str(path)


def test_max_pixels_refuses_before_decoding(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match=r"100x100"):
        load_gray8(tmp_path / "a.png", max_pixels=5000)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="unreadable"):
        load_gray8(tmp_path / "missing.png")


def test_dicom_radiographs_are_read_as_a_viewer_shows_them(tmp_path: Path, monkeypatch) -> None:
    """DICOM: modality LUT, window, MONOCHROME1 inversion, then the file's own range."""
    pytest.importorskip("pydicom", reason="pip install 'cxrlab[dicom]'")
    from cxrlab.data.imageio import is_dicom, load_gray8

    from conftest import write_dicom

    values = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (16, 1))  # 12-bit ramp
    expected = np.rint(values / 4095 * 255).astype(np.uint8)
    plain = write_dicom(tmp_path / "plain.dcm", values)
    assert is_dicom(plain) and not is_dicom(tmp_path / "missing.dcm")
    np.testing.assert_array_equal(load_gray8(plain), expected)
    # a linear modality LUT changes nothing after the rescale; MONOCHROME1 is inverted
    scaled = write_dicom(tmp_path / "scaled.dcm", values, slope=2.0, intercept=-1024)
    np.testing.assert_array_equal(load_gray8(scaled), expected)
    inverted = write_dicom(tmp_path / "mono1.dcm", values, photometric="MONOCHROME1")
    np.testing.assert_array_equal(load_gray8(inverted), 255 - expected)
    # a window: values below/above it saturate, the window spans 0..255
    windowed = load_gray8(write_dicom(tmp_path / "w.dcm", values, window=(2048, 1024)))
    assert windowed[0, 0] == 0 and windowed[0, -1] == 255
    inside = (values[0] > 1536 + 10) & (values[0] < 2560 - 10)
    assert 0 < windowed[0, inside].min() < windowed[0, inside].max() < 255
    # under another extension (hospital exports often have none): found by its magic bytes
    renamed = tmp_path / "IM0001"
    renamed.write_bytes(plain.read_bytes())
    np.testing.assert_array_equal(load_gray8(renamed), expected)
    # bad DICOM: no pixels, a header that claims a huge image, a truncated file
    with pytest.raises(ImageReadError, match="without pixel data"):
        load_gray8(write_dicom(tmp_path / "nopix.dcm", values, with_pixels=False))
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_gray8(write_dicom(tmp_path / "bomb.dcm", values, rows_cols=(60000, 60000),
                               with_pixels=False))  # fmt: skip
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(plain.read_bytes()[:-500])
    with pytest.raises(ImageReadError, match="unreadable DICOM"):
        load_gray8(cut)
    # without pydicom: a reason that names the extra, not a traceback
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImageReadError, match=r"cxrlab\[dicom\]"):
        load_gray8(plain)
