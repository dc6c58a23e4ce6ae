"""The Roboflow client against a real HTTP server speaking the protocol."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time

import pytest
from forward_proxy import ForwardProxy
from PIL import Image, ImageChops, ImageStat
from roboflow_server import VALID_KEY, RoboflowServer

from rfwatch.images.prepare import MAX_UPLOAD_BYTES, ImageError, prepare_image
from rfwatch.roboflow.client import (
    ApiError,
    AuthError,
    ModelAccessError,
    ModelId,
    ModelNotFoundError,
    QuotaError,
    RejectedError,
    RetryPolicy,
    RoboflowClient,
    ServerSetupError,
    UnavailableError,
)

FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, total=10)


def client_for(server, key=VALID_KEY, model="colors/1", **kw) -> RoboflowClient:
    kw.setdefault("retry", FAST_RETRY)
    return RoboflowClient(api_key=key, model=model, api_url=server.url, **kw)


@pytest.fixture
def red(tmp_path, make_jpeg):
    p = tmp_path / "red.jpg"
    p.write_bytes(make_jpeg((220, 10, 10), size=(320, 200)))
    return p


def test_model_id_accepts_workspace_prefix():
    assert ModelId.parse("my-ws/my-proj/3") == ModelId("my-proj", "3", "my-ws")
    assert str(ModelId.parse("proj/12")) == "proj/12"
    for bad in ("proj", "proj/x", "/3", "a/b/c/d"):
        with pytest.raises(ValueError):
            ModelId.parse(bad)


def test_single_label_wire_format_and_shape(server, red):
    with client_for(server) as client:
        pred = client.classify(str(red))
    (req,) = server.inference_requests()
    assert req.path == "/colors/1"
    assert req.query["api_key"] == VALID_KEY
    assert float(req.query["confidence"]) == 0.01
    # a folder watcher never lets Roboflow's active learning save the user's photos silently
    assert req.query["disable_active_learning"] == "true"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.image.format == "JPEG" and req.image.size == (320, 200)
    assert pred.top == "red" and not pred.multi_label
    assert pred.predicted_classes == ("red",)
    assert [s.confidence for s in pred.predictions] == sorted((s.confidence for s in pred.predictions), reverse=True)
    assert len(pred.predictions) == 3  # confidence=0.01 asks for every class
    doc = pred.json()
    assert doc["top"] == "red" and doc["confidence"] == pred.confidence
    assert doc["prediction_type"] == "ClassificationModel"
    assert doc["image_path"] == str(red)
    assert doc["image"] == {"width": 320, "height": 200}
    assert set(doc["predictions"][0]) == {"class", "confidence"}
    keys = {"time", "image", "predictions", "top", "confidence", "image_path", "prediction_type", "inference_id"}
    assert set(doc) == keys
    assert doc["inference_id"] == req.answer["inference_id"]  # kept for Roboflow support


def test_confidence_is_sent_and_respected(server, red):
    with client_for(server, confidence=0.5) as client:
        pred = client.classify(str(red))
    assert float(server.inference_requests()[0].query["confidence"]) == 0.5
    assert [s.name for s in pred.predictions] == ["red"]


def test_multi_label_shape(server, tmp_path, make_jpeg):
    p = tmp_path / "yellow.jpg"
    p.write_bytes(make_jpeg((230, 230, 0)))
    with client_for(server, model="ws/tags/2") as client:
        pred = client.classify(str(p))
    assert server.inference_requests()[0].path == "/tags/2"
    assert pred.multi_label
    assert set(pred.predicted_classes) == {"red", "green"}
    assert pred.top in ("red", "green")
    doc = pred.json()
    assert isinstance(doc["predictions"], dict) and set(doc["predictions"]) == {"red", "green", "blue"}
    assert doc["predicted_classes"] == list(pred.predicted_classes)
    assert doc["prediction_type"] == "ClassificationModel" and "top" not in doc


def test_a_url_is_fetched_and_uploaded_like_a_file(server, samples):
    """Roboflow's servers refuse http:// and no-FQDN URLs (env.py); rfwatch fetches the image and uploads it."""
    server.files["rotated.jpg"] = (samples / "jpg" / "orientation" / "landscape_6.jpg").read_bytes()
    url = f"{server.url}/files/rotated.jpg?x=1&y=2"
    with client_for(server) as client:
        pred = client.classify(url)
    post = server.inference_requests()[-1]
    assert post.status == 200 and "image" not in post.query and post.body_bytes > 0
    assert post.image.width > post.image.height, "the fetched photo arrives upright"
    assert pred.json()["image_path"] == url
    # what the real server answers when handed such a URL instead (what rfwatch avoids)
    import requests

    refused = requests.post(f"{server.url}/colors/1", params={"api_key": VALID_KEY, "image": url})
    assert refused.status_code == 400 and "non https:// URL" in refused.json()["message"]


