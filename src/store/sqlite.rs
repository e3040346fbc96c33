//! The SQLite side of [`JobStore`](super::JobStore): the embedded store for one
//! machine (SQLite allows one writer, so one replica). WAL journal and a busy
//! timeout let readers and the single writer coexist.
//!
//! Timestamps are TEXT in the fixed form `YYYY-MM-DDTHH:MM:SS.sssZ` (UTC,
//! milliseconds), written by [`to_text`] or by SQLite's
//! `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`, so they sort lexically in time
//! order. Only this file speaks SQLite's SQL dialect (with `leases` and
//! `reconcile` for their tables). It implements [`Dialect`]'s statements and
//! holds no policy: the transaction and the row rules are in `store/mod.rs`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, FromRow, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::LedgerRow;
use super::dialect::Dialect;
use super::results::ResultsSql;
use super::{
    CallRecord, ExistingJob, JobKey, JobStatus, Rejected, RowValues, StoreError, attempts_from_db,
    parse_status, saturating_i64, update_error,
};
use crate::results::event::ResultEvent;

/// The SQLite migrations, embedded so the binary carries its schema.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for the writer lock before failing as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection before the store reports
/// itself unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

fn options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let options = SqliteConnectOptions::from_str(url).map_err(StoreError::Connect)?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(BUSY_TIMEOUT))
}

/// Creates a missing database file here, empty and with mode 0600, before
/// SQLite opens it: SQLite would create it with the umask's mode (often world-
/// readable), and it gives its WAL and shared-memory files the main file's
/// mode. A missing directory is reported with its path rather than created.
/// In-memory and read-only databases are left to SQLite.
fn create_private_file(url: &str, options: &SqliteConnectOptions) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = url
        .split_once('?')
        .map(|(_, query)| query)
        .into_iter()
        .flat_map(|query| form_urlencoded::parse(query.as_bytes()))
        .find(|(key, _)| key == "mode")
        .map(|(_, value)| value.into_owned());
    let path = options.get_filename();
    let in_memory = mode.as_deref() == Some("memory")
        || path.as_os_str() == ":memory:"
        || path.to_string_lossy().starts_with("file:sqlx-in-memory");
    if in_memory || mode.as_deref() == Some("ro") || path.exists() {
        return Ok(());
    }
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !directory.is_dir() {
        return Err(StoreError::MissingDirectory {
            path: directory.to_path_buf(),
        });
    }
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::CreateFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    let options = options(url)?;
    create_private_file(url, &options)?;
    SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // No reaper task: sqlx 0.9.0's pool maintenance loop can spin a core
        // forever when its idle count underflows under a concurrent release
        // (sqlx issues #3645/#4289, seen here once in a `status` command).
        // The pool never holds more than `max_connections`, so nothing needs
        // reaping; a connection the server dropped fails its statement as
        // unavailable, which the caller retries.
        .idle_timeout(None)
        .max_lifetime(None)
        .min_connections(0)
        .connect_with(options)
        .await
        .map_err(StoreError::Connect)
}

pub(super) async fn migrate(url: &str) -> Result<(), StoreError> {
    let options = options(url)?;
    create_private_file(url, &options)?;
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(StoreError::Connect)?;
    // `run_direct` is what `run` calls after acquiring; calling it directly
    // keeps this future `Send` (sqlx's `Acquire` bound on `run` is not general
    // enough for `tokio::spawn`).
    let outcome = MIGRATOR
        .run_direct(None, &mut conn, false)
        .await
        .map_err(StoreError::Migrate);
    // Best effort: the file is consistent whether or not the close succeeds.
    let _ = conn.close().await;
    outcome
}

/// Formats a timestamp in the one fixed form stored in SQLite (fixed width,
/// so text order is time order).
pub(super) fn to_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) fn from_text(column: &'static str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| StoreError::Malformed {
            column,
            detail: format!("`{text}` is not an RFC 3339 timestamp: {e}"),
        })
}

fn now_text() -> String {
    to_text(Utc::now())
}

