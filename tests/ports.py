"""Ports for the servers tests start and stop: chosen before they bind, kept across a restart.

The usual way (bind port 0, read the number, close, hand it to a server that binds it later, or stop a server and
start it again on its port) leaves the port free for a moment, and the kernel hands out the same range, the
ephemeral ports of ``ip_local_port_range``, to every ``bind(0)`` and to every outgoing connection's own end: the
stand-ins' clients, psycopg, the other xdist worker's tests. One of them taking the port in that moment fails a
test that did nothing wrong (a flaky test).

Ports below that range are never handed out unasked. Each process takes them in turn from a block of its own (by
its xdist worker's number; a process outside xdist, such as the breakage runner's, starts at a place its pid
chooses), and checks that each one is free before it hands it on.
"""

from __future__ import annotations

import os
import socket
import threading

__all__ = ["free_port"]

_FIRST = 10000  # above the well-known and most registered services' ports
_BLOCK = 2000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _block() -> tuple[int, int]:
    """(first port, offset to start at) of this process's block."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return _FIRST + int(worker[2:]) * _BLOCK, 0
    # not under xdist: the blocks' far end, at a place of this process's own
    slots = max(1, (_ephemeral_low() - _FIRST) // _BLOCK)
    return _FIRST + (slots - 1) * _BLOCK, (os.getpid() * 7919) % _BLOCK


_first, _next = _block()
_usable = _first + _BLOCK <= _ephemeral_low()
_lock = threading.Lock()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, and that nothing but this process will be given."""
    global _next
    if not _usable:  # an ephemeral range that leaves no room below it: the kernel's choice, as before
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    with _lock:
        for _ in range(_BLOCK):
            port = _first + _next
            _next = (_next + 1) % _BLOCK
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use (or another program's): the next one
                return port
    raise RuntimeError(f"no free port in {_first}-{_first + _BLOCK - 1}")
