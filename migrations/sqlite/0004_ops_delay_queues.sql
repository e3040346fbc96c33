-- Every delay queue a `run` has declared, so that `status` can list the
-- delay queues of earlier configurations (AMQP cannot list queues, and the
-- RabbitMQ management API is not always there). Only `run` publishes retry
-- copies, so the queues it declared are every queue that can hold one.
CREATE TABLE delay_queues (
    name          TEXT    NOT NULL PRIMARY KEY,
    delay_ms      INTEGER NOT NULL CHECK (delay_ms >= 0),
    first_seen_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
