//! The read-only SQL of `status`: job counts, the rate of the last minute,
//! the live leases, one batch's progress; and the registry of the delay
//! queues `run` has declared (written once per start).
//!
//! Nothing here changes a job row. Rates are counted from `completed_at`,
//! by the database's clock, so the hosts' clocks never matter.

use sqlx::{PgPool, SqlitePool};

use super::{Backend, JobStatus, JobStore, StoreError, parse_status};

/// How far back "the rate over the last minute" looks.
pub(crate) const RATE_WINDOW_S: i64 = 60;

/// The database's side of `status`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoreOverview {
    /// Every status, zeros included, in [`JobStatus::ALL`] order.
    pub(crate) counts: Vec<(JobStatus, i64)>,
    /// Jobs that reached a final status in the last [`RATE_WINDOW_S`] seconds.
    pub(crate) completed_last_minute: i64,
    /// The worker_ids of the live leases; `None` on SQLite, which keeps no
    /// lease (one replica at most).
    pub(crate) live_replicas: Option<Vec<String>>,
    /// Of the `succeeded` rows, those answered from another job's paid
    /// answer (answer reuse): no upstream call, nothing billed.
    pub(crate) reused: i64,
}

/// One batch as the database sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchRecord {
    /// `batches.size`: `None` until `enqueue` has published the whole batch.
    pub(crate) size: Option<i64>,
    /// Whether `batches` has the row (jobs may carry a batch_id nobody
    /// registered, when a producer chose it).
    pub(crate) registered: bool,
    pub(crate) counts: Vec<(JobStatus, i64)>,
    pub(crate) completed_last_minute: i64,
}

impl JobStore {
    /// Counts, the last minute's completions and the live leases.
    pub(crate) async fn overview(&self) -> Result<StoreOverview, StoreError> {
        let (stored, completed_last_minute, live_replicas) = match &self.backend {
            Backend::Postgres(pool) => (
                self.counts_by_status().await?,
                pg_completed(pool, None).await?,
                Some(pg_live_leases(pool).await?),
            ),
            Backend::Sqlite(pool) => (
                self.counts_by_status().await?,
                sqlite_completed(pool, None).await?,
                None,
            ),
        };
        Ok(StoreOverview {
            counts: stored,
            completed_last_minute,
            live_replicas,
            reused: self.reused_count().await?,
        })
    }

    /// The progress of one batch; `None` when neither `batches` nor any job
    /// row knows the id.
    pub(crate) async fn batch(&self, batch_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let (row, stored, completed_last_minute) = match &self.backend {
            Backend::Postgres(pool) => (
                sqlx::query_as::<_, (Option<i64>,)>(
                    "SELECT size::bigint FROM batches WHERE batch_id = $1",
                )
                .bind(batch_id)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::query("read the batch"))?,
                pg_counts(pool, batch_id).await?,
                pg_completed(pool, Some(batch_id)).await?,
            ),
            Backend::Sqlite(pool) => (
                sqlx::query_as::<_, (Option<i64>,)>("SELECT size FROM batches WHERE batch_id = ?")
                    .bind(batch_id)
                    .fetch_optional(pool)
                    .await
                    .map_err(StoreError::query("read the batch"))?,
                sqlite_counts(pool, batch_id).await?,
                sqlite_completed(pool, Some(batch_id)).await?,
            ),
        };
        if row.is_none() && stored.is_empty() {
            return Ok(None);
        }
        Ok(Some(BatchRecord {
            size: row.and_then(|(size,)| size),
            registered: row.is_some(),
            counts: every_status(stored)?,
            completed_last_minute,
        }))
    }

    /// Records the delay queues this configuration declares (idempotent).
    pub(crate) async fn register_delay_queues(
        &self,
        queues: &[(String, u64)],
    ) -> Result<(), StoreError> {
        for (name, delay_ms) in queues {
            let delay_ms = i64::try_from(*delay_ms).unwrap_or(i64::MAX);
            let done = match &self.backend {
                Backend::Postgres(pool) => sqlx::query(
                    "INSERT INTO delay_queues (name, delay_ms) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(delay_ms)
                .execute(pool)
                .await
                .map(|_| ()),
                Backend::Sqlite(pool) => {
                    sqlx::query("INSERT OR IGNORE INTO delay_queues (name, delay_ms) VALUES (?, ?)")
                        .bind(name)
                        .bind(delay_ms)
                        .execute(pool)
                        .await
                        .map(|_| ())
                }
            };
            done.map_err(StoreError::query("register a delay queue"))?;
        }
        Ok(())
    }

    /// Every delay queue any `run` declared, shortest delay first.
    pub(crate) async fn registered_delay_queues(&self) -> Result<Vec<(String, u64)>, StoreError> {
        const SQL: &str = "SELECT name, delay_ms FROM delay_queues ORDER BY delay_ms, name";
        let rows: Vec<(String, i64)> = match &self.backend {
            Backend::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
            Backend::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        }
        .map_err(StoreError::query("list the delay queues"))?;
        Ok(rows
            .into_iter()
            .map(|(name, ms)| (name, u64::try_from(ms).unwrap_or(0)))
            .collect())
    }
}

fn every_status(stored: Vec<(String, i64)>) -> Result<Vec<(JobStatus, i64)>, StoreError> {
    let mut counts: Vec<(JobStatus, i64)> = JobStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    for (status, count) in stored {
        let status = parse_status(&status)?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
            slot.1 = count;
        }
    }
    Ok(counts)
}

async fn pg_counts(pool: &PgPool, batch: &str) -> Result<Vec<(String, i64)>, StoreError> {
    sqlx::query_as(
        "SELECT status, count(*) FROM relation_checks WHERE batch_id = $1 GROUP BY status",
    )
    .bind(batch)
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("count jobs by status"))
}

async fn pg_completed(pool: &PgPool, batch: Option<&str>) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM relation_checks \
         WHERE completed_at > now() - make_interval(secs => $1) \
           AND ($2::text IS NULL OR batch_id = $2)",
    )
    .bind(RATE_WINDOW_S as f64)
    .bind(batch)
    .fetch_one(pool)
    .await
    .map_err(StoreError::query("count the last minute's jobs"))
}

async fn pg_live_leases(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(
        "SELECT worker_id FROM worker_leases WHERE expires_at > now() ORDER BY worker_id",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("read the live leases"))
}

async fn sqlite_counts(pool: &SqlitePool, batch: &str) -> Result<Vec<(String, i64)>, StoreError> {
    sqlx::query_as(
        "SELECT status, count(*) FROM relation_checks WHERE batch_id = ? GROUP BY status",
    )
    .bind(batch)
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("count jobs by status"))
}

/// Timestamps are fixed-width UTC text (0001), so text order is time order.
async fn sqlite_completed(pool: &SqlitePool, batch: Option<&str>) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM relation_checks \
         WHERE completed_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
           AND (?2 IS NULL OR batch_id = ?2)",
    )
    .bind(format!("-{RATE_WINDOW_S} seconds"))
    .bind(batch)
    .fetch_one(pool)
    .await
    .map_err(StoreError::query("count the last minute's jobs"))
}
