-- Results back to the pipeline (batches, result events) and the certificate
-- cache of certificate mode.

-- The producer's optional batch ([A-Za-z0-9_-]{1,64}); NULL when absent.
ALTER TABLE relation_checks ADD COLUMN batch_id text;
CREATE INDEX relation_checks_external_ref_idx ON relation_checks (external_ref);
CREATE INDEX relation_checks_batch_id_idx ON relation_checks (batch_id);

-- One row per `enqueue` run (or per batch id a producer chose). `size` is
-- recorded once every message of the batch is published; `completed_at` is
-- set by the one transaction that also writes its batch.completed event.
CREATE TABLE batches (
    batch_id     text        PRIMARY KEY,
    size         bigint      CHECK (size >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    enqueued_at  timestamptz,
    completed_at timestamptz
);

-- Transactional outbox: an event row is written in the same transaction as
-- the outcome it announces; a relay publishes it with confirms and sets
-- sent_at. Delivery is at least once; consumers dedupe by message_id.
CREATE TABLE result_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  text        NOT NULL,
    routing_key text        NOT NULL,
    body        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);

CREATE INDEX result_events_unsent_idx ON result_events (id) WHERE sent_at IS NULL;
CREATE INDEX result_events_message_id_idx ON result_events (message_id);

-- Alipay certificates downloaded in certificate mode (alipay_cert_sn →
-- PEM), shared by every replica and kept across restarts. A certificate is
-- stored only after it was checked to chain to a configured root.
CREATE TABLE alipay_certificates (
    cert_sn    text        PRIMARY KEY,
    pem        text        NOT NULL,
    not_after  timestamptz NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now()
);
