//! The SQL of results back to the pipeline: the `result_events` outbox, the
//! `batches` table and the streamed result rows of `zhima-worker results`.
//!
//! The outbox rows of a job are written by [`after_final`] inside the outcome
//! transaction of [`super::JobStore::record`] / `record_rejected`, so an
//! event exists exactly when its outcome is committed. The relay claims
//! unsent rows ([`super::JobStore::claim_events`]: PostgreSQL locks them
//! `FOR UPDATE SKIP LOCKED` for the length of one publish round, so several
//! replicas never hold the same row; SQLite runs one replica), publishes them
//! and marks them sent in that same transaction.
//!
//! A batch completes exactly once: every final transition of a batch's job
//! takes the batch row's lock (an `UPDATE` of its `finals` hint) before
//! anything is counted, so under READ COMMITTED the last of two racing
//! transactions counts after the first committed and sees both; the
//! `completed_at IS NULL` guard of the completing `UPDATE` makes a second
//! completion impossible. Recording a batch's size runs the same check, for
//! a batch that finished before `enqueue` recorded its size.

use std::future::Future;

use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt};
use sqlx::{Database, FromRow, PgPool, Pool, Postgres, Sqlite, SqlitePool, Transaction};

use super::dialect::Dialect;
use super::postgres::column;
use super::sqlite::{from_text, to_text};
use super::{JobStore, StoreError, attempts_from_db};
use crate::results::event::{BATCH_COMPLETED, BatchCompleted, RELATION_RESULT, ResultEvent};

/// One unsent outbox row.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub(crate) struct OutboxEvent {
    pub(crate) id: i64,
    pub(crate) message_id: String,
    pub(crate) routing_key: String,
    pub(crate) body: String,
}

/// Outbox rows claimed by this relay until [`JobStore::mark_sent`] (or a
/// drop, which gives them back unsent).
pub(crate) struct OutboxClaim {
    pub(crate) events: Vec<OutboxEvent>,
    hold: ClaimHold,
}

/// What keeps other relays off the claimed rows: PostgreSQL's row locks, in
/// the open transaction; SQLite has one replica, hence one relay.
enum ClaimHold {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(SqlitePool),
}

/// What a new `enqueue` run finds for its batch id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchStart {
    /// New, or left by a run that did not finish publishing: go ahead.
    Open,
    /// A finished `enqueue` run already recorded its size: choose another id.
    AlreadyEnqueued,
}

