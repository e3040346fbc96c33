//! [`Dialect`]: what a database must provide to hold the jobs, one method per
//! statement, each with that database's SQL, parameter types and column
//! decoding. `sqlx::Postgres` implements it in [`super::postgres`],
//! `sqlx::Sqlite` in [`super::sqlite`].
//!
//! The orchestration and the invariants (the `record` transaction, the frozen
//! `succeeded` row, the end of `begin_call`, the biz_no conflict) are written
//! once over this trait in [`super`]. A method here runs its statement and
//! decides nothing: a rule that holds on every backend belongs there.
//!
//! A new backend implements this trait with [`LeaseSql`], [`ReconcileSql`] and
//! [`ResultsSql`],
//! and gets a `Backend` variant in `store/mod.rs` with its arm in `with_pool!`,
//! `scheme_of`, `connect`, `migrate`, `Debug` and `is_shared`, and its
//! transient error codes in `is_transient`.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, Transaction};

use super::LedgerRow;
use super::erase::EraseSql;
use super::leases::LeaseSql;
use super::lookup::LookupSql;
use super::reconcile::ReconcileSql;
use super::results::ResultsSql;
use super::{CallRecord, ExistingJob, JobKey, JobStatus, Rejected, RowValues, StoreError};
use crate::results::event::ResultEvent;

/// The statements of `relation_checks` and the `upstream_calls` ledger. The
/// transaction methods take the open transaction of
/// [`JobStore::record`](super::JobStore::record); the others run on the pool.
pub(super) trait Dialect:
    Database + LeaseSql + ReconcileSql + LookupSql + ResultsSql + EraseSql
{
    /// Round-trips a trivial query.
    fn ping(pool: &Pool<Self>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The job's row, decoded.
    fn find(
        pool: &Pool<Self>,
        transaction_id: &str,
    ) -> impl Future<Output = Result<Option<ExistingJob>, StoreError>> + Send;

    /// `begin_call`'s one statement: creates the row as `pending` with `now`
    /// as its first call time, or fills the first call time and the absent
    /// descriptive columns of a row that is neither final nor another job's
    /// (other fingerprint). Returns the stored first call time, or None when
    /// the statement changed no row.
    fn start_call(
        pool: &Pool<Self>,
        job: &JobKey<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, StoreError>> + Send;

    /// Appends one call to the ledger.
    fn append_call(
        tx: &mut Transaction<'_, Self>,
        transaction_id: &str,
        call: &CallRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates the row as `pending` if it does not exist (an update recorded
    /// without `begin_call`), so that [`Dialect::lock_status`] finds it.
    fn ensure_row(
        tx: &mut Transaction<'_, Self>,
        job: &JobKey<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The row's status, read so that no other writer changes the row before
    /// the transaction ends.
    fn lock_status(
        tx: &mut Transaction<'_, Self>,
        transaction_id: &str,
    ) -> impl Future<Output = Result<JobStatus, StoreError>> + Send;

    /// Adds `attempts_added` to the row's attempts and touches `updated_at`,
    /// nothing else.
    fn count_attempt(
        tx: &mut Transaction<'_, Self>,
        transaction_id: &str,
        attempts_added: u8,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes `values` to the row and adds `attempts_added`; `completed_at` is
    /// set for a final status and cleared otherwise. The error is the
    /// database's own, so that the caller can tell a taken biz_no.
    fn apply_update(
        tx: &mut Transaction<'_, Self>,
        transaction_id: &str,
        attempts_added: u8,
        values: &RowValues<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The outcome transaction's first steps, in as few round trips as the
    /// backend allows: [`Dialect::append_call`] (when there is a call),
    /// [`Dialect::ensure_row`] and [`Dialect::lock_status`].
    fn open_outcome(
        tx: &mut Transaction<'_, Self>,
        job: &JobKey<'_>,
        call: Option<&CallRecord>,
    ) -> impl Future<Output = Result<JobStatus, StoreError>> + Send;

    /// [`Dialect::apply_update`] for a row that becomes final, returning the
    /// row as its result event (what [`ResultsSql::read_result`] would read
    /// next). A taken biz_no fails as [`StoreError::DuplicateBizNo`].
    fn apply_final_update(
        tx: &mut Transaction<'_, Self>,
        transaction_id: &str,
        attempts_added: u8,
        values: &RowValues<'_>,
    ) -> impl Future<Output = Result<ResultEvent, StoreError>> + Send;

    /// Creates or fails the row of a rejected message, unless it is final;
    /// true when it wrote the row.
    fn record_rejected(
        tx: &mut Transaction<'_, Self>,
        rejected: &Rejected<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// `(status text, count)` for each status present.
    fn counts_by_status(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// Moves a `failed` row back to `retrying`; any other row stays.
    fn reset_to_retrying(
        pool: &Pool<Self>,
        transaction_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The ledger rows of one job, by attempt, start time and insertion (`show`).
    fn calls_for(
        pool: &Pool<Self>,
        transaction_id: &str,
    ) -> impl Future<Output = Result<Vec<LedgerRow>, StoreError>> + Send;
}
