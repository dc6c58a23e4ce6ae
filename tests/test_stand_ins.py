"""Pins what the stand-ins do, over real HTTP with plain ``requests`` (no rfwatch), per profile and engine.

Each expectation is a behaviour of Roboflow's real servers as cited in rfwatch/testing/roboflow_server.py
and rfwatch/testing/platform_server.py; if a stand-in drifts, these fail before any rfwatch test is misled by it.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

from rfwatch.testing.catalog import VALID_KEY, Catalog, Project, resize
from rfwatch.testing.platform_server import ALREADY_ANNOTATED_ANSWERS, PlatformServer
from rfwatch.testing.roboflow_server import (
    CAUSE_RAW_BYTES,
    DEFAULT_MESSAGES,
    IMAGE_LOAD_PREFIX,
    MSG_FORBIDDEN,
    MSG_NOT_FOUND,
    MSG_UNAUTHORIZED,
    RoboflowServer,
)

PROFILES = ["v1", "serverless", "self-hosted"]
ENGINES = ["new", "old"]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SERVERLESS_401 = {"status": 401, "message": "Unauthorized api_key"}


def jpeg(color: tuple[int, int, int] = (250, 0, 0), size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@pytest.fixture
def make_server() -> Iterator[Callable[..., RoboflowServer]]:
    started: list[RoboflowServer] = []

    def make(**kwargs: Any) -> RoboflowServer:
        server = RoboflowServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_platform() -> Iterator[Callable[..., PlatformServer]]:
    started: list[PlatformServer] = []

    def make(**kwargs: Any) -> PlatformServer:
        server = PlatformServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def platform(make_platform) -> PlatformServer:
    return make_platform()


def infer(
    server: RoboflowServer,
    model: str = "colors/1",
    body: bytes | None = None,
    key: str | None = VALID_KEY,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> requests.Response:
    if key is not None:
        params["api_key"] = key
    data = b64(jpeg()) if body is None else body
    return requests.post(
        f"{server.url}/{model}", params=params, data=data, headers=FORM if headers is None else headers
    )


def scripted(scores: dict[str, float]) -> Callable[[Image.Image], dict[str, float]]:
    return lambda image: dict(scores)


# Auth per profile (hosted_platform_tests/test_roboflow_models.py; error_handlers.py; the serverless middleware)


@pytest.mark.parametrize("profile", PROFILES)
def test_missing_key_is_401_everywhere(make_server, profile):
    response = infer(make_server(profile=profile), key=None)
    assert response.status_code == 401
    expected = SERVERLESS_401 if profile == "serverless" else {"message": MSG_UNAUTHORIZED}
    assert response.json() == expected


@pytest.mark.parametrize("profile,status", [("v1", 403), ("serverless", 401), ("self-hosted", 403)])
def test_bad_key(make_server, profile, status):
    response = infer(make_server(profile=profile), key="not-a-key")
    assert response.status_code == status
    assert response.json() == (SERVERLESS_401 if profile == "serverless" else {"message": MSG_FORBIDDEN})


@pytest.mark.parametrize("profile,status", [("v1", 403), ("serverless", 404), ("self-hosted", 403)])
@pytest.mark.parametrize("model", ["nope/1", "colors/9"])
def test_unknown_model(make_server, profile, status, model):
    response = infer(make_server(profile=profile), model=model)
    assert response.status_code == status
    assert response.json() == {"message": MSG_NOT_FOUND if status == 404 else MSG_FORBIDDEN}


@pytest.mark.parametrize("profile", PROFILES)
def test_bearer_header_is_the_last_resort_key(make_server, profile):
    server = make_server(profile=profile)
    assert infer(server, key=None, headers={**FORM, "Authorization": f"Bearer {VALID_KEY}"}).status_code == 200
    # the query key wins over the header
    assert infer(server, key="bad", headers={**FORM, "Authorization": f"Bearer {VALID_KEY}"}).status_code != 200


def test_keys_are_the_catalogs(make_server):
    server = make_server()
    server.valid_keys.add("second-key")
    assert server.catalog.keys is server.valid_keys
    assert infer(server, key="second-key").status_code == 200


# Confidence (routes/legacy.py, env.py) and thresholds per engine


def test_confidence_default_50_and_floor(make_server):
    server = make_server()
    server.classifier = scripted({"red": 0.4, "green": 0.395, "blue": 0.005})
    assert [p["class"] for p in infer(server).json()["predictions"]] == ["red"]  # default 0.4, kept at >=
    assert [p["class"] for p in infer(server, confidence=39).json()["predictions"]] == ["red", "green"]  # 39 -> 0.39
    # 0.001 is raised to 0.01: the 0.005 class stays out
    assert [p["class"] for p in infer(server, confidence=0.001).json()["predictions"]] == ["red", "green"]
    assert infer(server, confidence="lots").status_code == 422


@pytest.mark.parametrize("engine", ENGINES)
def test_single_label_filtering(make_server, engine):
    server = make_server(engine=engine)
    server.classifier = scripted({"red": 0.2, "green": 0.3, "blue": 0.5})
    doc = infer(server, confidence=0.5).json()
    assert set(doc) == {"inference_id", "time", "image", "predictions", "top", "confidence"}
    if engine == "new":  # inference_models_adapters.py: only classes >= confidence
        assert doc["predictions"] == [{"class": "blue", "class_id": 2, "confidence": 0.5}]
        assert (doc["top"], doc["confidence"]) == ("blue", 0.5)
        nothing = infer(server, confidence=0.6).json()
        assert (nothing["predictions"], nothing["top"], nothing["confidence"]) == ([], "", 0.0)
    else:  # classification_base.py: every class, sorted, top is the argmax whatever the confidence
        assert [p["class"] for p in doc["predictions"]] == ["blue", "green", "red"]
        assert (infer(server, confidence=0.9).json()["top"]) == "blue"


@pytest.mark.parametrize("engine,expected", [("new", ["red", "blue"]), ("old", ["blue"])])
def test_multi_label_threshold_at_exact_score(make_server, engine, expected):
    server = make_server(engine=engine)
    server.classifier = scripted({"red": 0.5, "green": 0.2, "blue": 0.7})
    doc = infer(server, model="tags/1", confidence=0.5).json()
    assert set(doc) == {"inference_id", "time", "image", "predictions", "predicted_classes"}  # no top
    assert doc["predicted_classes"] == expected  # new: >= ; old: >
    assert doc["predictions"]["red"] == {"confidence": 0.5, "class_id": 0}


@pytest.mark.parametrize("engine", ENGINES)
def test_multi_label_absent_classes_score_a_few_percent(make_server, engine):
    server = make_server(engine=engine)
    doc = infer(server, model="tags/2", body=b64(jpeg((250, 0, 0))), confidence=0.01).json()
    scores = {c: p["confidence"] for c, p in doc["predictions"].items()}
    assert scores["red"] >= 0.85
    assert all(0.02 <= scores[c] <= 0.06 for c in ("green", "blue"))
    assert doc["predicted_classes"] == ["red", "green", "blue"]  # the server "predicts" everything at 0.01
    assert infer(server, model="tags/2", body=b64(jpeg((250, 0, 0)))).json()["predicted_classes"] == ["red"]


def test_single_label_colour_scores(make_server):
    doc = infer(make_server(), body=b64(jpeg((250, 10, 10)))).json()
    assert doc["top"] == "red" and doc["confidence"] >= 0.9


def test_classifier_may_name_its_own_classes(make_server):
    server = make_server()
    server.classifier = scripted({"cat": 0.9, "other": 0.1})
    assert infer(server).json()["predictions"] == [{"class": "cat", "class_id": 0, "confidence": 0.9}]


# Image size, orientation and static crop


@pytest.mark.parametrize("engine", ENGINES)
def test_reported_size_and_old_multi_label_swap(make_server, engine):
    server = make_server(engine=engine)
    body = b64(jpeg(size=(64, 48)))
    assert infer(server, body=body).json()["image"] == {"width": 64, "height": 48}
    swapped = {"width": 48, "height": 64} if engine == "old" else {"width": 64, "height": 48}
    assert infer(server, model="tags/1", body=body).json()["image"] == swapped
    assert server.inference_requests()[0].image.size == (64, 48)


def test_static_crop_changes_what_the_model_sees_not_the_size(make_server):
    image = Image.new("RGB", (100, 80), (240, 0, 0))
    ImageDraw.Draw(image).rectangle((25, 20, 74, 59), fill=(0, 0, 240))  # blue exactly inside the 25..75 % crop
    buf = io.BytesIO()
    image.save(buf, "PNG")
    server = make_server()
    cropped = infer(server, model="colors/3", body=b64(buf.getvalue())).json()
    assert cropped["top"] == "blue" and cropped["image"] == {"width": 100, "height": 80}
    whole = infer(server, model="colors/3", body=b64(buf.getvalue()), disable_preproc_static_crop="true").json()
    assert whole["top"] == "red"


# Body handling (dependencies.py, routes/legacy.py, image_utils.py)


@pytest.mark.parametrize("profile,status", [("v1", 403), ("serverless", 401), ("self-hosted", 400)])
def test_no_content_type_is_checked_before_the_model_on_self_hosted(make_server, profile, status):
    server = make_server(profile=profile)
    prepared = requests.Request("POST", f"{server.url}/colors/1?api_key=bad", data=b64(jpeg())).prepare()
    prepared.headers.pop("Content-Type", None)
    with requests.Session() as session:
        response = session.send(prepared)
    assert response.status_code == status
    good = requests.Request("POST", f"{server.url}/colors/1?api_key={VALID_KEY}", data=b64(jpeg())).prepare()
    good.headers.pop("Content-Type", None)
    with requests.Session() as session:
        response = session.send(good)
    assert (response.status_code, response.json()) == (
        400,
        {"message": "Content-Type header not provided with request."},
    )


def test_data_url_prefix(make_server):
    server = make_server()
    assert infer(server, body=b"data:image/jpeg;base64," + b64(jpeg())).status_code == 200
    upper = infer(server, body=b"data:image/JPEG;base64," + b64(jpeg()))  # [a-z]+ only: not stripped
    assert upper.status_code == 400


@pytest.mark.parametrize("engine", ENGINES)
def test_malformed_empty_and_raw_bodies(make_server, engine):
    server = make_server(engine=engine)
    malformed = {"message": IMAGE_LOAD_PREFIX + "Malformed base64 input image."}
    assert infer(server, body=b"not base64!!").json() == malformed
    assert infer(server, body=b64(b"just some text, not an image")).json() == malformed
    empty = infer(server, body=b"")
    assert (empty.status_code, empty.json()) == (400, {"message": IMAGE_LOAD_PREFIX + "Empty image payload."})
    raw = infer(server, body=jpeg())
    if engine == "new":
        assert (raw.status_code, raw.json()) == (400, {"message": IMAGE_LOAD_PREFIX + CAUSE_RAW_BYTES})
    else:
        assert (raw.status_code, raw.json()) == (500, {"message": "Internal error."})


def test_multipart_file_part_takes_raw_bytes(make_server):
    server = make_server()
    url = f"{server.url}/colors/1?api_key={VALID_KEY}"
    ok = requests.post(url, files={"file": ("x.jpg", jpeg((0, 0, 250)), "image/jpeg")})
    assert ok.status_code == 200 and ok.json()["top"] == "blue"
    missing = requests.post(url, files={"other": ("x.jpg", jpeg(), "image/jpeg")})
    assert missing.status_code == 400 and "part named 'file'" in missing.json()["message"]


def test_numpy_image_type_is_refused(make_server):
    response = infer(make_server(), image_type="numpy")
    assert response.status_code == 400 and "NumPy image type is not supported" in response.json()["message"]


@pytest.mark.parametrize("profile,limit", [("v1", 5_000_000), ("serverless", 20_000_000), ("self-hosted", None)])
def test_body_limits(make_server, profile, limit):
    server = make_server(profile=profile)
    over_v1 = infer(server, body=b"A" * 5_000_004)
    assert over_v1.status_code == (413 if limit == 5_000_000 else 400)  # 'A's decode to zeros: not an image
    if limit != 5_000_000:
        assert infer(server, body=b"A" * 20_000_004).status_code == (413 if limit else 400)


# URL input (image_utils.load_image_from_url, env.py defaults)


@pytest.mark.parametrize("profile", PROFILES)
def test_url_input_refusals(make_server, profile):
    server = make_server(profile=profile)
    server.files["red.jpg"] = jpeg()

    def url_answer(url: str) -> dict[str, Any]:
        response = requests.post(f"{server.url}/colors/1", params={"api_key": VALID_KEY, "image": url})
        assert response.status_code == 400
        return response.json()

    non_https = url_answer(f"{server.url}/files/red.jpg")
    assert non_https == {
        "message": "Could not load input image. Cause: Providing images via non https:// URL is not supported in "
        "this configuration of `inference`."
    }
    for url in ("https://127.0.0.1/red.jpg", "https://localhost/red.jpg", "https://printer.local/x.jpg"):
        assert "URL without FQDN" in url_answer(url)["message"]


def test_url_input_when_the_knobs_allow_it(make_server):
    server = make_server(profile="self-hosted")
    server.allow_non_https_url = server.allow_url_without_fqdn = True
    server.files["blue.jpg"] = jpeg((0, 0, 250))
    response = requests.get(
        f"{server.url}/colors/1", params={"api_key": VALID_KEY, "image": f"{server.url}/files/blue.jpg"}
    )
    assert response.status_code == 200 and response.json()["top"] == "blue"
    missing = requests.post(f"{server.url}/colors/1", params={"api_key": VALID_KEY, "image": f"{server.url}/files/no"})
    assert missing.json()["message"].endswith("Data pointed by URL could not be decoded into image.")


# Active learning (managers/active_learning.py)


def test_active_learning_only_when_not_disabled(make_server):
    catalog = Catalog(projects=[Project("colors", classes=["red", "green", "blue"], active_learning=True)])
    catalog.add(Project("plain", classes=["red", "green", "blue"]))
    server = make_server(catalog=catalog)
    assert infer(server).status_code == 200
    assert len(server.active_learning_saved) == 1
    for flag in ("true", "True", "1", "yes"):
        assert infer(server, disable_active_learning=flag).status_code == 200
    assert infer(server, disable_active_learning="false").status_code == 200
    assert len(server.active_learning_saved) == 2
    assert infer(server, disable_active_learning="maybe").status_code == 422
    assert infer(server, key=None, headers={**FORM, "Authorization": f"Bearer {VALID_KEY}"}).status_code == 200
    assert infer(server, model="plain/1").status_code == 200
    assert len(server.active_learning_saved) == 2  # Bearer-only key and a project without AL: nothing saved


# Connections, faults, headers


def test_self_hosted_closes_idle_keep_alive_connections(make_server):
    server = make_server(profile="self-hosted")
    server.keepalive_timeout = 1.0  # (the two requests below must fit in it on a loaded machine too)
    with requests.Session() as session:
        url = f"{server.url}/colors/1?api_key={VALID_KEY}"
        assert session.post(url, data=b64(jpeg()), headers=FORM).status_code == 200
        assert session.post(url, data=b64(jpeg()), headers=FORM).status_code == 200  # within the timeout: reused
        assert server.connections == 1
        time.sleep(2.5)
        assert session.post(url, data=b64(jpeg()), headers=FORM).status_code == 200  # closed idle: a new one
    assert server.connections == 2
    assert [r.connection for r in server.inference_requests()] == [1, 1, 2]


def test_hosted_profiles_keep_idle_connections(make_server):
    server = make_server(profile="v1")
    assert server.keepalive_timeout is None
    with requests.Session() as session:
        url = f"{server.url}/colors/1?api_key={VALID_KEY}"
        session.post(url, data=b64(jpeg()), headers=FORM)
        time.sleep(0.4)
        session.post(url, data=b64(jpeg()), headers=FORM)
    assert server.connections == 1


def test_injected_errors_carry_the_real_messages_and_headers(make_server):
    server = make_server()
    server.fail_next(503)
    response = infer(server)
    assert (response.status_code, response.headers.get("Retry-After")) == (503, "1")
    assert response.json() == {"message": "Model is temporarily not ready - retry request."}
    server.fail_next(503, retry_after="")  # RoboflowAPIConnectionError: no Retry-After
    response = infer(server)
    assert "Retry-After" not in response.headers
    assert response.json() == {"message": "Internal error. Could not connect to Roboflow API."}
    server.fail_next(429, retry_after="7")
    assert infer(server).headers["Retry-After"] == "7"
    for status in (402, 423, 500, 501, 502, 504, 507):
        server.fail_next(status)
        response = infer(server)
        assert (response.status_code, response.json()) == (status, {"message": DEFAULT_MESSAGES[status]})
    server.fail_next(500, message="custom")
    assert infer(server).json() == {"message": "custom"}
    assert infer(server).status_code == 200
    assert [r.status for r in server.inference_requests()][:2] == [503, 503]


def test_transport_faults(make_server):
    server = make_server()
    server.hang_seconds = 0.2
    server.transport_fault_next("reset")
    server.transport_fault_next("hang")
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            infer(server)
    assert infer(server).status_code == 200
    assert [r.status for r in server.inference_requests()] == [-1, -2, 200]


def test_response_headers_per_profile(make_server):
    serverless, self_hosted, v1 = (make_server(profile=p) for p in ("serverless", "self-hosted", "v1"))
    assert float(infer(serverless).headers["X-Processing-Time"]) >= 0
    assert float(infer(serverless, key=None).headers["X-Processing-Time"]) >= 0
    assert "X-Processing-Time" not in infer(self_hosted).headers
    assert infer(self_hosted).headers["Server"] == "uvicorn"
    assert "Server" not in infer(v1).headers


def test_requests_are_recorded(make_server):
    server = make_server()
    body = b64(jpeg(size=(32, 16)))
    infer(server, body=body, confidence="0.5", name="ignored", headers={**FORM, "X-Extra": "1"})
    rec = server.inference_requests()[0]
    assert rec.method == "POST" and rec.path == "/colors/1"
    assert rec.query == {"confidence": "0.5", "name": "ignored", "api_key": VALID_KEY}
    assert rec.headers["x-extra"] == "1" and rec.body_bytes == len(body)
    assert rec.status == 200 and rec.image.size == (32, 16) and rec.answer["top"] == "red"
    server.keep_images = False
    infer(server)
    assert server.inference_requests()[1].image is None
    server.reset()
    assert server.requests == [] and server.connections == 0


def test_benchmark_mode_answers_without_decoding(make_server):
    server = make_server()
    server.decode_images, server.keep_images = False, False
    doc = infer(server).json()
    assert doc["top"] == "red" and doc["image"] == {"width": 0, "height": 0}
    assert infer(server, body=b64(b"not an image")).status_code == 400


def test_stop_and_start_on_the_same_port(make_server):
    server = make_server()
    port = server.port
    with requests.Session() as session:
        url = f"{server.url}/colors/1?api_key={VALID_KEY}"
        assert session.post(url, data=b64(jpeg()), headers=FORM).status_code == 200
        server.stop()
        with pytest.raises(requests.ConnectionError):
            session.post(url, data=b64(jpeg()), headers=FORM)
        again = make_server(port=port)
        assert session.post(url, data=b64(jpeg()), headers=FORM).status_code == 200
    assert again.port == port


# The platform API (api.roboflow.com)


def test_platform_key_check(platform):
    for method in ("GET", "POST"):
        response = requests.request(method, f"{platform.url}/", params={"api_key": VALID_KEY})
        assert response.json() == {
            "welcome": "Welcome to the Roboflow API.",
            "instructions": "You are successfully authenticated.",
            "docs": "https://docs.roboflow.com",
            "workspace": "acme",
        }
    assert requests.post(f"{platform.url}/", params={"api_key": "bad"}).status_code == 401
    assert requests.get(f"{platform.url}/").status_code == 401


def test_platform_project_and_version(platform):
    doc = requests.get(f"{platform.url}/acme/colors", params={"api_key": VALID_KEY}).json()
    assert doc["workspace"] == {"name": "acme", "url": "acme", "members": 1}
    assert doc["project"]["id"] == "acme/colors" and doc["project"]["type"] == "classification"
    assert doc["project"]["classes"] == {"red": 0, "green": 0, "blue": 0}
    assert [v["id"] for v in doc["versions"]] == ["acme/colors/3", "acme/colors/2", "acme/colors/1"]
    assert doc["versions"][2]["preprocessing"] == {}
    version = requests.get(f"{platform.url}/acme/colors/2", params={"api_key": VALID_KEY}).json()["version"]
    assert version["id"] == "acme/colors/2"
    assert version["preprocessing"]["resize"] == {
        "width": "224",
        "height": "224",
        "format": "Stretch to",
        "enabled": True,
    }
    # multi-label: roboflow-python reads project["type"] and project.get("multilabel", False)
    assert "multilabel" not in doc["project"]
    tags = requests.get(f"{platform.url}/acme/tags", params={"api_key": VALID_KEY}).json()
    assert tags["project"]["type"] == "classification" and tags["project"]["multilabel"] is True
    projects = requests.get(f"{platform.url}/acme", params={"api_key": VALID_KEY}).json()["workspace"]["projects"]
    assert [p["id"] for p in projects] == ["acme/colors", "acme/tags"]


def test_platform_not_found_and_unauthorized(platform):
    missing_ws = requests.get(f"{platform.url}/nope/colors", params={"api_key": VALID_KEY})
    assert missing_ws.status_code == 404
    assert missing_ws.json() == {
        "error": {
            "message": 'Unsupported get request. Workspace with ID "nope" does not exist or cannot be loaded due to '
            "missing permissions.",
            "status": 404,
            "type": "GraphMethodException",
            "hint": "You can see your available workspaces by issuing a GET request to /workspaces",
        }
    }
    missing_project = requests.get(f"{platform.url}/acme/nope", params={"api_key": VALID_KEY})
    assert missing_project.status_code == 404 and missing_project.json()["error"]["type"] == "GraphMethodException"
    assert requests.get(f"{platform.url}/acme/colors", params={"api_key": "bad"}).status_code == 401


def test_platform_unknown_version_is_a_500(make_platform):
    """roboflow/inference roboflow_api.py: "empirically checked that backend API responds HTTP 500 on incorrect
    version"; an unknown project is still a 404; ``unknown_version_status=404`` is the backend once fixed."""
    real = make_platform()
    for version in ("9", "x"):
        unknown = requests.get(f"{real.url}/acme/colors/{version}", params={"api_key": VALID_KEY})
        assert unknown.status_code == 500 and unknown.json() == {
            "error": {"message": "Internal server error.", "status": 500}
        }
    assert requests.get(f"{real.url}/acme/nope/1", params={"api_key": VALID_KEY}).status_code == 404
    assert requests.get(f"{real.url}/acme/colors/3", params={"api_key": VALID_KEY}).status_code == 200
    fixed = make_platform(unknown_version_status=404)
    unknown = requests.get(f"{fixed.url}/acme/colors/9", params={"api_key": VALID_KEY})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "GraphMethodException"


