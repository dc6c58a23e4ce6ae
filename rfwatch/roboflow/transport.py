"""HTTP for the platform API, on the standard library: what a first run needs before its first upload, at once.

Why not requests, as the inference client uses: a first run cannot size an upload until the platform has told it
the model's input (two round trips, the second needing the first), and importing requests (urllib3, chardet,
charset_normalizer, idna, cookies) costs about 0.1 s of CPU before the first request could leave; http.client,
ssl and certifi cost a fifth of that. The platform client's calls are few and plain (a GET or a POST with a body,
a JSON answer), so it does without requests altogether, and a first run's two round trips start while the rest of
rfwatch is still loading (rfwatch/service/early.py).

It takes from the environment what requests would, read once when the transport is made (as the inference
client does, rfwatch/roboflow/client.py ``_read_environment_once``):

- proxies: ``https_proxy``/``http_proxy``/``all_proxy`` and ``no_proxy`` (``urllib.request.getproxies`` and
  ``proxy_bypass``, the functions requests itself calls); an HTTPS request through a proxy is tunnelled
  (CONNECT), with the proxy URL's user and password as Basic proxy authorization. Only an ``http://`` proxy URL
  (the usual kind): one that speaks TLS itself (``https://``) or SOCKS fails every call, saying so;
- the CA bundle: ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``, else certifi's (requests' default);
  certificates and host names are always verified.

What it does not do, unlike requests: follow redirects (no source says the platform redirects; a 3xx is an
error that names its status), read ~/.netrc (the platform's key is its query's ``api_key``), or ask for gzip.

Connections are kept alive and reused, one at a time each (any thread): the second round trip of a first run
reuses the first's connection (no second TCP and TLS handshake). An idle connection the server has closed is
noticed before reuse, and a GET that finds it closed anyway is sent once more on a new one.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass

__all__ = ["Answer", "Transport", "TransportError"]


class TransportError(Exception):
    """No answer: the connection failed, was cut, or timed out (the message names the kind of failure, never a URL,
    which may hold the key or a proxy's password)."""


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class _Route:
    """How to reach one origin: directly, or through a proxy (tunnelled for https)."""

    scheme: str
    host: str
    port: int
    proxy: urllib.parse.SplitResult | None


class Transport:
    def __init__(self, base_url: str, user_agent: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.user_agent = user_agent
        self._prefix = parts.path.rstrip("/")
        proxy = None
        proxies = urllib.request.getproxies()
        if not urllib.request.proxy_bypass(parts.hostname):
            found = proxies.get(parts.scheme) or proxies.get("all")
            if found:
                proxy = urllib.parse.urlsplit(found if "://" in found else f"http://{found}")
        #: Basic proxy authorization from the proxy URL's user and password: in the CONNECT for https, in each
        #: request for http.
        self._proxy_auth: dict[str, str] = {}
        if proxy is not None and proxy.username:
            pair = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
            self._proxy_auth["Proxy-Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        self._route = _Route(
            parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), proxy
        )
        #: A proxy this transport cannot speak to (TLS to the proxy itself, SOCKS): every request fails, saying so.
        self._unsupported = None
        if proxy is not None and proxy.scheme != "http":
            self._unsupported = (
                f"the environment's {proxy.scheme}:// proxy is not supported for the platform API (an http:// proxy "
                "URL is: https is tunnelled through it)"
            )
        #: Made at the first https connection: loading the CA bundle takes tens of ms, which then pass in the thread
        #: that connects, with the GIL released (a first run's platform thread, while rfwatch is still loading).
        self._context: ssl.SSLContext | None = None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        content_type: str | None,
        timeout: tuple[float, float],
    ) -> Answer:
        """``path`` below the base URL, with ``params`` as its query; ``timeout``: (connect, read) seconds."""
        if self._unsupported:
            raise TransportError(self._unsupported)
        target = self._target(path, params)
        headers = {"User-Agent": self.user_agent, "Accept": "application/json", "Connection": "keep-alive"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
        if self._route.scheme == "http":
            headers.update(self._proxy_auth)  # empty unless a plain proxy with a user
        conn, reused = self._connection(timeout)
        try:
            return self._exchange(conn, method, target, body, headers, timeout)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            if not (reused and method == "GET"):
                raise TransportError(type(exc).__name__) from None
            # A kept connection the server closed as it was reused: once more on a new one (only a GET: a POST
            # may have reached the server).
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(type(exc).__name__) from None
        conn = self._new_connection(timeout)
        try:
            return self._exchange(conn, method, target, body, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(type(exc).__name__) from None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- plumbing ----------------------------------------------------------------------

    def _target(self, path: str, params: list[tuple[str, str]]) -> str:
        route = self._route
        target = self._prefix + path + ("?" + urllib.parse.urlencode(params) if params else "")
        if route.proxy is not None and route.scheme == "http":  # a plain proxy is asked for the absolute URL
            return f"http://{route.host}:{route.port}{target}"
        return target

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> Answer:
        if conn.sock is None:
            conn.timeout = timeout[0]
            conn.connect()
        conn.sock.settimeout(timeout[1])
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        answer = Answer(resp.status, resp.reason or "", data, resp.headers.get("Content-Type", ""))
        if resp.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return answer

    def _connection(self, timeout: tuple[float, float]) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new_connection(timeout), False
            if conn.sock is not None and not _dropped(conn.sock):
                return conn, True
            conn.close()  # closed by the server while idle (its keep-alive timeout)

    def _new_connection(self, timeout: tuple[float, float]) -> http.client.HTTPConnection:
        route = self._route
        if route.scheme == "https" and self._context is None:
            context = ssl.create_default_context(cafile=_ca_bundle())
            with self._lock:
                self._context = self._context or context
        if route.proxy is None:
            if route.scheme == "https":
                return http.client.HTTPSConnection(route.host, route.port, timeout=timeout[0], context=self._context)
            return http.client.HTTPConnection(route.host, route.port, timeout=timeout[0])
        proxy = route.proxy
        if route.scheme == "https":  # CONNECT through the proxy, then TLS with the platform itself
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                proxy.hostname, proxy.port or 80, timeout=timeout[0], context=self._context
            )
            conn.set_tunnel(route.host, route.port, headers=self._proxy_auth)
        else:
            conn = http.client.HTTPConnection(proxy.hostname, proxy.port or 80, timeout=timeout[0])
        return conn


def _ca_bundle() -> str | None:
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return bundle
    try:
        import certifi
    except ImportError:  # requests needs it, so it is there; without it, the system's store
        return None
    return certifi.where()


def _dropped(sock: socket.socket) -> bool:
    """Whether a kept connection was closed by the server (readable while no request is out: EOF, or junk)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True
