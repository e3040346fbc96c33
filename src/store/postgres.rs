//! The PostgreSQL side of [`JobStore`](super::JobStore): the production store
//! that several replicas share. Row updates lock the job's row (`FOR UPDATE`)
//! inside one transaction, so concurrent deliveries of one job serialize.
//!
//! Only this file speaks PostgreSQL's SQL dialect (with `leases` and
//! `reconcile` for their tables). It implements [`Dialect`]'s statements and
//! holds no policy: the transaction and the row rules are in `store/mod.rs`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, FromRow, PgConnection, PgPool, Postgres, Transaction};

use super::LedgerRow;
use super::dialect::Dialect;
use super::results::{ResultRow, result_fields};
use super::{
    CallRecord, ExistingJob, JobKey, JobStatus, Rejected, RowValues, StoreError, attempts_from_db,
    parse_status, saturating_i64, update_error,
};
use crate::results::event::ResultEvent;

/// The PostgreSQL migrations, embedded so the binary carries its schema.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a caller waits for a pooled connection before the store reports
/// itself unavailable (and the consumer pauses).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled connection idle this long is pinged before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = connect_options(url)?;
    PgPoolOptions::new()
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
        // A connection is checked (one round trip) only when it has sat idle
        // for a while, not on every acquire: a busy worker would otherwise
        // add a round trip to each statement. One that broke meanwhile fails
        // its statement as unavailable, which the caller retries.
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_IDLE_AFTER {
                    return Ok(true);
                }
                Ok(connection.ping().await.is_ok())
            })
        })
        .connect_with(options)
        .await
        .map_err(StoreError::connect)
}

pub(super) async fn migrate(url: &str) -> Result<(), StoreError> {
    let options = connect_options(url)?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(StoreError::connect)?;
    // `run_direct` is what `run` calls after acquiring; calling it directly
    // keeps this future `Send` (sqlx's `Acquire` bound on `run` is not general
    // enough for `tokio::spawn`).
    let outcome = MIGRATOR
        .run_direct(None, &mut conn, false)
        .await
        .map_err(StoreError::Migrate);
    // Closing politely is best effort: dropping the connection also ends the
    // session, which releases the advisory lock either way.
    let _ = conn.close().await;
    outcome
}

/// The options of `url`, TLS included (see the README's "Encrypted
/// transport"). TLS is used when asked for, by `sslmode` in the URL or
/// `PGSSLMODE`; otherwise the connection is plain text, as it was before the
/// worker could encrypt, rather than sqlx's default `prefer`, which tries TLS
/// without checking who answers.
fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    crate::tls::install_crypto_provider();
    let options = PgConnectOptions::from_str(url).map_err(StoreError::connect)?;
    if asks_for_sslmode(url) || std::env::var_os("PGSSLMODE").is_some() {
        Ok(options)
    } else {
        Ok(options.ssl_mode(PgSslMode::Disable))
    }
}

/// Whether `url` names an sslmode (sqlx's spellings).
fn asks_for_sslmode(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| {
        url.query_pairs()
            .any(|(name, _)| matches!(name.as_ref(), "sslmode" | "ssl-mode"))
    })
}

