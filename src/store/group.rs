//! Grouped commits (PostgreSQL, `run` only): the outcomes that concurrent
//! jobs hand to [`super::JobStore::record`], and the call starts of
//! [`super::JobStore::try_begin_call`], that arrive while a commit is under
//! way are written together, in one transaction on a connection of the
//! committer's own (one of [`LANES`] committers), and each caller hears
//! back only once that transaction has committed (an outcome's ack still
//! follows its own commit, a call still starts after its row is committed).
//! Each one follows the same rules as on its own, but in statements shared
//! by the group where they are of one kind (one array per column): the call
//! starts in one, the outcomes of calls in two (ledger appends with row
//! locks, then the rows made final; retries and redelivered successes one by
//! one), the result events of jobs outside any batch in one after them. What
//! the group saves is the `BEGIN`, the `COMMIT`, the pool's liveness ping on
//! every release and those round trips, which were most of the worker's
//! database traffic.
//!
//! When anything in a group fails (a taken biz_no, a deadlock, the
//! connection), the whole transaction is rolled back and every request of the
//! group runs again on its own through the pool, so one job's failure is its
//! own and is reported to it alone, as without grouping.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::dialect::Dialect;
use super::postgres::Outcome;
use super::results::DeferredEvent;
use super::{
    CallRecord, JobKey, JobStatus, PiiMasked, RowUpdate, RowValues, Settle, StoreError,
    update_error,
};

/// The most outcomes in one transaction: the worker's concurrency is
/// usually below it, so in practice every outcome waiting is taken.
const MAX_GROUP: usize = 64;

/// Committers working at once, each with its own connection: while one
/// commits its group, the next takes the requests arriving meanwhile. With a
/// database a network round trip away, one committer alone would bound the
/// worker to about one job per four round trips.
const LANES: usize = 4;

/// How long the committer waits for its own connection before the group
/// runs through the pool instead (whose acquire has the same limit).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`super::JobStore::record`] returns: the stored status and whether
/// an outbox row was written.
type Recorded = Result<(JobStatus, bool), StoreError>;
/// What [`super::JobStore::try_begin_call`] returns.
type Started = Result<Option<DateTime<Utc>>, StoreError>;

/// The committer's queue; cheap to clone. The committer task ends when the
/// last clone is dropped.
#[derive(Clone)]
pub(super) struct GroupCommits {
    requests: mpsc::UnboundedSender<Request>,
}

/// One request, owned, for the committer task.
struct Request {
    transaction_id: String,
    external_ref: Option<String>,
    batch_id: Option<String>,
    masked: PiiMasked,
    fingerprint: String,
    work: Work,
}

enum Work {
    /// Boxed: a call start is much smaller than an outcome.
    Record {
        call: Option<Box<CallRecord>>,
        update: Box<RowUpdate>,
        reply: oneshot::Sender<Recorded>,
    },
    StartCall {
        now: DateTime<Utc>,
        reply: oneshot::Sender<Started>,
    },
}

/// What one request did inside the group's transaction, answered once it
/// committed.
enum Done {
    Recorded((JobStatus, bool)),
    Started(Option<DateTime<Utc>>),
}

impl Request {
    fn new(job: &JobKey<'_>, work: Work) -> Self {
        Self {
            transaction_id: job.transaction_id.to_owned(),
            external_ref: job.external_ref.map(str::to_owned),
            batch_id: job.batch_id.map(str::to_owned),
            masked: job.masked.clone(),
            fingerprint: job.fingerprint.to_owned(),
            work,
        }
    }

    fn key(&self) -> JobKey<'_> {
        JobKey {
            transaction_id: &self.transaction_id,
            external_ref: self.external_ref.as_deref(),
            batch_id: self.batch_id.as_deref(),
            masked: &self.masked,
            fingerprint: &self.fingerprint,
        }
    }

    /// Runs this request's statements in the group's transaction.
    /// The events of jobs outside any batch are pushed to `deferred`, for
    /// the group to insert in one statement.
    async fn run_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: bool,
        deferred: &mut Vec<DeferredEvent>,
    ) -> Result<Done, StoreError> {
        match &self.work {
            Work::Record { call, update, .. } => {
                let values = RowValues::from(&**update);
                let key = self.key();
                let call = call.as_deref();
                super::record_in_tx(tx, &key, call, &values, events, Some(deferred))
                    .await
                    .map(Done::Recorded)
            }
            Work::StartCall { now, .. } => {
                super::postgres::start_call_on(&mut **tx, &self.key(), *now)
                    .await
                    .map(Done::Started)
            }
        }
    }

    /// Answers the caller once the group committed.
    fn answer(self, done: Done) {
        match (self.work, done) {
            (Work::Record { reply, .. }, Done::Recorded(recorded)) => {
                let _ = reply.send(Ok(recorded));
            }
            (Work::StartCall { reply, .. }, Done::Started(started)) => {
                let _ = reply.send(Ok(started));
            }
            // Each request's own result comes back to it: never reached.
            (Work::Record { reply, .. }, Done::Started(_)) => {
                let _ = reply.send(Err(lost()));
            }
            (Work::StartCall { reply, .. }, Done::Recorded(_)) => {
                let _ = reply.send(Err(lost()));
            }
        }
    }

    /// Runs this request on its own, through the pool, and answers.
    async fn run_alone(self, pool: PgPool, events: bool) {
        let key = self.key();
        match &self.work {
            Work::Record { call, update, .. } => {
                let values = RowValues::from(&**update);
                let recorded =
                    super::record_in(&pool, &key, call.as_deref(), &values, events).await;
                if let Work::Record { reply, .. } = self.work {
                    let _ = reply.send(recorded);
                }
            }
            Work::StartCall { now, .. } => {
                let started = super::postgres::start_call_on(&pool, &key, *now).await;
                if let Work::StartCall { reply, .. } = self.work {
                    let _ = reply.send(started);
                }
            }
        }
    }
}

