-- Blind index (issue 13): HMAC-SHA256 (hex) under the PII key
-- (pii.hmac_key_path) of the normalized cert_no (trimmed, upper-case X) and of
-- the trimmed relation_phone, each under its own domain tag. Written when the
-- row is first written; NULL for rows from before this column and for rejected
-- messages. `erase --cert-no/--phone` finds a person's rows through them.
ALTER TABLE relation_checks ADD COLUMN cert_no_hmac text;
ALTER TABLE relation_checks ADD COLUMN relation_phone_hmac text;
CREATE INDEX relation_checks_cert_no_hmac_idx ON relation_checks (cert_no_hmac);
CREATE INDEX relation_checks_relation_phone_hmac_idx ON relation_checks (relation_phone_hmac);

-- Rows erased on request that the upstream billed: the reconciliation of the
-- day still finds their biz_no (an `erased` entry, not `billed_not_stored`).
-- No personal data: the transaction_id and biz_no are the producer's and the
-- upstream's identifiers. Purged with the rows (retention.row_days).
CREATE TABLE erased_checks (
    transaction_id TEXT        PRIMARY KEY,
    biz_no         TEXT        UNIQUE,
    erased_at      TEXT        NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX erased_checks_erased_at_idx ON erased_checks (erased_at);