impl Dialect for Postgres {
    async fn ping(pool: &PgPool) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map_err(StoreError::query("ping"))?;
        Ok(())
    }

    async fn find(pool: &PgPool, transaction_id: &str) -> Result<Option<ExistingJob>, StoreError> {
        let row: Option<ExistingRow> = sqlx::query_as(
            "SELECT status, attempts, first_call_at, business_fingerprint, batch_id \
             FROM relation_checks WHERE transaction_id = $1",
        )
        .bind(transaction_id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::query("find job"))?;
        row.map(|row| {
            Ok(ExistingJob {
                status: parse_status(&row.status)?,
                attempts: attempts_from_db(i64::from(row.attempts))?,
                first_call_at: row.first_call_at,
                fingerprint: row.business_fingerprint,
                batch_id: row.batch_id,
            })
        })
        .transpose()
    }

    async fn start_call(
        pool: &PgPool,
        job: &JobKey<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        start_call_on(pool, job, now).await
    }

    async fn append_call(
        tx: &mut Transaction<'_, Postgres>,
        transaction_id: &str,
        call: &CallRecord,
    ) -> Result<(), StoreError> {
        bind_call!(sqlx::query(APPEND_CALL), transaction_id, call)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("append upstream call"))?;
        Ok(())
    }

    /// `created_at` and `updated_at` take the table's default, `now()`.
    async fn ensure_row(
        tx: &mut Transaction<'_, Postgres>,
        job: &JobKey<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relation_checks (transaction_id, external_ref, status, attempts, \
                 cert_no_masked, name_masked, relation_phone_masked, relation_name_masked, \
                 business_fingerprint, batch_id, cert_no_hmac, relation_phone_hmac) \
             VALUES ($1, $2, 'pending', 0, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(job.transaction_id)
        .bind(job.external_ref)
        .bind(&job.masked.cert_no)
        .bind(&job.masked.name)
        .bind(&job.masked.relation_phone)
        .bind(&job.masked.relation_name)
        .bind(job.fingerprint)
        .bind(job.batch_id)
        .bind(job.masked.cert_no_hmac.as_deref())
        .bind(job.masked.relation_phone_hmac.as_deref())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("create job row"))?;
        Ok(())
    }

    /// `FOR UPDATE`: concurrent deliveries of one job wait here for each other.
    async fn lock_status(
        tx: &mut Transaction<'_, Postgres>,
        transaction_id: &str,
    ) -> Result<JobStatus, StoreError> {
        let (status,): (String,) = sqlx::query_as(LOCK_STATUS)
            .bind(transaction_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(StoreError::query("lock job row"))?;
        parse_status(&status)
    }

    async fn count_attempt(
        tx: &mut Transaction<'_, Postgres>,
        transaction_id: &str,
        attempts_added: u8,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE relation_checks SET attempts = attempts + $2, updated_at = now() \
             WHERE transaction_id = $1",
        )
        .bind(transaction_id)
        .bind(i32::from(attempts_added))
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("count attempt"))?;
        Ok(())
    }

    async fn apply_update(
        tx: &mut Transaction<'_, Postgres>,
        transaction_id: &str,
        attempts_added: u8,
        values: &RowValues<'_>,
    ) -> Result<(), sqlx::Error> {
        bind_update!(
            sqlx::query(APPLY_UPDATE),
            transaction_id,
            attempts_added,
            values
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// With a call, one statement appends it and locks the row; only a
    /// missing row (an outcome recorded without `begin_call`) takes two more.
    async fn open_outcome(
        tx: &mut Transaction<'_, Postgres>,
        job: &JobKey<'_>,
        call: Option<&CallRecord>,
    ) -> Result<JobStatus, StoreError> {
        let locked: Option<(String,)> = match call {
            Some(call) => bind_call!(
                sqlx::query_as(APPEND_CALL_AND_LOCK),
                job.transaction_id,
                call
            )
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("append upstream call"))?,
            None => sqlx::query_as(LOCK_STATUS)
                .bind(job.transaction_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(StoreError::query("lock job row"))?,
        };
        match locked {
            Some((status,)) => parse_status(&status),
            None => {
                Self::ensure_row(tx, job).await?;
                Self::lock_status(tx, job.transaction_id).await
            }
        }
    }

    async fn apply_final_update(
        tx: &mut Transaction<'_, Postgres>,
        transaction_id: &str,
        attempts_added: u8,
        values: &RowValues<'_>,
    ) -> Result<ResultEvent, StoreError> {
        let row: ResultRow<DateTime<Utc>> = bind_update!(
            sqlx::query_as(APPLY_FINAL_UPDATE),
            transaction_id,
            attempts_added,
            values
        )
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| update_error(e, values))?;
        row.into_event(|_, at| Ok(at))
    }

    async fn record_rejected(
        tx: &mut Transaction<'_, Postgres>,
        rejected: &Rejected<'_>,
    ) -> Result<bool, StoreError> {
        let written: Option<(String,)> = sqlx::query_as(RECORD_REJECTED)
            .bind(rejected.transaction_id)
            .bind(rejected.external_ref)
            .bind(rejected.error_code)
            .bind(rejected.error_message)
            .bind(rejected.batch_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("record rejected job"))?;
        Ok(written.is_some())
    }

    async fn counts_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as("SELECT status, count(*) FROM relation_checks GROUP BY status")
            .fetch_all(pool)
            .await
            .map_err(StoreError::query("count jobs by status"))
    }

    async fn reset_to_retrying(pool: &PgPool, transaction_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE relation_checks SET status = 'retrying', completed_at = NULL, \
                 updated_at = now() \
             WHERE transaction_id = $1 AND status = 'failed'",
        )
        .bind(transaction_id)
        .execute(pool)
        .await
        .map_err(StoreError::query("reset job to retrying"))?;
        Ok(())
    }

    async fn calls_for(pool: &PgPool, transaction_id: &str) -> Result<Vec<LedgerRow>, StoreError> {
        let rows: Vec<PgLedgerRow> = sqlx::query_as(
            "SELECT attempt, started_at, duration_ms, http_status, code, sub_code, outcome \
             FROM upstream_calls WHERE transaction_id = $1 ORDER BY attempt, started_at, id",
        )
        .bind(transaction_id)
        .fetch_all(pool)
        .await
        .map_err(StoreError::query("list upstream calls"))?;
        Ok(rows.into_iter().map(LedgerRow::from).collect())
    }
}

