"""The journal's tables, in one place, and how a journal is created and upgraded.

One layout for both engines (see :mod:`rfwatch.journal.db` for the tokens). Each table is read and written by
one module of this package only:

==============  ===========================================================================  ===============
table           what it holds                                                                module
==============  ===========================================================================  ===============
meta            the schema version and the journal's id (delivery ids derive from it)        schema
holders         every process working on the journal, with its heartbeat                     holders
files           every file, where it is, its prediction, its state and who works on it      files
steps           each action a file's rules ran: intent before, result after                  files
events          a file's history, line by line                                               files
predictions     predictions by content hash: identical content is classified once            files
produced        files rfwatch wrote, so that no watcher takes them as new                    files
claims          paths a step is about to write (its intent named them), kept from watchers   files
                until the step's result marks what it wrote in ``produced``
undo_steps      each step undone, like steps                                                 undo
decisions       a person's label or reject for a file that waited for review                 decisions
outbox          deliveries (webhooks, uploads) and their leases                              outbox
gone_urls       delivery targets that asked for nothing more (410)                           outbox
model_facts     what the platform API said about each model                                  facts
copies          files copied in from another journal, by their old ids                       copy
sequences       closed sequences (bursts of frames decided together) and their labels        sequences
seq_frames      each frame of a sequence: its key and capture time, then its sequence        sequences
file_counts     files per state, as +1/-1 rows written by triggers on files, folded now and  files
                then: ``status`` sums a few rows instead of counting a million
deliverers      which plugin delivers each kind of delivery (named by ``status`` without     outbox
                loading the plugins)
==============  ===========================================================================  ===============

The schema version is in ``meta``; an rfwatch older than the journal refuses it, naming both versions. A
journal written by rfwatch 0.1 (SQLite, ``PRAGMA user_version`` 0-2, absolute paths) is upgraded in place once,
in one transaction, its paths made relative to the config's named roots. A schema 3 journal is upgraded to 4
(sequences), a schema 4 journal to 5 (file counts, deliverers) and a schema 5 journal to 6 (claims) in place, in one
transaction each, by whichever host opens it first. Schema 7 adds the PostgreSQL function ``rfwatch_take`` (nothing
changes on SQLite but the version).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from rfwatch.journal.db import Database, Dialect, SqliteDatabase, Tx
from rfwatch.journal.locations import Roots
from rfwatch.states import TERMINAL_STATES, FileState, StepKind

__all__ = ["SCHEMA_VERSION", "SchemaTooNew", "ensure_schema", "WORKING_STATES_SQL", "TERMINAL_STATES_SQL"]

log = logging.getLogger(__name__)

#: 1 and 2 were ``PRAGMA user_version`` of rfwatch 0.1's SQLite journal; 3 is the shared layout; 4 adds sequences;
#: 5 the file counts and the deliverers; 6 the claims; 7 the take as one function (PostgreSQL; nothing on SQLite).
SCHEMA_VERSION = 7

#: States of a finished file.
TERMINAL_STATES_SQL = "(" + ",".join(f"'{s}'" for s in TERMINAL_STATES) + ")"
#: States in which rfwatch still owns a file (no two rows may then name one path): the partial unique index.
WORKING_STATES_SQL = "('detected','classified','decided','review','undoing','waiting')"

_FILES_WORKING = f"""
CREATE UNIQUE INDEX IF NOT EXISTS files_working ON files(path_root, path) WHERE state IN {WORKING_STATES_SQL};
"""

SEQUENCE_TABLES = """
CREATE TABLE IF NOT EXISTS sequences (
    id {id},
    key TEXT NOT NULL,                -- the watch root's name, "/", the rendered sequence.key
    first_capture {real} NOT NULL,    -- capture times (Unix seconds) of its first and last frame
    last_capture {real} NOT NULL,
    frames INTEGER NOT NULL,
    label TEXT NOT NULL,              -- the sequence's class
    confidence {real} NOT NULL,
    method TEXT NOT NULL,             -- max | mean | majority
    empty INTEGER NOT NULL,           -- 1 when every frame was of an empty class
    why TEXT NOT NULL,                -- what closed it: a later frame, the gap in wall time, the end of a run
    closed {real} NOT NULL,
    host TEXT                         -- the host that closed it
);
CREATE INDEX IF NOT EXISTS sequences_key ON sequences(key, last_capture);
CREATE TABLE IF NOT EXISTS seq_frames (
    file_id BIGINT PRIMARY KEY,
    key TEXT NOT NULL,
    capture {real} NOT NULL,          -- EXIF DateTimeOriginal (+ SubSecTimeOriginal, OffsetTimeOriginal), else mtime
    gap {real} NOT NULL,              -- sequence.gap when it arrived
    arrived {real} NOT NULL,          -- the database's clock ({now}) when it was taken
    sequence_id BIGINT,               -- NULL while its sequence is open
    frame INTEGER,                    -- its place in the sequence by capture time, from 1
    frame_class TEXT,                 -- its own class and confidence, as the sequence was closed
    frame_confidence {real}
);
CREATE INDEX IF NOT EXISTS seq_frames_open ON seq_frames(sequence_id, key);
"""

#: Files per state without counting them: every change of a file's state adds a -1 row for the old state and a +1
#: row for the new one, in the transaction that changes it (a trigger, so no transition can forget it, and no
#: extra round trip). Rows are only ever inserted, so concurrent transitions never wait on one counter row; the
#: rows are folded into one per state now and then (Files.fold_counts), so the sum stays a read of a few rows.
COUNT_TABLES = """
CREATE TABLE IF NOT EXISTS file_counts (  -- no key, no index: each insert is one heap row (SQLite: its rowid)
    state TEXT NOT NULL,
    n BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliverers (
    kind TEXT PRIMARY KEY,            -- a kind of delivery (register_deliverers)
    plugin TEXT NOT NULL,             -- the plugin that delivers it, as the last process that loaded it said
    seen {real} NOT NULL
);
"""
#: A path a step's intent names is claimed by its file until the step's result: the written file sits in a watched
#: folder from its rename until the result commits (a loaded disk's fsync can outlast a watch's settle time), and a
#: watcher that looked at it then took a copy rfwatch made as a new file. A table of their own, keyed by the file
#: too: a claim never replaces a mark in ``produced`` (an output the step overwrites, a mark a person's deletion left
#: behind), and two files placing under one name at once each hold their own claim until their own result.
CLAIM_TABLES = """
CREATE TABLE IF NOT EXISTS claims (
    path_root TEXT NOT NULL,
    path {blob} NOT NULL,
    file_id BIGINT NOT NULL,
    PRIMARY KEY (path_root, path, file_id)
);
CREATE INDEX IF NOT EXISTS claims_file ON claims(file_id);
"""

#: The triggers behind file_counts, each one statement (their bodies hold semicolons).
COUNT_TRIGGERS: dict[Dialect, tuple[str, ...]] = {
    Dialect.SQLITE: (
        "CREATE TRIGGER IF NOT EXISTS files_counted_insert AFTER INSERT ON files"
        " BEGIN INSERT INTO file_counts (state, n) VALUES (NEW.state, 1); END",
        "CREATE TRIGGER IF NOT EXISTS files_counted_update AFTER UPDATE OF state ON files"
        " WHEN OLD.state IS NOT NEW.state"
        " BEGIN INSERT INTO file_counts (state, n) VALUES (OLD.state, -1), (NEW.state, 1); END",
        "CREATE TRIGGER IF NOT EXISTS files_counted_delete AFTER DELETE ON files"
        " BEGIN INSERT INTO file_counts (state, n) VALUES (OLD.state, -1); END",
    ),
    Dialect.POSTGRESQL: (
        # One INSERT per call (a change of state writes its -1 and +1 rows in one statement): each statement a
        # trigger runs is server CPU on every transition.
        "CREATE OR REPLACE FUNCTION rfwatch_count_files() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN"
        " IF TG_OP = 'UPDATE' THEN INSERT INTO file_counts (state, n) VALUES (OLD.state, -1), (NEW.state, 1);"
        " ELSIF TG_OP = 'INSERT' THEN INSERT INTO file_counts (state, n) VALUES (NEW.state, 1);"
        " ELSE INSERT INTO file_counts (state, n) VALUES (OLD.state, -1);"
        " END IF;"
        " RETURN NULL;"
        " END $$",
        # DROP and CREATE, not CREATE OR REPLACE TRIGGER (PostgreSQL 14): rfwatch needs nothing newer than 11.
        "DROP TRIGGER IF EXISTS files_counted_insert ON files",
        "CREATE TRIGGER files_counted_insert AFTER INSERT OR DELETE ON files"
        " FOR EACH ROW EXECUTE FUNCTION rfwatch_count_files()",
        "DROP TRIGGER IF EXISTS files_counted_update ON files",
        "CREATE TRIGGER files_counted_update AFTER UPDATE OF state ON files"
        " FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION rfwatch_count_files()",
    ),
}


#: Journal a new file (``Files.take``) on PostgreSQL in one statement: a function, because its second look (a row for
#: this very file that another process finished meanwhile) needs a snapshot taken after the insert, which waited for
#: that process's transaction (statements in a PL/pgSQL function take a snapshot each, at READ COMMITTED; one
#: statement's clauses share one). One round trip instead of three, and one statement of the client's instead of five.
#: files.py's take does the same on SQLite, statement by statement; the journal's contract tests run both.
TAKE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION rfwatch_take(
    p_root TEXT, p_rel BYTEA, p_size BIGINT, p_mtime_ns BIGINT, p_sha256 TEXT, p_model TEXT,
    p_now DOUBLE PRECISION, p_holder TEXT, p_host TEXT, p_message TEXT,
    OUT taken BIGINT, OUT skip TEXT, OUT other BIGINT
) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO files (root, source, path_root, path, size, mtime_ns, sha256, model, state, created, updated, holder,
                       host)
    SELECT p_root, p_rel, p_root, p_rel, p_size, p_mtime_ns, p_sha256, p_model, '{FileState.DETECTED}', p_now, p_now,
           p_holder, p_host
    WHERE NOT EXISTS (SELECT 1 FROM produced WHERE path_root = p_root AND path = p_rel
                      AND (size = -1 OR (size = p_size AND mtime_ns = p_mtime_ns)))
      AND NOT EXISTS (SELECT 1 FROM claims WHERE path_root = p_root AND path = p_rel)
    ON CONFLICT DO NOTHING RETURNING id INTO taken;
    IF taken IS NULL THEN
        IF EXISTS (SELECT 1 FROM claims WHERE path_root = p_root AND path = p_rel)
           OR EXISTS (SELECT 1 FROM produced WHERE path_root = p_root AND path = p_rel
                      AND (size = -1 OR (size = p_size AND mtime_ns = p_mtime_ns))) THEN
            skip := 'written by rfwatch';
        ELSE
            SELECT id INTO other FROM files WHERE path_root = p_root AND path = p_rel
                AND state IN {WORKING_STATES_SQL};
            skip := 'being processed';
        END IF;
        RETURN;
    END IF;
    SELECT id, 'already ' || state INTO other, skip FROM files WHERE path_root = p_root AND path = p_rel
        AND size = p_size AND mtime_ns = p_mtime_ns AND id <> taken AND state IN {TERMINAL_STATES_SQL}
        ORDER BY id DESC LIMIT 1;
    IF FOUND THEN
        DELETE FROM files WHERE id = taken;
        taken := NULL;
        RETURN;
    END IF;
    INSERT INTO events (file_id, at, message, host) VALUES (taken, p_now, p_message, p_host);
END $$
"""

#: Functions of the journal's schema, per engine (each one statement).
FUNCTIONS: dict[Dialect, tuple[str, ...]] = {Dialect.SQLITE: (), Dialect.POSTGRESQL: (TAKE_FUNCTION,)}

TABLES = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holders (
    id TEXT PRIMARY KEY,              -- host/pid/token: never a bare pid
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    kind TEXT NOT NULL,               -- daemon, run --once, undo, review, ...
    process TEXT,                     -- pid namespace and start time: on its own host, whether it still runs
    started {{real}} NOT NULL,
    heartbeat {{real}} NOT NULL       -- the database's clock ({{now}})
);
CREATE TABLE IF NOT EXISTS files (
    id {{id}},
    root TEXT NOT NULL,               -- the watch root it was found in (its name; '' for none)
    source {{blob}} NOT NULL,         -- where it was found: below root, else absolute
    path_root TEXT NOT NULL,
    path {{blob}} NOT NULL,           -- where it is now, likewise
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    prediction TEXT,                  -- the documented JSON
    rule TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created {{real}} NOT NULL,
    updated {{real}} NOT NULL,
    support TEXT,                     -- inference_id and request ids (JSON), for Roboflow support
    round_start INTEGER NOT NULL DEFAULT 1,  -- the first step of the current round of rules
    holder TEXT,                      -- the process working on it now (holders.id)
    host TEXT                         -- the host that took it
);
{_FILES_WORKING}
CREATE INDEX IF NOT EXISTS files_path ON files(path_root, path);
CREATE INDEX IF NOT EXISTS files_source ON files(root, source);
CREATE INDEX IF NOT EXISTS files_state ON files(state, updated);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);
CREATE INDEX IF NOT EXISTS files_created ON files(created);
CREATE TABLE IF NOT EXISTS steps (
    file_id BIGINT NOT NULL REFERENCES files(id),
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,               -- action | quarantine | decision (rfwatch.states.StepKind)
    rule TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,              -- pending | done | failed
    intent TEXT,                      -- what the action said it was about to do (JSON)
    result TEXT,                      -- its result or error (JSON)
    updated {{real}} NOT NULL,
    host TEXT,
    PRIMARY KEY (file_id, seq)
);
CREATE TABLE IF NOT EXISTS events (
    id {{id}},
    file_id BIGINT NOT NULL,
    at {{real}} NOT NULL,
    message TEXT NOT NULL,
    host TEXT
);
CREATE INDEX IF NOT EXISTS events_file ON events(file_id, id);
CREATE TABLE IF NOT EXISTS predictions (
    sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    prediction TEXT NOT NULL,
    created {{real}} NOT NULL,
    PRIMARY KEY (sha256, model)
);
CREATE TABLE IF NOT EXISTS produced (
    path_root TEXT NOT NULL,
    path {{blob}} NOT NULL,
    size BIGINT NOT NULL,             -- -1: whatever is there (an undo at work on the file)
    mtime_ns BIGINT NOT NULL,
    file_id BIGINT,
    PRIMARY KEY (path_root, path)
);
CREATE INDEX IF NOT EXISTS produced_file ON produced(file_id);
CREATE TABLE IF NOT EXISTS undo_steps (
    file_id BIGINT NOT NULL,
    seq INTEGER NOT NULL,             -- the step undone
    action TEXT NOT NULL,
    state TEXT NOT NULL,              -- pending | done | failed | closed (done, and the file was undone since)
    intent TEXT,
    result TEXT,                      -- {{"outcome": undone | kept | nothing | partial, "detail"}} (JSON)
    updated {{real}} NOT NULL,
    host TEXT,
    PRIMARY KEY (file_id, seq)
);
CREATE TABLE IF NOT EXISTS decisions (
    file_id BIGINT NOT NULL,
    round INTEGER NOT NULL,           -- files.round_start when it was decided: one decision per waiting
    kind TEXT NOT NULL,               -- label | reject
    classes TEXT NOT NULL,            -- JSON list: the person's class(es)
    decided {{real}} NOT NULL,
    by TEXT,
    host TEXT,
    taken_back {{real}},              -- when it was taken back on the review page (the file waits again)
    PRIMARY KEY (file_id, round)
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,              -- the plugin's key (a webhook's webhook-id): the same on every attempt
    plugin TEXT NOT NULL,
    kind TEXT NOT NULL,
    file_id BIGINT,
    url TEXT NOT NULL,                -- the target: a URL, a project
    body {{blob}} NOT NULL,
    state TEXT NOT NULL,              -- pending | delivered | gone | failed | cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at {{real}} NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created {{real}} NOT NULL,
    delivered {{real}},
    result TEXT,
    lease TEXT,                       -- the holder delivering it now (holders.id)
    host TEXT                         -- the host that made the last attempt
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_at);
CREATE INDEX IF NOT EXISTS outbox_file ON outbox(file_id);
CREATE TABLE IF NOT EXISTS gone_urls (
    url TEXT PRIMARY KEY,
    at {{real}} NOT NULL
);
CREATE TABLE IF NOT EXISTS copies (
    source TEXT NOT NULL,             -- the journal id of a journal copied in (rfwatch journal copy)
    old_id BIGINT NOT NULL,           -- a file's id there
    new_id BIGINT NOT NULL,           -- and here
    PRIMARY KEY (source, old_id)
);
CREATE TABLE IF NOT EXISTS model_facts (
    model TEXT PRIMARY KEY,
    facts TEXT NOT NULL,
    fetched {{real}} NOT NULL
);
{SEQUENCE_TABLES}
{COUNT_TABLES}
{CLAIM_TABLES}
"""


def _migration(db: Database, version: int) -> list[str]:
    """The statements that upgrade the layout of ``version - 1`` to ``version``, in order (run in the transaction
    that checks the version)."""
    if version == 4:
        # A file waiting for its sequence is one rfwatch still owns: the partial index now counts it.
        return _statements(db, "DROP INDEX IF EXISTS files_working;" + _FILES_WORKING + SEQUENCE_TABLES)
    if version == 5:
        # The triggers first, then one count of the files. On PostgreSQL creating a trigger locks ``files``
        # against writers until the upgrade commits, after waiting for those under way: the count then sees every
        # change committed before it, and every later change fires a trigger. (Counted first, a change committed
        # between the count and the trigger would be in neither, for good.)
        return [
            *_statements(db, COUNT_TABLES),
            *COUNT_TRIGGERS[db.dialect],
            "INSERT INTO file_counts (state, n) SELECT state, COUNT(*) FROM files GROUP BY state",
        ]
    if version == 6:
        return _statements(db, CLAIM_TABLES)
    if version == 7:
        return list(FUNCTIONS[db.dialect])
    return []


class SchemaTooNew(Exception):
    """The journal was written by a newer rfwatch."""


def _statements(db: Database, text: str) -> list[str]:
    text = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return [s.strip() for s in db.ddl(text).split(";") if s.strip()]


def ensure_schema(db: Database, roots: Roots, legacy_id: str | None = None) -> str:
    """Create or upgrade the layout; return the journal's id. ``legacy_id``: the id an 0.1 journal had (its path)."""
    if isinstance(db, SqliteDatabase) and _is_legacy(db):
        _upgrade_legacy(db, roots, legacy_id or str(db.path))
    # A journal of this layout is only read: a write transaction here would make every command (`status` too)
    # wait for the daemon's writes on SQLite, whose writers take turns, and take the lock from the daemon meanwhile.
    with db.read() as tx:
        version, journal_id = _layout(tx, db)
    if version == SCHEMA_VERSION and journal_id:
        return journal_id

    def setup(tx: Tx) -> str:
        if db.dialect == Dialect.POSTGRESQL:
            tx.run("SELECT pg_advisory_xact_lock(7262617463680001)")  # one host creates or upgrades at a time
        version, _ = _layout(tx, db)  # again, under the lock: another process may have done it meanwhile
        if version == 0:
            _create_tables(tx, db)
            tx.run("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            tx.run("INSERT INTO meta (key, value) VALUES ('journal_id', ?)", (legacy_id or _new_id(),))
        for v in range(version + 1 if version else SCHEMA_VERSION + 1, SCHEMA_VERSION + 1):
            for statement in _migration(db, v):
                tx.run(statement)
            tx.run("UPDATE meta SET value=? WHERE key='schema_version'", (str(v),))
            log.warning("journal %s upgraded in place to schema %d", db.display, v)
        return str(tx.scalar("SELECT value FROM meta WHERE key='journal_id'"))

    return db.transact(setup)


def _layout(tx: Tx, db: Database) -> tuple[int, str | None]:
    """The journal's schema version (0: no tables yet) and its id; SchemaTooNew for a layout this rfwatch does not
    know."""
    if not tx.scalar(_TABLE_EXISTS[db.dialect], ("meta",)):
        return 0, None
    version = int(tx.scalar("SELECT value FROM meta WHERE key='schema_version'") or 0)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the journal {db.display} has schema version {version}, and this rfwatch knows versions up to "
            f"{SCHEMA_VERSION}: upgrade rfwatch on this host (it must not write a layout it does not know)"
        )
    found = tx.scalar("SELECT value FROM meta WHERE key='journal_id'")
    return version, str(found) if found else None