/// Which final rows `zhima-worker results` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ResultFilter<'a> {
    Batch(&'a str),
    /// Completed in `[start, end)`.
    Completed {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

/// A batch row after a final transition or a size was recorded, under its
/// lock.
#[derive(Debug, Clone, Copy, FromRow)]
pub(super) struct BatchState {
    size: Option<i64>,
    finals: i64,
    completed: bool,
}

impl JobStore {
    /// Claims up to `limit` unsent events, oldest first, skipping rows another
    /// replica's relay holds.
    pub(crate) async fn claim_events(&self, limit: u32) -> Result<OutboxClaim, StoreError> {
        match &self.backend {
            super::Backend::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
                let events = sqlx::query_as(
                    "SELECT id, message_id, routing_key, body FROM result_events \
                     WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                )
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::query("claim result events"))?;
                Ok(OutboxClaim {
                    events,
                    hold: ClaimHold::Postgres(tx),
                })
            }
            super::Backend::Sqlite(pool) => {
                let events = sqlx::query_as(
                    "SELECT id, message_id, routing_key, body FROM result_events \
                     WHERE sent_at IS NULL ORDER BY id LIMIT ?1",
                )
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
                .map_err(StoreError::query("claim result events"))?;
                Ok(OutboxClaim {
                    events,
                    hold: ClaimHold::Sqlite(pool.clone()),
                })
            }
        }
    }

    /// Marks the claimed events sent (they were confirmed by the broker) and
    /// releases the claim.
    pub(crate) async fn mark_sent(&self, claim: OutboxClaim) -> Result<(), StoreError> {
        let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
        match claim.hold {
            ClaimHold::Postgres(mut tx) => {
                sqlx::query("UPDATE result_events SET sent_at = now() WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("mark result events sent"))?;
                tx.commit().await.map_err(StoreError::query("commit"))
            }
            ClaimHold::Sqlite(pool) => {
                let ids = serde_json::Value::from(ids).to_string();
                sqlx::query(
                    "UPDATE result_events SET sent_at = ?2 \
                     WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(ids)
                .bind(to_text(Utc::now()))
                .execute(&pool)
                .await
                .map_err(StoreError::query("mark result events sent"))?;
                Ok(())
            }
        }
    }

    /// Events not yet sent (every replica's).
    pub(crate) async fn unsent_events(&self) -> Result<i64, StoreError> {
        with_pool!(self, pool => ResultsSql::unsent(pool).await)
            .map_err(StoreError::query("count unsent result events"))
    }

    /// Creates the batch row of an `enqueue` run (or finds it).
    pub(crate) async fn start_batch(&self, batch_id: &str) -> Result<BatchStart, StoreError> {
        let size = with_pool!(self, pool => ResultsSql::start_batch(pool, batch_id).await)
            .map_err(StoreError::query("create the batch"))?;
        Ok(match size {
            Some(_) => BatchStart::AlreadyEnqueued,
            None => BatchStart::Open,
        })
    }

    /// Records the batch's size once every message is published, and
    /// completes the batch at once if its jobs are all final already.
    /// Returns whether this completed it.
    pub(crate) async fn record_batch_size(
        &self,
        batch_id: &str,
        size: u64,
    ) -> Result<bool, StoreError> {
        let events = self.events_enabled();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let completed = with_pool!(self, pool => {
            record_size_in(pool, batch_id, size, events).await
        })?;
        if completed {
            self.notify_events();
        }
        Ok(completed)
    }

    /// A final job delivered again with another batch id (a producer
    /// re-enqueued an id that was already done): the row moves to that batch
    /// and, in the same transaction, its result event is written again (with
    /// the new batch id) and the batch moves on, so it still completes.
    /// Nothing happens for a row that is not final or already in the batch.
    pub(crate) async fn join_batch(
        &self,
        transaction_id: &str,
        batch_id: &str,
    ) -> Result<(), StoreError> {
        let events = self.events_enabled();
        let wrote_event = with_pool!(self, pool => {
            join_batch_in(pool, transaction_id, batch_id, events).await
        })?;
        if wrote_event {
            self.notify_events();
        }
        Ok(())
    }

    /// Every final row of the batch or the day, in completion order, streamed.
    pub(crate) fn results<'a>(
        &'a self,
        filter: ResultFilter<'a>,
    ) -> BoxStream<'a, Result<ResultEvent, StoreError>> {
        with_pool!(self, pool => ResultsSql::results(pool, filter))
    }
}

async fn record_size_in<D: Dialect>(
    pool: &Pool<D>,
    batch_id: &str,
    size: i64,
    events: bool,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    let completed = match D::set_batch_size(&mut tx, batch_id, size).await? {
        Some(state) => maybe_complete::<D>(&mut tx, batch_id, state, events).await?,
        None => false,
    };
    tx.commit().await.map_err(StoreError::query("commit"))?;
    Ok(completed)
}

async fn join_batch_in<D: Dialect>(
    pool: &Pool<D>,
    transaction_id: &str,
    batch_id: &str,
    events: bool,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::query("begin"))?;
    let mut wrote_event = false;
    if D::move_to_batch(&mut tx, transaction_id, batch_id).await? {
        wrote_event = after_final(&mut tx, transaction_id, events).await?;
    }
    tx.commit().await.map_err(StoreError::query("commit"))?;
    Ok(wrote_event)
}

/// In the outcome transaction, once the job's row has just become final:
/// writes its event (when `events`), and moves its batch on. Returns whether
/// an outbox row was written.
pub(super) async fn after_final<D: Dialect>(
    tx: &mut Transaction<'_, D>,
    transaction_id: &str,
    events: bool,
) -> Result<bool, StoreError> {
    let event = D::read_result(tx, transaction_id).await?;
    after_final_deferring(tx, event, events, None).await
}

/// A job's event whose insert a grouped commit makes with the others of its
/// group, in one statement ([`insert_events`]) before the commit.
pub(super) struct DeferredEvent {
    message_id: String,
    routing_key: &'static str,
    body: String,
}

