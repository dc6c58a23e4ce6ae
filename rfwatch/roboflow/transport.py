"""HTTP for Roboflow's two APIs (inference, the platform), on the standard library's http.client.

Why not requests: a first run cannot size an upload until the platform has told it the model's input (two round
trips, the second needing the first), and importing requests (urllib3, chardet, charset_normalizer, idna, cookies)
costs about 0.1 s of CPU before the first request could leave; http.client, ssl and certifi cost a fifth of that,
so a first run's questions start while the rest of rfwatch is still loading (rfwatch/service/early.py). Each
upload costs the client's thread about 1.7 ms of CPU through requests and 0.7 ms here (a 40 kB body and a JSON
answer on 127.0.0.1). Both APIs' calls are plain: a GET or a POST with a body, a JSON answer.

It takes from the environment what requests would, read once when the transport is made (not for each request,
which is what requests does: a proxy set after start is not seen, as with any setting):

- proxies: ``https_proxy``/``http_proxy``/``all_proxy`` (``urllib.request.getproxies``, which requests calls) and
  ``no_proxy`` as requests reads it (CIDR ranges for addresses, ``host:port`` and domain suffixes, then urllib's
  ``proxy_bypass``); an HTTPS request through a proxy is tunnelled (CONNECT), with the proxy URL's user and password
  as Basic proxy authorization. Only an ``http://`` proxy URL (the usual kind): one that speaks TLS itself
  (``https://``), SOCKS, or a URL that cannot be read fails every call, saying so without showing the URL;
- the CA bundle: ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``, else certifi's (requests' default);
  certificates and host names are always verified;
- ~/.netrc (or ``$NETRC``): a machine entry for the host is sent as Basic authorization (a self-hosted inference
  server behind a reverse proxy that asks for it), before a user and password in the URL itself, as requests does.

Paths are percent-encoded (a project name with a space or a ``?``), as requests did. An answer the server sends
before it has read a large body (a 413, then the connection closed) is the answer reported, not the broken send.

Where it differs from requests (no source shows Roboflow's servers depending on any of it): redirects are not followed (a 3xx is an
answer the caller reports with its status); a body is sent under the read timeout, not the connect timeout;
error bodies are decoded as UTF-8; a repeated header keeps its last value; ~/_netrc is not read; gzip is not
asked for (the answers are small JSON) and ``Accept`` is ``application/json``; and a GET that found its kept
connection closed before any answer is sent once more on a new one (requests, with no retries, reported it).

Connections are kept alive and reused, one request at a time each, by any thread (at most ``max_idle`` kept
idle, like requests' pool): the second round trip of a first run reuses the first's connection (no second TCP
and TLS handshake). An idle connection the server has closed is noticed before reuse. A POST is never sent twice
by the transport (it may have reached the server; the inference client's own retries decide), nor is a GET whose
answer had begun.
"""

from __future__ import annotations

import base64
import enum
import http.client
import ipaddress
import logging
import os
import select
import socket
import ssl
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field

from rfwatch.redact import register_secret

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
class _Proxy:
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # Basic, from the proxy URL's user and password


@dataclass(frozen=True)
class _Route:
    """How to reach one origin: directly, or through a proxy (tunnelled for https)."""

    scheme: str
    host: str
    port: int
    proxy: _Proxy | None