/// [`Dialect::start_call`] on any executor: the pool, or the transaction of
/// a grouped commit.
pub(super) async fn start_call_on<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    job: &JobKey<'_>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let started: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(START_CALL)
        .bind(job.transaction_id)
        .bind(job.external_ref)
        .bind(&job.masked.cert_no)
        .bind(&job.masked.name)
        .bind(&job.masked.relation_phone)
        .bind(&job.masked.relation_name)
        .bind(now)
        .bind(job.fingerprint)
        .bind(job.batch_id)
        .bind(job.masked.cert_no_hmac.as_deref())
        .bind(job.masked.relation_phone_hmac.as_deref())
        .fetch_optional(executor)
        .await
        .map_err(StoreError::query("begin call"))?;
    Ok(started.and_then(|(first_call_at,)| first_call_at))
}

/// [`start_call_on`] for many jobs in one statement ([`START_CALLS`]): each
/// job's stored first call time, `None` where the statement changed nothing
/// (a final row, or one of another contact), in the order of `jobs`. The
/// transaction_ids must be distinct.
pub(super) async fn start_calls_on<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    jobs: &[(JobKey<'_>, DateTime<Utc>)],
) -> Result<Vec<Option<DateTime<Utc>>>, StoreError> {
    let started: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(START_CALLS)
        .bind(column(jobs, |(job, _)| job.transaction_id))
        .bind(column(jobs, |(job, _)| job.external_ref))
        .bind(column(jobs, |(job, _)| job.masked.cert_no.as_str()))
        .bind(column(jobs, |(job, _)| job.masked.name.as_str()))
        .bind(column(jobs, |(job, _)| job.masked.relation_phone.as_str()))
        .bind(column(jobs, |(job, _)| job.masked.relation_name.as_str()))
        .bind(column(jobs, |(_, now)| *now))
        .bind(column(jobs, |(job, _)| job.fingerprint))
        .bind(column(jobs, |(job, _)| job.batch_id))
        .bind(column(jobs, |(job, _)| job.masked.cert_no_hmac.as_deref()))
        .bind(column(jobs, |(job, _)| {
            job.masked.relation_phone_hmac.as_deref()
        }))
        .fetch_all(executor)
        .await
        .map_err(StoreError::query("begin calls"))?;
    let mut by_id: std::collections::HashMap<String, Option<DateTime<Utc>>> =
        started.into_iter().collect();
    Ok(jobs
        .iter()
        .map(|(job, _)| by_id.remove(job.transaction_id).flatten())
        .collect())
}

/// One array parameter of a many-row statement: `f` of every item.
pub(super) fn column<'a, S, T>(items: &'a [S], f: impl Fn(&'a S) -> T) -> Vec<T> {
    items.iter().map(f).collect()
}

/// One outcome of a grouped commit in [`append_calls_and_lock`] and
/// [`apply_final_updates`].
pub(super) struct Outcome<'a> {
    pub(super) transaction_id: &'a str,
    pub(super) call: &'a CallRecord,
    pub(super) values: RowValues<'a>,
}

