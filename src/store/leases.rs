//! `worker_leases`: the SQL by which replicas that share one upstream rate
//! limit announce themselves and see each other (for both backends).
//!
//! One heartbeat is one round trip: it extends this replica's lease to the
//! database's `now()` plus the lease duration, drops leases that expired long
//! ago, and returns every live lease (this one included) with the database's
//! clock. Expiry is judged by the database's clock only, never a host's, so
//! clock skew between hosts does not matter.
//!
//! This module stores and reads leases; deciding shares is `cluster`'s job.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Database, FromRow, PgPool, Pool, Postgres, Sqlite, SqlitePool};

use super::StoreError;

/// The lease statements of one backend (part of [`super::dialect::Dialect`]).
pub(super) trait LeaseSql: Database {
    /// One heartbeat, as described at the top of this file.
    fn heartbeat(
        pool: &Pool<Self>,
        worker_id: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Membership, StoreError>> + Send;

    /// Deletes this replica's lease.
    fn release(
        pool: &Pool<Self>,
        worker_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A replica whose lease had not expired when the heartbeat ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveLease {
    pub(crate) worker_id: String,
    /// The database time of that replica's last heartbeat; a heartbeat later
    /// than some moment proves it read the table after that moment.
    pub(crate) heartbeat_at: DateTime<Utc>,
}

/// What one heartbeat saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    /// The database's clock during the heartbeat.
    pub(crate) now: DateTime<Utc>,
    /// Every live lease, this replica's included.
    pub(crate) live: Vec<LiveLease>,
}

/// Leases expired longer than this are deleted by whoever heartbeats next,
/// so a table fed by crashed replicas stays small.
const PURGE_AFTER_SECONDS: i64 = 60;

#[derive(FromRow)]
struct PgLeaseRow {
    worker_id: String,
    heartbeat_at: DateTime<Utc>,
    db_now: DateTime<Utc>,
}

/// The data-modifying CTEs run against the same snapshot as the final SELECT,
/// which therefore cannot see this replica's fresh row: it is added from
/// `RETURNING` instead.
const PG_HEARTBEAT: &str = "\
WITH me AS (
    INSERT INTO worker_leases AS l (worker_id, started_at, heartbeat_at, expires_at)
    VALUES ($1, now(), now(), now() + make_interval(secs => $2))
    ON CONFLICT (worker_id) DO UPDATE
        SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at
    RETURNING l.worker_id, l.heartbeat_at
), purged AS (
    DELETE FROM worker_leases
    WHERE expires_at < now() - make_interval(secs => $3) AND worker_id <> $1
)
SELECT worker_id, heartbeat_at, now() AS db_now FROM worker_leases
WHERE expires_at > now() AND worker_id <> $1
UNION ALL
SELECT worker_id, heartbeat_at, now() AS db_now FROM me";

impl LeaseSql for Postgres {
    async fn heartbeat(
        pool: &PgPool,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Membership, StoreError> {
        heartbeat_postgres(pool, worker_id, lease).await
    }

    async fn release(pool: &PgPool, worker_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM worker_leases WHERE worker_id = $1")
            .bind(worker_id)
            .execute(pool)
            .await
            .map_err(StoreError::query("lease release"))?;
        Ok(())
    }
}

async fn heartbeat_postgres(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
) -> Result<Membership, StoreError> {
    let rows: Vec<PgLeaseRow> = sqlx::query_as(PG_HEARTBEAT)
        .bind(worker_id)
        .bind(lease.as_secs_f64())
        .bind(PURGE_AFTER_SECONDS as f64)
        .fetch_all(pool)
        .await
        .map_err(StoreError::query("lease heartbeat"))?;
    let now = rows
        .first()
        .map(|row| row.db_now)
        .ok_or_else(|| StoreError::Malformed {
            column: "worker_leases",
            detail: "the heartbeat returned no row for this replica".into(),
        })?;
    let live = rows
        .into_iter()
        .map(|row| LiveLease {
            worker_id: row.worker_id,
            heartbeat_at: row.heartbeat_at,
        })
        .collect();
    Ok(Membership { now, live })
}

const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

impl LeaseSql for Sqlite {
    async fn heartbeat(
        pool: &SqlitePool,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Membership, StoreError> {
        heartbeat_sqlite(pool, worker_id, lease).await
    }

    async fn release(pool: &SqlitePool, worker_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM worker_leases WHERE worker_id = ?1")
            .bind(worker_id)
            .execute(pool)
            .await
            .map_err(StoreError::query("lease release"))?;
        Ok(())
    }
}

/// SQLite has no data-modifying CTEs, so the same steps run as three
/// statements in one transaction.
async fn heartbeat_sqlite(
    pool: &SqlitePool,
    worker_id: &str,
    lease: Duration,
) -> Result<Membership, StoreError> {
    let failed = StoreError::query("lease heartbeat");
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO worker_leases (worker_id, expires_at)
         VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2))
         ON CONFLICT (worker_id) DO UPDATE
             SET heartbeat_at = {SQLITE_NOW}, expires_at = excluded.expires_at"
    )))
    .bind(worker_id)
    .bind(format!("+{:.3} seconds", lease.as_secs_f64()))
    .execute(&mut *tx)
    .await
    .map_err(StoreError::query("lease heartbeat"))?;
    sqlx::query(
        "DELETE FROM worker_leases
         WHERE expires_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) AND worker_id <> ?2",
    )
    .bind(format!("-{PURGE_AFTER_SECONDS} seconds"))
    .bind(worker_id)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::query("lease purge"))?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT worker_id, heartbeat_at, {SQLITE_NOW} FROM worker_leases
         WHERE expires_at > {SQLITE_NOW} OR worker_id = ?1"
    )))
    .bind(worker_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(StoreError::query("commit"))?;
    sqlite_membership(rows)
}

fn sqlite_membership(rows: Vec<(String, String, String)>) -> Result<Membership, StoreError> {
    let now = match rows.first() {
        Some((_, _, now)) => parse_text("now", now)?,
        None => {
            return Err(StoreError::Malformed {
                column: "worker_leases",
                detail: "the heartbeat returned no row for this replica".into(),
            });
        }
    };
    let live = rows
        .into_iter()
        .map(|(worker_id, heartbeat_at, _)| {
            Ok(LiveLease {
                worker_id,
                heartbeat_at: parse_text("heartbeat_at", &heartbeat_at)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Membership { now, live })
}

fn parse_text(column: &'static str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| StoreError::Malformed {
            column,
            detail: format!("{text:?}: {e}"),
        })
}