/// [`after_final`] with the final row already read as `event` (returned by
/// the update that made it final). With `deferred`, the event of a job
/// outside any batch is pushed there instead of inserted (a batch's job
/// events are inserted at once, so that its `batch.completed` event never
/// comes before the last of them).
pub(super) async fn after_final_deferring<D: Dialect>(
    tx: &mut Transaction<'_, D>,
    event: ResultEvent,
    events: bool,
    deferred: Option<&mut Vec<DeferredEvent>>,
) -> Result<bool, StoreError> {
    if events {
        let body = to_body(&event)?;
        match deferred {
            Some(deferred) if event.batch_id.is_none() => deferred.push(DeferredEvent {
                message_id: event.message_id().to_owned(),
                routing_key: event.routing_key(),
                body,
            }),
            _ => D::insert_event(tx, event.message_id(), event.routing_key(), &body).await?,
        }
    }
    let mut completed = false;
    if let Some(batch_id) = &event.batch_id {
        let state = D::bump_batch(tx, batch_id).await?;
        completed = maybe_complete::<D>(tx, batch_id, state, events).await?;
    }
    Ok(events || completed)
}

/// Completes the batch if every one of its `size` jobs is final, under the
/// batch row's lock (held by the caller's statement on it).
async fn maybe_complete<D: Dialect>(
    tx: &mut Transaction<'_, D>,
    batch_id: &str,
    state: BatchState,
    events: bool,
) -> Result<bool, StoreError> {
    let Some(size) = state.size else {
        return Ok(false);
    };
    if state.completed || state.finals < size {
        return Ok(false);
    }
    let (succeeded, failed) = D::final_counts(tx, batch_id).await?;
    if succeeded + failed < size {
        return Ok(false);
    }
    let Some((enqueued_at, completed_at)) = D::complete_batch(tx, batch_id).await? else {
        return Ok(false);
    };
    if events {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let event = BatchCompleted {
            event: BATCH_COMPLETED.into(),
            batch_id: batch_id.to_owned(),
            size: count(size),
            succeeded: count(succeeded),
            failed: count(failed),
            enqueued_at,
            completed_at,
        };
        let body = to_body(&event)?;
        D::insert_event(tx, batch_id, BATCH_COMPLETED, &body).await?;
    }
    Ok(events)
}

/// The deferred events of a grouped commit, in one statement, in order.
pub(super) async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[DeferredEvent],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO result_events (message_id, routing_key, body) \
         SELECT e.message_id, e.routing_key, e.body \
         FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
             AS e(message_id, routing_key, body, n) \
         ORDER BY e.n",
    )
    .bind(column(events, |e| e.message_id.as_str()))
    .bind(column(events, |e| e.routing_key))
    .bind(column(events, |e| e.body.as_str()))
    .execute(&mut **tx)
    .await
    .map_err(StoreError::query("write the result events"))?;
    Ok(())
}

fn to_body<T: serde::Serialize>(event: &T) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| StoreError::Malformed {
        column: "result_events.body",
        detail: e.to_string(),
    })
}

/// The statements of this file for one backend (part of [`Dialect`]).
pub(super) trait ResultsSql: Database {
    /// The job's row as its result event.
    fn read_result(
        tx: &mut Transaction<'_, Self>,
        transaction_id: &str,
    ) -> impl Future<Output = Result<ResultEvent, StoreError>> + Send;

