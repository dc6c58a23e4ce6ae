"""systemd's notify protocol (sd_notify(3)) without libsystemd: datagrams to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket

__all__ = ["Notifier"]


class Notifier:
    """Sends READY=1, STATUS=..., WATCHDOG=1, STOPPING=1, RELOADING=1; a no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or ""
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]  # abstract namespace socket
        elif address.startswith("/"):
            self.address = address
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2  # ping at half the timeout, as sd_watchdog_enabled(3) advises
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            # Never block: a listener that stops reading must not be able to stall the main loop
            # (and with it SIGTERM handling); a status line that cannot be sent now is simply dropped.
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *(("STATUS=" + status,) if status else ()))

    def status(self, text: str) -> None:
        self.send("STATUS=" + text)

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
