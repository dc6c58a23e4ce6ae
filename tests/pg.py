"""A throwaway PostgreSQL cluster for tests, from Debian's ``postgresql`` package (never a running service).

``initdb`` and ``pg_ctl`` run in a temporary folder, as the unprivileged ``postgres`` user when the tests run as
root (PostgreSQL refuses root), with trust authentication on 127.0.0.1 and a port of its own. Each test gets a
fresh database (``CREATE DATABASE``). Where the server binaries are missing, :func:`find_bin` returns None and
the tests that need PostgreSQL skip, naming the package; CI installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from ports import free_port

__all__ = ["Cluster", "find_bin", "SKIP_REASON"]

SKIP_REASON = "PostgreSQL server binaries not found (apt-get install postgresql)"


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb (or initdb on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class Cluster:
    def __init__(self, bindir: Path, preload: tuple[str, ...] = ()):
        """``preload``: server libraries to load at start (the tests count statements with pg_stat_statements,
        part of Debian's postgresql package; the benches load none)."""
        self.bindir = bindir
        self.preload = preload
        self.root = Path(tempfile.mkdtemp(prefix="rfwatch-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = free_port()  # (kept across a stop and a start_again)
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")  # created by Debian's package
        self.sock.mkdir()
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            os.chown(self.sock, self.user.pw_uid, self.user.pw_gid)

    def _as_postgres(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        if self.user is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)

    def start(self) -> Cluster:
        self._as_postgres(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            timeout=120,
        )
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, what: str, mode: str = "fast") -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} -c max_connections=300"
            " -c shared_buffers=32MB -c fsync=on"
        )
        if self.preload:
            options += f" -c shared_preload_libraries={','.join(self.preload)}"
        args = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
        if what == "start":
            args += ["-o", options, "-l", str(self.root / "log"), "start"]
        else:
            args += ["-m", mode, "stop"]
        self._as_postgres(args, timeout=90)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (a test may start it again: ``start_again``). ``mode``: pg_ctl's; ``immediate`` is a crash
        (no checkpoint, every backend killed at once: the restart recovers from the WAL)."""
        self._pg_ctl("stop", mode)

    def start_again(self) -> None:
        self._pg_ctl("start")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        try:
            # Immediate: no shutdown checkpoint (which wrote and fsynced every database the tests made, 7 to 8 s at
            # the end of each test process), as the folder is removed next anyway.
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_accepting(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
