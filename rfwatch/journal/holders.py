"""Who works on the journal: one row per process, kept alive by a heartbeat.

A process that claims files or deliveries registers as a holder, ``<host>/<pid>/<token>`` (the host id is the
machine's host name unless the config's ``host:`` says otherwise; the token tells two processes with one pid
apart, in two containers or after a pid is reused). Its claims name it. It renews its heartbeat every
``lease / 6`` seconds; a holder whose heartbeat is older than ``lease`` (60 s by default) is dead, and its
claims are free for any other process, which resumes each file from its last journaled step. Heartbeats are
written and compared on the database's clock, so hosts whose clocks differ never take each other's live
claims. A holder that stops cleanly releases its claims at once.

On one host, a holder whose process is gone is dead at once, without waiting for its lease: each holder records
its pid namespace and its process's start time, and a process that sees a holder of its own host and namespace
whose pid no longer runs that process (killed, or the pid reused) removes it (:meth:`Holders.reap_local`). Across
namespaces (a daemon in a container, a command on the host) only the lease counts: a pid means nothing there.

A holder whose own heartbeat has failed for most of a lease (the database unreachable) stops starting side
effects (:meth:`Heartbeat.fresh`): by then another host may be about to take its files over.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from rfwatch.journal.db import Database, JournalUnavailable
from rfwatch.record import record

__all__ = ["Holder", "Holders", "Heartbeat", "DEFAULT_LEASE", "DAEMON", "RUN_ONCE", "SCANNERS", "default_host", "FREE"]

log = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a holder's claims are free (config ``lease:``).
DEFAULT_LEASE = 60.0

#: Kinds of holder that scan the watch roots: the daemon, and ``run --once`` (rfwatch/service/daemon.py).
DAEMON, RUN_ONCE = "daemon", "run --once"
SCANNERS = (DAEMON, RUN_ONCE)

#: SQL: whether the claim in column ``{col}`` is free for holder ``?`` (args: me, lease). A claim is free when
#: nobody holds it, it is ours already, or its holder's heartbeat is older than the lease.
FREE = "({col} IS NULL OR {col} = ? OR {col} NOT IN (SELECT id FROM holders WHERE heartbeat > {{now}} - ?))"


def default_host() -> str:
    # gethostname() is uname()'s node name on Linux; os has it without loading socket (issue 23: light commands)
    return os.uname().nodename or "localhost"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[-1].split()[19].decode()


@record
class Holder:
    """A process working on the journal, as it names itself in its claims."""

    id: str
    host: str
    pid: int
    kind: str
    #: The pid namespace and the process's start time: with the pid they tell, on this host, whether it still runs.
    process: str = ""

    @classmethod
    def new(cls, host: str, kind: str) -> Holder:
        pid = os.getpid()
        import uuid  # only a process that claims something registers: status and history never do

        return cls(f"{host}/{pid}/{uuid.uuid4().hex[:12]}", host, pid, kind, f"{_pid_namespace()} {_start_time(pid)}")


class Holders:
    def __init__(self, db: Database, lease: float = DEFAULT_LEASE):
        self.db = db
        self.lease = lease

    def register(self, holder: Holder) -> None:
        self.db.transact(
            lambda tx: tx.run(
                "INSERT INTO holders (id, host, pid, kind, process, started, heartbeat) VALUES (?,?,?,?,?,?,{now})"
                " ON CONFLICT (id) DO UPDATE SET heartbeat=excluded.heartbeat",
                (holder.id, holder.host, holder.pid, holder.kind, holder.process, time.time()),
            )
        )
        self.reap_local(holder.host)

    def beat(self, holder: Holder) -> None:
        def renew(tx) -> None:
            if not tx.run("UPDATE holders SET heartbeat={now} WHERE id=?", (holder.id,)):
                # Removed as long dead (the database was away longer than a lease): back, with our claims
                # as they are now (another host may have taken some; each transition checks its claim).
                tx.run(
                    "INSERT INTO holders (id, host, pid, kind, process, started, heartbeat) VALUES (?,?,?,?,?,?,{now})",
                    (holder.id, holder.host, holder.pid, holder.kind, holder.process, time.time()),
                )

        self.db.transact(renew)

    def remove(self, holder: Holder) -> None:
        self.db.transact(lambda tx: tx.run("DELETE FROM holders WHERE id=?", (holder.id,)))

    def reap_local(self, host: str) -> int:
        """Remove holders of this host and pid namespace whose process is gone (their claims are free now)."""
        namespace = _pid_namespace()
        if not namespace:
            return 0
        rows = self.db.all(
            "SELECT id, pid, process FROM holders WHERE host=? AND heartbeat > {now} - ?", (host, self.lease)
        )
        dead = [
            r["id"]
            for r in rows
            if (r["process"] or "").split(" ")[0] == namespace
            and f"{namespace} {_start_time(r['pid'])}" != r["process"]
        ]
        if dead:
            self.db.transact(lambda tx: tx.many("DELETE FROM holders WHERE id=?", [(d,) for d in dead]))
            log.info("%d process(es) of this host that stopped without letting go: their files are free", len(dead))
        return len(dead)

    def live(self) -> list[dict]:
        """Holders whose heartbeat is fresh: the processes working on the journal now (for ``status``)."""
        rows = self.db.all(
            "SELECT id, host, pid, kind, started, {now} - heartbeat AS age FROM holders"
            " WHERE heartbeat > {now} - ? ORDER BY host, started",
            (self.lease,),
        )
        return [dict(r) for r in rows]

    def turn(self, holder: Holder, kinds: tuple[str, ...] = SCANNERS) -> tuple[int, int]:
        """Where ``holder`` stands among the live holders of ``kinds`` (by id): ``(rank, of)``, ``(0, 1)`` when it
        is alone or not registered. Scans use it to start each host at a different point of a shared folder."""
        marks = ",".join("?" * len(kinds))
        rows = self.db.all(
            f"SELECT id FROM holders WHERE kind IN ({marks}) AND heartbeat > {{now}} - ? ORDER BY id",
            (*kinds, self.lease),
        )
        ids = [r["id"] for r in rows]
        return (ids.index(holder.id), len(ids)) if holder.id in ids else (0, 1)

    def forget_dead(self, older_than: float = 7 * 86400.0) -> int:
        """Drop holders silent for ``older_than`` seconds (their claims were free long ago)."""
        return self.db.transact(lambda tx: tx.run("DELETE FROM holders WHERE heartbeat < {now} - ?", (older_than,)))


class Heartbeat:
    """Renews a holder's heartbeat on a thread of its own until stopped."""

    def __init__(self, holders: Holders, holder: Holder):
        self.holders = holders
        self.holder = holder
        self.interval = max(0.05, holders.lease / 6)
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rfwatch-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.holders.beat(self.holder)
            except JournalUnavailable as exc:
                if not failing:
                    log.warning("heartbeat: %s (claims lapse after %.0f s without one)", exc, self.holders.lease)
                failing = True
                continue
            except Exception:  # never let the heartbeat thread die
                log.exception("heartbeat failed unexpectedly")
                continue
            if failing:
                log.info("heartbeat: the journal answers again")
            failing = False
            self._last_ok = time.monotonic()

    def fresh(self) -> bool:
        """Whether our claims surely still hold: the last heartbeat is well within the lease."""
        return time.monotonic() - self._last_ok < self.holders.lease * 0.75

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
