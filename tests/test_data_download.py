from pathlib import Path

import pytest

from cxrlab.cli import main
from cxrlab.data import KAGGLE_URL, download_database
from cxrlab.errors import DataError


def test_offline_download_says_what_to_do(monkeypatch, tmp_path: Path, capsys) -> None:
    import kagglehub

    def offline(handle: str, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'\nlong traceback text")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DataError, match="by hand") as info:
        download_database(tmp_path)
    assert KAGGLE_URL in str(info.value) and "--data PATH" in str(info.value)
    assert main(["data", "download", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Failed to resolve" in err


def test_download_copies_into_out(monkeypatch, tmp_path: Path) -> None:
    import kagglehub

    src = tmp_path / "kaggle-cache"
    (src / "COVID-19_Radiography_Dataset" / "COVID").mkdir(parents=True)
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, **kw: str(src))
    out = download_database(tmp_path / "data")
    assert (out / "COVID-19_Radiography_Dataset" / "COVID").is_dir()