    fn insert_event(
        tx: &mut Transaction<'_, Self>,
        message_id: &str,
        routing_key: &str,
        body: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates the batch row if missing, counts one more final job and
    /// returns the row, locked.
    fn bump_batch(
        tx: &mut Transaction<'_, Self>,
        batch_id: &str,
    ) -> impl Future<Output = Result<BatchState, StoreError>> + Send;

    /// Sets size and enqueued_at once (None when the size was set already),
    /// locking the row.
    fn set_batch_size(
        tx: &mut Transaction<'_, Self>,
        batch_id: &str,
        size: i64,
    ) -> impl Future<Output = Result<Option<BatchState>, StoreError>> + Send;

    /// `(succeeded, failed)` rows of the batch.
    fn final_counts(
        tx: &mut Transaction<'_, Self>,
        batch_id: &str,
    ) -> impl Future<Output = Result<(i64, i64), StoreError>> + Send;

    /// Sets completed_at unless set: `(enqueued_at, completed_at)` when this
    /// statement did it.
    #[allow(clippy::type_complexity)]
    fn complete_batch(
        tx: &mut Transaction<'_, Self>,
        batch_id: &str,
    ) -> impl Future<Output = Result<Option<(Option<DateTime<Utc>>, DateTime<Utc>)>, StoreError>> + Send;

    /// Sets a final row's batch_id when it differs; true when it did.
    fn move_to_batch(
        tx: &mut Transaction<'_, Self>,
        transaction_id: &str,
        batch_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn unsent(pool: &Pool<Self>) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

    /// Creates the batch row if missing; returns its recorded size.
    fn start_batch(
        pool: &Pool<Self>,
        batch_id: &str,
    ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send;

    fn results<'a>(
        pool: &'a Pool<Self>,
        filter: ResultFilter<'a>,
    ) -> BoxStream<'a, Result<ResultEvent, StoreError>>;
}

/// The columns of a [`ResultRow`], also what an update that makes a row final
/// returns (`RETURNING`), so it need not be read again.
macro_rules! result_fields {
    () => {
        "transaction_id, external_ref, batch_id, status, biz_no, \
         relation_rank, recency, relation_score, error_code, error_message, \
         CAST(attempts AS BIGINT) AS attempts, first_call_at, completed_at, reused_from"
    };
}
pub(super) use result_fields;

const RESULT_COLUMNS: &str = concat!("SELECT ", result_fields!(), " FROM relation_checks");

/// A result row with its timestamps in the backend's own type
/// (`DateTime<Utc>` on PostgreSQL, RFC 3339 text on SQLite).
#[derive(FromRow)]
pub(super) struct ResultRow<T> {
    transaction_id: String,
    external_ref: Option<String>,
    batch_id: Option<String>,
    status: String,
    biz_no: Option<String>,
    relation_rank: Option<String>,
    recency: Option<String>,
    relation_score: Option<i64>,
    error_code: Option<String>,
    error_message: Option<String>,
    attempts: i64,
    first_call_at: Option<T>,
    completed_at: Option<T>,
    reused_from: Option<String>,
}

impl<T> ResultRow<T> {
    /// `time` turns the backend's timestamp into UTC, naming the column when
    /// it cannot.
    pub(super) fn into_event(
        self,
        time: impl Fn(&'static str, T) -> Result<DateTime<Utc>, StoreError>,
    ) -> Result<ResultEvent, StoreError> {
        let at = |column, value: Option<T>| value.map(|v| time(column, v)).transpose();
        Ok(ResultEvent {
            event: RELATION_RESULT.into(),
            attempts: attempts_from_db(self.attempts)?,
            first_call_at: at("first_call_at", self.first_call_at)?,
            completed_at: at("completed_at", self.completed_at)?,
            transaction_id: self.transaction_id,
            external_ref: self.external_ref,
            batch_id: self.batch_id,
            status: self.status,
            biz_no: self.biz_no,
            relation_rank: self.relation_rank,
            recency: self.recency,
            relation_score: self.relation_score,
            error_code: self.error_code,
            error_message: self.error_message,
            reused_from: self.reused_from,
        })
    }
}

impl ResultsSql for Postgres {
    async fn read_result(
        tx: &mut Transaction<'_, Postgres>,
        transaction_id: &str,
    ) -> Result<ResultEvent, StoreError> {
        let sql = format!("{RESULT_COLUMNS} WHERE transaction_id = $1");
        let row: ResultRow<DateTime<Utc>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(transaction_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(StoreError::query("read the job's result"))?;
        row.into_event(|_, at| Ok(at))
    }

    async fn insert_event(
        tx: &mut Transaction<'_, Postgres>,
        message_id: &str,
        routing_key: &str,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO result_events (message_id, routing_key, body) VALUES ($1, $2, $3)",
        )
        .bind(message_id)
        .bind(routing_key)
        .bind(body)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("write the result event"))?;
        Ok(())
    }

    async fn bump_batch(
        tx: &mut Transaction<'_, Postgres>,
        batch_id: &str,
    ) -> Result<BatchState, StoreError> {
        let row: BatchState = sqlx::query_as(
            "INSERT INTO batches (batch_id, finals) VALUES ($1, 1) \
             ON CONFLICT (batch_id) DO UPDATE SET finals = batches.finals + 1 \
             RETURNING size, finals, completed_at IS NOT NULL AS completed",
        )
        .bind(batch_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("count the batch's final job"))?;
        Ok(row)
    }

    async fn set_batch_size(
        tx: &mut Transaction<'_, Postgres>,
        batch_id: &str,
        size: i64,
    ) -> Result<Option<BatchState>, StoreError> {
        let row: Option<BatchState> = sqlx::query_as(
            "UPDATE batches SET size = $2, enqueued_at = now() \
             WHERE batch_id = $1 AND size IS NULL \
             RETURNING size, finals, completed_at IS NOT NULL AS completed",
        )
        .bind(batch_id)
        .bind(size)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("record the batch's size"))?;
        Ok(row)
    }

    async fn final_counts(
        tx: &mut Transaction<'_, Postgres>,
        batch_id: &str,
    ) -> Result<(i64, i64), StoreError> {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), \
                    count(*) FILTER (WHERE status = 'failed') \
             FROM relation_checks WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("count the batch's final jobs"))
    }

    async fn complete_batch(
        tx: &mut Transaction<'_, Postgres>,
        batch_id: &str,
    ) -> Result<Option<(Option<DateTime<Utc>>, DateTime<Utc>)>, StoreError> {
        sqlx::query_as(
            "UPDATE batches SET completed_at = now() \
             WHERE batch_id = $1 AND completed_at IS NULL AND size IS NOT NULL \
             RETURNING enqueued_at, completed_at",
        )
        .bind(batch_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("complete the batch"))
    }

    async fn move_to_batch(
        tx: &mut Transaction<'_, Postgres>,
        transaction_id: &str,
        batch_id: &str,
    ) -> Result<bool, StoreError> {
        let moved: Option<(String,)> = sqlx::query_as(
            "UPDATE relation_checks SET batch_id = $2, updated_at = now() \
             WHERE transaction_id = $1 AND status IN ('succeeded', 'failed') \
               AND batch_id IS DISTINCT FROM $2 \
             RETURNING transaction_id",
        )
        .bind(transaction_id)
        .bind(batch_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("move the job into its batch"))?;
        Ok(moved.is_some())
    }

    async fn unsent(pool: &PgPool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM result_events WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await
    }

    async fn start_batch(pool: &PgPool, batch_id: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query("INSERT INTO batches (batch_id) VALUES ($1) ON CONFLICT (batch_id) DO NOTHING")
            .bind(batch_id)
            .execute(pool)
            .await?;
        sqlx::query_scalar("SELECT size FROM batches WHERE batch_id = $1")
            .bind(batch_id)
            .fetch_one(pool)
            .await
    }

    fn results<'a>(
        pool: &'a PgPool,
        filter: ResultFilter<'a>,
    ) -> BoxStream<'a, Result<ResultEvent, StoreError>> {
        let finals = "status IN ('succeeded', 'failed')";
        let order = "ORDER BY completed_at, transaction_id";
        let rows = match filter {
            ResultFilter::Batch(batch_id) => {
                sqlx::query_as::<_, ResultRow<DateTime<Utc>>>(sqlx::AssertSqlSafe(format!(
                    "{RESULT_COLUMNS} WHERE batch_id = $1 AND {finals} {order}"
                )))
                .bind(batch_id)
                .fetch(pool)
            }
            ResultFilter::Completed { start, end } => {
                sqlx::query_as::<_, ResultRow<DateTime<Utc>>>(sqlx::AssertSqlSafe(format!(
                    "{RESULT_COLUMNS} WHERE completed_at >= $1 AND completed_at < $2 \
                     AND {finals} {order}"
                )))
                .bind(start)
                .bind(end)
                .fetch(pool)
            }
        };
        rows.map(|row| {
            row.map_err(StoreError::query("read the results"))?
                .into_event(|_, at| Ok(at))
        })
        .boxed()
    }
}

