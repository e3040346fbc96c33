-- Daily budget (issue 17, `spend.daily_limit`): see the PostgreSQL migration
-- of the same number for what each table holds. Days are statement days
-- (`YYYY-MM-DD` in reconcile.utc_offset_hours); SQLite has one writer, so
-- the reservation's transaction is serialized by the database lock.
CREATE TABLE spend_days (
    day         TEXT    PRIMARY KEY,
    used        INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    daily_limit INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE spend_reservations (
    transaction_id TEXT PRIMARY KEY,
    day            TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('held', 'billed')),
    reserved_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    settled_at     TEXT
);
CREATE INDEX spend_reservations_day_idx ON spend_reservations (day, state);

CREATE TABLE spend_refusals (
    day            TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    refused_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (day, transaction_id)
);
