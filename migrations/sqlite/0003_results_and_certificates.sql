-- Results back to the pipeline (batches, result events) and the certificate
-- cache of certificate mode. Timestamps as in 0001 (UTC TEXT, ms, Z).

-- The producer's optional batch ([A-Za-z0-9_-]{1,64}); NULL when absent.
ALTER TABLE relation_checks ADD COLUMN batch_id TEXT;
CREATE INDEX relation_checks_external_ref_idx ON relation_checks (external_ref);
CREATE INDEX relation_checks_batch_id_idx ON relation_checks (batch_id);

-- One row per `enqueue` run (or per batch id a producer chose). `size` is
-- recorded once every message of the batch is published; `completed_at` is
-- set by the one transaction that also writes its batch.completed event.
CREATE TABLE batches (
    batch_id     TEXT    NOT NULL PRIMARY KEY,
    size         INTEGER CHECK (size >= 0),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    enqueued_at  TEXT,
    completed_at TEXT
);

-- Transactional outbox: an event row is written in the same transaction as
-- the outcome it announces; a relay publishes it with confirms and sets
-- sent_at. Delivery is at least once; consumers dedupe by message_id.
CREATE TABLE result_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT    NOT NULL,
    routing_key TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    sent_at     TEXT
);

CREATE INDEX result_events_unsent_idx ON result_events (id) WHERE sent_at IS NULL;
CREATE INDEX result_events_message_id_idx ON result_events (message_id);

-- Alipay certificates downloaded in certificate mode (alipay_cert_sn →
-- PEM), shared by every replica and kept across restarts. A certificate is
-- stored only after it was checked to chain to a configured root.
CREATE TABLE alipay_certificates (
    cert_sn    TEXT NOT NULL PRIMARY KEY,
    pem        TEXT NOT NULL,
    not_after  TEXT NOT NULL,
    fetched_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