def test_platform_upload_then_duplicate(platform):
    url = f"{platform.url}/dataset/colors/upload"
    params = [
        ("api_key", VALID_KEY),
        ("name", "a.jpg"),
        ("split", "train"),
        ("batch", "b1"),
        ("tag", "x"),
        ("tag", "y"),
    ]
    first = requests.post(url, params=params, data=b64(jpeg()), headers=FORM).json()
    assert first["success"] is True and len(first["id"]) == 20
    again = requests.post(url, params={"api_key": VALID_KEY}, files={"file": ("a.jpg", jpeg())}, data={"name": "a.jpg"})
    assert again.json() == {"duplicate": True, "id": first["id"]}
    other = requests.post(
        url,
        params={"api_key": VALID_KEY},
        files={"file": ("b.jpg", jpeg((0, 250, 0)))},
        data={"name": "b.jpg", "split": "valid"},
    ).json()
    assert other["success"] is True and other["id"] != first["id"]
    stored = platform.uploads["colors"]
    assert [(u["name"], u["split"], u["batch"], u["tags"]) for u in stored] == [
        ("a.jpg", "train", "b1", ["x", "y"]),
        ("b.jpg", "valid", None, []),
    ]
    assert stored[0]["bytes"] == jpeg()
    assert requests.post(url, params={"api_key": "bad"}, data=b64(jpeg()), headers=FORM).status_code == 401
    missing = requests.post(f"{platform.url}/dataset/nope/upload", params={"api_key": VALID_KEY}, data=b64(jpeg()))
    assert missing.status_code == 404


