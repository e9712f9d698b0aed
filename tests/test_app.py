"""``cxrlab serve``: the service, the JSON API, concurrency, offline behaviour, a real browser."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.data import write_synthetic_dataset
from cxrlab.errors import CxrlabError
from cxrlab.infer import export_model, load
from cxrlab.training import TrainConfig, train

from conftest import png_with_declared_size, write_dicom, write_png

pytest.importorskip("gradio", reason="the app needs gradio: pip install 'cxrlab[app]'")
requests = pytest.importorskip("requests")

from cxrlab.app import ModelService, is_loopback, results_html, start_in_background  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained run and its ONNX export: two models to show side by side."""
    base = tmp_path_factory.mktemp("app")
    data = write_synthetic_dataset(base / "ph", per_class=8, seed=5, size=48, progress=False)
    cfg = TrainConfig(data=str(data), model="resnet18", weights="none", image_size=32, epochs=1,
                      batch_size=8, progress=False, precision="fp32")  # fmt: skip
    train(cfg, base / "run")
    export_model(base / "run", "onnx", base / "export" / "model.onnx")
    return base / "run", base / "export" / "model.onnx"


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good images in the formats users send, and the bad files a server must survive."""
    d = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (60, 50), dtype=np.uint8)
    files = {"gray8": write_png(d / "gray8.png", gray)}
    deep = (gray.astype(np.uint16) * 16).astype(np.uint16)  # 12-bit data in 16 bits
    Image.fromarray(deep).save(d / "deep16.png")
    files["deep16"] = d / "deep16.png"
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 200)])
    files["rgba"] = write_png(d / "rgba.png", rgba)
    Image.fromarray(gray).save(d / "jpeg-named.png", format="JPEG")
    files["jpeg"] = d / "jpeg-named.png"
    files["dicom"] = write_dicom(d / "xray.dcm", deep, photometric="MONOCHROME1")
    (d / "notes.txt").write_text("not an image")
    files["text"] = d / "notes.txt"
    good = (d / "gray8.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    files["truncated"] = d / "truncated.png"
    files["bomb"] = png_with_declared_size(d / "bomb.png", 60_000, 60_000)
    (d / "empty.png").write_bytes(b"")
    files["empty"] = d / "empty.png"
    return files


GOOD = ("gray8", "deep16", "rgba", "jpeg", "dicom")
BAD = {"text": "not an image", "truncated": "truncated", "bomb": "decompression bomb",
       "empty": "empty file"}  # fmt: skip


def test_service_answers_like_the_predictor_and_survives_bad_files(models, uploads) -> None:
    run, onnx = models
    service = ModelService([run, onnx])
    assert [m.name for m in service.models] == ["run", "model.onnx"]
    files = [(name, path) for name, path in uploads.items()]
    outcomes = service.classify(files, cam=True)
    by_name = {o.file: o for o in outcomes}
    direct = load(run)
    for name in GOOD:
        o = by_name[name]
        assert o.error is None and [m.model for m in o.outputs] == ["run", "model.onnx"]
        want = direct.predict(uploads[name])
        torch_out, onnx_out = o.outputs
        assert list(torch_out.probs.values()) == pytest.approx(list(want.values()), abs=1e-6)
        assert list(onnx_out.probs.values()) == pytest.approx(list(want.values()), abs=1e-4)
        # Grad-CAM of the predicted class for the PyTorch run; a note for the ONNX file
        assert torch_out.cam_class == torch_out.predicted
        cam = Image.open(io.BytesIO(torch_out.cam_png))
        assert cam.size == (32, 32) and cam.mode == "RGB"
        assert onnx_out.cam_png is None and "ONNX" in onnx_out.note
    for name, reason in BAD.items():
        assert by_name[name].outputs == [] and reason in by_name[name].error
    # a chosen class is explained instead of the predicted one
    o = service.classify_file(uploads["gray8"], cam_class="Normal")
    assert o.outputs[0].cam_class == "Normal"
    assert "unknown class" in service.classify_file(uploads["gray8"], cam_class="Cat").error
    # the CSV: one row per file and model, errors in their own column
    rows = service.to_csv(outcomes).splitlines()
    assert rows[0] == ("file,model,pred,p_COVID,p_Lung_Opacity,p_Normal,p_Viral Pneumonia,"
                       "error,ood_score,ood")  # fmt: skip
    # the run gives its shift score and flag; the ONNX export cannot, and leaves them empty
    torch_out, onnx_out = by_name[GOOD[0]].outputs
    assert torch_out.ood_score is not None and isinstance(torch_out.ood, bool)
    assert onnx_out.ood_score is None and onnx_out.ood is None
    assert {"ood_score", "ood"} <= set(torch_out.to_dict())
    assert len(rows) == 1 + 2 * len(GOOD) + len(BAD)
    assert any(r.startswith("bomb,,,") and "decompression bomb" in r for r in rows)
    # the page: one block per file, the models side by side, the CAM inline, text escaped
    page = results_html(outcomes)
    assert page.count('class="cxr-image"') == len(uploads)
    assert page.count('class="cxr-model"') == 2 * len(GOOD)
    assert page.count("data:image/png;base64,") == len(GOOD)
    assert "<script" not in results_html(service.classify([("<script>.png", uploads["text"])]))
    # the model card says where the model came from and how good it was
    card = service.models[0].card_markdown()
    for text in ("resnet18", "Training data", "Test metrics", "accuracy", "Calibration",
                 "temperature", "Shortcut audit"):  # fmt: skip
        assert text in card


def test_service_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxrlabError):
        ModelService([tmp_path / "empty"])
    with pytest.raises(CxrlabError, match="at least one"):
        ModelService([])


def test_loopback_and_missing_extra(monkeypatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    from cxrlab.app import server

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(CxrlabError, match=r"pip install 'cxrlab\[app\]'"):
        server._require_app_extra()


@pytest.fixture(scope="module")
def server(models):
    run, onnx = models
    with start_in_background([run, onnx], max_upload_mb=1) as srv:
        yield srv


def _post(url: str, paths: list[Path], **form: str) -> requests.Response:
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    return requests.post(f"{url}/api/predict", files=files, data=form, timeout=120)


def test_http_api_json_csv_cam_and_limits(server, models, uploads, tmp_path: Path) -> None:
    url = server.url
    assert url.startswith("http://127.0.0.1:")
    health = requests.get(f"{url}/api/health", timeout=30).json()
    assert health == {"status": "ok", "models": ["run", "model.onnx"]}
    cards = requests.get(f"{url}/api/models", timeout=30).json()
    assert "not a diagnostic device" in cards["disclaimer"]
    assert cards["models"][0]["test_metrics"]["n"] > 0 and cards["models"][1]["kind"] == "onnx"
    r = _post(url, [uploads["gray8"], uploads["text"]], cam="true", cam_class="Normal")
    assert r.status_code == 200
    body = r.json()
    assert "not a diagnostic device" in body["disclaimer"]
    first, second = body["results"]
    want = load(models[0]).predict(uploads["gray8"])
    got = first["models"][0]
    assert got["probabilities"] == pytest.approx(want, abs=1e-6)
    assert got["predicted"] == max(want, key=want.get) and got["cam_class"] == "Normal"
    cam = Image.open(io.BytesIO(base64.b64decode(got["cam_png_base64"])))
    assert cam.size == (32, 32)
    assert second == {"file": "notes.txt", "error": "not an image (unrecognised format)"}
    csv_text = _post(url, [uploads["gray8"]], format="csv").text
    assert csv_text.startswith("file,model,pred,") and csv_text.count("\n") == 3
    # too large for the limit (1 MB here): refused, and the server keeps serving
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    r = _post(url, [big])
    assert r.status_code == 413 and "too large" in r.json()["error"]
    big_file = [("files", ("big.png", big.read_bytes()))]
    upload = requests.post(f"{url}/gradio_api/upload", files=big_file, timeout=60)
    assert upload.status_code >= 400  # the page's own upload route has the same limit
    assert requests.get(f"{url}/api/health", timeout=30).status_code == 200
    assert _post(url, [uploads["gray8"]]).status_code == 200
    # FastAPI's docs page would load Swagger UI from a CDN: it is off
    assert requests.get(f"{url}/docs", timeout=30).status_code in (404, 405) or (
        "swagger" not in requests.get(f"{url}/docs", timeout=30).text.lower()
    )


def test_concurrent_users_get_their_own_results(server, models, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    paths = [write_png(tmp_path / f"u{i}.png", rng.integers(0, 256, (40 + i, 40), np.uint8))
             for i in range(8)]  # fmt: skip
    direct = load(models[0])
    want = {p.name: direct.predict(p) for p in paths}
    got: dict[str, dict] = {}
    errors: list[BaseException] = []

    def user(path: Path) -> None:
        try:
            r = _post(server.url, [path], cam="true")
            got[path.name] = r.json()["results"][0]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=user, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(got) == len(paths)
    for name, result in got.items():
        assert result["file"] == name
        assert result["models"][0]["probabilities"] == pytest.approx(want[name], abs=1e-6)


def test_server_makes_no_outside_connections(models, uploads, monkeypatch) -> None:
    """Starting the app, loading its page and predicting: every socket stays on this machine."""
    outside: list[object] = []
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(host):
            outside.append(address)
            raise OSError(f"test: no outside connections ({address})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    with start_in_background([models[0]]) as srv:
        page = requests.get(srv.url + "/", timeout=60)
        assert page.status_code == 200
        assert "fonts.googleapis" not in page.text and "cdn" not in page.text.lower()
        assert _post(srv.url, [uploads["gray8"]], cam="true").status_code == 200
    assert outside == []


def _browser() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None:
        reason = "needs Chromium (apt-get install chromium) and playwright (pip) for the app test"
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the app in a browser: {reason}")
        pytest.skip(reason)
    return chromium


def test_browser_upload_of_a_real_xray(models, sample_root: Path, tmp_path: Path) -> None:
    """Headless Chromium: upload a real X-ray, wait for the answer, check the class and the
    Grad-CAM image shown, and that the page asked nothing of any other host."""
    chromium = _browser()
    from playwright.sync_api import sync_playwright

    xray = sorted((sample_root / "COVID" / "images").glob("*.png"))[0]
    want = load(models[0]).predict(xray)
    want_class = max(want, key=want.get)
    requests_seen: list[str] = []
    with start_in_background([models[0]], max_upload_mb=1) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests_seen.append(r.url))
            page.goto(srv.url)
            banner = page.wait_for_selector("#cxr-banner", timeout=60_000)
            assert "not a diagnostic device" in banner.inner_text()
            page.set_input_files("#cxr-files input[type=file]", [str(xray)])
            page.wait_for_selector("#cxr-files >> text=" + xray.name, timeout=180_000)
            page.click("#cxr-classify")
            shown = page.wait_for_selector(".cxr-pred", timeout=120_000)
            assert shown.inner_text().strip() == want_class
            assert page.inner_text(".cxr-file").strip() == xray.name
            page.wait_for_function(
                "() => { const i = document.querySelector('img.cxr-cam');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=30_000,
            )
            assert page.eval_on_selector("img.cxr-cam", "i => i.naturalWidth") == 32
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            # the download button gives the same predictions as CSV
            with page.expect_download(timeout=30_000) as download:
                page.click("#cxr-download")
            rows = Path(download.value.path()).read_text().splitlines()
            assert rows[1].startswith(f"{xray.name},run,{want_class},")
            # a file the server cannot read: a message in the page, and it keeps serving
            bad = tmp_path / "report.pdf"
            bad.write_bytes(b"%PDF-1.4 not an x-ray")
            page.set_input_files("#cxr-files input[type=file]", [str(bad)])
            # (generous: on a loaded 2-core CI machine the upload once took over 60 s)
            page.wait_for_selector("#cxr-files >> text=report.pdf", timeout=180_000)
            page.click("#cxr-classify")
            err = page.wait_for_selector(".cxr-error", timeout=60_000)
            assert "Could not use this file" in err.inner_text()
            # an upload over the limit (1 MB here): Gradio says so in the page
            huge = tmp_path / "huge.png"
            huge.write_bytes(os.urandom(2 * 1024 * 1024))
            page.set_input_files("#cxr-files input[type=file]", [str(huge)])
            page.wait_for_selector("text=/exceed|too large|maximum/i", timeout=60_000)
            assert requests.get(f"{srv.url}/api/health", timeout=30).status_code == 200
        finally:
            browser.close()
    outside = [u for u in requests_seen if not u.startswith((srv.url, "data:", "blob:"))]
    assert outside == [], f"the page made requests off this machine: {outside[:5]}"
    assert Image.open(tmp_path / "app.png").size[0] == 1200
    shot = os.environ.get("CXRLAB_APP_SCREENSHOT")  # for the README: where to keep it
    if shot:
        shutil.copy(tmp_path / "app.png", shot)
    json.dumps(requests_seen)  # the log is plain data (for debugging a failure)


def test_serve_command_says_where_it_listens(models, monkeypatch, capsys) -> None:
    """127.0.0.1 by default, and it says so; another host gets a warning (no auth)."""
    import uvicorn

    from cxrlab.cli import main

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: calls.append((host, port)))
    assert main(["serve", str(models[0]), "--port", "7999"]) == 0
    out = capsys.readouterr().out
    assert calls == [("127.0.0.1", 7999)]
    assert "http://127.0.0.1:7999/" in out and "this machine only" in out
    assert "not a diagnostic device" in out
    assert main(["serve", str(models[0]), "--host", "0.0.0.0"]) == 0
    assert calls[-1] == ("0.0.0.0", 7860) and "WARNING" in capsys.readouterr().out
    assert main(["serve", str(models[0].parent / "nothing-here")]) == 2
    assert "cxrlab: error:" in capsys.readouterr().err
