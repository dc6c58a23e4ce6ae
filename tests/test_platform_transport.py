"""The platform client's HTTP (rfwatch/roboflow/transport.py): the standard library's http.client, not requests, so
that a first run's questions to the platform leave before requests is loaded (issue 23, item 2).

What it must keep of requests' behaviour, each shown against real servers on 127.0.0.1: connections kept alive
(a first run's two round trips share one), a kept connection the server closed replaced, the environment's proxies
(plain and tunnelled, with the proxy URL's user as Basic authorization) and no_proxy, and certificates verified
against the bundle requests would use (REQUESTS_CA_BUNDLE, else certifi's).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
from catalog import VALID_KEY
from forward_proxy import ForwardProxy
from helpers import unique_jpeg, write_config
from ports import free_port

from rfwatch.roboflow.client import ApiError
from rfwatch.roboflow.facts import fetch_facts
from rfwatch.roboflow.platform import KeyRefused, PlatformClient, PlatformError, PlatformUnavailable


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_a_first_runs_two_round_trips_share_one_connection(platform, no_proxy_env):
    client = PlatformClient(VALID_KEY, platform.url)
    facts = fetch_facts(client, "colors/2")  # the key's workspace, then the version
    client.close()
    assert facts.classes
    gets = [r for r in platform.requests if r.method == "GET"]
    assert [r.path for r in gets] == ["/", f"/{platform.catalog.workspace}/colors/2"]
    assert gets[0].connection == gets[1].connection, "the second round trip opened a new connection"
    assert gets[0].headers["user-agent"] == "rfwatch/0.1"


def test_a_kept_connection_the_platform_closed_is_replaced(platform, no_proxy_env):
    """Noticed before it is used: an upload (a POST, never sent twice by the transport) on it would be lost."""
    platform.keepalive_timeout = 0.5  # the server closes a connection idle for 0.5 s
    client = PlatformClient(VALID_KEY, platform.url)
    assert client.workspace() == platform.catalog.workspace
    time.sleep(2.0)  # well past it: a loaded machine's server may close late
    assert not client.upload("colors", unique_jpeg((200, 10, 10), 7), "after-a-pause.jpg").duplicate
    client.close()
    assert platform.connections == 2
    assert [u["name"] for u in platform.uploads["colors"]] == ["after-a-pause.jpg"]


def test_errors_keep_their_meaning_and_never_show_the_key(platform, no_proxy_env):
    with pytest.raises(KeyRefused) as refused:
        PlatformClient("not-a-key-" + "x" * 20, platform.url).workspace()
    assert refused.value.status == 401 and "not-a-key" not in str(refused.value)
    platform.fail_next(503)
    with pytest.raises(PlatformUnavailable) as unavailable:
        PlatformClient(VALID_KEY, platform.url).workspace()
    assert unavailable.value.status == 503 and VALID_KEY not in str(unavailable.value)
    closed = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    with pytest.raises(PlatformUnavailable, match="no answer .*ConnectionRefusedError") as gone:
        PlatformClient(VALID_KEY, closed).workspace()
    assert VALID_KEY not in str(gone.value)


@pytest.fixture
def proxy():
    srv = ForwardProxy().start()
    yield srv
    srv.stop()


def test_the_environments_proxy_carries_platform_calls_unless_no_proxy_names_the_host(
    platform, proxy, no_proxy_env, monkeypatch
):
    """As requests reads them (urllib.request.getproxies and proxy_bypass), once, when the client is made."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://scanner:s3cret@"))
    client = PlatformClient(VALID_KEY, platform.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # after the client was made: not seen by it
    assert client.workspace() == platform.catalog.workspace
    method, target, auth = proxy.seen[0]
    assert method == "GET" and target.startswith(platform.url + "/?")  # an absolute URL: spoken to as to a proxy
    assert auth == "Basic " + base64.b64encode(b"scanner:s3cret").decode()
    assert PlatformClient(VALID_KEY, platform.url).workspace() == platform.catalog.workspace
    assert len(proxy.seen) == 1, "no_proxy names the host: the call went straight to it"


def test_a_socks_or_tls_proxy_is_refused_by_name_not_bypassed(platform, no_proxy_env, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "socks5://user:pw@127.0.0.1:1080")
    with pytest.raises(PlatformUnavailable, match="socks5:// proxy is not supported") as refused:
        PlatformClient(VALID_KEY, platform.url).workspace()
    assert "pw" not in str(refused.value).replace("proxy", "")
    assert platform.requests == [], "the call must not go around the proxy the environment names"


# --- https: certificates verified against the bundle requests would use -------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl, part of every Debian system)."""
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr.strip()[:200]}")
    return key, cert