/// SQLite: the outcome transaction already holds the one writer lock, so
/// nothing here needs a row lock.
impl ResultsSql for Sqlite {
    async fn read_result(
        tx: &mut Transaction<'_, Sqlite>,
        transaction_id: &str,
    ) -> Result<ResultEvent, StoreError> {
        let sql = format!("{RESULT_COLUMNS} WHERE transaction_id = ?1");
        let row: ResultRow<String> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(transaction_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(StoreError::query("read the job's result"))?;
        row.into_event(|column, text| from_text(column, &text))
    }

    async fn insert_event(
        tx: &mut Transaction<'_, Sqlite>,
        message_id: &str,
        routing_key: &str,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO result_events (message_id, routing_key, body, created_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(message_id)
        .bind(routing_key)
        .bind(body)
        .bind(to_text(Utc::now()))
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("write the result event"))?;
        Ok(())
    }

    async fn bump_batch(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: &str,
    ) -> Result<BatchState, StoreError> {
        let row: BatchState = sqlx::query_as(
            "INSERT INTO batches (batch_id, finals, created_at) VALUES (?1, 1, ?2) \
             ON CONFLICT (batch_id) DO UPDATE SET finals = batches.finals + 1 \
             RETURNING size, finals, completed_at IS NOT NULL AS completed",
        )
        .bind(batch_id)
        .bind(to_text(Utc::now()))
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("count the batch's final job"))?;
        Ok(row)
    }