#: roboflow-python#214 (the real server, 400) and roboflow-python's fixture (400); rfapi's expectation (409).
ALREADY = {
    "400": (
        400,
        {
            "error": {
                "message": "Image was already annotated.",
                "type": "InvalidImageException",
                "hint": "This image was already annotated; to overwrite the annotation, pass overwrite=true as a "
                "query parameter.",
            }
        },
    ),
    "400-no-hint": (
        400,
        {"error": {"message": "Image was already annotated.", "type": "InvalidImageException"}},
    ),
    "409": (
        409,
        {
            "error": {
                "message": "Image was already annotated.",
                "type": "InvalidImageException",
                "hint": "This image was already annotated; to overwrite the annotation, pass overwrite=true as a "
                "query parameter.",
            }
        },
    ),
}


@pytest.mark.parametrize("answer", sorted(ALREADY_ANNOTATED_ANSWERS))
def test_platform_annotate_then_already_annotated(make_platform, answer):
    assert set(ALREADY) == set(ALREADY_ANNOTATED_ANSWERS)
    platform = make_platform(already_annotated=answer)
    image_id = requests.post(
        f"{platform.url}/dataset/tags/upload", params={"api_key": VALID_KEY}, data=b64(jpeg()), headers=FORM
    ).json()["id"]
    url = f"{platform.url}/dataset/tags/annotate/{image_id}"
    params = {"api_key": VALID_KEY, "name": f"{image_id}.txt", "prediction": "true"}
    first = requests.post(url, params=params, data="red,green", headers={"Content-Type": "text/plain"})
    assert first.json() == {"success": True}
    second = requests.post(url, params=params, data="blue", headers={"Content-Type": "text/plain"})
    assert (second.status_code, second.json()) == ALREADY[answer]
    assert platform.annotations["tags"][image_id] == "red,green"  # refused: the label stays
    replaced = requests.post(
        url, params={**params, "overwrite": "true"}, json={"annotationFile": "blue", "labelmap": None}
    )
    assert replaced.json() == {"success": True}
    assert platform.annotations["tags"][image_id] == "blue"
    classes = requests.get(f"{platform.url}/acme/tags", params={"api_key": VALID_KEY}).json()["project"]["classes"]
    assert classes == {"red": 0, "green": 0, "blue": 1}
    unknown = requests.post(f"{platform.url}/dataset/tags/annotate/nope", params=params, data="red")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "Image not found in dataset."


