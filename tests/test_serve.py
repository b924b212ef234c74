"""The web app: its JSON API against a hand-prepared forward pass, every kind of bad upload, batching of
concurrent requests, a bounded load test on loopback, and the page driven by a real headless browser."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from alexnet import ModelCard, create_model
from alexnet.models.checkpoint import save_checkpoint
from alexnet.runtime.inference import load_classifier
from alexnet.runtime.modes import INFERENCE_MODES

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from alexnet.serve import Limits, ServerThread, create_app  # noqa: E402
from alexnet.serve.batcher import Batcher  # noqa: E402
from alexnet.serve.loadtest import load_test, percentile  # noqa: E402

CARD = ModelCard(
    32, 40, mean=(0.30, 0.50, 0.70), std=(0.11, 0.22, 0.33), model="alexnet_small",
    classes=("apple", "banana", "cherry", "date", "elder", "fig", "grape"),
)  # fmt: skip


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("alexnet_small", len(CARD.classes))
    path = tmp_path_factory.mktemp("serve") / "best.safetensors"
    save_checkpoint(path, model, CARD.to_json())
    return model.eval(), path


@pytest.fixture(scope="module")
def clf(model_and_checkpoint):
    return load_classifier(model_and_checkpoint[1], device="cpu").fast(None, "fp32")


@pytest.fixture
def client(clf):
    with TestClient(create_app(clf, limits=Limits(max_upload_bytes=200_000, max_pixels=1_000_000, max_files=4))) as c:
        yield c


def photo(seed: int = 0, size: tuple[int, int] = (80, 50), fmt: str = "PNG") -> tuple[Image.Image, bytes]:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return image, buf.getvalue()


def reference_probabilities(model: torch.nn.Module, image: Image.Image) -> torch.Tensor:
    """By hand: shorter side to 40 (antialiased), central 40x40, central 32x32, (x - mean) / std, softmax."""
    x = TF.pil_to_tensor(image)
    x = TF.center_crop(TF.resize(x, 40, antialias=True), [40, 40])[:, 4:36, 4:36].float() / 255
    x = (x - torch.tensor(CARD.mean).view(3, 1, 1)) / torch.tensor(CARD.std).view(3, 1, 1)
    with torch.no_grad():
        return model(x[None]).softmax(1)[0]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and header declaring an 8-bit greyscale image of that size, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of zeros written chunk by chunk: a few kB that decode to width*height bytes."""
    squeeze = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------- good requests