def test_a_url_that_cannot_be_fetched_names_the_reason(server):
    with client_for(server) as client, pytest.raises(ImageError) as info:
        client.classify(f"{server.url}/files/missing.jpg")
    assert info.value.reason == "cannot fetch: HTTP 404 Not Found"
    assert server.inference_requests() == []


@pytest.mark.parametrize(
    "status,exc_type",
    [
        (400, RejectedError),
        (402, QuotaError),
        (403, ModelAccessError),
        (404, ModelNotFoundError),
        (413, RejectedError),
        (423, QuotaError),
        (401, AuthError),
        (501, ServerSetupError),  # no ONNX provider: retrying will not help (error_handlers.py)
        (507, ServerSetupError),  # model too large for this server
    ],
)
def test_permanent_errors_are_not_retried(server, red, status, exc_type):
    server.fail_next(status, message=f"server says {status}")
    with client_for(server) as client, pytest.raises(exc_type) as info:
        client.classify(str(red))
    assert info.value.status == status
    assert info.value.server_message == f"server says {status}"
    assert f"server says {status}" in str(info.value)
    assert len(server.inference_requests()) == 1


@pytest.mark.parametrize(
    "profile,bad_key,unknown_model",
    [
        # tests/inference/hosted_platform_tests: EXPECTED_AUTH_ERROR_FOR_ENVIRONMENT and ..._MODEL_NOT_FOUND_...
        ("v1", (403, ModelAccessError), (403, ModelAccessError)),
        ("serverless", (401, AuthError), (404, ModelNotFoundError)),
        ("self-hosted", (403, ModelAccessError), (403, ModelAccessError)),
    ],
)
def test_real_server_errors_per_deployment(red, profile, bad_key, unknown_model):
    server = RoboflowServer(profile=profile).start()
    try:
        for key, model, (status, kind) in [("wrong-key", "colors/1", bad_key), (VALID_KEY, "nope/1", unknown_model)]:
            with client_for(server, key=key, model=model) as client, pytest.raises(kind) as info:
                client.classify(str(red))
            assert info.value.status == status
            if status == 403:  # the message does not pretend to know which it is
                assert "the API refused the key, or does not know model" in str(info.value)
    finally:
        server.stop()