def _new_id() -> str:
    import uuid  # once per journal, at its creation: not at every command's start

    return uuid.uuid4().hex


def _create_tables(tx: Tx, db: Database) -> None:
    for statement in _statements(db, TABLES):
        tx.run(statement)
    for statement in (*COUNT_TRIGGERS[db.dialect], *FUNCTIONS[db.dialect]):
        tx.run(statement)


_TABLE_EXISTS = {
    Dialect.SQLITE: "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
    Dialect.POSTGRESQL: "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name=?",
}


# --- rfwatch 0.1's journal ---------------------------------------------------------------


def _is_legacy(db: SqliteDatabase) -> bool:
    with db.read() as tx:
        has_files = tx.scalar(_TABLE_EXISTS[Dialect.SQLITE], ("files",))
        has_meta = tx.scalar(_TABLE_EXISTS[Dialect.SQLITE], ("meta",))
    return bool(has_files) and not has_meta


_LEGACY_STEP_KINDS = {"quarantine": StepKind.QUARANTINE, "decision": StepKind.DECISION}


def _upgrade_legacy(db: SqliteDatabase, roots: Roots, journal_id: str) -> None:
    """rfwatch 0.1 -> schema 3, in one transaction: a crash leaves the old journal as it was."""

    def columns(tx: Tx, table: str) -> set[str]:
        return {r["name"] for r in tx.all(f"PRAGMA table_info({table})")}

    def upgrade(tx: Tx) -> None:
        existing = {r["name"] for r in tx.all("SELECT name FROM sqlite_master WHERE type='table'")}
        old = {}
        for table in sorted(existing):
            if table in _LEGACY_TABLES:
                tx.run(f"ALTER TABLE {table} RENAME TO legacy_{table}")
                old[table] = columns(tx, f"legacy_{table}")
        for name in [r["name"] for r in tx.all("SELECT name FROM sqlite_master WHERE type='index'")]:
            if not name.startswith("sqlite_"):
                tx.run(f"DROP INDEX IF EXISTS {name}")
        _create_tables(tx, db)
        tx.run("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        tx.run("INSERT INTO meta (key, value) VALUES ('journal_id', ?)", (journal_id,))
        _copy_legacy(tx, roots, old)
        for table in old:
            tx.run(f"DROP TABLE legacy_{table}")

    db.transact(upgrade)
    log.warning("journal %s upgraded from rfwatch 0.1's layout to schema %d", db.display, SCHEMA_VERSION)


_LEGACY_TABLES = (
    "files",
    "steps",
    "events",
    "predictions",
    "produced",
    "undo_steps",
    "decisions",
    "outbox",
    "gone_urls",
    "model_facts",
)


def _copy_legacy(tx: Tx, roots: Roots, old: dict[str, set[str]]) -> None:
    def rows(table: str) -> list[Any]:
        return tx.all(f"SELECT * FROM legacy_{table}") if table in old else []

    def where(blob: bytes) -> tuple[str, bytes]:
        loc = roots.locate(bytes(blob).decode("utf-8", "surrogateescape"))
        return loc.root, loc.rel

    def portable(text: str | None) -> str | None:
        return json.dumps(roots.to_portable(json.loads(text))) if text else text

    for r in rows("files"):
        root, source = where(r["source"])
        path_root, path = where(r["path"])
        keys = r.keys()
        tx.run(
            "INSERT INTO files (id, root, source, path_root, path, size, mtime_ns, sha256, model, state, prediction,"
            " rule, attempts, last_error, created, updated, support, round_start) VALUES"
            " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r["id"],
                root,
                source,
                path_root,
                path,
                r["size"],
                r["mtime_ns"],
                r["sha256"],
                r["model"],
                r["state"],
                r["prediction"],
                r["rule"],
                r["attempts"],
                r["last_error"],
                r["created"],
                r["updated"],
                r["support"] if "support" in keys else None,
                r["round_start"] if "round_start" in keys else 1,
            ),
        )
    for r in rows("steps"):
        kind = _LEGACY_STEP_KINDS.get(r["action"], StepKind.ACTION)
        tx.run(
            "INSERT INTO steps (file_id, seq, kind, rule, action, state, intent, result, updated)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (
                r["file_id"],
                r["seq"],
                kind,
                r["rule"],
                r["action"],
                r["state"],
                portable(r["intent"]),
                portable(r["result"]),
                r["updated"],
            ),
        )
    if "events" in old:
        tx.run(
            "INSERT INTO events (file_id, at, message) SELECT file_id, at, message FROM legacy_events ORDER BY rowid"
        )
    if "predictions" in old:
        tx.run("INSERT INTO predictions SELECT sha256, model, prediction, created FROM legacy_predictions")
    for r in rows("produced"):
        root, path = where(r["path"])
        tx.run(
            "INSERT INTO produced VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
            (root, path, r["size"], r["mtime_ns"], r["file_id"]),
        )
    for r in rows("undo_steps"):
        tx.run(
            "INSERT INTO undo_steps (file_id, seq, action, state, intent, result, updated) VALUES (?,?,?,?,?,?,?)",
            (
                r["file_id"],
                r["seq"],
                r["action"],
                r["state"],
                portable(r["intent"]),
                portable(r["result"]),
                r["updated"],
            ),
        )
    if "decisions" in old:
        tx.run(
            "INSERT INTO decisions (file_id, round, kind, classes, decided, by)"
            " SELECT file_id, round, kind, classes, decided, by FROM legacy_decisions"
        )
    if "outbox" in old:
        cols = old["outbox"]
        plugin = "plugin" if "plugin" in cols else "'rfwatch.default_plugins.webhook'"
        kind = "kind" if "kind" in cols else "'webhook'"
        file_id = "file_id" if "file_id" in cols else "NULL"
        result = "result" if "result" in cols else "NULL"
        # Leases of rfwatch 0.1 named a pid and set next_at to the lease's end: none is live across an upgrade.
        next_at = "CASE WHEN lease IS NOT NULL THEN 0 ELSE next_at END" if "lease" in cols else "next_at"
        tx.run(
            "INSERT INTO outbox (id, plugin, kind, file_id, url, body, state, attempts, next_at, last_status,"
            f" last_error, created, delivered, result) SELECT id, {plugin}, {kind}, {file_id}, url, body, state,"
            f" attempts, {next_at}, last_status, last_error, created, delivered, {result} FROM legacy_outbox"
        )
    if "gone_urls" in old:
        tx.run("INSERT INTO gone_urls SELECT url, at FROM legacy_gone_urls")
    if "model_facts" in old:
        tx.run("INSERT INTO model_facts SELECT model, facts, fetched FROM legacy_model_facts")