def test_platform_overwrite_labels_an_image_with_no_label_yet(platform):
    """roboflow-python 1.7.3 sends overwrite=true for every image of a classification project, new ones too."""
    image_id = requests.post(
        f"{platform.url}/dataset/colors/upload", params={"api_key": VALID_KEY}, data=b64(jpeg()), headers=FORM
    ).json()["id"]
    params = {"api_key": VALID_KEY, "name": f"{image_id}.txt", "overwrite": "true"}
    url = f"{platform.url}/dataset/colors/annotate/{image_id}"
    assert requests.post(url, params=params, data="red", headers={"Content-Type": "text/plain"}).json() == {
        "success": True
    }
    assert platform.annotations["colors"] == {image_id: "red"}


def test_platform_annotate_right_after_an_upload_may_be_404_for_a_while(platform):
    """luxonis/oak-examples#287: a 404 ("Image not found in dataset.") for an id the upload just returned."""
    platform.annotate_lag = 0.6
    url = f"{platform.url}/dataset/colors/upload"
    first = requests.post(url, params={"api_key": VALID_KEY}, data=b64(jpeg()), headers=FORM).json()
    annotate = f"{platform.url}/dataset/colors/annotate/{first['id']}"
    params = {"api_key": VALID_KEY, "name": f"{first['id']}.txt"}
    early = requests.post(annotate, params=params, data="red", headers={"Content-Type": "text/plain"})
    assert early.status_code == 404 and early.json() == {
        "error": {
            "message": "Image not found in dataset.",
            "type": "InvalidParameterException",
            "hint": "The image ID is returned by the upload API.",
        }
    }
    assert "colors" not in platform.annotations
    # the lag counts from the image's first upload: a duplicate does not start it again
    again = requests.post(url, params={"api_key": VALID_KEY}, data=b64(jpeg()), headers=FORM).json()
    assert again == {"duplicate": True, "id": first["id"]}
    time.sleep(0.7)
    later = requests.post(annotate, params=params, data="red", headers={"Content-Type": "text/plain"})
    assert later.json() == {"success": True}


