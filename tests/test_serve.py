"""The HTTP API (masterocr.serve) through FastAPI's test client, and once through a real `masterocr serve`."""

import base64
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from wordimages import render_word

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import masterocr  # noqa: E402
from masterocr.serve import ServeConfig, create_app  # noqa: E402

WORDS = ["cat", "dog", "sun", "tree", "home", "open", "road", "blue"]  # what conftest's tiny model learned


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1x1 PNG whose header claims width x height pixels: a decompression bomb's signature."""
    data = bytearray(png(Image.new("L", (1, 1))))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    body = bytes(data[ihdr - 4:ihdr + 13])  # type + 13 data bytes
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


WORD_PNGS = {w: png(render_word(w)) for w in WORDS}


def files(*names_and_data):
    return [("files", (name, data, "image/png")) for name, data in names_and_data]


@pytest.fixture(scope="module")
def rec(tiny_weights):
    return masterocr.load(tiny_weights)


@pytest.fixture(scope="module")
def client(rec):
    app = create_app(ServeConfig(model_name="tiny", max_upload_mb=0.5, max_files=4), recognizer=rec)
    with TestClient(app) as c:
        yield c


def test_health_models_page_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "tiny"}
    model = client.get("/v1/models").json()["models"][0]
    assert model["name"] == "tiny" and model["backend"] == "torch" and model["ready"] is True
    assert model["img_size"] == [32, 64] and model["keep_aspect"] is False and model["charset_size"] == 36
    assert model["precision"] == "fp32"
    assert model["max_files"] == 4 and model["max_upload_bytes"] == 2**19
    assert set(model["batching"]) == {"batches", "images", "largest"}
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    assert "drawHeat" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/read", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/read"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    refs = [body["application/json"]["schema"]["$ref"],
            spec["components"]["schemas"]["ReadRequest"]["properties"]["images"]["items"]["$ref"]]
    assert all(ref.split("/")[-1] in spec["components"]["schemas"] for ref in refs)  # every $ref resolves
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # served from the package: works offline


def test_read_multipart_with_and_without_attention(client, rec):
    r = client.post("/v1/read", files=files(*((f"{w}.png", WORD_PNGS[w]) for w in WORDS[:3])))
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "tiny"
    assert [x["name"] for x in body["results"]] == ["cat.png", "dog.png", "sun.png"]
    assert [x["text"] for x in body["results"]] == WORDS[:3]
    for x in body["results"]:
        assert x["error"] is None and "attention" not in x
        assert len(x["char_probs"]) == len(x["text"]) and 0 < x["confidence"] <= 1
    r = client.post("/v1/read?attention=true", files=files(("tree.png", WORD_PNGS["tree"])))
    x = r.json()["results"][0]
    maps = np.asarray(x["attention"]["maps"])
    expected = rec.read(render_word("tree")).attention
    assert x["text"] == "tree" and maps.shape == expected.shape  # (4 characters, Hf, Wf)
    assert x["attention"]["valid_fraction"] == 1.0  # stretched input: the map covers the whole image
    np.testing.assert_allclose(maps, expected, atol=1e-3)


def test_read_json_base64(client):
    images = [{"name": "a", "data": base64.b64encode(WORD_PNGS["home"]).decode()},
              {"data": "data:image/png;base64," + base64.b64encode(WORD_PNGS["open"]).decode()},
              {"name": "wrapped", "data": base64.encodebytes(WORD_PNGS["road"]).decode()}]  # 76-column lines
    r = client.post("/v1/read", json={"images": images})
    assert r.status_code == 200
    assert [(x["name"], x["text"]) for x in r.json()["results"]] == [("a", "home"), ("image_1", "open"),
                                                                    ("wrapped", "road")]