def test_server_rejects_what_the_real_one_rejects(server, make_jpeg):
    import requests

    url = f"{server.url}/colors/1?api_key={VALID_KEY}"
    body = base64.b64encode(make_jpeg((1, 2, 3)))
    assert (
        requests.post(url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
    )
    no_ct = requests.Request("POST", url, data=body).prepare()
    no_ct.headers.pop("Content-Type", None)
    assert requests.Session().send(no_ct).status_code == 400
    assert requests.post(url, data=make_jpeg((1, 2, 3)), headers={"Content-Type": "x"}).status_code == 400  # raw bytes
    assert requests.post(url, data=b"A" * (5 * 1000 * 1000 + 4), headers={"Content-Type": "x"}).status_code == 413


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_errors_are_retried(server, red, status):
    server.fail_next(status, count=2)
    with client_for(server) as client:
        assert client.classify(str(red)).top == "red"
    assert [r.status for r in server.inference_requests()] == [status, status, 200]


def test_retries_are_bounded(server, red):
    server.fail_next(503, count=10)
    retries = []
    with client_for(server, on_retry=lambda n, d, e: retries.append(n)) as client:
        with pytest.raises(UnavailableError) as info:
            client.classify(str(red))
    assert len(server.inference_requests()) == FAST_RETRY.attempts
    assert retries == [1, 2, 3]
    assert info.value.status == 503


def test_retry_after_is_honoured(server, red):
    server.fail_next(503, count=1, retry_after="1", message="Model is temporarily not ready - retry request.")
    with client_for(server) as client:
        client.classify(str(red))
    first, second = server.inference_requests()
    assert second.at - first.at >= 0.95


def test_total_retry_time_is_bounded(server, red):
    server.fail_next(429, count=1, retry_after="30")
    policy = RetryPolicy(attempts=5, backoff=0.01, max_backoff=60, total=2)
    started = time.monotonic()
    with client_for(server, retry=policy) as client, pytest.raises(UnavailableError):
        client.classify(str(red))
    assert time.monotonic() - started < 1.5
    assert len(server.inference_requests()) == 1


def test_timeouts_and_resets(server, red):
    server.hang_seconds = 3
    server.transport_fault_next("hang")
    server.transport_fault_next("reset")
    with client_for(server, timeout=0.5) as client:
        assert client.classify(str(red)).top == "red"
    assert [r.status for r in server.inference_requests()] == [-2, -1, 200]
    server.reset()
    server.delay = 2
    with client_for(server, timeout=0.3, retry=RetryPolicy(attempts=2, backoff=0.01)) as client:
        with pytest.raises(UnavailableError, match="no answer within 0.3s"):
            client.classify(str(red))


def test_api_key_never_leaks(server, red, caplog):
    caplog.set_level(logging.DEBUG)
    key = VALID_KEY
    errors = []
    server.fail_next(503, count=2, retry_after="0")
    with client_for(server) as client:
        client.classify(str(red))  # DEBUG request lines from urllib3 and our retry lines
    for kw in ({"key": key + "x"}, {"model": "missing/1"}):
        with client_for(server, **kw) as client, pytest.raises(ApiError) as info:
            client.classify(str(red))
        errors.append(info.value)
    with RoboflowClient(api_key=key, model="colors/1", api_url="http://127.0.0.1:9", retry=FAST_RETRY) as client:
        with pytest.raises(UnavailableError) as info:
            client.classify(str(red))
        errors.append(info.value)
        assert key not in repr(client)
    assert "api_key=***" in caplog.text  # the URL lines were there, masked
    assert key not in caplog.text
    for error in errors:
        assert key not in str(error) and key not in repr(error) and key not in str(error.args)
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def _closest_transform(received: Image.Image, reference: Image.Image) -> int:
    """Which of the 8 EXIF orientations, applied to the upright reference, matches ``received`` best."""
    ops = [
        None,
        Image.Transpose.FLIP_LEFT_RIGHT,
        Image.Transpose.ROTATE_180,
        Image.Transpose.FLIP_TOP_BOTTOM,
        Image.Transpose.TRANSPOSE,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
    ]
    best, best_diff = -1, float("inf")
    for i, op in enumerate(ops):
        candidate = reference if op is None else reference.transpose(op)
        if candidate.size != received.size:
            continue
        diff = sum(ImageStat.Stat(ImageChops.difference(candidate, received.convert("RGB"))).mean)
        if diff < best_diff:
            best, best_diff = i, diff
    return best


@pytest.mark.parametrize("shape", ["landscape", "portrait"])
def test_every_exif_orientation_arrives_upright(server, samples, shape):
    folder = samples / "jpg" / "orientation"
    reference = Image.open(folder / f"{shape}_1.jpg").convert("RGB")
    with client_for(server) as client:
        for n in range(1, 9):
            pred = client.classify(str(folder / f"{shape}_{n}.jpg"))
            received = server.inference_requests()[-1].image
            assert received.size == reference.size, f"{shape}_{n}: sent {received.size}"
            assert _closest_transform(received, reference) == 0, f"{shape}_{n} did not arrive upright"
            assert pred.image_size == reference.size


def test_24_megapixel_jpeg_is_downscaled_under_the_body_limit(server, tmp_path):
    import os

    big = tmp_path / "big.jpg"
    noise = Image.frombytes("RGB", (6000, 4000), os.urandom(6000 * 4000 * 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    noise.save(big, "JPEG", quality=95, exif=exif)
    assert big.stat().st_size > MAX_UPLOAD_BYTES
    with client_for(server) as client:
        pred = client.classify(str(big))
    req = server.inference_requests()[0]
    assert req.body_bytes < MAX_UPLOAD_BYTES
    assert max(req.image.size) <= 1024 and req.image.size[1] > req.image.size[0]  # rotated upright
    assert pred.image_size == (4000, 6000)
    # Even an absurd max_size may not produce a body the hosted API rejects.
    prepared = prepare_image(big, 20000)
    assert len(base64.b64encode(prepared.jpeg)) < MAX_UPLOAD_BYTES


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "CMYK", "L", "LA", "1"])
def test_any_pixel_mode_is_sent_as_rgb_jpeg(server, tmp_path, mode):
    base = Image.linear_gradient("L").resize((128, 96))
    if mode == "I;16":
        img = Image.new("I;16", (128, 96))
        img.putdata([(x * 4095) // 127 for y in range(96) for x in range(128)])  # 12-bit data, as microscopes write
        path = _save(img, tmp_path / "deep.png")
    elif mode == "CMYK":
        path = _save(Image.merge("RGB", (base, base, base)).convert("CMYK"), tmp_path / "cmyk.jpg")
    elif mode == "RGBA":
        img = Image.new("RGBA", (128, 96), (0, 200, 0, 0))
        img.paste((200, 0, 0, 255), (0, 0, 64, 96))
        path = _save(img, tmp_path / "alpha.png")
    else:
        path = _save(Image.merge("RGB", (base, base, base)).convert(mode), tmp_path / f"img-{mode}.png")
    with client_for(server) as client:
        client.classify(str(path))
    received = server.inference_requests()[0].image
    assert received.format == "JPEG" and received.mode == "RGB" and received.size == (128, 96)
    lo, hi = received.convert("L").getextrema()
    assert hi - lo > 100, f"{mode}: contrast lost ({lo}..{hi})"
    if mode == "RGBA":  # transparent pixels become white, not black
        assert received.getpixel((120, 50))[1] > 240


def test_truncated_jpeg_is_a_clear_error_but_damaged_exif_is_not(server, samples, tmp_path):
    whole = (samples / "jpg" / "Canon_40D.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    with client_for(server) as client:
        with pytest.raises(ImageError) as info:
            client.classify(str(cut))
        assert str(cut) in str(info.value) and "cannot decode" in str(info.value)
        assert client.classify(str(samples / "jpg" / "corrupted.jpg")).top
    assert len(server.inference_requests()) == 1


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"hello, not a picture\n", "not a recognised image")])
def test_non_images_are_clear_errors(tmp_path, content, reason):
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        prepare_image(p)
    with pytest.raises(ImageError, match="directory"):
        prepare_image(tmp_path)


def test_heic_works_with_the_extra(server, samples):
    pytest.importorskip("pillow_heif")
    with client_for(server) as client:
        for f in (samples / "heic").iterdir():
            pred = client.classify(str(f))
            assert pred.top and pred.image_size
    assert all(max(r.image.size) <= 1024 for r in server.inference_requests())


def test_heic_without_the_extra_says_what_to_install(heic_file):
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from rfwatch.images.prepare import prepare_image, ImageError\n"
        f"try: prepare_image({str(heic_file)!r})\n"
        "except ImageError as e: print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert heic_file.name in out and "pip install 'rfwatch[heif]'" in out


def test_a_proxy_from_the_environment_carries_the_uploads_unless_no_proxy_names_the_host(server, red, monkeypatch):
    """The environment is read once, when the client is made (not for each upload): proxies and no_proxy hold."""
    proxy = ForwardProxy().start()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with client_for(server) as client:
            assert client.classify(str(red)).top == "red"
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # after the client was made: not seen by it
            assert client.classify(str(red)).top == "red"
        seen = [target for _, target, _ in proxy.seen]
        assert len(seen) == 2 and seen[0].startswith(server.url + "/colors/1?")
        with client_for(server) as client:
            assert client.classify(str(red)).top == "red"
        assert len(proxy.seen) == 2, "no_proxy names the host: the upload went straight to it"
    finally:
        proxy.stop()


def test_a_heic_opened_while_another_thread_registers_its_decoder_is_read(heic_file):
    """The daemon's warm-up thread registers pillow-heif's opener as the workers start: a worker opening its first
    HEIC meanwhile waits for it, rather than being told the format needs an extra decoder (and the file failing for
    good). The registration is slowed here to leave that moment wide open."""
    pytest.importorskip("pillow_heif")
    code = (
        "import threading, time, pillow_heif\n"
        "real = pillow_heif.register_heif_opener\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.5)\n"
        "    return real(*a, **k)\n"
        "pillow_heif.register_heif_opener = slow\n"
        "from PIL import Image\n"
        "Image.init()  # every built-in format loaded, as after any earlier image\n"
        "from rfwatch.images import prepare\n"
        "warming = threading.Thread(target=prepare.warm_up)\n"
        "warming.start()\n"
        "time.sleep(0.1)\n"
        f"print(prepare.prepare_image({str(heic_file)!r}).upload_size)\n"
        "warming.join()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("("), run.stdout


def test_a_picture_over_pillows_pixel_limit_is_refused_as_a_bomb(tmp_path):
    """Between Pillow's limit and twice it Pillow only warns: rfwatch refuses such a picture itself (once by turning
    the warning into an error, which swapped the process's warning filters under every worker)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)  # 1.5x the limit: a warning only, for Pillow
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path = tmp_path / "big.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageError, match="decompression bomb"):
        prepare_image(path)
