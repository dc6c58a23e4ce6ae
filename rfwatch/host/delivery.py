"""What a plugin's deliverer receives and answers (see the ``register_deliverers`` hook).

A delivery is queued by an action (``ctx.deliver``), written with its step, and handed to the deliverer its plugin
registered for that ``kind`` on rfwatch's delivery threads (rfwatch.processing.delivery). The answer decides what
happens next:

- :class:`Delivered`: done; its ``result`` (a Roboflow image id, an HTTP status) is kept for ``history``;
- :class:`Retry` (or an exception): tried again after an exponential backoff (2 s, 4 s, 8 s ... up to an
  hour, +-25 % jitter so that many rows do not retry in lockstep), or after ``Retry-After`` when the
  receiver said when; across restarts, since the schedule is in the journal;
- :class:`Gone`: the target said it wants nothing more (a webhook's 410): every pending row for it stops,
  and later ones are not queued;
- :class:`Failed`: this one delivery can never succeed (a receiver that refuses it for good). The row keeps its
  payload, so that ``rfwatch retry --uploads`` can send it again once the cause is put right.

A deliverer whose delivery takes several calls (an upload, then its label) keeps what it learnt between attempts
with ``delivery.keep(state)`` (a JSON dict, committed at once, before the next call is made) and finds it in
``delivery.state`` on the next attempt, on any host, across restarts: an image the platform accepted is not sent
again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from rfwatch.record import record

__all__ = [
    "Delivery",
    "Delivered",
    "Retry",
    "Gone",
    "Failed",
    "DeliveryAnswer",
    "Deliverer",
    "DeliveryPolicy",
    "DeliveryStatus",
]


@record
class Delivery:
    """One queued delivery, as its deliverer receives it."""

    id: str
    kind: str
    target: str
    payload: bytes
    #: Attempts made before this one.
    attempts: int
    file_id: int | None
    created: float
    #: What the deliverer kept with :meth:`keep` on an earlier attempt (None: nothing yet).
    state: dict[str, Any] | None = None
    #: Writes ``state`` for this delivery at once (see keep); set by rfwatch's delivery threads.
    _keep: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        """The payload parsed as JSON (it was queued as a dict or list)."""
        return json.loads(self.payload)

    def keep(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (JSON) for this delivery's next attempts, committed before this returns.

        For a deliverer that makes several calls for one delivery: what an earlier call achieved (an image id)
        survives a crash, a restart or a Retry, and the next attempt finds it in ``state``.
        """
        if self._keep is not None:
            self._keep(state)


@record
class Delivered:
    status: int | None = None
    #: Kept in the journal and shown by ``history`` (e.g. {"image_id": ...}).
    result: dict[str, Any] | None = None


@record
class Retry:
    error: str
    status: int | None = None
    #: Seconds the receiver asked to wait (Retry-After); None: the backoff schedule.
    after: float | None = None


@record
class Gone:
    """The target wants nothing more: stop every pending delivery to it, queue none later."""

    error: str
    status: int | None = None


@record
class Failed:
    """This delivery can never succeed; it is kept, with the error, for ``history``."""

    error: str
    status: int | None = None


DeliveryAnswer = Union[Delivered, Retry, Gone, Failed]  # noqa: UP007 - a runtime alias on Python 3.10
Deliverer = Callable[[Delivery], DeliveryAnswer]


@dataclass
class DeliveryPolicy:
    base: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.25

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failed ones: base * 2**(attempts-1), +-jitter."""
        nominal = min(self.max_delay, self.base * 2 ** max(0, min(attempts - 1, 20)))
        import random  # only where deliveries are sent: status reads this module too

        return nominal * random.uniform(1 - self.jitter, 1 + self.jitter)


class DeliveryStatus(Protocol):
    """What the ``status_lines`` hook reads about deliveries waiting or failed (rfwatch's ``Deliveries``)."""

    def pending_by_plugin(self) -> dict[str, int]:
        """Deliveries not yet delivered, per plugin."""

    def failed_by_plugin(self) -> dict[str, int]:
        """Deliveries that failed for good, per plugin."""

    def gone_targets(self, kind: str) -> list[str]:
        """Targets of ``kind`` that said they want nothing more (a webhook receiver's 410)."""

    def failing(self, kind: str) -> list[dict[str, Any]]:
        """Pending deliveries of ``kind`` that failed at least once, per target: ``url``, ``n``, ``attempts``,
        ``last_error``."""

    def failed(self, kind: str) -> list[dict[str, Any]]:
        """Deliveries of ``kind`` that failed for good, per target: ``url``, ``n``, ``last_error``."""
