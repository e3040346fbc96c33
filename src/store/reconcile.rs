//! The SQL behind `reconcile` and `export`: our side of one day (streamed, so
//! a large day never sits in memory as rows), exact lookups by `biz_no` and
//! `transaction_id` for the statement rows the in-memory index cannot settle,
//! and per-transaction counts from the `upstream_calls` ledger.
//!
//! Everything here only reads. "The day" is a half-open UTC interval
//! `[start, end)` chosen by the caller (the reconcile zone's midnight to
//! midnight); rows belong to it by `completed_at`. This module must not decide
//! categories: that is `crate::reconcile`.

use std::future::Future;

use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt};
use sqlx::{Database, FromRow, PgPool, Pool, Postgres, Sqlite, SqlitePool};

use super::sqlite::{from_text, to_text};
use super::{JobStatus, JobStore, StoreError, parse_status};

/// A `succeeded` row of the day, as the statement is matched against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BillableRow {
    pub(crate) biz_no: String,
    pub(crate) transaction_id: String,
    /// The first upstream call was before the day: the upstream may have
    /// billed it on the previous day's statement.
    pub(crate) first_call_before_day: bool,
}

/// A row found by an exact lookup, whatever its day or status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredCheck {
    pub(crate) transaction_id: String,
    pub(crate) biz_no: Option<String>,
    pub(crate) status: JobStatus,
    pub(crate) error_code: Option<String>,
    pub(crate) completed_at: Option<DateTime<Utc>>,
    /// Answer reuse: the payer whose answer this row copies; such a row was
    /// never sent upstream, so the upstream cannot have billed it.
    pub(crate) reused_from: Option<String>,
}

/// How often our ledger saw a transaction_id go upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LedgerCount {
    pub(crate) transaction_id: String,
    pub(crate) calls: i64,
}

/// One line of `export`: a row completed in the day, final by definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExportRow {
    pub(crate) biz_no: Option<String>,
    pub(crate) transaction_id: String,
    pub(crate) external_ref: Option<String>,
    pub(crate) status: JobStatus,
    pub(crate) completed_at: DateTime<Utc>,
    /// The result fields (issue 11), after the original columns.
    pub(crate) result: ExportResult,
}

/// The answer or the error of an exported row, and its batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, FromRow)]
pub(crate) struct ExportResult {
    pub(crate) relation_rank: Option<String>,
    pub(crate) recency: Option<String>,
    pub(crate) relation_score: Option<i64>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) attempts: i64,
    pub(crate) batch_id: Option<String>,
    /// Answer reuse: the paying transaction_id (no biz_no of its own).
    pub(crate) reused_from: Option<String>,
}