/// [`APPEND_CALL_AND_LOCK`] for many outcomes in one statement: every call
/// appended to the ledger, every row locked (in transaction_id order), and
/// each row's status, in the order of `outcomes` (`None` for a missing row).
/// The transaction_ids must be distinct.
pub(super) async fn append_calls_and_lock(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[Outcome<'_>],
) -> Result<Vec<Option<JobStatus>>, StoreError> {
    let locked: Vec<(String, String)> = sqlx::query_as(APPEND_CALLS_AND_LOCK)
        .bind(column(outcomes, |o| o.transaction_id))
        .bind(column(outcomes, |o| {
            i32::try_from(o.call.attempt).unwrap_or(i32::MAX)
        }))
        .bind(column(outcomes, |o| o.call.started_at))
        .bind(column(outcomes, |o| saturating_i64(o.call.duration_ms)))
        .bind(column(outcomes, |o| o.call.http_status.map(i32::from)))
        .bind(column(outcomes, |o| o.call.code.as_deref()))
        .bind(column(outcomes, |o| o.call.sub_code.as_deref()))
        .bind(column(outcomes, |o| o.call.outcome.as_str()))
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::query("append upstream calls"))?;
    let mut by_id: std::collections::HashMap<String, String> = locked.into_iter().collect();
    outcomes
        .iter()
        .map(|o| {
            by_id
                .remove(o.transaction_id)
                .map(|status| parse_status(&status))
                .transpose()
        })
        .collect()
}

/// [`APPLY_FINAL_UPDATE`] for many outcomes that each make their row final,
/// in one statement, one attempt added to each: the updated rows as result
/// events, in the order of `outcomes`. The transaction_ids must be distinct
/// and their rows locked; a biz_no already taken fails the whole statement.
pub(super) async fn apply_final_updates(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[Outcome<'_>],
) -> Result<Vec<ResultEvent>, StoreError> {
    let rows: Vec<ResultRow<DateTime<Utc>>> = sqlx::query_as(APPLY_FINAL_UPDATES)
        .bind(column(outcomes, |o| o.transaction_id))
        .bind(column(outcomes, |o| o.values.status.as_str()))
        .bind(column(outcomes, |o| o.values.biz_no))
        .bind(column(outcomes, |o| o.values.relation_rank))
        .bind(column(outcomes, |o| o.values.recency))
        .bind(column(outcomes, |o| o.values.relation_score))
        .bind(column(outcomes, |o| o.values.error_code))
        .bind(column(outcomes, |o| o.values.error_message))
        .bind(column(outcomes, |o| o.values.response_body))
        .bind(column(outcomes, |o| o.values.question_hmac))
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::query("update job rows"))?;
    let mut by_id = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let event = row.into_event(|_, at| Ok(at))?;
        by_id.insert(event.transaction_id.clone(), event);
    }
    outcomes
        .iter()
        .map(|o| {
            by_id
                .remove(o.transaction_id)
                .ok_or_else(|| StoreError::Malformed {
                    column: "transaction_id",
                    detail: format!("no row updated for {}", o.transaction_id),
                })
        })
        .collect()
}

