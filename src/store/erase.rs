//! The SQL behind `erase` (a person's rows on request) and `purge` (rows past
//! their retention). Both run in one transaction each; a dry run runs the
//! same statements and rolls back, so its counts are exact.
//!
//! A person is found through the blind index (`cert_no_hmac`,
//! `relation_phone_hmac`, migration 0006) or the producer's `external_ref`;
//! this module never sees a plaintext ID or phone number. The ledger has only
//! the transaction_id, so its rows go by the transaction_ids found; the
//! outbox's `message_id` is the transaction_id too. A row the upstream billed
//! (it has a biz_no) leaves a tombstone in `erased_checks` (transaction_id and
//! biz_no only), which the reconciliation reports as `erased`.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, Postgres, Sqlite, Transaction};

use super::sqlite::to_text;
use super::{JobStore, StoreError};

/// How `erase` finds a person's rows. The hashes come from
/// [`crate::pii::PiiKey`]; the reference is the producer's, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PersonKey {
    /// [`crate::pii::PiiKey::cert_no_index`] of the ID number.
    CertNo(String),
    /// [`crate::pii::PiiKey::phone_index`] of the contact's phone.
    Phone(String),
    /// The producer's `external_ref`.
    ExternalRef(String),
}

impl PersonKey {
    /// The column it is matched against (a constant, never caller input).
    fn column(&self) -> &'static str {
        match self {
            Self::CertNo(_) => "cert_no_hmac",
            Self::Phone(_) => "relation_phone_hmac",
            Self::ExternalRef(_) => "external_ref",
        }
    }

    fn value(&self) -> &str {
        match self {
            Self::CertNo(v) | Self::Phone(v) | Self::ExternalRef(v) => v,
        }
    }
}

/// What one `erase` removed (or, on a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Erased {
    /// The transaction_ids of the erased rows (the caller matches queue
    /// messages by them too).
    pub(crate) transaction_ids: Vec<String>,
    pub(crate) rows: u64,
    pub(crate) ledger_entries: u64,
    pub(crate) outbox_events: u64,
    /// Billed rows kept as `erased_checks` tombstones for the reconciliation.
    pub(crate) tombstones: u64,
}

/// The cut-off times of one `purge`: everything strictly older goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PurgeCutoffs {
    /// Raw response bodies of rows last changed before this.
    pub(crate) response_body_before: DateTime<Utc>,
    /// Rows, ledger entries, outbox events and tombstones before this.
    pub(crate) row_before: DateTime<Utc>,
}

/// What one `purge` removed in the database (or would, on a dry run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Purged {
    pub(crate) response_bodies: u64,
    pub(crate) rows: u64,
    pub(crate) ledger_entries: u64,
    pub(crate) outbox_events: u64,
    pub(crate) tombstones: u64,
}

impl JobStore {
    /// Deletes the rows matching `key`, their ledger entries and outbox
    /// events, and keeps a tombstone of each billed one; nothing on a dry
    /// run. Idempotent: a second call finds nothing.
    pub(crate) async fn erase(&self, key: &PersonKey, dry_run: bool) -> Result<Erased, StoreError> {
        with_pool!(self, pool => erase_in(pool, key, dry_run).await)
    }

    /// The `erased_checks` tombstones holding any of `biz_nos`, as
    /// `(biz_no, transaction_id)` pairs (the reconciliation's `erased`).
    pub(crate) async fn erased_by_biz_no(
        &self,
        biz_nos: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if biz_nos.is_empty() {
            return Ok(Vec::new());
        }
        let list = serde_json::to_string(biz_nos).map_err(|e| StoreError::Malformed {
            column: "biz_no",
            detail: e.to_string(),
        })?;
        with_pool!(self, pool => EraseSql::tombstones(pool, list).await)
    }

    /// Clears response bodies and deletes rows past their retention.
    pub(crate) async fn purge(
        &self,
        cutoffs: PurgeCutoffs,
        dry_run: bool,
    ) -> Result<Purged, StoreError> {
        with_pool!(self, pool => purge_in(pool, cutoffs, dry_run).await)
    }
}

async fn erase_in<D: EraseSql>(
    pool: &Pool<D>,
    key: &PersonKey,
    dry_run: bool,
) -> Result<Erased, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    // SQLite: a write first, so the transaction holds the writer lock from
    // its first statement (a touch of nothing).
    D::execute(
        &mut tx,
        "DELETE FROM erased_checks WHERE transaction_id IS NULL",
        &[],
    )
    .await?;
    let sql = format!(
        "SELECT transaction_id, biz_no FROM relation_checks WHERE {} = $1 \
         ORDER BY transaction_id",
        key.column()
    );
    let found = D::pairs(&mut tx, sql, key.value()).await?;
    let mut erased = Erased::default();
    for (transaction_id, biz_no) in found {
        let id = transaction_id.as_str();
        erased.ledger_entries += D::execute(
            &mut tx,
            "DELETE FROM upstream_calls WHERE transaction_id = $1",
            &[id],
        )
        .await?;
        erased.outbox_events += D::execute(
            &mut tx,
            "DELETE FROM result_events WHERE message_id = $1",
            &[id],
        )
        .await?;
        if let Some(biz_no) = biz_no.as_deref() {
            erased.tombstones += D::execute(
                &mut tx,
                "INSERT INTO erased_checks (transaction_id, biz_no) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[id, biz_no],
            )
            .await?;
        }
        erased.rows += D::execute(
            &mut tx,
            "DELETE FROM relation_checks WHERE transaction_id = $1",
            &[id],
        )
        .await?;
        erased.transaction_ids.push(transaction_id);
    }
    finish(tx, dry_run).await?;
    Ok(erased)
}