impl JobStore {
    /// How many `succeeded` rows completed in `[start, end)`: lets the caller
    /// size its index once instead of growing (and briefly doubling) it.
    pub(crate) async fn count_billable(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let count = with_pool!(self, pool => ReconcileSql::count_billable(pool, start, end).await)
            .map_err(StoreError::query("count the day's succeeded rows"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The rows completed in `[start, end)` from a stored answer (answer
    /// reuse): nothing billed for them.
    pub(crate) async fn count_reused(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let count = with_pool!(self, pool => ReconcileSql::count_reused(pool, start, end).await)
            .map_err(StoreError::query("count the day's reused answers"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The `succeeded` rows completed in `[start, end)`, streamed.
    pub(crate) fn billable_rows(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<BillableRow, StoreError>> {
        with_pool!(self, pool => ReconcileSql::billable_rows(pool, start, end))
    }

    /// The rows holding any of `biz_nos` (at most one each: the column is
    /// unique).
    pub(crate) async fn checks_by_biz_no(
        &self,
        biz_nos: &[String],
    ) -> Result<Vec<StoredCheck>, StoreError> {
        with_pool!(self, pool => ReconcileSql::checks_where(pool, "biz_no", biz_nos).await)
    }

    /// The rows of any of `transaction_ids`.
    pub(crate) async fn checks_by_transaction_id(
        &self,
        transaction_ids: &[String],
    ) -> Result<Vec<StoredCheck>, StoreError> {
        with_pool!(self, pool => {
            ReconcileSql::checks_where(pool, "transaction_id", transaction_ids).await
        })
    }

    /// Calls in the `upstream_calls` ledger per transaction_id (ids never
    /// called are absent). The ledger survives a deleted result row, so this
    /// tells "we called and lost the row" from "we never called".
    pub(crate) async fn ledger_counts(
        &self,
        transaction_ids: &[String],
    ) -> Result<Vec<LedgerCount>, StoreError> {
        let rows = with_pool!(self, pool => {
            ReconcileSql::ledger_counts(pool, transaction_ids).await
        })
        .map_err(StoreError::query("count ledger calls"))?;
        Ok(rows
            .into_iter()
            .map(|(transaction_id, calls)| LedgerCount {
                transaction_id,
                calls,
            })
            .collect())
    }

    /// Every row completed in `[start, end)`, in completion order, streamed.
    pub(crate) fn export_rows(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<ExportRow, StoreError>> {
        with_pool!(self, pool => ReconcileSql::export_rows(pool, start, end))
    }
}

/// The reconciliation statements of one backend (part of
/// [`super::dialect::Dialect`]). `column` is `biz_no` or `transaction_id`,
/// never caller input.
pub(super) trait ReconcileSql: Database {
    fn count_billable(
        pool: &Pool<Self>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

    fn count_reused(
        pool: &Pool<Self>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

    fn billable_rows(
        pool: &Pool<Self>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<BillableRow, StoreError>>;

    fn checks_where(
        pool: &Pool<Self>,
        column: &'static str,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<StoredCheck>, StoreError>> + Send;

    fn ledger_counts(
        pool: &Pool<Self>,
        transaction_ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, i64)>, sqlx::Error>> + Send;

    fn export_rows(
        pool: &Pool<Self>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<ExportRow, StoreError>>;
}

const CHECK_COLUMNS: &str = "SELECT transaction_id, biz_no, status, error_code, completed_at, reused_from \
     FROM relation_checks";

const EXPORT_COLUMNS: &str = "SELECT biz_no, transaction_id, external_ref, status, completed_at, \
     relation_rank, recency, relation_score, error_code, error_message, \
     CAST(attempts AS BIGINT) AS attempts, batch_id, reused_from FROM relation_checks";

/// `first_call_at IS NULL` counts as "not before": such a row never called.
#[derive(FromRow)]
struct BillableDbRow {
    biz_no: String,
    transaction_id: String,
    before_day: bool,
}

impl From<BillableDbRow> for BillableRow {
    fn from(row: BillableDbRow) -> Self {
        Self {
            biz_no: row.biz_no,
            transaction_id: row.transaction_id,
            first_call_before_day: row.before_day,
        }
    }
}

impl ReconcileSql for Postgres {
    async fn count_billable(
        pool: &PgPool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM relation_checks \
             WHERE status = 'succeeded' AND biz_no IS NOT NULL \
               AND completed_at >= $1 AND completed_at < $2",
        )
        .bind(start)
        .bind(end)
        .fetch_one(pool)
        .await
    }

    async fn count_reused(
        pool: &PgPool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM relation_checks \
             WHERE reused_from IS NOT NULL AND completed_at >= $1 AND completed_at < $2",
        )
        .bind(start)
        .bind(end)
        .fetch_one(pool)
        .await
    }

    fn billable_rows(
        pool: &PgPool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<BillableRow, StoreError>> {
        sqlx::query_as::<_, BillableDbRow>(
            "SELECT biz_no, transaction_id, COALESCE(first_call_at < $1, false) AS before_day \
             FROM relation_checks WHERE status = 'succeeded' AND biz_no IS NOT NULL \
               AND completed_at >= $1 AND completed_at < $2",
        )
        .bind(start)
        .bind(end)
        .fetch(pool)
        .map(|row| {
            row.map(BillableRow::from)
                .map_err(StoreError::query("read the day's succeeded rows"))
        })
        .boxed()
    }

    async fn checks_where(
        pool: &PgPool,
        column: &'static str,
        keys: &[String],
    ) -> Result<Vec<StoredCheck>, StoreError> {
        let sql = format!("{CHECK_COLUMNS} WHERE {column} = ANY($1)");
        let rows: Vec<PgCheckRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(keys)
            .fetch_all(pool)
            .await
            .map_err(StoreError::query("look up rows for reconciliation"))?;
        rows.into_iter().map(PgCheckRow::into_check).collect()
    }

    async fn ledger_counts(
        pool: &PgPool,
        transaction_ids: &[String],
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT transaction_id, count(*) FROM upstream_calls \
             WHERE transaction_id = ANY($1) GROUP BY transaction_id",
        )
        .bind(transaction_ids)
        .fetch_all(pool)
        .await
    }

    fn export_rows(
        pool: &PgPool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<ExportRow, StoreError>> {
        let sql = format!(
            "{EXPORT_COLUMNS} WHERE completed_at >= $1 AND completed_at < $2 \
             ORDER BY completed_at, transaction_id"
        );
        sqlx::query_as::<_, PgExportRow>(sqlx::AssertSqlSafe(sql))
            .bind(start)
            .bind(end)
            .fetch(pool)
            .map(|row| {
                let row = row.map_err(StoreError::query("read the day's rows"))?;
                Ok(ExportRow {
                    status: parse_status(&row.status)?,
                    biz_no: row.biz_no,
                    transaction_id: row.transaction_id,
                    external_ref: row.external_ref,
                    completed_at: row.completed_at,
                    result: row.result,
                })
            })
            .boxed()
    }
}

#[derive(FromRow)]
struct PgCheckRow {
    transaction_id: String,
    biz_no: Option<String>,
    status: String,
    error_code: Option<String>,
    completed_at: Option<DateTime<Utc>>,
    reused_from: Option<String>,
}

impl PgCheckRow {
    fn into_check(self) -> Result<StoredCheck, StoreError> {
        Ok(StoredCheck {
            status: parse_status(&self.status)?,
            transaction_id: self.transaction_id,
            biz_no: self.biz_no,
            error_code: self.error_code,
            completed_at: self.completed_at,
            reused_from: self.reused_from,
        })
    }
}

#[derive(FromRow)]
struct PgExportRow {
    biz_no: Option<String>,
    transaction_id: String,
    external_ref: Option<String>,
    status: String,
    completed_at: DateTime<Utc>,
    #[sqlx(flatten)]
    result: ExportResult,
}

/// SQLite keeps timestamps as text (see `super::sqlite`) and takes key lists
/// as one JSON array.
impl ReconcileSql for Sqlite {
    async fn count_billable(
        pool: &SqlitePool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM relation_checks \
             WHERE status = 'succeeded' AND biz_no IS NOT NULL \
               AND completed_at >= ?1 AND completed_at < ?2",
        )
        .bind(to_text(start))
        .bind(to_text(end))
        .fetch_one(pool)
        .await
    }

    async fn count_reused(
        pool: &SqlitePool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM relation_checks \
             WHERE reused_from IS NOT NULL AND completed_at >= ?1 AND completed_at < ?2",
        )
        .bind(to_text(start))
        .bind(to_text(end))
        .fetch_one(pool)
        .await
    }

    fn billable_rows(
        pool: &SqlitePool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<BillableRow, StoreError>> {
        sqlx::query_as::<_, BillableDbRow>(
            "SELECT biz_no, transaction_id, COALESCE(first_call_at < ?1, 0) AS before_day \
             FROM relation_checks WHERE status = 'succeeded' AND biz_no IS NOT NULL \
               AND completed_at >= ?1 AND completed_at < ?2",
        )
        .bind(to_text(start))
        .bind(to_text(end))
        .fetch(pool)
        .map(|row| {
            row.map(BillableRow::from)
                .map_err(StoreError::query("read the day's succeeded rows"))
        })
        .boxed()
    }

    async fn checks_where(
        pool: &SqlitePool,
        column: &'static str,
        keys: &[String],
    ) -> Result<Vec<StoredCheck>, StoreError> {
        let sql = format!("{CHECK_COLUMNS} WHERE {column} IN (SELECT value FROM json_each(?1))");
        let rows: Vec<SqliteCheckRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(json_array(keys))
            .fetch_all(pool)
            .await
            .map_err(StoreError::query("look up rows for reconciliation"))?;
        rows.into_iter().map(SqliteCheckRow::into_check).collect()
    }

    async fn ledger_counts(
        pool: &SqlitePool,
        transaction_ids: &[String],
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT transaction_id, count(*) FROM upstream_calls \
             WHERE transaction_id IN (SELECT value FROM json_each(?1)) \
             GROUP BY transaction_id",
        )
        .bind(json_array(transaction_ids))
        .fetch_all(pool)
        .await
    }

    fn export_rows(
        pool: &SqlitePool,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> BoxStream<'_, Result<ExportRow, StoreError>> {
        let sql = format!(
            "{EXPORT_COLUMNS} WHERE completed_at >= ?1 AND completed_at < ?2 \
             ORDER BY completed_at, transaction_id"
        );
        sqlx::query_as::<_, SqliteExportRow>(sqlx::AssertSqlSafe(sql))
            .bind(to_text(start))
            .bind(to_text(end))
            .fetch(pool)
            .map(|row| {
                let row = row.map_err(StoreError::query("read the day's rows"))?;
                Ok(ExportRow {
                    status: parse_status(&row.status)?,
                    completed_at: from_text("completed_at", &row.completed_at)?,
                    biz_no: row.biz_no,
                    transaction_id: row.transaction_id,
                    external_ref: row.external_ref,
                    result: row.result,
                })
            })
            .boxed()
    }
}

#[derive(FromRow)]
struct SqliteCheckRow {
    transaction_id: String,
    biz_no: Option<String>,
    status: String,
    error_code: Option<String>,
    completed_at: Option<String>,
    reused_from: Option<String>,
}

impl SqliteCheckRow {
    fn into_check(self) -> Result<StoredCheck, StoreError> {
        Ok(StoredCheck {
            status: parse_status(&self.status)?,
            completed_at: self
                .completed_at
                .map(|text| from_text("completed_at", &text))
                .transpose()?,
            transaction_id: self.transaction_id,
            biz_no: self.biz_no,
            error_code: self.error_code,
            reused_from: self.reused_from,
        })
    }
}

#[derive(FromRow)]
struct SqliteExportRow {
    biz_no: Option<String>,
    transaction_id: String,
    external_ref: Option<String>,
    status: String,
    completed_at: String,
    #[sqlx(flatten)]
    result: ExportResult,
}

/// SQLite takes a key list as one JSON array (`json_each`), so the SQL text
/// stays fixed whatever the batch size.
fn json_array(keys: &[String]) -> String {
    serde_json::Value::from(keys.to_vec()).to_string()
}