class _Workspace(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        # The platform's answer to GET /?api_key= (rfwatch/testing/platform_server.py has the sources).
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        ok = query.get("api_key") == [VALID_KEY]
        data = json.dumps({"workspace": "acme"} if ok else {"error": "unauthorized"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_platform(certificate):
    key, cert = certificate
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Workspace)
    srv.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{srv.server_address[1]}", cert
    srv.shutdown()
    srv.server_close()


def test_https_is_verified_against_requests_bundle_directly_and_through_a_tunnel(
    https_platform, proxy, no_proxy_env, monkeypatch
):
    url, cert = https_platform
    # certifi's bundle (requests' default) does not know this certificate: refused, never trusted blindly
    with pytest.raises(PlatformUnavailable, match="SSLCertVerificationError"):
        PlatformClient(VALID_KEY, url).workspace()
    monkeypatch.setenv("CURL_CA_BUNDLE", str(cert))
    assert PlatformClient(VALID_KEY, url).workspace() == "acme"
    monkeypatch.delenv("CURL_CA_BUNDLE")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    client = PlatformClient(VALID_KEY, url)
    assert client.workspace() == "acme" and client.workspace() == "acme"
    # through the environment's proxy: a CONNECT tunnel, the proxy's user in it, TLS with the platform itself
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://scanner:s3cret@"))
    assert PlatformClient(VALID_KEY, url).workspace() == "acme"
    assert proxy.seen == [
        ("CONNECT", url.removeprefix("https://"), "Basic " + base64.b64encode(b"scanner:s3cret").decode())
    ]


_EARLY_PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG)  # what -vv shows: each request's line, before any redaction is set up
from rfwatch.config import load_config
from rfwatch.service.early import ask_early
service = ask_early(load_config(sys.argv[2]))
service.wait(20)
facts = service.get("colors/1")
with open(sys.argv[1], "w") as f:
    json.dump({"input": list(facts.classes) if facts else None, "modules": sorted(sys.modules)}, f)
"""


def test_a_first_runs_early_questions_need_neither_requests_nor_the_image_or_plugin_stack(
    tmp_path, server, platform, no_proxy_env
):
    """What cmd_run does before importing the daemon (rfwatch/service/early.py) loads none of them: the platform's
    answers are on their way while those load."""
    cfg = write_config(tmp_path, server)
    out = tmp_path / "early.json"
    # No *_proxy variable of any name (the machine's own, for its package mirror, say): with one, urllib.request is
    # rightly loaded to read it.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["ROBOFLOW_API_KEY"] = VALID_KEY
    ran = subprocess.run(
        [sys.executable, "-c", _EARLY_PROBE, str(out), str(cfg)], capture_output=True, text=True, env=env, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(out.read_text())
    assert report["input"], "the facts were not fetched"
    heavy = ("requests", "urllib3", "PIL", "pluggy", "rfwatch.host.manager", "rfwatch.roboflow.client")
    assert sorted(m for m in report["modules"] if m.split(".")[0] in heavy or m in heavy) == []
    # nor the journal's package (about 20 ms), nor urllib.request with no proxy in the environment (about 6 ms)
    assert sorted(m for m in report["modules"] if m.startswith("rfwatch.journal") or m == "urllib.request") == []
    assert [r.path for r in platform.requests] == ["/", f"/{platform.catalog.workspace}/colors/1"]
    assert '"GET /?api_key=***" 200' in ran.stderr and VALID_KEY not in ran.stderr


def _raw_server(serve):
    """A server on 127.0.0.1 speaking raw HTTP as ``serve(conn, number)`` scripts it, one thread per connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        number = 0
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            number += 1
            threading.Thread(target=serve, args=(conn, number), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener.close


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_get_on_a_connection_closed_as_it_was_reused_is_sent_again_a_post_is_not(no_proxy_env):
    """A server (or a load balancer in front of it) may close a kept connection just as the next request arrives:
    nothing was readable when it was checked. A GET is sent once more on a new connection (requests, with no
    retries, reported it instead); a POST (an upload) may have reached the server, and is reported, never sent twice
    by the transport."""
    answer = json.dumps({"workspace": "acme"}).encode()
    served: list[str] = []

    def serve(conn: socket.socket, number: int) -> None:
        with conn:
            for request in (1, 2):
                head = _read_head(conn)
                if not head:
                    return
                method = head.split(b" ", 1)[0].decode()
                if request == 2:  # the connection's second request: closed without an answer
                    served.append("closed at " + method)
                    return
                served.append("answered " + method)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(answer), answer))  # fmt: skip

    url, stop = _raw_server(serve)
    try:
        client = PlatformClient(VALID_KEY, url)
        assert client.workspace() == "acme"
        assert client.workspace() == "acme"  # the kept connection was closed on it; sent again on a new one
        assert served == ["answered GET", "closed at GET", "answered GET"]
        with pytest.raises(PlatformUnavailable, match="RemoteDisconnected"):
            client.upload("colors", b"\xff\xd8 not really a jpeg", "x.jpg")
        assert served[-1] == "closed at POST" and served.count("answered POST") == 0
    finally:
        stop()