#[derive(FromRow)]
struct ExistingRow {
    status: String,
    attempts: i32,
    business_fingerprint: Option<String>,
    batch_id: Option<String>,
    first_call_at: Option<DateTime<Utc>>,
}

/// A call start: a new row, or [`start_call_conflict_sql`] on an existing
/// one; no row returned when it changed nothing.
const START_CALL: &str = concat!(
    start_call_insert_sql!(),
    "VALUES ($1, $2, 'pending', 0, $3, $4, $5, $6, $7, $7, $7, $8, $9, $10, $11)",
    start_call_conflict_sql!(),
    " RETURNING first_call_at"
);

/// [`START_CALL`] for many jobs in one statement (one array per column, in
/// the same order): the rows it changed come back with their transaction_id.
/// No transaction_id may appear twice (PostgreSQL refuses to change a row
/// twice in one statement).
const START_CALLS: &str = concat!(
    start_call_insert_sql!(),
    "SELECT j.transaction_id, j.external_ref, 'pending', 0, j.cert_no, j.name, \
        j.relation_phone, j.relation_name, j.now, j.now, j.now, j.fingerprint, j.batch_id, \
        j.cert_no_hmac, j.relation_phone_hmac \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
        $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[]) \
        AS j(transaction_id, external_ref, cert_no, name, relation_phone, relation_name, \
             now, fingerprint, batch_id, cert_no_hmac, relation_phone_hmac)",
    start_call_conflict_sql!(),
    " RETURNING transaction_id, first_call_at"
);

/// A NULL value keeps the stored one, except for the error columns, which
/// describe the latest attempt only.
macro_rules! apply_update_sql {
    () => {
        "UPDATE relation_checks SET \
            status = $3, attempts = attempts + $2, updated_at = now(), \
            completed_at = CASE WHEN $4 THEN now() ELSE NULL END, \
            biz_no = COALESCE($5, biz_no), \
            relation_rank = COALESCE($6, relation_rank), \
            recency = COALESCE($7, recency), \
            relation_score = COALESCE($8, relation_score), \
            error_code = $9, error_message = $10, \
            response_body = COALESCE($11, response_body), \
            question_hmac = COALESCE($12, question_hmac) \
        WHERE transaction_id = $1"
    };
}

const APPLY_UPDATE: &str = apply_update_sql!();

/// [`APPLY_UPDATE`] returning the updated row as a result row.
const APPLY_FINAL_UPDATE: &str = concat!(apply_update_sql!(), " RETURNING ", result_fields!());

/// `FOR UPDATE`: concurrent deliveries of one job wait here for each other.
const LOCK_STATUS: &str = "SELECT status FROM relation_checks WHERE transaction_id = $1 FOR UPDATE";

