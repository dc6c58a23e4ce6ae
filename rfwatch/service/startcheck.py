"""The check of the rules against the model's facts, done while the first files are found, hashed and journaled.

A cold start used to wait up to ``Daemon.FACTS_WAIT`` for the platform's answer before taking any file. Now the
facts are asked for on their own thread and the daemon starts at once; two things wait for them, each bounded by
the same deadline:

* the decode and resize of an upload, for the model's input size (:meth:`StartCheck.wait_for_facts`);
* every action, for the check that no rule names a class the model lacks (:meth:`StartCheck.wait`): a rule
  refused at start is still refused before any file is moved, only later (when the facts arrive) than before.

Once the deadline has passed without facts, the check is made with what is known (a warning that the classes
were not checked, as before).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["StartCheck", "RulesRefused"]


class RulesRefused(Exception):
    """A rule names a class the model does not have: no action may run under this config (as a ConfigError at
    start would have said)."""


class StartCheck:
    """Once: wait for the facts (until ``deadline``, time.monotonic()), then ``check()`` (a ConfigError refuses)."""

    def __init__(
        self, wait_facts: Callable[[float], None], deadline: float, check: Callable[[], None], refused: type
    ) -> None:
        self._wait_facts = wait_facts
        self.deadline = deadline
        self._check = check
        self._refused_by = refused
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.refused: str | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait_for_facts(self) -> None:
        """Until the facts have been fetched (or could not be), or the deadline."""
        if not self._done.is_set():
            self._wait_facts(max(0.0, self.deadline - time.monotonic()))

    def wait(self) -> None:
        """Until the check is done; RulesRefused if it refused the rules. The first caller makes the check."""
        if not self._done.is_set():
            with self._lock:  # the others wait here, no longer than the deadline and the check take
                if not self._done.is_set():
                    self.wait_for_facts()
                    try:
                        self._check()
                    except self._refused_by as exc:
                        self.refused = str(exc)
                    self._done.set()
        if self.refused is not None:
            raise RulesRefused(self.refused)