impl Dialect for Sqlite {
    async fn ping(pool: &SqlitePool) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map_err(StoreError::query("ping"))?;
        Ok(())
    }

    async fn find(
        pool: &SqlitePool,
        transaction_id: &str,
    ) -> Result<Option<ExistingJob>, StoreError> {
        let row: Option<ExistingRow> = sqlx::query_as(
            "SELECT status, attempts, first_call_at, business_fingerprint, batch_id \
             FROM relation_checks WHERE transaction_id = ?1",
        )
        .bind(transaction_id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::query("find job"))?;
        row.map(|row| {
            Ok(ExistingJob {
                status: parse_status(&row.status)?,
                attempts: attempts_from_db(row.attempts)?,
                first_call_at: row
                    .first_call_at
                    .map(|text| from_text("first_call_at", &text))
                    .transpose()?,
                fingerprint: row.business_fingerprint,
                batch_id: row.batch_id,
            })
        })
        .transpose()
    }

    async fn start_call(
        pool: &SqlitePool,
        job: &JobKey<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let started: Option<(Option<String>,)> = sqlx::query_as(START_CALL)
            .bind(job.transaction_id)
            .bind(job.external_ref)
            .bind(&job.masked.cert_no)
            .bind(&job.masked.name)
            .bind(&job.masked.relation_phone)
            .bind(&job.masked.relation_name)
            .bind(to_text(now))
            .bind(job.fingerprint)
            .bind(job.batch_id)
            .bind(job.masked.cert_no_hmac.as_deref())
            .bind(job.masked.relation_phone_hmac.as_deref())
            .fetch_optional(pool)
            .await
            .map_err(StoreError::query("begin call"))?;
        started
            .and_then(|(first_call_at,)| first_call_at)
            .map(|text| from_text("first_call_at", &text))
            .transpose()
    }

    /// The transaction writes here first, so SQLite takes the writer lock at
    /// its first statement and never has to upgrade a read lock, which could
    /// fail as busy without waiting.
    async fn append_call(
        tx: &mut Transaction<'_, Sqlite>,
        transaction_id: &str,
        call: &CallRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO upstream_calls (transaction_id, attempt, started_at, duration_ms, \
                 http_status, code, sub_code, outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(transaction_id)
        .bind(i64::from(call.attempt))
        .bind(to_text(call.started_at))
        .bind(saturating_i64(call.duration_ms))
        .bind(call.http_status.map(i64::from))
        .bind(call.code.as_deref())
        .bind(call.sub_code.as_deref())
        .bind(&call.outcome)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("append upstream call"))?;
        Ok(())
    }

    /// Without a call to append, this insert is the transaction's first
    /// write, and takes the writer lock (see [`Dialect::append_call`]).
    async fn ensure_row(
        tx: &mut Transaction<'_, Sqlite>,
        job: &JobKey<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relation_checks (transaction_id, external_ref, status, attempts, \
                 cert_no_masked, name_masked, relation_phone_masked, relation_name_masked, \
                 created_at, updated_at, business_fingerprint, batch_id, cert_no_hmac, \
                 relation_phone_hmac) \
             VALUES (?1, ?2, 'pending', 0, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(job.transaction_id)
        .bind(job.external_ref)
        .bind(&job.masked.cert_no)
        .bind(&job.masked.name)
        .bind(&job.masked.relation_phone)
        .bind(&job.masked.relation_name)
        .bind(now_text())
        .bind(job.fingerprint)
        .bind(job.batch_id)
        .bind(job.masked.cert_no_hmac.as_deref())
        .bind(job.masked.relation_phone_hmac.as_deref())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("create job row"))?;
        Ok(())
    }

    /// A plain read: the transaction already holds SQLite's one writer lock.
    async fn lock_status(
        tx: &mut Transaction<'_, Sqlite>,
        transaction_id: &str,
    ) -> Result<JobStatus, StoreError> {
        let (status,): (String,) =
            sqlx::query_as("SELECT status FROM relation_checks WHERE transaction_id = ?1")
                .bind(transaction_id)
                .fetch_one(&mut **tx)
                .await
                .map_err(StoreError::query("read job row"))?;
        parse_status(&status)
    }

    async fn count_attempt(
        tx: &mut Transaction<'_, Sqlite>,
        transaction_id: &str,
        attempts_added: u8,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE relation_checks SET attempts = attempts + ?2, updated_at = ?3 \
             WHERE transaction_id = ?1",
        )
        .bind(transaction_id)
        .bind(i64::from(attempts_added))
        .bind(now_text())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("count attempt"))?;
        Ok(())
    }

    async fn apply_update(
        tx: &mut Transaction<'_, Sqlite>,
        transaction_id: &str,
        attempts_added: u8,
        values: &RowValues<'_>,
    ) -> Result<(), sqlx::Error> {
        let now = now_text();
        let completed_at = values.status.is_final().then_some(now.as_str());
        sqlx::query(APPLY_UPDATE)
            .bind(transaction_id)
            .bind(i64::from(attempts_added))
            .bind(values.status.as_str())
            .bind(&now)
            .bind(completed_at)
            .bind(values.biz_no)
            .bind(values.relation_rank)
            .bind(values.recency)
            .bind(values.relation_score)
            .bind(values.error_code)
            .bind(values.error_message)
            .bind(values.response_body)
            .bind(values.question_hmac)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Three statements, the ledger's insert (or the row's) first: it takes
    /// the writer lock (see [`Dialect::append_call`]).
    async fn open_outcome(
        tx: &mut Transaction<'_, Sqlite>,
        job: &JobKey<'_>,
        call: Option<&CallRecord>,
    ) -> Result<JobStatus, StoreError> {
        if let Some(call) = call {
            Self::append_call(tx, job.transaction_id, call).await?;
        }
        Self::ensure_row(tx, job).await?;
        Self::lock_status(tx, job.transaction_id).await
    }

    async fn apply_final_update(
        tx: &mut Transaction<'_, Sqlite>,
        transaction_id: &str,
        attempts_added: u8,
        values: &RowValues<'_>,
    ) -> Result<ResultEvent, StoreError> {
        Self::apply_update(tx, transaction_id, attempts_added, values)
            .await
            .map_err(|e| update_error(e, values))?;
        Self::read_result(tx, transaction_id).await
    }

    async fn record_rejected(
        tx: &mut Transaction<'_, Sqlite>,
        rejected: &Rejected<'_>,
    ) -> Result<bool, StoreError> {
        let written: Option<(String,)> = sqlx::query_as(RECORD_REJECTED)
            .bind(rejected.transaction_id)
            .bind(rejected.external_ref)
            .bind(rejected.error_code)
            .bind(rejected.error_message)
            .bind(now_text())
            .bind(rejected.batch_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("record rejected job"))?;
        Ok(written.is_some())
    }

    async fn counts_by_status(pool: &SqlitePool) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as("SELECT status, count(*) FROM relation_checks GROUP BY status")
            .fetch_all(pool)
            .await
            .map_err(StoreError::query("count jobs by status"))
    }

    async fn reset_to_retrying(pool: &SqlitePool, transaction_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE relation_checks SET status = 'retrying', completed_at = NULL, \
                 updated_at = ?2 \
             WHERE transaction_id = ?1 AND status = 'failed'",
        )
        .bind(transaction_id)
        .bind(now_text())
        .execute(pool)
        .await
        .map_err(StoreError::query("reset job to retrying"))?;
        Ok(())
    }

    async fn calls_for(
        pool: &SqlitePool,
        transaction_id: &str,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let rows: Vec<SqliteLedgerRow> = sqlx::query_as(
            "SELECT attempt, started_at, duration_ms, http_status, code, sub_code, outcome \
             FROM upstream_calls WHERE transaction_id = ?1 ORDER BY attempt, started_at, id",
        )
        .bind(transaction_id)
        .fetch_all(pool)
        .await
        .map_err(StoreError::query("list upstream calls"))?;
        rows.into_iter()
            .map(SqliteLedgerRow::into_ledger_row)
            .collect()
    }
}