_RUN_PROBE = """
import json, sys
from rfwatch.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def test_a_run_that_classifies_and_sorts_never_loads_requests(tmp_path, server, platform, no_proxy_env):
    """Both APIs' calls go over http.client: requests is loaded only by what needs it (webhooks, ``classify URL``)."""
    cfg = write_config(tmp_path, server)
    for n, color in enumerate([(230, 10, 10), (10, 230, 10)]):
        (tmp_path / "inbox" / f"img{n}.jpg").write_bytes(unique_jpeg(color, n))
    out = tmp_path / "run.json"
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
    ran = subprocess.run(
        [sys.executable, "-c", _RUN_PROBE, str(out), "run", "--once", "-q", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(out.read_text())
    assert report["code"] == 0
    assert sorted(p.name for p in (tmp_path / "sorted").rglob("*.jpg")) == ["img0.jpg", "img1.jpg"]
    assert len(server.inference_requests()) == 2 and platform.requests  # both APIs were asked
    assert [m for m in report["modules"] if m.split(".")[0] in ("requests", "urllib3")] == []


def test_a_netrc_entry_for_the_host_is_sent_as_basic_authorization(tmp_path, server, no_proxy_env, monkeypatch):
    """A self-hosted inference server behind a reverse proxy that asks for a password: ~/.netrc, as requests reads it."""
    from rfwatch.roboflow.client import RoboflowClient

    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine 127.0.0.1 login scanner password s3cret\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    image = tmp_path / "red.jpg"
    image.write_bytes(unique_jpeg((230, 10, 10), 1))
    with RoboflowClient(api_key=VALID_KEY, model="colors/1", api_url=server.url) as client:
        assert client.classify(str(image)).top == "red"
    sent = server.inference_requests()[-1].headers
    assert sent["authorization"] == "Basic " + base64.b64encode(b"scanner:s3cret").decode()
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with RoboflowClient(api_key=VALID_KEY, model="colors/1", api_url=server.url) as client:
        client.classify(str(image))
    assert "authorization" not in server.inference_requests()[-1].headers


# --- what requests did and the transport must too (a review of the change found each one missing) -----------------


def test_an_answer_sent_before_a_large_body_was_read_is_the_answer_reported(no_proxy_env):
    """A server refusing a body too large (413) answers after the headers and closes without reading the rest: the
    413 is what the caller is told (a refusal, for good), not a broken send (an outage, retried for ever)."""
    from rfwatch.roboflow.client import RejectedError, RetryPolicy, RoboflowClient

    def serve(conn: socket.socket, number: int) -> None:
        with conn:
            _read_head(conn)
            doc = b'{"message": "Request Entity Too Large"}'
            conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(doc), doc))  # fmt: skip
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)  # then closed with the body unread: the client's send breaks

    url, stop = _raw_server(serve)
    try:
        with pytest.raises(PlatformError) as refused:
            PlatformClient(VALID_KEY, url).upload("colors", os.urandom(8 * 1024 * 1024), "huge.jpg")
        assert refused.value.status == 413 and not isinstance(refused.value, PlatformUnavailable)
        client = RoboflowClient(api_key=VALID_KEY, model="colors/1", api_url=url, retry=RetryPolicy(attempts=3))
        with pytest.raises(RejectedError) as rejected:
            client._post(client._model(None), base64.b64encode(os.urandom(6 * 1024 * 1024)))
        assert rejected.value.status == 413
    finally:
        stop()


def test_no_proxy_ranges_and_ports_are_read_as_requests_reads_them(proxy, no_proxy_env, monkeypatch):
    """requests checks no_proxy itself (CIDR ranges for addresses, ``host:port`` suffixes) before urllib's check."""
    from rfwatch.roboflow.transport import Transport

    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    for no_proxy, url, direct in [
        ("127.0.0.0/8", "http://127.0.0.1:8080", True),
        ("10.0.0.0/8", "http://127.0.0.1:8080", False),
        ("localhost:8080", "http://localhost:8080", True),
        ("localhost:9090", "http://localhost:8080", False),
        (".example.com", "http://infer.example.com", True),
        ("", "http://infer.example.com", False),
    ]:
        monkeypatch.setenv("NO_PROXY", no_proxy)
        route = Transport(url, "t")._route
        assert (route.proxy is None) == direct, (no_proxy, url)


