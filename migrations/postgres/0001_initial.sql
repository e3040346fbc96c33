-- zhima-worker initial schema (PostgreSQL). Timestamps are timestamptz (UTC).

-- One row per job, keyed by the producer's transaction_id (the upstream's
-- idempotency key). Personal data is stored masked only.
CREATE TABLE relation_checks (
    transaction_id        text        PRIMARY KEY,
    external_ref          text,
    status                text        NOT NULL
        CHECK (status IN ('pending', 'retrying', 'succeeded', 'failed')),
    attempts              integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- the upstream's business number, the reconciliation key; NULLs allowed
    biz_no                text        UNIQUE,
    relation_rank         text,
    recency               text,
    relation_score        bigint,
    error_code            text,
    error_message         text,
    cert_no_masked        text,
    name_masked           text,
    relation_phone_masked text,
    relation_name_masked  text,
    -- the raw signed response, kept as evidence
    response_body         text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    completed_at          timestamptz,
    -- first upstream call: the transaction_id is honoured for ~24 h from here
    first_call_at         timestamptz
);

CREATE INDEX relation_checks_status_idx ON relation_checks (status);
CREATE INDEX relation_checks_completed_at_idx ON relation_checks (completed_at);

-- The ledger of upstream HTTP calls that billing is checked against.
-- Append-only, and deliberately without a foreign key to relation_checks:
-- it must survive the deletion of a result row.
CREATE TABLE upstream_calls (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id text        NOT NULL,
    attempt        integer     NOT NULL CHECK (attempt >= 0),
    started_at     timestamptz NOT NULL,
    duration_ms    bigint      NOT NULL CHECK (duration_ms >= 0),
    http_status    integer,
    code           text,
    sub_code       text,
    -- succeeded | retryable | permanent | configuration | unverified
    outcome        text        NOT NULL
);

CREATE INDEX upstream_calls_transaction_id_idx ON upstream_calls (transaction_id);
CREATE INDEX upstream_calls_started_at_idx ON upstream_calls (started_at);

-- Replicas sharing one rate limit register here (filled by a later change).
CREATE TABLE worker_leases (
    worker_id    text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX worker_leases_expires_at_idx ON worker_leases (expires_at);