/// The error of a request whose committer stopped with it in hand: whether
/// its transaction committed is unknown, as after a lost connection.
fn lost() -> StoreError {
    StoreError::Query {
        operation: "grouped commit",
        source: sqlx::Error::WorkerCrashed,
    }
}

impl GroupCommits {
    /// Starts the committer task (in the current runtime).
    pub(super) fn start(pool: PgPool, events: bool) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..LANES {
            tokio::spawn(Committer::new(pool.clone(), events).run(Arc::clone(&queue)));
        }
        Self { requests }
    }

    /// Records one outcome in the next group; `None` when the committer is
    /// gone (the runtime is shutting down): the caller records it alone.
    pub(super) async fn record(
        &self,
        job: &JobKey<'_>,
        call: Option<&CallRecord>,
        update: &RowUpdate,
    ) -> Option<Recorded> {
        let (reply, answer) = oneshot::channel();
        let work = Work::Record {
            call: call.cloned().map(Box::new),
            update: Box::new(update.clone()),
            reply,
        };
        self.requests.send(Request::new(job, work)).ok()?;
        Some(answer.await.unwrap_or_else(|_| Err(lost())))
    }

    /// [`super::JobStore::try_begin_call`] in the next group; `None` as for
    /// [`Self::record`].
    pub(super) async fn start_call(&self, job: &JobKey<'_>, now: DateTime<Utc>) -> Option<Started> {
        let (reply, answer) = oneshot::channel();
        let work = Work::StartCall { now, reply };
        self.requests.send(Request::new(job, work)).ok()?;
        Some(answer.await.unwrap_or_else(|_| Err(lost())))
    }
}

struct Committer {
    pool: PgPool,
    events: bool,
    /// Opened at the first group, and again after one failed.
    connection: Option<PgConnection>,
}

impl Committer {
    fn new(pool: PgPool, events: bool) -> Self {
        Self {
            pool,
            events,
            connection: None,
        }
    }

    /// Takes whatever is waiting (at least one request), lets the next lane
    /// wait for more, and commits it.
    async fn run(mut self, queue: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        loop {
            // The lock is held only while waiting for the group, not while
            // committing it.
            let taken = queue.lock().await.recv_many(&mut group, MAX_GROUP).await;
            if taken == 0 {
                break;
            }
            self.commit(std::mem::take(&mut group)).await;
        }
        if let Some(connection) = self.connection.take() {
            let _ = connection.close().await;
        }
    }

    /// Commits the group and answers each caller; on any failure, runs each
    /// request on its own instead (in tasks of their own, so the next group
    /// need not wait for them).
    async fn commit(&mut self, group: Vec<Request>) {
        match self.try_commit(&group).await {
            Ok(done) => {
                for (request, done) in group.into_iter().zip(done) {
                    request.answer(done);
                }
            }
            Err(error) => {
                tracing::debug!(error.message = %error, requests = group.len(),
                    "grouped commit failed; running each request on its own");
                // A failed transaction was rolled back (or its connection
                // lost): start afresh with a new connection either way.
                if let Some(connection) = self.connection.take() {
                    let _ = connection.close_hard().await;
                }
                for request in group {
                    tokio::spawn(request.run_alone(self.pool.clone(), self.events));
                }
            }
        }
    }

    async fn try_commit(&mut self, group: &[Request]) -> Result<Vec<Done>, StoreError> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            empty => {
                let options = self.pool.connect_options();
                // Bounded like the pool's acquire: an unreachable server must
                // not hold every job's commit for the TCP connect timeout.
                let mut opened =
                    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                        .await
                        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
                        .map_err(StoreError::Connect)?;
                // The array statements are planned for each group: a generic
                // plan cached while the table was small (a new database)
                // joins the arrays to it by a sequential scan, which grows
                // with every job stored (seen in the production bench's deep
                // queue: half the rate at 40 000 rows).
                sqlx::query("SET plan_cache_mode = force_custom_plan")
                    .execute(&mut opened)
                    .await
                    .map_err(StoreError::query("set plan_cache_mode"))?;
                empty.insert(opened)
            }
        };
        let mut tx = connection
            .begin()
            .await
            .map_err(StoreError::query("begin"))?;
        let mut done: Vec<Option<Done>> = group.iter().map(|_| None).collect();
        start_calls(&mut tx, group, &mut done).await?;
        // The outcomes, their result events together after them.
        let mut deferred = Vec::new();
        record_outcomes(&mut tx, group, &mut done, self.events, &mut deferred).await?;
        for (request, slot) in group.iter().zip(done.iter_mut()) {
            if slot.is_none() {
                *slot = Some(request.run_in(&mut tx, self.events, &mut deferred).await?);
            }
        }
        if !deferred.is_empty() {
            super::results::insert_events(&mut tx, &deferred).await?;
        }
        tx.commit().await.map_err(StoreError::query("commit"))?;
        Ok(done.into_iter().flatten().collect())
    }
}