def test_proxy_variables_in_lower_case_are_read_too(proxy, no_proxy_env, monkeypatch):
    """``http_proxy`` and ``no_proxy`` as curl and most shells' users write them, read as requests reads them."""
    from rfwatch.roboflow.transport import Transport

    assert Transport("http://infer.example.com", "t")._route.proxy is None  # no variable: straight there
    monkeypatch.setenv("http_proxy", proxy.url)
    assert Transport("http://infer.example.com", "t")._route.proxy is not None
    monkeypatch.setenv("no_proxy", ".example.com")
    assert Transport("http://infer.example.com", "t")._route.proxy is None


def test_paths_are_percent_encoded_and_the_key_stays_out_of_errors_and_logs(server, no_proxy_env, caplog):
    """A project name with a space, a non-ASCII letter or a ``?`` reaches the server percent-encoded (as requests
    sent it): the server's answer (here: no such model) is what the caller hears, and the key is in no message."""
    import logging

    from rfwatch.roboflow.client import RoboflowClient

    caplog.set_level(logging.DEBUG, logger="rfwatch.roboflow.transport")
    image = unique_jpeg((230, 10, 10), 3)
    for model in ("my project/3", "café/3", "odd?x/3"):
        client = RoboflowClient(api_key=VALID_KEY, model=model, api_url=server.url)
        with pytest.raises(ApiError) as answered:
            client._post(client._model(None), base64.b64encode(image))
        assert answered.value.status in (403, 404) and VALID_KEY not in str(answered.value), model
    paths = [r.path for r in server.inference_requests()[-3:]]
    assert paths == ["/my%20project/3", "/caf%C3%A9/3", "/odd%3Fx/3"]
    assert "/odd%3Fx/3?api_key=***" in caplog.text and VALID_KEY not in caplog.text


def test_a_user_and_password_in_the_url_are_sent_and_netrc_comes_first(tmp_path, platform, no_proxy_env, monkeypatch):
    host = platform.url.removeprefix("http://")
    client = PlatformClient(VALID_KEY, f"http://scanner:s3cret-pw@{host}")
    assert client.workspace() == platform.catalog.workspace
    platform.fail_next(503)
    with pytest.raises(PlatformUnavailable) as unavailable:  # its message quotes the URL: the password masked
        client.workspace()
    assert "s3cret-pw" not in str(unavailable.value) and "scanner:***@" in str(unavailable.value)
    assert "s3cret-pw" not in repr(client)
    assert platform.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"scanner:s3cret-pw").decode()
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine 127.0.0.1 login other password pw2\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    PlatformClient(VALID_KEY, f"http://scanner:s3cret-pw@{host}").workspace()
    assert platform.requests[-1].headers["authorization"] == "Basic " + base64.b64encode(b"other:pw2").decode()


def test_a_proxy_url_that_cannot_be_read_fails_every_call_without_showing_it(platform, no_proxy_env, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://scanner:pa/ss99@127.0.0.1:3128")  # an unencoded "/" in the password
    with pytest.raises(PlatformUnavailable, match="proxy URL cannot be read") as refused:
        PlatformClient(VALID_KEY, platform.url).workspace()
    assert "scanner" not in str(refused.value) and "ss99" not in str(refused.value) and platform.requests == []


def test_a_get_whose_answer_had_begun_is_not_sent_again(no_proxy_env):
    """Only a GET that got no answer at all on a kept connection is sent once more: one whose status line came and
    whose connection broke during the body reached the server."""
    seen: list[str] = []

    def serve(conn: socket.socket, number: int) -> None:
        with conn:
            doc = json.dumps({"workspace": "acme"}).encode()
            for request in (1, 2):
                if not _read_head(conn):
                    return
                seen.append(f"conn{number} req{request}")
                if request == 1:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(doc), doc))
                else:  # a status line and headers, then the connection cut mid-body
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return

    url, stop = _raw_server(serve)
    try:
        client = PlatformClient(VALID_KEY, url)
        assert client.workspace() == "acme"
        with pytest.raises(PlatformUnavailable):
            client.workspace()
        time.sleep(0.2)
        assert seen == ["conn1 req1", "conn1 req2"]
    finally:
        stop()