    async fn set_batch_size(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: &str,
        size: i64,
    ) -> Result<Option<BatchState>, StoreError> {
        let row: Option<BatchState> = sqlx::query_as(
            "UPDATE batches SET size = ?2, enqueued_at = ?3 \
             WHERE batch_id = ?1 AND size IS NULL \
             RETURNING size, finals, completed_at IS NOT NULL AS completed",
        )
        .bind(batch_id)
        .bind(size)
        .bind(to_text(Utc::now()))
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("record the batch's size"))?;
        Ok(row)
    }

    async fn final_counts(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: &str,
    ) -> Result<(i64, i64), StoreError> {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), \
                    count(*) FILTER (WHERE status = 'failed') \
             FROM relation_checks WHERE batch_id = ?1",
        )
        .bind(batch_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("count the batch's final jobs"))
    }

    async fn complete_batch(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: &str,
    ) -> Result<Option<(Option<DateTime<Utc>>, DateTime<Utc>)>, StoreError> {
        let row: Option<(Option<String>, String)> = sqlx::query_as(
            "UPDATE batches SET completed_at = ?2 \
             WHERE batch_id = ?1 AND completed_at IS NULL AND size IS NOT NULL \
             RETURNING enqueued_at, completed_at",
        )
        .bind(batch_id)
        .bind(to_text(Utc::now()))
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("complete the batch"))?;
        row.map(|(enqueued_at, completed_at)| {
            Ok((
                enqueued_at
                    .map(|text| from_text("enqueued_at", &text))
                    .transpose()?,
                from_text("completed_at", &completed_at)?,
            ))
        })
        .transpose()
    }

    async fn move_to_batch(
        tx: &mut Transaction<'_, Sqlite>,
        transaction_id: &str,
        batch_id: &str,
    ) -> Result<bool, StoreError> {
        let moved: Option<(String,)> = sqlx::query_as(
            "UPDATE relation_checks SET batch_id = ?2, updated_at = ?3 \
             WHERE transaction_id = ?1 AND status IN ('succeeded', 'failed') \
               AND batch_id IS NOT ?2 \
             RETURNING transaction_id",
        )
        .bind(transaction_id)
        .bind(batch_id)
        .bind(to_text(Utc::now()))
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("move the job into its batch"))?;
        Ok(moved.is_some())
    }

    async fn unsent(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM result_events WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await
    }

    async fn start_batch(pool: &SqlitePool, batch_id: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query(
            "INSERT INTO batches (batch_id, created_at) VALUES (?1, ?2) \
             ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(batch_id)
        .bind(to_text(Utc::now()))
        .execute(pool)
        .await?;
        sqlx::query_scalar("SELECT size FROM batches WHERE batch_id = ?1")
            .bind(batch_id)
            .fetch_one(pool)
            .await
    }

    fn results<'a>(
        pool: &'a SqlitePool,
        filter: ResultFilter<'a>,
    ) -> BoxStream<'a, Result<ResultEvent, StoreError>> {
        let finals = "status IN ('succeeded', 'failed')";
        let order = "ORDER BY completed_at, transaction_id";
        let rows = match filter {
            ResultFilter::Batch(batch_id) => {
                sqlx::query_as::<_, ResultRow<String>>(sqlx::AssertSqlSafe(format!(
                    "{RESULT_COLUMNS} WHERE batch_id = ?1 AND {finals} {order}"
                )))
                .bind(batch_id)
                .fetch(pool)
            }
            ResultFilter::Completed { start, end } => {
                sqlx::query_as::<_, ResultRow<String>>(sqlx::AssertSqlSafe(format!(
                    "{RESULT_COLUMNS} WHERE completed_at >= ?1 AND completed_at < ?2 \
                     AND {finals} {order}"
                )))
                .bind(to_text(start))
                .bind(to_text(end))
                .fetch(pool)
            }
        };
        rows.map(|row| {
            row.map_err(StoreError::query("read the results"))?
                .into_event(|column, text| from_text(column, &text))
        })
        .boxed()
    }
}
