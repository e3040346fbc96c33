-- How many of a batch's jobs have become final so far: a hint kept in the
-- outcome transaction so that the exact count of final rows, which decides
-- batch.completed, runs only once the hint reaches the batch's size instead
-- of on every job. A job requeued by `requeue-dead` and finished again counts
-- twice: the hint may run ahead, never behind.
ALTER TABLE batches ADD COLUMN finals INTEGER NOT NULL DEFAULT 0;
