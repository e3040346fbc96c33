-- Answer reuse (issue 17): a job asking a question already answered with
-- success within `reuse.max_age_days` is completed from the stored answer,
-- without an upstream call.
--
-- question_hmac: HMAC-SHA256 (hex) under the PII key (pii.hmac_key_path) of
-- the normalized question (cert_no, name, relation_phone, relation_name,
-- relation, product_code, linked_merchant_id), under its own domain tag; never
-- the plaintext. Written, while reuse is on, on a row whose answer the worker
-- paid for, once it succeeded; NULL otherwise (failed, rejected, reuse off).
-- reused_from: the transaction_id whose paid answer this row copies (NULL for
-- a row answered by its own upstream call). A reused row has no biz_no (the
-- upstream billed none for it), no ledger entry and no first call.
ALTER TABLE relation_checks ADD COLUMN question_hmac text;
ALTER TABLE relation_checks ADD COLUMN reused_from text;
-- The reuse lookup: the newest paid answer to a question.
CREATE INDEX relation_checks_question_hmac_idx ON relation_checks (question_hmac, completed_at)
    WHERE question_hmac IS NOT NULL AND status = 'succeeded' AND reused_from IS NULL;
-- `status` counts reused rows apart.
CREATE INDEX relation_checks_reused_from_idx ON relation_checks (reused_from)
    WHERE reused_from IS NOT NULL;