def test_bad_images_get_their_own_error_and_the_others_are_read(client):
    truncated = WORD_PNGS["sun"][: len(WORD_PNGS["sun"]) // 2]
    r = client.post("/v1/read", files=files(("cat.png", WORD_PNGS["cat"]), ("notes.txt", b"not an image at all"),
                                            ("bomb.png", bomb_png()), ("half.png", truncated)))
    assert r.status_code == 200
    good, garbage, bomb, half = r.json()["results"]
    assert good["text"] == "cat" and good["error"] is None
    assert garbage["error"] == "notes.txt: not an image file (unknown format)" and garbage["text"] == ""
    assert bomb["error"] == "bomb.png: image too large (more than 64000000 pixels, the limit)"
    assert half["error"].startswith("half.png: cannot decode image") and half["confidence"] == 0.0
    r = client.post("/v1/read", files=files(("empty.png", b""), ("dog.png", WORD_PNGS["dog"]),
                                            ("bomb2.png", bomb_png(9000, 9000))))
    assert [x["error"] for x in r.json()["results"]] == [
        "empty.png: empty file", None, "bomb2.png: image too large (9000x9000 pixels, limit 64000000)"]


def test_413_body_and_file_count(client):
    big = b"\0" * (2**19 + 1)
    r = client.post("/v1/read", files=files(("big.png", big)))
    assert r.status_code == 413 and "over the limit of 524288 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(100):
            yield b"x" * 10_000

    r = client.post("/v1/read", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"] == "request body is over the limit of 524288 bytes (0.5 MB)"
    r = client.post("/v1/read", files=files(*((f"{i}.png", WORD_PNGS["cat"]) for i in range(5))))
    assert r.status_code == 413 and r.json()["detail"] == "too many images in one request: 5 (limit 4)"
    r = client.post("/v1/read", json={"images": [{"data": base64.b64encode(WORD_PNGS["cat"]).decode()}] * 5})
    assert r.status_code == 413 and r.json()["detail"] == "too many images in one request: 5 (limit 4)"


@pytest.mark.parametrize("body, message", [
    (b"{not json", "malformed JSON body: body: Invalid JSON"),
    (b'{"pictures": []}', "malformed JSON body: images: Field required"),
    (b'{"images": [{"data": "abc"}], "attention": true}', "malformed JSON body: attention: Extra inputs"),
    (b'{"images": [{"name": "x.png", "data": "not base64!"}]}', "images[0] (x.png): data is not valid base64"),
    (b'{"images": [{"data": "data:image/png,abc"}]}', "images[0] (image_0): a data: URL must be base64"),
    (b'{"images": []}', "the request holds no images"),
])
def test_422_malformed_json(client, body, message):
    r = client.post("/v1/read", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith(message), r.json()


def test_422_malformed_multipart(client):
    head = b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n" + WORD_PNGS["cat"]
    r = client.post("/v1/read", content=head, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 422 and "ends before the closing boundary" in r.json()["detail"]
    r = client.post("/v1/read", content=head, headers={"content-type": "multipart/form-data"})
    assert r.status_code == 422 and "without a boundary" in r.json()["detail"]
    r = client.post("/v1/read", data={"note": "hello"}, files=files(("cat.png", WORD_PNGS["cat"])))
    assert r.status_code == 422 and r.json()["detail"].startswith("form field 'note' is not a file")


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", "application/x-www-form-urlencoded", None])
def test_415_wrong_content_type(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/read", content=WORD_PNGS["cat"], headers=headers)
    assert r.status_code == 415
    assert r.json()["detail"].endswith("is not accepted: send multipart/form-data or application/json")


def test_no_request_reads_a_path_or_writes_a_file(client, tmp_path):
    target = tmp_path / "written.png"
    images = [{"name": str(target), "data": base64.b64encode(b"x").decode()},
              {"name": "../../etc/passwd", "data": base64.b64encode(b"/etc/passwd").decode()}]
    r = client.post("/v1/read", json={"images": images})
    results = r.json()["results"]
    assert [x["name"] for x in results] == [str(target), "../../etc/passwd"]  # only echoed back
    assert all(x["error"].endswith("not an image file (unknown format)") for x in results)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_401_api_key(rec):
    app = create_app(ServeConfig(model_name="tiny", api_key="s3cret-key"), recognizer=rec)
    with TestClient(app) as c:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret-ke"}, {"Authorization": "s3cret-key"}):
            r = c.post("/v1/read", files=files(("cat.png", WORD_PNGS["cat"])), headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["detail"] == "missing or wrong API key: send it in the X-API-Key header"
            assert c.get("/v1/models", headers=headers).status_code == 401
        ok = c.post("/v1/read", files=files(("cat.png", WORD_PNGS["cat"])), headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200 and ok.json()["results"][0]["text"] == "cat"
        # A wrong key is refused before the body is looked at, even an oversize one.
        assert c.post("/v1/read", content=b"x" * 2**24, headers={"content-type": "text/plain"}).status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the page asks for the key itself


def test_concurrent_requests_are_batched_and_match_one_by_one_reads(rec):
    # A full batch is the only way out of a 10 s wait: 8 concurrent single-image requests -> one model call.
    app = create_app(ServeConfig(model_name="tiny", max_batch=8, batch_wait_ms=10_000), recognizer=rec)
    with TestClient(app) as c, ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        responses = list(pool.map(lambda w: c.post("/v1/read", files=files((w, WORD_PNGS[w]))), WORDS))
        assert time.monotonic() - started < 9, "the batch waited for its deadline instead of filling up"
        stats = app.state.service.batcher.stats
        assert (stats.batches, stats.images, stats.largest) == (1, 8, 8)
    for word, r in zip(WORDS, responses):
        served = r.json()["results"][0]
        alone = rec.read(io.BytesIO(WORD_PNGS[word]).getvalue())
        assert served["text"] == alone.text == word
        assert served["confidence"] == pytest.approx(alone.confidence, abs=1e-5)
        np.testing.assert_allclose(served["char_probs"], alone.char_probs, atol=1e-5)


class Flaky:
    """The tiny recognizer, except that the model call fails for any batch holding an all-white image."""

    def __init__(self, rec, release: threading.Event | None = None):
        self.rec, self.release, self.calls = rec, release, threading.Event()

    def preprocess(self, source):
        return self.rec.preprocess(source)

    def predict_batch(self, prepared):
        self.calls.set()
        if self.release is not None:
            assert self.release.wait(10)
        if any(float(p.min()) == 1.0 for p in prepared):
            raise RuntimeError("boom")
        return self.rec.predict_batch(prepared)


def test_a_failing_model_call_costs_only_its_image_and_the_server_stays_up(rec):
    white = png(Image.new("RGB", (60, 20), (255, 255, 255)))
    app = create_app(ServeConfig(model_name="tiny"), recognizer=Flaky(rec))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/read", files=files(("cat.png", WORD_PNGS["cat"]), ("white.png", white),
                                           ("dog.png", WORD_PNGS["dog"])))
        assert r.status_code == 200
        cat, bad, dog = r.json()["results"]
        assert (cat["text"], dog["text"]) == ("cat", "dog")
        assert bad["error"] == "white.png: the model failed on this image (RuntimeError: boom)"
        app.state.service.read = None  # an unexpected bug in the route: a JSON 500, and the server lives on
        r = c.post("/v1/read", files=files(("cat.png", WORD_PNGS["cat"])))
        assert r.status_code == 500 and r.json() == {"detail": "internal error (TypeError)"}
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    app = create_app(ServeConfig(model_name="tiny"), recognizer=Flaky(rec))
    with TestClient(app) as c:
        assert c.post("/v1/read", files=files(("sun.png", WORD_PNGS["sun"]))).json()["results"][0]["text"] == "sun"


def test_503_when_the_queue_is_full(rec):
    release = threading.Event()
    flaky = Flaky(rec, release)
    app = create_app(ServeConfig(model_name="tiny", max_batch=1, max_files=2, max_queue=2), recognizer=flaky)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        batcher = app.state.service.batcher
        first = pool.submit(c.post, "/v1/read", files=files(("cat.png", WORD_PNGS["cat"])))
        assert flaky.calls.wait(10)  # the model is busy with the first request
        second = pool.submit(c.post, "/v1/read", files=files(("dog.png", WORD_PNGS["dog"]),
                                                             ("sun.png", WORD_PNGS["sun"])))
        deadline = time.monotonic() + 10
        while batcher.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.post("/v1/read", files=files(("tree.png", WORD_PNGS["tree"])))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"] == "2 images are waiting to be read (limit 2); try again shortly"
        release.set()
        assert [x["text"] for x in first.result().json()["results"]] == ["cat"]
        assert [x["text"] for x in second.result().json()["results"]] == ["dog", "sun"]


def test_readyz_while_loading_and_after_a_failed_load(rec):
    loaded = threading.Event()

    def slow_loader():
        assert loaded.wait(10)
        return rec

    app = create_app(ServeConfig(model_name="tiny"), loader=slow_loader)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/read", files=files(("cat.png", WORD_PNGS["cat"])))
        assert r.status_code == 503 and "still loading" in r.json()["detail"]
        assert c.get("/v1/models").json()["models"][0]["ready"] is False
        loaded.set()
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.post("/v1/read", files=files(("cat.png", WORD_PNGS["cat"]))).json()["results"][0]["text"] == "cat"

    errors = []

    def broken_loader():
        raise FileNotFoundError("nowhere.safetensors: no such file")

    app = create_app(ServeConfig(model_name="nowhere"), loader=broken_loader, on_load_error=errors.append)
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {
            "status": "failed", "detail": "could not load model 'nowhere': nowhere.safetensors: no such file"}
    assert errors == [r.json()["detail"]]


def test_config_checks():
    with pytest.raises(ValueError, match="max_batch 0: must be at least 1"):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_queue 4 is below max_files 8"):
        ServeConfig(max_files=8, max_queue=4)
    with pytest.raises(ValueError, match="the API key is empty"):
        ServeConfig(api_key="")


def test_cli_refuses_a_missing_api_key_variable(capsys, monkeypatch):
    from masterocr.cli.main import main

    monkeypatch.delenv("MASTEROCR_TEST_NO_SUCH_KEY", raising=False)
    assert main(["serve", "--api-key-env", "MASTEROCR_TEST_NO_SUCH_KEY"]) == 2
    assert "MASTEROCR_TEST_NO_SUCH_KEY: that environment variable is not set or empty" in capsys.readouterr().err


def test_real_server_over_loopback(tiny_weights, monkeypatch):
    """`masterocr serve` as a user starts it: a process on 127.0.0.1, real HTTP, the limits on the wire."""
    import httpx2
    from pagedriver import served

    monkeypatch.setenv("MASTEROCR_TEST_KEY", "k3y")
    with served(tiny_weights, "--max-upload-mb", "0.25", "--api-key-env", "MASTEROCR_TEST_KEY") as url:
        key = {"X-API-Key": "k3y"}
        r = httpx2.post(f"{url}/v1/read", files=files(("cat.png", WORD_PNGS["cat"]), ("x.png", b"junk")),
                        headers=key)
        assert r.status_code == 200
        assert [(x["text"], x["error"]) for x in r.json()["results"]] == [
            ("cat", None), ("", "x.png: not an image file (unknown format)")]
        r = httpx2.post(f"{url}/v1/read", files=files(("big.png", b"\0" * 300_000)), headers=key)
        assert r.status_code == 413
        assert httpx2.post(f"{url}/v1/read", files=files(("cat.png", WORD_PNGS["cat"]))).status_code == 401
        assert httpx2.get(f"{url}/v1/models", headers=key).json()["models"][0]["name"] == "tiny"
        assert httpx2.get(f"{url}/healthz").json() == {"status": "ok"}


def test_attention_of_a_keep_aspect_model_covers_only_the_image(tiny_weights):
    rec = masterocr.load(tiny_weights, keep_aspect=True)
    app = create_app(ServeConfig(model_name="tiny"), recognizer=rec)
    word = render_word("sun")
    short = Image.new("RGB", (word.width, 2 * word.height), "white")  # at height 32, narrower than the input
    short.paste(word, (0, word.height // 2))
    with TestClient(app) as c:
        assert c.get("/v1/models").json()["models"][0]["keep_aspect"] is True
        x = c.post("/v1/read?attention=true", files=files(("sun.png", png(short)))).json()["results"][0]
    expected = min(64, round(short.width * 32 / short.height)) / 64
    assert expected < 1 and x["attention"]["valid_fraction"] == pytest.approx(expected)
    np.testing.assert_allclose(x["attention"]["maps"], rec.read(short).attention, atol=1e-3)


def test_a_word_on_its_side_is_read_turned_and_says_so(tiny_weights):
    """orientation tall (the default of weights trained with the tall rule): the reading says it was turned, and
    a keep-aspect model's valid_fraction is the turned image's."""
    from masterocr.data.image import rotate_image

    rec = masterocr.load(tiny_weights, keep_aspect=True, orientation="tall")
    app = create_app(ServeConfig(model_name="tiny"), recognizer=rec)
    sideways = rotate_image(render_word("sun"), 270)  # turned clockwise: reads top to bottom
    with TestClient(app) as c:
        x = c.post("/v1/read?attention=true", files=files(("sun.png", png(sideways)))).json()["results"][0]
        upright = c.post("/v1/read", files=files(("sun.png", WORD_PNGS["sun"]))).json()["results"][0]
    assert (x["text"], x["orientation"]) == ("sun", 90) and upright["orientation"] == 0
    turned = rotate_image(sideways, 90)
    expected = min(64, round(turned.width * 32 / turned.height)) / 64
    assert x["attention"]["valid_fraction"] == pytest.approx(expected)


def test_the_server_is_built_on_the_recognizer_contract_not_on_torch():
    import subprocess
    import sys

    code = ("import sys, masterocr.serve.app, masterocr.serve.batcher, masterocr.serve.uploads; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('masterocr.models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
