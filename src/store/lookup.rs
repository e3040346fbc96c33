//! The SQL behind `show`: one job's row by transaction_id, the rows of one
//! producer reference (`external_ref`, indexed since migration 0003), and
//! the job's calls come from the `upstream_calls` ledger through
//! [`JobStore::calls_for`].
//!
//! Everything here only reads, and reads the masked personal columns only:
//! the row never holds more. This module must not decide what an operator
//! sees; that is `crate::cli`'s.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Database, FromRow, PgPool, Pool, Postgres, Sqlite, SqlitePool};

use super::sqlite::from_text;
use super::{JobStatus, JobStore, StoreError, attempts_from_db, parse_status};

/// At most this many rows are returned for one external_ref: a reference a
/// producer reused thousands of times is shown in part, never all at once.
pub(crate) const MAX_ROWS_PER_REFERENCE: u32 = 100;

/// A job's row as `show` presents it: the result, the error, the masked
/// personal data and the timestamps (never the raw response body, which
/// an operator does not need to find a job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobRecord {
    pub(crate) transaction_id: String,
    pub(crate) external_ref: Option<String>,
    pub(crate) batch_id: Option<String>,
    pub(crate) status: JobStatus,
    pub(crate) attempts: u32,
    pub(crate) biz_no: Option<String>,
    pub(crate) relation_rank: Option<String>,
    pub(crate) recency: Option<String>,
    pub(crate) relation_score: Option<i64>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) cert_no_masked: Option<String>,
    pub(crate) name_masked: Option<String>,
    pub(crate) relation_phone_masked: Option<String>,
    pub(crate) relation_name_masked: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) first_call_at: Option<DateTime<Utc>>,
    pub(crate) completed_at: Option<DateTime<Utc>>,
    /// Answer reuse: the transaction_id whose paid answer this row copies.
    pub(crate) reused_from: Option<String>,
}

impl JobStore {
    /// The row of `transaction_id`, if any.
    pub(crate) async fn job_record(
        &self,
        transaction_id: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        let rows = with_pool!(self, pool => {
            LookupSql::records_where(pool, "transaction_id", transaction_id, 1).await
        })?;
        Ok(rows.into_iter().next())
    }

    /// The rows carrying `external_ref`, oldest first, at most
    /// [`MAX_ROWS_PER_REFERENCE`] + 1 (so the caller can tell there are more).
    pub(crate) async fn job_records_by_external_ref(
        &self,
        external_ref: &str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let limit = MAX_ROWS_PER_REFERENCE + 1;
        with_pool!(self, pool => {
            LookupSql::records_where(pool, "external_ref", external_ref, limit).await
        })
    }
}

/// The lookup statements of one backend (part of
/// [`super::dialect::Dialect`]). `column` is `transaction_id` or
/// `external_ref`, never caller input.
pub(super) trait LookupSql: Database {
    fn records_where(
        pool: &Pool<Self>,
        column: &'static str,
        key: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;
}

const RECORD_COLUMNS: &str = "SELECT transaction_id, external_ref, batch_id, status, \
     CAST(attempts AS BIGINT) AS attempts, \
     biz_no, relation_rank, recency, relation_score, error_code, error_message, \
     cert_no_masked, name_masked, relation_phone_masked, relation_name_masked, \
     created_at, updated_at, first_call_at, completed_at, reused_from FROM relation_checks";

/// A row with its timestamps in the backend's own type (`DateTime<Utc>` on
/// PostgreSQL, RFC 3339 text on SQLite).
#[derive(FromRow)]
struct RecordRow<T> {
    transaction_id: String,
    external_ref: Option<String>,
    batch_id: Option<String>,
    status: String,
    attempts: i64,
    biz_no: Option<String>,
    relation_rank: Option<String>,
    recency: Option<String>,
    relation_score: Option<i64>,
    error_code: Option<String>,
    error_message: Option<String>,
    cert_no_masked: Option<String>,
    name_masked: Option<String>,
    relation_phone_masked: Option<String>,
    relation_name_masked: Option<String>,
    created_at: T,
    updated_at: T,
    first_call_at: Option<T>,
    completed_at: Option<T>,
    reused_from: Option<String>,
}

impl<T> RecordRow<T> {
    /// `time` turns the backend's timestamp into UTC, naming the column when
    /// it cannot.
    fn into_record(
        self,
        time: impl Fn(&'static str, T) -> Result<DateTime<Utc>, StoreError>,
    ) -> Result<JobRecord, StoreError> {
        let optional = |column, value: Option<T>| value.map(|v| time(column, v)).transpose();
        Ok(JobRecord {
            status: parse_status(&self.status)?,
            attempts: attempts_from_db(self.attempts)?,
            created_at: time("created_at", self.created_at)?,
            updated_at: time("updated_at", self.updated_at)?,
            first_call_at: optional("first_call_at", self.first_call_at)?,
            completed_at: optional("completed_at", self.completed_at)?,
            transaction_id: self.transaction_id,
            external_ref: self.external_ref,
            batch_id: self.batch_id,
            biz_no: self.biz_no,
            relation_rank: self.relation_rank,
            recency: self.recency,
            relation_score: self.relation_score,
            error_code: self.error_code,
            error_message: self.error_message,
            cert_no_masked: self.cert_no_masked,
            name_masked: self.name_masked,
            relation_phone_masked: self.relation_phone_masked,
            relation_name_masked: self.relation_name_masked,
            reused_from: self.reused_from,
        })
    }
}

impl LookupSql for Postgres {
    async fn records_where(
        pool: &PgPool,
        column: &'static str,
        key: &str,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "{RECORD_COLUMNS} WHERE {column} = $1 ORDER BY created_at, transaction_id LIMIT $2"
        );
        let rows: Vec<RecordRow<DateTime<Utc>>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(StoreError::query("look up a job"))?;
        rows.into_iter()
            .map(|row| row.into_record(|_, at| Ok(at)))
            .collect()
    }
}

impl LookupSql for Sqlite {
    async fn records_where(
        pool: &SqlitePool,
        column: &'static str,
        key: &str,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "{RECORD_COLUMNS} WHERE {column} = ?1 ORDER BY created_at, transaction_id LIMIT ?2"
        );
        let rows: Vec<RecordRow<String>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(StoreError::query("look up a job"))?;
        rows.into_iter()
            .map(|row| row.into_record(|column, text| from_text(column, &text)))
            .collect()
    }
}