macro_rules! append_call_sql {
    () => {
        "INSERT INTO upstream_calls (transaction_id, attempt, started_at, duration_ms, \
             http_status, code, sub_code, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    };
}

const APPEND_CALL: &str = append_call_sql!();

/// [`APPEND_CALL`] and [`LOCK_STATUS`] in one round trip (no row when the
/// job's row is missing; the call is appended either way).
const APPEND_CALL_AND_LOCK: &str = concat!(
    "WITH call AS (",
    append_call_sql!(),
    ") SELECT status FROM relation_checks WHERE transaction_id = $1 FOR UPDATE"
);

/// [`APPEND_CALL_AND_LOCK`] for many calls (one array per column; the
/// statuses come back with their transaction_ids).
const APPEND_CALLS_AND_LOCK: &str = "\
    WITH call AS (\
        INSERT INTO upstream_calls (transaction_id, attempt, started_at, duration_ms, \
            http_status, code, sub_code, outcome) \
        SELECT * FROM UNNEST($1::text[], $2::integer[], $3::timestamptz[], $4::bigint[], \
            $5::integer[], $6::text[], $7::text[], $8::text[])) \
    SELECT transaction_id, status FROM relation_checks WHERE transaction_id = ANY($1) \
    ORDER BY transaction_id FOR UPDATE";

/// [`APPLY_FINAL_UPDATE`] for many rows made final, one attempt added to
/// each (the `u_` columns are the new values).
const APPLY_FINAL_UPDATES: &str = concat!(
    "UPDATE relation_checks SET \
        status = u.u_status, attempts = attempts + 1, updated_at = now(), \
        completed_at = now(), \
        biz_no = COALESCE(u.u_biz_no, biz_no), \
        relation_rank = COALESCE(u.u_relation_rank, relation_rank), \
        recency = COALESCE(u.u_recency, recency), \
        relation_score = COALESCE(u.u_relation_score, relation_score), \
        error_code = u.u_error_code, error_message = u.u_error_message, \
        response_body = COALESCE(u.u_response_body, response_body), \
        question_hmac = COALESCE(u.u_question_hmac, question_hmac) \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
        $7::text[], $8::text[], $9::text[], $10::text[]) \
        AS u(u_transaction_id, u_status, u_biz_no, u_relation_rank, u_recency, \
             u_relation_score, u_error_code, u_error_message, u_response_body, \
             u_question_hmac) \
    WHERE transaction_id = u.u_transaction_id \
    RETURNING ",
    result_fields!()
);

/// Binds [`APPEND_CALL`]'s parameters to a `query` or `query_as`.
macro_rules! bind_call {
    ($query:expr, $transaction_id:expr, $call:expr) => {{
        let call: &CallRecord = $call;
        $query
            .bind($transaction_id)
            .bind(i32::try_from(call.attempt).unwrap_or(i32::MAX))
            .bind(call.started_at)
            .bind(saturating_i64(call.duration_ms))
            .bind(call.http_status.map(i32::from))
            .bind(call.code.as_deref())
            .bind(call.sub_code.as_deref())
            .bind(&call.outcome)
    }};
}
use bind_call;

/// Binds [`APPLY_UPDATE`]'s parameters to a `query` or `query_as`.
macro_rules! bind_update {
    ($query:expr, $transaction_id:expr, $attempts_added:expr, $values:expr) => {{
        let values: &RowValues<'_> = $values;
        $query
            .bind($transaction_id)
            .bind(i32::from($attempts_added))
            .bind(values.status.as_str())
            .bind(values.status.is_final())
            .bind(values.biz_no)
            .bind(values.relation_rank)
            .bind(values.recency)
            .bind(values.relation_score)
            .bind(values.error_code)
            .bind(values.error_message)
            .bind(values.response_body)
            .bind(values.question_hmac)
    }};
}
use bind_update;

const RECORD_REJECTED: &str = "\
    INSERT INTO relation_checks (transaction_id, external_ref, status, attempts, \
        error_code, error_message, completed_at, batch_id) \
    VALUES ($1, $2, 'failed', 0, $3, $4, now(), $5) \
    ON CONFLICT (transaction_id) DO UPDATE SET \
        status = 'failed', \
        external_ref = COALESCE(EXCLUDED.external_ref, relation_checks.external_ref), \
        error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message, \
        batch_id = COALESCE(relation_checks.batch_id, EXCLUDED.batch_id), \
        completed_at = now(), updated_at = now() \
      WHERE relation_checks.status NOT IN ('succeeded', 'failed') \
    RETURNING transaction_id";

#[derive(FromRow)]
struct PgLedgerRow {
    attempt: i32,
    started_at: DateTime<Utc>,
    duration_ms: i64,
    http_status: Option<i32>,
    code: Option<String>,
    sub_code: Option<String>,
    outcome: String,
}

impl From<PgLedgerRow> for LedgerRow {
    fn from(row: PgLedgerRow) -> Self {
        LedgerRow {
            attempt: i64::from(row.attempt),
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            http_status: row.http_status.map(i64::from),
            code: row.code,
            sub_code: row.sub_code,
            outcome: row.outcome,
        }
    }
}