/// The group's call starts, in one statement when there are several of
/// distinct jobs (they are half the requests, and each statement is a round
/// trip); otherwise they are left for [`Request::run_in`].
async fn start_calls(
    tx: &mut Transaction<'_, Postgres>,
    group: &[Request],
    done: &mut [Option<Done>],
) -> Result<(), StoreError> {
    let starts: Vec<(usize, (JobKey<'_>, DateTime<Utc>))> = group
        .iter()
        .enumerate()
        .filter_map(|(index, request)| match request.work {
            Work::StartCall { now, .. } => Some((index, (request.key(), now))),
            Work::Record { .. } => None,
        })
        .collect();
    if starts.len() < 2 || !distinct(starts.iter().map(|(index, _)| &group[*index])) {
        return Ok(());
    }
    let (indices, jobs): (Vec<usize>, Vec<_>) = starts.into_iter().unzip();
    let started = super::postgres::start_calls_on(&mut **tx, &jobs).await?;
    for (index, first_call_at) in indices.into_iter().zip(started) {
        done[index] = Some(Done::Started(first_call_at));
    }
    Ok(())
}

/// The group's outcomes of calls, when there are several of distinct jobs:
/// the calls appended and the rows locked in one statement, the rows made
/// final in another, the other changes (rarer: a retry, a redelivered
/// success) one by one, each with the rules of `record_in_tx`. Outcomes
/// without a call are left for [`Request::run_in`].
async fn record_outcomes(
    tx: &mut Transaction<'_, Postgres>,
    group: &[Request],
    done: &mut [Option<Done>],
    events: bool,
    deferred: &mut Vec<DeferredEvent>,
) -> Result<(), StoreError> {
    let outcomes: Vec<(usize, Outcome<'_>)> = group
        .iter()
        .enumerate()
        .filter_map(|(index, request)| match &request.work {
            Work::Record {
                call: Some(call),
                update,
                ..
            } => Some((
                index,
                Outcome {
                    transaction_id: &request.transaction_id,
                    call,
                    values: RowValues::from(&**update),
                },
            )),
            _ => None,
        })
        .collect();
    if outcomes.len() < 2 || !distinct(outcomes.iter().map(|(index, _)| &group[*index])) {
        return Ok(());
    }
    let (indices, outcomes): (Vec<usize>, Vec<Outcome<'_>>) = outcomes.into_iter().unzip();
    let statuses = super::postgres::append_calls_and_lock(tx, &outcomes).await?;
    let mut finals = Vec::new();
    for ((index, outcome), status) in indices.into_iter().zip(outcomes).zip(statuses) {
        // A missing row (an outcome recorded without its call start) fails
        // the group: each request then runs on its own, which creates it.
        let current = status.ok_or_else(|| StoreError::Malformed {
            column: "transaction_id",
            detail: format!("no row for {}", outcome.transaction_id),
        })?;
        let id = outcome.transaction_id;
        let values = &outcome.values;
        match Settle::of(current, values) {
            Settle::CountAttempt => {
                <Postgres as Dialect>::count_attempt(tx, id, 1).await?;
                done[index] = Some(Done::Recorded((current, false)));
            }
            Settle::Update => {
                <Postgres as Dialect>::apply_update(tx, id, 1, values)
                    .await
                    .map_err(|e| update_error(e, values))?;
                done[index] = Some(Done::Recorded((values.status, false)));
            }
            Settle::Final => finals.push((index, outcome)),
        }
    }
    if finals.is_empty() {
        return Ok(());
    }
    let (indices, finals): (Vec<usize>, Vec<Outcome<'_>>) = finals.into_iter().unzip();
    let made_final = super::postgres::apply_final_updates(tx, &finals).await?;
    for ((index, outcome), event) in indices.into_iter().zip(&finals).zip(made_final) {
        let wrote =
            super::results::after_final_deferring(tx, event, events, Some(deferred)).await?;
        done[index] = Some(Done::Recorded((outcome.values.status, wrote)));
    }
    Ok(())
}

/// Whether no two requests are for the same transaction_id.
fn distinct<'a>(mut requests: impl Iterator<Item = &'a Request>) -> bool {
    let mut seen = std::collections::HashSet::new();
    requests.all(|request| seen.insert(request.transaction_id.as_str()))
}