async fn purge_in<D: EraseSql>(
    pool: &Pool<D>,
    cutoffs: PurgeCutoffs,
    dry_run: bool,
) -> Result<Purged, StoreError> {
    let body_before = D::stamp(cutoffs.response_body_before);
    let row_before = D::stamp(cutoffs.row_before);
    let cast = D::TIME_CAST;
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    let mut purged = Purged {
        response_bodies: D::execute(
            &mut tx,
            format!(
                "UPDATE relation_checks SET response_body = NULL \
                 WHERE response_body IS NOT NULL AND updated_at < $1{cast}"
            ),
            &[&body_before],
        )
        .await?,
        ..Purged::default()
    };
    purged.ledger_entries = D::execute(
        &mut tx,
        format!(
            "DELETE FROM upstream_calls WHERE started_at < $1{cast} \
             OR transaction_id IN \
                (SELECT transaction_id FROM relation_checks WHERE updated_at < $1{cast})"
        ),
        &[&row_before],
    )
    .await?;
    purged.outbox_events = D::execute(
        &mut tx,
        format!(
            "DELETE FROM result_events WHERE created_at < $1{cast} \
             OR message_id IN \
                (SELECT transaction_id FROM relation_checks WHERE updated_at < $1{cast})"
        ),
        &[&row_before],
    )
    .await?;
    purged.rows = D::execute(
        &mut tx,
        format!("DELETE FROM relation_checks WHERE updated_at < $1{cast}"),
        &[&row_before],
    )
    .await?;
    purged.tombstones = D::execute(
        &mut tx,
        format!("DELETE FROM erased_checks WHERE erased_at < $1{cast}"),
        &[&row_before],
    )
    .await?;
    finish(tx, dry_run).await?;
    Ok(purged)
}

/// Commits, or rolls back a dry run.
async fn finish<D: Database>(tx: Transaction<'_, D>, dry_run: bool) -> Result<(), StoreError> {
    if dry_run {
        tx.rollback().await.map_err(StoreError::query("rollback"))
    } else {
        tx.commit().await.map_err(StoreError::query("commit"))
    }
}

/// The few primitives `erase` and `purge` need from a backend (part of
/// [`super::dialect::Dialect`]). Statements use `$1`-style placeholders,
/// which both backends read; timestamps are bound as text in the backend's
/// form and cast where the column is not text.
pub(super) trait EraseSql: Database {
    /// Appended to a timestamp placeholder: PostgreSQL casts the text.
    const TIME_CAST: &'static str;

    /// A timestamp as the backend compares it.
    fn stamp(at: DateTime<Utc>) -> String;

    /// Runs one statement with text arguments; the rows it changed.
    fn execute(
        tx: &mut Transaction<'_, Self>,
        sql: impl Into<String> + Send,
        args: &[&str],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// `(biz_no, transaction_id)` of the tombstones whose biz_no is in the
    /// JSON array of strings `list`.
    fn tombstones(
        pool: &Pool<Self>,
        list: String,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// `(text, nullable text)` pairs of a query with one text argument.
    fn pairs(
        tx: &mut Transaction<'_, Self>,
        sql: String,
        arg: &str,
    ) -> impl Future<Output = Result<Vec<(String, Option<String>)>, StoreError>> + Send;
}

/// One body for both backends: only the types differ.
macro_rules! erase_sql {
    ($db:ty, $cast:expr, $stamp:expr, $tombstones:expr) => {
        impl EraseSql for $db {
            const TIME_CAST: &'static str = $cast;

            async fn tombstones(
                pool: &Pool<Self>,
                list: String,
            ) -> Result<Vec<(String, String)>, StoreError> {
                sqlx::query_as($tombstones)
                    .bind(list)
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::query("look up erased rows"))
            }

            fn stamp(at: DateTime<Utc>) -> String {
                $stamp(at)
            }

            async fn execute(
                tx: &mut Transaction<'_, Self>,
                sql: impl Into<String> + Send,
                args: &[&str],
            ) -> Result<u64, StoreError> {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.into()));
                for arg in args {
                    query = query.bind(arg.to_string());
                }
                let done = query
                    .execute(&mut **tx)
                    .await
                    .map_err(StoreError::query("erase or purge"))?;
                Ok(done.rows_affected())
            }

            async fn pairs(
                tx: &mut Transaction<'_, Self>,
                sql: String,
                arg: &str,
            ) -> Result<Vec<(String, Option<String>)>, StoreError> {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(arg.to_owned())
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(StoreError::query("find rows to erase"))
            }
        }
    };
}

erase_sql!(
    Postgres,
    "::timestamptz",
    |at: DateTime<Utc>| at.to_rfc3339(),
    "SELECT biz_no, transaction_id FROM erased_checks \
     WHERE biz_no IN (SELECT jsonb_array_elements_text($1::jsonb))"
);
erase_sql!(
    Sqlite,
    "",
    to_text,
    "SELECT biz_no, transaction_id FROM erased_checks \
     WHERE biz_no IN (SELECT value FROM json_each($1))"
);
