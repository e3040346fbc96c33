-- Daily budget (issue 17, `spend.daily_limit`). Days are statement days
-- (`YYYY-MM-DD` in reconcile.utc_offset_hours, UTC+8), stored as text.
--
-- spend_days: one row per day; `used` counts the day's reservations (held or
-- billed) and is the row every replica's reservation locks, so a guarded
-- `used < limit` update can never let two replicas take the last unit.
-- `daily_limit` is the limit the last reserving replica enforced (for `spend`).
CREATE TABLE spend_days (
    day         TEXT        PRIMARY KEY,
    used        BIGINT      NOT NULL DEFAULT 0 CHECK (used >= 0),
    daily_limit BIGINT      NOT NULL DEFAULT 0
);

-- One unit of a day's budget per transaction_id: `held` from before the call
-- until its outcome is known (kept when the outcome is uncertain), `billed`
-- after a success. A unit the upstream certainly did not bill is deleted
-- (and `used` decremented) in one transaction.
CREATE TABLE spend_reservations (
    transaction_id TEXT        PRIMARY KEY,
    day            TEXT        NOT NULL,
    state          TEXT        NOT NULL CHECK (state IN ('held', 'billed')),
    reserved_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at     TIMESTAMPTZ
);
CREATE INDEX spend_reservations_day_idx ON spend_reservations (day, state);

-- Jobs turned back at the limit (each transaction_id once per day): the
-- `refused_for_budget` column of `zhima-worker spend`.
CREATE TABLE spend_refusals (
    day            TEXT        NOT NULL,
    transaction_id TEXT        NOT NULL,
    refused_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (day, transaction_id)
);
