-- The job's business-field fingerprint: HMAC-SHA256 (hex) under the PII key
-- (pii.hmac_key_path) of the normalized business fields, written when the job
-- is first seen. A later job with the same transaction_id and another
-- fingerprint is refused (TRANSACTION_ID_CONFLICT) and leaves the row as it is.
-- NULL for rows written before this column existed and for rejected messages.
ALTER TABLE relation_checks ADD COLUMN business_fingerprint text;