#[derive(FromRow)]
struct ExistingRow {
    status: String,
    attempts: i64,
    business_fingerprint: Option<String>,
    batch_id: Option<String>,
    first_call_at: Option<String>,
}

/// A call start: a new row, or `start_call_conflict_sql!` (shared with
/// PostgreSQL) on an existing one; no row returned when it changed nothing.
const START_CALL: &str = concat!(
    start_call_insert_sql!(),
    "VALUES (?1, ?2, 'pending', 0, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8, ?9, ?10, ?11)",
    start_call_conflict_sql!(),
    " RETURNING first_call_at"
);

/// A NULL value keeps the stored one, except for the error columns and
/// `completed_at` (?5, bound only for a final status).
const APPLY_UPDATE: &str = "\
    UPDATE relation_checks SET \
        status = ?3, attempts = attempts + ?2, updated_at = ?4, completed_at = ?5, \
        biz_no = COALESCE(?6, biz_no), \
        relation_rank = COALESCE(?7, relation_rank), \
        recency = COALESCE(?8, recency), \
        relation_score = COALESCE(?9, relation_score), \
        error_code = ?10, error_message = ?11, \
        response_body = COALESCE(?12, response_body), \
        question_hmac = COALESCE(?13, question_hmac) \
    WHERE transaction_id = ?1";

const RECORD_REJECTED: &str = "\
    INSERT INTO relation_checks (transaction_id, external_ref, status, attempts, \
        error_code, error_message, created_at, updated_at, completed_at, batch_id) \
    VALUES (?1, ?2, 'failed', 0, ?3, ?4, ?5, ?5, ?5, ?6) \
    ON CONFLICT (transaction_id) DO UPDATE SET \
        status = 'failed', \
        external_ref = COALESCE(excluded.external_ref, relation_checks.external_ref), \
        error_code = excluded.error_code, error_message = excluded.error_message, \
        batch_id = COALESCE(relation_checks.batch_id, excluded.batch_id), \
        completed_at = excluded.completed_at, updated_at = excluded.updated_at \
      WHERE relation_checks.status NOT IN ('succeeded', 'failed') \
    RETURNING transaction_id";

#[derive(FromRow)]
struct SqliteLedgerRow {
    attempt: i64,
    started_at: String,
    duration_ms: i64,
    http_status: Option<i64>,
    code: Option<String>,
    sub_code: Option<String>,
    outcome: String,
}

impl SqliteLedgerRow {
    fn into_ledger_row(self) -> Result<LedgerRow, StoreError> {
        Ok(LedgerRow {
            attempt: self.attempt,
            started_at: from_text("started_at", &self.started_at)?,
            duration_ms: self.duration_ms,
            http_status: self.http_status,
            code: self.code,
            sub_code: self.sub_code,
            outcome: self.outcome,
        })
    }
}