def test_predict_returns_the_softmax_of_the_hand_prepared_image_ranked(client, model_and_checkpoint):
    image, raw = photo(0)
    r = client.post("/predict", files={"file": ("leaf.png", raw, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    [result] = body["results"]
    probs = reference_probabilities(model_and_checkpoint[0], image)
    expected = probs.topk(5)
    assert [t["class"] for t in result["top"]] == [CARD.classes[i] for i in expected.indices.tolist()]
    assert [t["probability"] for t in result["top"]] == pytest.approx(expected.values.tolist(), rel=1e-4)
    assert (result["file"], result["width"], result["height"]) == ("leaf.png", 80, 50)
    assert body["batch_size"] == 1 and body["inference_ms"] > 0 and INFERENCE_MODES[body["mode"]].precision == "fp32"


def test_several_files_in_one_request_come_back_in_order(client, model_and_checkpoint):
    images = [photo(s, fmt=f) for s, f in ((1, "PNG"), (2, "JPEG"), (3, "WEBP"))]
    files = [("file", (f"{i}.img", raw, "application/octet-stream")) for i, (_, raw) in enumerate(images)]
    r = client.post("/predict?top_k=7", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["file"] for x in results] == ["0.img", "1.img", "2.img"]
    for (_, raw), result in zip(images, results, strict=True):
        decoded = Image.open(io.BytesIO(raw)).convert("RGB")  # JPEG/WebP are lossy: the reference reads them back
        probs = reference_probabilities(model_and_checkpoint[0], decoded)
        got = {t["class"]: t["probability"] for t in result["top"]}
        assert got == pytest.approx({c: p for c, p in zip(CARD.classes, probs.tolist(), strict=True)}, rel=1e-4)
    assert r.json()["batch_size"] == 3


def test_health_model_and_page(client):
    assert client.get("/health").json() == {"status": "ok", "model": "alexnet_small"}
    m = client.get("/model").json()
    assert m["model"] == "alexnet_small" and m["classes"] == list(CARD.classes) and m["num_classes"] == 7
    assert (m["input_size"], m["resize_size"]) == (32, 40)
    assert INFERENCE_MODES[m["inference"]["mode"]].precision == "fp32" and m["inference"]["reason"]  # and why
    assert m["limits"] == {"max_upload_bytes": 200_000, "max_pixels": 1_000_000, "max_files": 4}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and 'fetch("predict"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


# --------------------------------------------------------------------------------------------- bad requests
def _post(client, raw: bytes, name: str = "upload.bin"):
    return client.post("/predict", files={"file": (name, raw, "application/octet-stream")})


def test_bad_uploads_get_a_4xx_with_a_json_error_naming_the_file(client):
    _, jpeg = photo(4, size=(120, 90), fmt="JPEG")
    cases = {
        "zero bytes": (b"", 400, "empty"),
        "not an image": (b"%PDF-1.4 this is a document, not a picture\n" * 20, 415, "not an image"),
        "a truncated JPEG": (jpeg[: int(len(jpeg) * 0.6)], 422, "truncated"),
        "a JPEG cut inside its header": (jpeg[:40], 422, "truncated"),
        "an oversized upload": (os.urandom(200_001), 413, "over the upload limit"),
        "a decompression bomb (1.2 Mpixel of zeros in a few kB)": (png_bomb(1200, 1000), 413, "Mpixel"),
        "a header claiming 4 Gpixel": (png_header(65535, 65535), 413, "pixel"),
    }
    for what, (raw, status, words) in cases.items():
        r = _post(client, raw, name="upload.bin")
        assert r.status_code == status, (what, r.status_code, r.text)
        error = r.json()["error"]
        assert words in error and "upload.bin" in error, (what, error)
    assert len(png_bomb(1200, 1000)) < 10_000  # it is a bomb: small on the wire
    _, good = photo(5)
    assert _post(client, good).status_code == 200  # the server is still serving


def test_postscript_is_refused_as_not_an_image_and_never_reaches_ghostscript(client, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args) or 1 / 0)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="EPS")
    r = _post(client, buf.getvalue(), name="drawing.eps")
    assert r.status_code == 415 and r.json()["error"].startswith("drawing.eps: not an image"), r.text
    assert calls == []


def test_an_image_of_extreme_aspect_is_refused_by_serve_and_predict_before_it_is_resized(client, clf, tmp_path):
    """1x20,000 pixels (a few hundred bytes of PNG) is far under the pixel limit; resized to the card's 40 px
    shorter side it would be 40x800,000. serve answers 422 in JSON, predict gives that file an error."""
    from alexnet.runtime.inference import predict_files

    buf = io.BytesIO()
    Image.new("L", (20_000, 1)).save(buf, format="PNG")
    r = _post(client, buf.getvalue(), name="strip.png")
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("strip.png: 20000x1 pixels is over the limit of 100:1")
    (tmp_path / "strip.png").write_bytes(buf.getvalue())
    _, good = photo(9)
    (tmp_path / "good.png").write_bytes(good)
    results = predict_files(clf, [tmp_path / "strip.png", tmp_path / "good.png"], precision="fp32")
    assert "over the limit of 100:1" in results[0]["error"] and "top" not in results[0]
    assert len(results[1]["top"]) == 5


def test_a_bug_is_answered_in_json_too(clf):
    from alexnet.runtime.inference import Classifier

    broken = Classifier(lambda x: 1 / 0, clf.card, "broken")
    with TestClient(create_app(broken), raise_server_exceptions=False) as c:
        r = _post(c, photo(10)[1], name="a.png")
    assert r.status_code == 500 and r.json() == {
        "error": "internal error (ZeroDivisionError); the server's log has the details"
    }


def test_requests_without_an_image_or_with_too_many_files(client):
    _, raw = photo(6)
    assert client.post("/predict").json()["error"].startswith("no image")
    assert client.post("/predict", data={"file": "not a file"}).status_code == 400
    too_many = client.post("/predict", files=[("file", (f"{i}.png", raw)) for i in range(5)])
    assert too_many.status_code == 400 and "files" in too_many.json()["error"].lower()
    r = client.post("/predict?top_k=0", files={"file": ("a.png", raw)})
    assert r.status_code == 422 and "top_k" in r.json()["error"]
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405


def test_a_body_larger_than_it_declares_is_cut_off(client):
    """A chunked body (no Content-Length) is counted as it arrives and refused past the request limit."""

    def chunks():
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(100):
            yield b"\0" * 65536  # 6.5 MB, over 4 files x 200 kB

    r = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "request body over the limit" in r.json()["error"]


# --------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_share_a_forward_pass_and_get_their_own_rows():
    seen: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x.flatten(1).sum(1, keepdim=True)  # each row's own sum: a mix-up shows

    async def main(max_batch: int) -> list:
        b = Batcher(fn, max_batch=max_batch, max_wait_ms=50)
        await b.start()
        inputs = [torch.full((n, 1, 1, 1), float(i)) for i, n in enumerate([1, 2, 1, 3, 1])]
        try:
            return inputs, await asyncio.gather(*(b.submit(x) for x in inputs))
        finally:
            await b.stop()

    inputs, outs = asyncio.run(main(16))
    assert seen == [8]  # all five requests (8 images) in one pass
    for x, (rows, info) in zip(inputs, outs, strict=True):
        assert rows.flatten().tolist() == x.flatten().tolist() and info.batch_size == 8
    seen.clear()
    asyncio.run(main(1))
    assert seen == [1, 2, 1, 3, 1]  # batching off: one request per pass, in arrival order
    seen.clear()
    asyncio.run(main(3))
    assert sum(seen) == 8 and max(seen) <= 3


def test_a_failing_forward_pass_fails_its_requests_and_not_the_batcher():
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return x

    async def main():
        b = Batcher(fn, max_batch=4, max_wait_ms=0)
        await b.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await b.submit(torch.zeros(1, 1))
            return await b.submit(torch.ones(1, 1))
        finally:
            await b.stop()

    rows, _ = asyncio.run(main())
    assert rows.tolist() == [[1.0]]


def test_percentile_matches_numpy():
    values = [float(v) for v in np.random.default_rng(0).exponential(10, 101)]
    for q in (0, 50, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


# --------------------------------------------------------------------------------------------- load
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read the memory in use")
def test_a_bounded_load_test_on_loopback_has_no_errors_and_flat_memory(clf):
    _, raw = photo(7, size=(64, 64))
    with ServerThread(create_app(clf)) as server:
        warm = load_test(server.url, raw, requests=48, concurrency=16)
        before = _rss_bytes()
        result = load_test(server.url, raw, requests=400, concurrency=16)
        after = _rss_bytes()
        bomb = png_bomb(8000, 8000)  # 64 Mpixel: refused again and again, never decoded
        refused = load_test(server.url, bomb, requests=48, concurrency=16)
        after_bombs = _rss_bytes()
    assert warm["errors"] == 0 and result["errors"] == 0, result["first_errors"]
    assert result["statuses"] == {200: 400}
    assert refused["statuses"] == {413: 48}
    assert after - before < 40e6, f"memory grew by {(after - before) / 1e6:.0f} MB over 400 requests"
    assert after_bombs - after < 40e6, f"memory grew by {(after_bombs - after) / 1e6:.0f} MB over 48 bombs"
    print(f"\n400 requests, 16 at a time: {result['requests_per_s']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms; memory {(after - before) / 1e6:+.1f} MB")  # fmt: skip


# --------------------------------------------------------------------------------------------- slow clients
def _connect(port: int, source: str, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(sent)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout if it does not). A server that
    closes with our request unread resets the connection, which may drop its answer: then b""."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        return b""
    return b"".join(chunks)


HALF_HEADERS = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # no blank line: the headers never end


def test_64_half_sent_requests_from_one_address_do_not_lock_others_out(clf):
    """Slowloris: one address opens 64 connections (every one the server serves at once) and never finishes
    their headers. It keeps half of them; the rest are refused at once, and others are still served."""
    from alexnet.serve.server import LIMIT_CONCURRENCY, PER_CLIENT

    with ServerThread(create_app(clf), header_timeout=60) as server:
        held = [_connect(server.port, "127.0.0.2", HALF_HEADERS) for _ in range(LIMIT_CONCURRENCY)]
        try:
            with httpx.Client(timeout=10) as c:
                assert c.get(server.url + "/health").json() == {"status": "ok", "model": "alexnet_small"}
            for sock in held[PER_CLIENT:]:  # closed by the server at once, with a 429 unless reset
                answer = _answer(sock)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 429 "), answer
                assert answer == b"" or f"over {PER_CLIENT} connections at once from 127.0.0.2".encode() in answer
        finally:
            for sock in held:
                sock.close()


def test_headers_or_a_body_that_stop_arriving_get_a_408_and_the_connection_closed(clf, capfd):
    with ServerThread(create_app(clf), header_timeout=0.5, body_timeout=0.5) as server:
        start = time.monotonic()
        stalled = _connect(server.port, "127.0.0.1", HALF_HEADERS)
        answer = _answer(stalled)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert answer.endswith(b'{"error": "request headers not received within 0.5 s"}')
        half_body = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        half_body += b"Content-Length: 10000\r\n\r\n--x\r\n"
        answer = _answer(_connect(server.port, "127.0.0.1", half_body))
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request body not received within 0.5 s" in answer
        assert time.monotonic() - start < 8
        with httpx.Client(timeout=10) as c:
            assert c.get(server.url + "/health").status_code == 200
    assert "Traceback" not in capfd.readouterr().err  # the request cut off is no error of the app's


# --------------------------------------------------------------------------------------------- the browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _browser():
    """Debian's chromium, headless, driven by selenium through Debian's chromedriver (no download)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f"no {' or '.join(missing)}: install Debian's chromium and chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_the_page_in_a_headless_browser_uploads_an_image_and_shows_the_top_5(clf, tmp_path, model_and_checkpoint):
    image, raw = photo(8, size=(90, 60))
    (tmp_path / "plum.png").write_bytes(raw)
    expected = [CARD.classes[i] for i in reference_probabilities(model_and_checkpoint[0], image).topk(5).indices]
    with ServerThread(create_app(clf)) as server:
        try:
            driver = _browser()
        except Exception as e:  # noqa: BLE001 - selenium's own errors: the browser could not start here
            if isinstance(e, pytest.skip.Exception):
                raise
            pytest.skip(f"chromium did not start: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            driver.get(server.url + "/")
            WebDriverWait(driver, 20).until(ec.text_to_be_present_in_element((By.ID, "model"), "alexnet_small"))
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / "plum.png"))
            WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".top5 li")) == 5)
            names = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, ".top5 .name")]
            probs = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, ".top5 .prob")]
            timing = driver.find_element(By.ID, "timing").text
            title = driver.find_element(By.CSS_SELECTOR, ".result h2").text
        finally:
            driver.quit()
    assert names == expected
    assert all(p.endswith("%") for p in probs) and float(probs[0][:-1]) >= float(probs[-1][:-1])
    assert "inference" in timing and " ms" in timing
    assert title == "plum.png (90x60)"


# --------------------------------------------------------------------------------------------- command line
def test_serve_refuses_a_taken_port_in_one_line(model_and_checkpoint, capsys):
    from alexnet.cli import main
    from alexnet.serve.server import listen

    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        code = main(["serve", str(model_and_checkpoint[1]), "--port", str(port), "--precision", "fp32"])
    finally:
        taken.close()
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and f"cannot listen on 127.0.0.1:{port}" in err


def test_the_load_test_command_compares_batched_with_one_at_a_time(model_and_checkpoint, capsys):
    from alexnet.cli import main

    start = time.perf_counter()
    code = main(["serve", str(model_and_checkpoint[1]), "--load-test", "--requests", "24", "--rounds", "1",
                 "--concurrency", "4", "--precision", "fp32"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "one at a time" in out and "batched" in out and "errors 0" in out and "req/s" in out
    assert time.perf_counter() - start < 120


def test_serve_help_lists_the_limits(capsys):
    from alexnet.cli import main

    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-upload-mb" in out and "--max-megapixels" in out and "127.0.0.1" in out
