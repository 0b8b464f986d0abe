"""The one schema of `outbox.sqlite`, with one version for every table in it.

Six owners write this file (the objects and their deliveries, the Storage
Commitment ledger, the MPPS messages, the exams, the clock flags, the alarms); each used
to create its own tables on open, and only the outbox versioned them. Now
every table is created and migrated here, under one `PRAGMA user_version`,
in one transaction, whoever opens the file first.

A database written by a newer gateway (a higher version) is refused rather
than half understood: a downgrade must not silently drop columns it does not
know.
"""

from __future__ import annotations

import sqlite3

DB_NAME = "outbox.sqlite"
SCHEMA_VERSION = 4

# Version 4: every table of the file, as a new database gets them.
_TABLES = """
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    exam_id TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    object_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('held', 'pending', 'in_flight', 'sent', 'committed', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    claimed_by TEXT,
    updated_at REAL NOT NULL,
    sent_at REAL,
    commit_tx TEXT,
    commit_requested_at REAL,
    claim_until REAL,
    converting_since REAL,
    crashes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (object_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS mpps_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exam_id TEXT NOT NULL,
    mpps_uid TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('create', 'set')),
    pps_status TEXT NOT NULL,
    dataset TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    claimed_by TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_at REAL,
    claim_until REAL
);
CREATE INDEX IF NOT EXISTS mpps_by_exam ON mpps_messages (exam_id, id);
CREATE INDEX IF NOT EXISTS mpps_due ON mpps_messages (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS exams (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed', 'discontinued')),
    data TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    discontinue_reason TEXT
);
CREATE TABLE IF NOT EXISTS clock_unverified (
    object_id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    flagged_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_at REAL NOT NULL,
    cleared_at REAL
)
"""

# Columns later versions added to tables an older version made: version 2
# (Storage Commitment) to deliveries; version 4 the claim's lease (a claim is
# its holder's boot, PID and start time, gateway.queue.db) and the record of
# a conversion in progress (an object the forwarder died on twice is poison).
_ADDED_COLUMNS = {
    "deliveries": {
        "commit_tx": "TEXT",
        "commit_requested_at": "REAL",
        "claim_until": "REAL",
        "converting_since": "REAL",
        "crashes": "INTEGER NOT NULL DEFAULT 0",
    },
    "mpps_messages": {"claim_until": "REAL"},
}


class SchemaError(sqlite3.DatabaseError):
    """The database is from a newer gateway than this one."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring the open database to SCHEMA_VERSION (call inside a write
    transaction); returns the version it had."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"queue database schema version {found} is newer than this gateway's "
            f"({SCHEMA_VERSION}); install the newer gateway again"
        )
    if found == SCHEMA_VERSION:
        return found
    for statement in _TABLES.split(";"):
        if statement.strip():
            db.execute(statement)
    # Older versions may hold tables made before some of their columns.
    for table, columns in _ADDED_COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for column, kind in columns.items():
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return found
