"""Signals to events, with no lock taken in the handler.

Python runs a signal handler in the main thread, between two of its bytecodes, and the main thread may be inside
``Event.wait`` then, holding the event's lock: a handler that calls ``Event.set`` waits for that lock, held by its
own thread, for ever (a SIGTERM during the daemon's 20 ms ticks hung the daemon's stop). So the handler only
writes the signal's number to a pipe (no Python lock), and a thread of its own reads the pipe and sets the event.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping

__all__ = ["relay_signals"]


def relay_signals(events: Mapping[signal.Signals, threading.Event]) -> None:
    """From now on each signal of ``events`` sets its event (at most a moment later). Main thread only."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    by_number = {int(signum): event for signum, event in events.items()}

    def handler(signum: int, _frame: object) -> None:
        try:
            os.write(write_end, bytes([signum]))
        except BlockingIOError:  # the pipe is full: signals are waiting to be relayed already
            pass

    def relay() -> None:
        while True:
            for signum in os.read(read_end, 64):
                by_number[signum].set()

    threading.Thread(target=relay, name="rfwatch-signals", daemon=True).start()
    for signum in by_number:
        signal.signal(signum, handler)
