-- zhima-worker initial schema (SQLite). Timestamps are UTC TEXT in the fixed
-- form YYYY-MM-DDTHH:MM:SS.sssZ (always milliseconds, always Z), so lexical
-- order is time order; strftime('%Y-%m-%dT%H:%M:%fZ', 'now') writes that form.

-- One row per job, keyed by the producer's transaction_id (the upstream's
-- idempotency key). Personal data is stored masked only.
CREATE TABLE relation_checks (
    transaction_id        TEXT    NOT NULL PRIMARY KEY,
    external_ref          TEXT,
    status                TEXT    NOT NULL
        CHECK (status IN ('pending', 'retrying', 'succeeded', 'failed')),
    attempts              INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- the upstream's business number, the reconciliation key; NULLs allowed
    biz_no                TEXT    UNIQUE,
    relation_rank         TEXT,
    recency               TEXT,
    relation_score        INTEGER,
    error_code            TEXT,
    error_message         TEXT,
    cert_no_masked        TEXT,
    name_masked           TEXT,
    relation_phone_masked TEXT,
    relation_name_masked  TEXT,
    -- the raw signed response, kept as evidence
    response_body         TEXT,
    created_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    completed_at          TEXT,
    -- first upstream call: the transaction_id is honoured for ~24 h from here
    first_call_at         TEXT
);

CREATE INDEX relation_checks_status_idx ON relation_checks (status);
CREATE INDEX relation_checks_completed_at_idx ON relation_checks (completed_at);

-- The ledger of upstream HTTP calls that billing is checked against.
-- Append-only, and deliberately without a foreign key to relation_checks:
-- it must survive the deletion of a result row.
CREATE TABLE upstream_calls (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id TEXT    NOT NULL,
    attempt        INTEGER NOT NULL CHECK (attempt >= 0),
    started_at     TEXT    NOT NULL,
    duration_ms    INTEGER NOT NULL CHECK (duration_ms >= 0),
    http_status    INTEGER,
    code           TEXT,
    sub_code       TEXT,
    -- succeeded | retryable | permanent | configuration | unverified
    outcome        TEXT    NOT NULL
);

CREATE INDEX upstream_calls_transaction_id_idx ON upstream_calls (transaction_id);
CREATE INDEX upstream_calls_started_at_idx ON upstream_calls (started_at);

-- Replicas sharing one rate limit register here (filled by a later change).
CREATE TABLE worker_leases (
    worker_id    TEXT NOT NULL PRIMARY KEY,
    started_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    heartbeat_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at   TEXT NOT NULL
);

CREATE INDEX worker_leases_expires_at_idx ON worker_leases (expires_at);