class Transport:
    def __init__(self, base_url: str, user_agent: str, max_idle: int = 4) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL (scheme {parts.scheme!r})")  # the URL may hold a password
        self.user_agent = user_agent
        self._prefix = parts.path.rstrip("/")
        #: A proxy this transport cannot speak to (TLS to the proxy itself, SOCKS) or cannot read: every request
        #: fails, saying so (never going around it).
        self._unsupported: str | None = None
        proxy = None
        proxies = _environment_proxies()
        found = proxies.get(parts.scheme) or proxies.get("all")
        if found and _bypasses_proxy(parts.hostname, parts.port):
            found = None
        if found:
            try:
                proxy = _read_proxy(found)
            except ValueError as exc:
                self._unsupported = str(exc)
        default_port = 443 if parts.scheme == "https" else 80
        self._route = _Route(parts.scheme, parts.hostname, parts.port or default_port, proxy)
        #: Made at the first https connection: loading the CA bundle takes tens of ms, which then pass in the thread
        #: that connects, with the GIL released (a first run's platform thread, while rfwatch is still loading).
        self._context: ssl.SSLContext | None = None
        self._context_lock = threading.Lock()
        # requests' order: a ~/.netrc entry for the host, else the URL's own user and password (masked from now on
        # wherever rfwatch's messages and logs are redacted, like the key: the URL itself is quoted in messages).
        if parts.password:
            register_secret(urllib.parse.unquote(parts.password))
        self._auth = _netrc_auth(parts.hostname) or _basic(parts.username, parts.password)
        self._max_idle = max(1, max_idle)
        self._idle: list[http.client.HTTPConnection] = []
        self._closed = False
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
        """``path`` below the base URL (percent-encoded here, as requests does), with ``params`` as its query;
        ``timeout``: (connect, read) seconds."""
        if self._unsupported:
            raise TransportError(self._unsupported)
        quoted = urllib.parse.quote(self._prefix + path, safe=_PATH_SAFE)
        target = self._target(quoted, params)
        headers = {"User-Agent": self.user_agent, "Accept": "application/json", "Connection": "keep-alive"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
        proxy = self._route.proxy
        if proxy is not None and proxy.authorization and self._route.scheme == "http":
            headers["Proxy-Authorization"] = proxy.authorization  # a plain proxy reads it from each request
        if self._auth:
            headers["Authorization"] = self._auth
        conn, reused = self._connection(timeout)
        while True:
            try:
                answer = self._exchange(conn, method, target, body, headers, timeout)
                break
            except (_Connecting, _Answered) as failed:  # no connection; or the answer had begun: never resent
                conn.close()
                raise _failure(failed.cause, connecting=isinstance(failed, _Connecting)) from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if not (reused and method == "GET"):
                    raise _failure(exc, connecting=False) from None
                # A kept connection the server closed as it was reused, before any answer: once more on a new one
                # (only a GET: a POST may have reached the server).
                conn, reused = self._new_connection(timeout), False
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _failure(exc, connecting=False) from None
        if log.isEnabledFor(logging.DEBUG):  # as urllib3 logs each request (-vv), the key masked
            log.debug('"%s %s" %d %d', method, _logged(quoted, params), answer.status, len(answer.body))
        return answer

    def close(self) -> None:
        with self._lock:
            self._closed = True  # a request still out closes its connection instead of keeping it
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- plumbing ----------------------------------------------------------------------

    def _target(self, quoted: str, params: list[tuple[str, str]]) -> str:
        route = self._route
        target = quoted + ("?" + urllib.parse.urlencode(params) if params else "")
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
        try:
            conn.request(method, target, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as sending:
            # A server may answer before it has read the whole body (a 413 for a body too large, a 401) and close:
            # that answer is the one to report, as requests does, not the broken send.
            try:
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise sending from None
        else:
            resp = conn.getresponse()
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _Answered(exc) from None
        answer = Answer(resp.status, resp.reason or "", data, resp.headers)
        keep = not resp.will_close
        if keep:
            with self._lock:
                keep = not self._closed and len(self._idle) < self._max_idle
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
            with self._context_lock:  # once, whichever thread comes first (each build costs ~20 ms of CPU)
                if self._context is None:
                    self._context = ssl.create_default_context(cafile=_ca_bundle())
        proxy = route.proxy
        if proxy is None:
            if route.scheme == "https":
                return http.client.HTTPSConnection(route.host, route.port, timeout=timeout[0], context=self._context)
            return http.client.HTTPConnection(route.host, route.port, timeout=timeout[0])
        if route.scheme == "https":  # CONNECT through the proxy, then TLS with the host itself
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                proxy.host, proxy.port, timeout=timeout[0], context=self._context
            )
            tunnel = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
            conn.set_tunnel(route.host, route.port, headers=tunnel)
            return conn
        return http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout[0])


#: What a request's path keeps as it is when percent-encoded (requests' requote_uri keeps these too).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def _read_proxy(url: str) -> _Proxy:
    """The environment's proxy URL; ValueError, with a message that holds no part of the URL, if unusable."""
    try:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        raise ValueError(
            "the environment's proxy URL cannot be read (its port, or a character in its user or password that "
            "should be percent-encoded)"
        ) from None
    if scheme != "http":
        raise ValueError(
            f"the environment's {scheme}:// proxy is not supported for Roboflow's APIs (an http:// proxy URL is: "
            "https is tunnelled through it)"
        )
    if not host:
        raise ValueError("the environment's proxy URL names no host")
    if parts.password:
        register_secret(urllib.parse.unquote(parts.password))
    return _Proxy(host, port or 80, _basic(parts.username, parts.password))


def _basic(user: str | None, password: str | None) -> str | None:
    if not user:
        return None
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _environment_proxies() -> dict[str, str]:
    """``urllib.request.getproxies()``, the lookup requests makes (and rfwatch made through it, before
    http.client). Elsewhere than macOS and Windows it reads the environment alone, and only variables named
    ``*_proxy``: without one there is nothing to read, and urllib.request (about 6 ms of imports, before a first
    run's first request to the platform) is not loaded."""
    if sys.platform not in ("darwin", "win32") and not any(name.lower().endswith("_proxy") for name in os.environ):
        return {}
    import urllib.request

    return urllib.request.getproxies()


def _bypasses_proxy(host: str, port: int | None) -> bool:
    """Whether ``no_proxy`` sends ``host`` straight to it, as requests decides (requests/utils.py
    should_bypass_proxies): an IPv4 address against each entry's CIDR range or address, a name (with its port, when
    the URL has one) against each entry as a suffix; then urllib's proxy_bypass (which requests calls too)."""
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
    if no_proxy:
        entries = [entry for entry in no_proxy.replace(" ", "").split(",") if entry]
        address = _ipv4(host)
        if address is not None:
            for entry in entries:
                if "/" in entry:
                    try:
                        if address in ipaddress.IPv4Network(entry, strict=False):
                            return True
                    except ValueError:
                        continue
                elif entry == host:
                    return True
        else:
            with_port = f"{host}:{port}" if port else host
            if any(host.endswith(entry) or with_port.endswith(entry) for entry in entries):
                return True
    import urllib.request  # loaded already: a proxy was found (_environment_proxies)

    try:
        return bool(urllib.request.proxy_bypass(host))
    except (TypeError, OSError):
        return False


def _ipv4(host: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        return None


def _logged(quoted: str, params: list[tuple[str, str]]) -> str:
    """A request's target for a log line, the ``api_key`` value masked (this may run before the log's redaction is
    installed: a first run's platform questions)."""
    if not params:
        return quoted
    return quoted + "?" + "&".join(f"{k}={'***' if k == 'api_key' else urllib.parse.quote(v)}" for k, v in params)


class _Answered(Exception):
    """Raised by _exchange when the connection broke after the answer's status line: the request reached the
    server, so it is never sent again."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


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
    import netrc  # only when there is a file to read

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
