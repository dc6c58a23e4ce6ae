"""HTTP for Roboflow's two APIs (inference, the platform), on the standard library's http.client.

Why not requests: a first run cannot size an upload until the platform has told it the model's input (two round
trips, the second needing the first), and importing requests (urllib3, chardet, charset_normalizer, idna, cookies)
costs about 0.1 s of CPU before the first request could leave; http.client, ssl and certifi cost a fifth of that,
so a first run's questions start while the rest of rfwatch is still loading (rfwatch/service/early.py). Each
upload costs the client's thread about 1.7 ms of CPU through requests and 0.7 ms here (a 40 kB body and a JSON
answer on 127.0.0.1). Both APIs' calls are plain: a GET or a POST with a body, a JSON answer.

It takes from the environment what requests would, read once when the transport is made (not for each request,
which is what requests does: a proxy set after start is not seen, as with any setting):

- proxies: ``https_proxy``/``http_proxy``/``all_proxy`` and ``no_proxy`` (``urllib.request.getproxies`` and
  ``proxy_bypass``, the functions requests itself calls); an HTTPS request through a proxy is tunnelled
  (CONNECT), with the proxy URL's user and password as Basic proxy authorization. Only an ``http://`` proxy URL
  (the usual kind): one that speaks TLS itself (``https://``) or SOCKS fails every call, saying so;
- the CA bundle: ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``, else certifi's (requests' default);
  certificates and host names are always verified;
- ~/.netrc (or ``$NETRC``): a machine entry for the host is sent as Basic authorization (a self-hosted inference
  server behind a reverse proxy that asks for it), as requests does.

What it does not do, unlike requests: follow redirects (no source says either API redirects; a 3xx is an answer
the caller reports with its status), or ask for gzip (the answers are small JSON).

Connections are kept alive and reused, one request at a time each, by any thread (at most ``max_idle`` kept
idle, like requests' pool): the second round trip of a first run reuses the first's connection (no second TCP
and TLS handshake). An idle connection the server has closed is noticed before reuse, and a GET that finds it
closed anyway is sent once more on a new one (a POST is not: it may have reached the server).
"""

from __future__ import annotations

import base64
import enum
import http.client
import logging
import netrc
import os
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass

__all__ = ["Answer", "Failure", "Transport", "TransportError"]

log = logging.getLogger(__name__)


class Failure(enum.Enum):
    CONNECT = "connect"  # no connection (refused, no route, name unknown, TLS refused)
    TIMEOUT = "timeout"  # connecting or waiting for the answer took longer than allowed
    CUT = "cut"  # the connection broke during the exchange


class TransportError(Exception):
    """No answer. The message says why (the exception's kind and text, never a URL, which may hold the key or a
    proxy's password)."""

    def __init__(self, message: str, failure: Failure = Failure.CUT) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    body: bytes
    headers: http.client.HTTPMessage  # names case-insensitive: headers.get("Retry-After")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Route:
    """How to reach one origin: directly, or through a proxy (tunnelled for https)."""

    scheme: str
    host: str
    port: int
    proxy: urllib.parse.SplitResult | None


class Transport:
    def __init__(self, base_url: str, user_agent: str, max_idle: int = 4) -> None:
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
        self._auth = _netrc_auth(parts.hostname)
        self._max_idle = max(1, max_idle)
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
        if self._auth:
            headers["Authorization"] = self._auth
        conn, reused = self._connection(timeout)
        try:
            return self._exchange(conn, method, target, body, headers, timeout)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            if not (reused and method == "GET"):
                raise _failure(exc, connecting=False) from None
            # A kept connection the server closed as it was reused: once more on a new one (only a GET: a POST
            # may have reached the server).
        except _Connecting as connecting:
            conn.close()
            raise _failure(connecting.cause, connecting=True) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _failure(exc, connecting=False) from None
        conn = self._new_connection(timeout)
        try:
            return self._exchange(conn, method, target, body, headers, timeout)
        except _Connecting as connecting:
            conn.close()
            raise _failure(connecting.cause, connecting=True) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _failure(exc, connecting=False) from None

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
            host = f"[{route.host}]" if ":" in route.host else route.host  # an IPv6 literal keeps its brackets
            return f"http://{host}:{route.port}{target}"
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
            try:
                conn.connect()
            except (OSError, http.client.HTTPException) as exc:
                raise _Connecting(exc) from None
        conn.sock.settimeout(timeout[1])
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        answer = Answer(resp.status, resp.reason or "", data, resp.headers)
        if log.isEnabledFor(logging.DEBUG):  # as urllib3 logs each request (-vv), the key masked here already
            log.debug('"%s %s" %d %d', method, _masked(target), resp.status, len(data))
        keep = not resp.will_close
        if keep:
            with self._lock:
                keep = len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(conn)
        if not keep:
            conn.close()
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


def _masked(target: str) -> str:
    """A request's target for a log line: the ``api_key`` value masked (this may run before the log's redaction is
    installed: a first run's platform questions)."""
    path, _, query = target.partition("?")
    if not query:
        return path
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return path + "?" + "&".join(f"{k}={'***' if k == 'api_key' else urllib.parse.quote(v)}" for k, v in pairs)


class _Connecting(Exception):
    """Raised by _exchange when the connection could not be made (so that it is told from one cut later)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


def _failure(exc: BaseException, connecting: bool) -> TransportError:
    """What the caller is told: the failure's kind and the exception's own words (they name no URL)."""
    # An OSError's words without its "[Errno 111]" prefix: "ConnectionRefusedError: Connection refused".
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return TransportError(text, Failure.TIMEOUT)
    return TransportError(text, Failure.CONNECT if connecting else Failure.CUT)


def _netrc_auth(host: str) -> str | None:
    """Basic authorization from ``$NETRC`` or ~/.netrc for ``host``, read as requests reads it (errors ignored)."""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not os.path.exists(path):
        return None
    try:
        found = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    if not found:
        return None
    login, account, password = found
    login = login or account  # as requests reads an entry that has an account and no login
    return "Basic " + base64.b64encode(f"{login}:{password or ''}".encode()).decode("ascii")


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