def test_platform_without_dedupe_the_same_bytes_are_a_new_image(platform):
    """oak-examples#287's author: "I get different ids even if I upload the same image twice"."""
    platform.dedupe = False
    url = f"{platform.url}/dataset/colors/upload"
    ids = [requests.post(url, params={"api_key": VALID_KEY}, data=b64(jpeg()), headers=FORM).json() for _ in "ab"]
    assert all(doc["success"] for doc in ids) and ids[0]["id"] != ids[1]["id"]
    assert len(platform.uploads["colors"]) == 2


def test_platform_failures_and_restart(platform):
    platform.fail_next(500, count=2)
    assert [requests.get(f"{platform.url}/", params={"api_key": VALID_KEY}).status_code for _ in range(3)] == [
        500,
        500,
        200,
    ]
    platform.down()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{platform.url}/", params={"api_key": VALID_KEY}, timeout=2)
    platform.up()
    assert requests.get(f"{platform.url}/", params={"api_key": VALID_KEY}).status_code == 200


def test_one_catalog_serves_both(make_server):
    catalog = Catalog(
        workspace="lab",
        keys={"k1"},
        projects=[Project("birds", classes=["owl", "tit"], versions={4: {"resize": resize(96, 96)}})],
    )
    platform = PlatformServer(catalog=catalog).start()
    try:
        server = make_server(catalog=catalog, profile="serverless")
        server.classifier = scripted({"owl": 0.8, "tit": 0.2})
        assert infer(server, model="birds/4", key="k1").json()["top"] == "owl"
        assert infer(server, model="colors/1", key="k1").status_code == 404
        assert requests.get(f"{platform.url}/", params={"api_key": "k1"}).json()["workspace"] == "lab"
        server.valid_keys.add("k2")  # one account: the platform knows the new key too
        assert requests.get(f"{platform.url}/lab/birds/4", params={"api_key": "k2"}).status_code == 200
    finally:
        platform.stop()


def test_half_a_request_is_dropped_unrecorded(make_server, platform):
    """A sender killed mid-body: no real server acts on half a request (see read_body), nor do the stand-ins."""
    import socket

    for server, path in ((make_server(), f"/colors/1?api_key={VALID_KEY}"), (platform, "/dataset/colors/annotate/x")):
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
            conn.sendall(head.encode() + b"gre")
            conn.shutdown(socket.SHUT_WR)  # and the sender is gone
            assert conn.recv(1024) == b"", "half a request was answered"
        assert server.requests == []
    assert platform.annotations == {}
