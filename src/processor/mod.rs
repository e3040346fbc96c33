//! One job, from message body to committed outcome: decode and validate, skip
//! if already final, wait for a rate-limit permit, call the gateway, decide
//! (`decide`), and commit the row and the ledger entry. The main flow of the
//! worker.
//!
//! The result is a [`Disposition`] telling the consumer what to do with the
//! delivery; every disposition that lets the message go (ack, retry copy,
//! dead letter) is returned only after the outcome is committed to the store.
//! This module never touches AMQP itself.

mod budget;
mod decide;
mod outcome;
mod reuse;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Span;

pub(crate) use self::decide::{CallClass, Next, RowChange, Settlement, StreakChange, decide};
#[cfg(test)]
use self::outcome::CallOutcome;
pub(crate) use self::outcome::JobOutcome;
use crate::control::Control;
use crate::job::{self, Job, RejectedJob};
use crate::pii::PiiKey;
use crate::rate_limit::{CallPermit, UpstreamLimiter};
use crate::retry::RetryPolicy;
use crate::spend::{Pass, SpendGate};
use crate::store::{CallRecord, ExistingJob, JobKey, JobStore, PiiMasked, RowUpdate, StoreError};
use crate::telemetry::metric;
use crate::upstream::{CallReport, RelationAnswer, UpstreamClient, UpstreamError};

/// What the consumer does with the delivery once the processor is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is committed (or was already): ack.
    Ack,
    /// The row says `retrying`: publish a copy to the delay tier for `delay`
    /// with these counters, wait for the confirm, then ack.
    Retry {
        delay: Duration,
        next_attempt: u32,
        throttled: u32,
    },
    /// The outcome (if any row) is committed: publish a copy to the dead queue
    /// with the reason, then ack.
    DeadLetter { reason: String },
    /// Not processed (paused, shutting down, database unreachable): give the
    /// message back to the broker for later.
    HandBack,
}

/// The retry counters a delivery carries in its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first call of the job.
    pub number: u32,
    /// How many earlier attempts were throttled (they do not count).
    pub throttled: u32,
}

/// What a [`Processor`] works with; the caller (`app`, or a test harness)
/// builds and owns the shared parts and hands clones in.
pub struct ProcessorParts {
    pub store: JobStore,
    pub client: Arc<UpstreamClient>,
    pub limiter: Arc<UpstreamLimiter>,
    pub policy: RetryPolicy,
    pub control: Arc<Control>,
    pub default_product_code: String,
    /// Fingerprints each job's business fields, so a transaction_id reused
    /// for another contact is refused before any call.
    pub pii_key: PiiKey,
    /// How long after a job's first call another call is still safely inside
    /// the upstream's transaction_id validity.
    pub safe_call_window: Duration,
}

pub struct Processor {
    store: JobStore,
    client: Arc<UpstreamClient>,
    limiter: Arc<UpstreamLimiter>,
    policy: RetryPolicy,
    control: Arc<Control>,
    default_product_code: String,
    pii_key: PiiKey,
    safe_call_window: Duration,
    /// Answer reuse: how old a paid answer may be and still be reused;
    /// None = off (see `reuse`).
    reuse_max_age: Option<chrono::TimeDelta>,
    /// The daily budget (`spend.daily_limit`); None when there is none.
    spend: Option<Arc<SpendGate>>,
}

/// What became of a delivery: the consumer's instruction, and the word the
/// span, the `job processed` line and the metric use for it.
struct Handled {
    disposition: Disposition,
    outcome: JobOutcome,
}

impl Handled {
    fn handed_back() -> Self {
        Self {
            disposition: Disposition::HandBack,
            outcome: JobOutcome::HandedBack,
        }
    }
}

/// A store operation did not complete: handle the delivery this way instead.
struct Instead(Handled);

/// How long to keep retrying a commit while the database is unreachable
/// before handing the delivery back.
const STORE_RETRY_BUDGET: Duration = Duration::from_secs(30);
const MAX_ERROR_MESSAGE_CHARS: usize = 1000;
/// The error code (row and dead-letter reason) of a job past its window.
const WINDOW_EXCEEDED: &str = "TRANSACTION_WINDOW_EXCEEDED";
const UNVERIFIED_STREAK_ADVICE: &str = "many answers in a row failed signature verification: \
     check upstream.alipay_public_key_path (the Alipay public key, not the app's) or, in \
     certificate mode, upstream.alipay_cert_path and upstream.alipay_root_cert_path \
     (`zhima-worker cert-sn` prints their SNs), and upstream.sign_type";

impl Processor {
    pub fn new(parts: ProcessorParts) -> Self {
        let ProcessorParts {
            store,
            client,
            limiter,
            policy,
            control,
            default_product_code,
            pii_key,
            safe_call_window,
        } = parts;
        Self {
            store,
            client,
            limiter,
            policy,
            control,
            default_product_code,
            pii_key,
            safe_call_window,
            reuse_max_age: None,
            spend: None,
        }
    }

    /// Enforces the daily budget: every call first takes its unit (see
    /// `crate::spend`).
    pub(crate) fn with_spend(mut self, gate: Arc<SpendGate>) -> Self {
        self.spend = Some(gate);
        self
    }

    /// Runs inside the consumer's `process_job` span, whose `transaction_id`
    /// and `outcome` fields it fills in.
    pub async fn process(&self, body: &[u8], attempt: Attempt) -> Disposition {
        self.process_with_outcome(body, attempt).await.0
    }

    /// [`Self::process`], also saying what became of the delivery, so that
    /// `run` can sum its jobs by outcome at exit without reading metrics.
    pub(crate) async fn process_with_outcome(
        &self,
        body: &[u8],
        attempt: Attempt,
    ) -> (Disposition, JobOutcome) {
        let job = match job::decode_job(body, &self.default_product_code) {
            Ok(job) => job,
            Err(rejected) => return (self.reject(rejected).await, JobOutcome::Invalid),
        };
        Span::current().record("transaction_id", job.query.transaction_id.as_str());
        let Handled {
            disposition,
            outcome,
        } = self.process_valid(&job, attempt).await;
        // The outcome is the span's field, so the line shows it once.
        Span::current().record("outcome", outcome.as_str());
        tracing::info!("job processed");
        (disposition, outcome)
    }

    async fn process_valid(&self, job: &Job, attempt: Attempt) -> Handled {
        let masked = mask(job, &self.pii_key);
        let fingerprint = self.pii_key.fingerprint(&job.query);
        let key = JobKey {
            transaction_id: job.query.transaction_id.as_str(),
            external_ref: job.external_ref.as_deref(),
            batch_id: job.batch_id.as_deref(),
            masked: &masked,
            fingerprint: &fingerprint,
        };
        // With reuse on, the question's keyed hash: looked up now, and
        // written with a paid answer (in its outcome's transaction) so later
        // jobs can reuse it.
        let question = self.question_to_index(job);
        // A reused answer costs nothing: before the budget gate.
        if let Some(handled) = self
            .try_reuse(job, &key, attempt, question.as_deref())
            .await
        {
            return handled;
        }
        // Before the row is touched, so that a job held at the daily limit
        // has no first call time and its window does not run while it waits.
        let pass = match self.spend_pass(&key, attempt).await {
            Ok(pass) => pass,
            Err(Instead(handled)) => return handled,
        };
        // The row is written before the permit is taken, so that nothing slow
        // stands between the permit and the request (the upstream counts
        // arrivals, and delays after the permit bunch them up).
        let first_call_at = match self.begin(&key).await {
            Ok(first_call_at) => first_call_at,
            Err(Instead(handled)) => {
                self.spend_unused(pass, &key).await;
                return handled;
            }
        };
        // The stored first call, possibly made by another replica, bounds how
        // long the job may keep calling under this transaction_id.
        if self.outlived_window(first_call_at) {
            self.spend_unused(pass, &key).await;
            return self.expire(&key).await;
        }
        self.call_and_settle(job, &key, attempt, pass, question)
            .await
    }

    /// Records the call's start and returns the stored first call time, or
    /// how to handle the delivery without a call. The common case (a new job,
    /// or a non-final one of the same contact) is one statement; only when it
    /// changes nothing (a final row, or one of another contact) is the row
    /// read and checked.
    async fn begin(&self, key: &JobKey<'_>) -> Result<DateTime<Utc>, Instead> {
        let started = self
            .persist("record the call's start", || {
                self.store.try_begin_call(key, Utc::now())
            })
            .await?;
        if let Some(first_call_at) = started {
            return Ok(first_call_at);
        }
        let existing = self
            .persist("look the job up", || self.store.find(key.transaction_id))
            .await?;
        if let Some(existing) = existing {
            self.join_new_batch(&existing, key).await?;
            if let Some(handled) = Self::settled_without_call(&existing, key) {
                return Err(Instead(handled));
            }
        }
        // The row changed between the two statements (another replica):
        // the full version, which settles every case.
        self.persist("record the call's start", || {
            self.store.begin_call(key, Utc::now())
        })
        .await
    }

    /// A final job delivered again under another batch (a producer
    /// re-enqueued a transaction_id that was done already) joins that batch,
    /// so the batch still completes and its consumer gets the result.
    async fn join_new_batch(
        &self,
        existing: &ExistingJob,
        key: &JobKey<'_>,
    ) -> Result<(), Instead> {
        let Some(batch_id) = key.batch_id else {
            return Ok(());
        };
        let joins = existing.status.is_final()
            && !existing.conflicts_with(key.fingerprint)
            && existing.batch_id.as_deref() != Some(batch_id);
        if !joins {
            return Ok(());
        }
        self.persist("move the final job into its new batch", || {
            self.store.join_batch(key.transaction_id, batch_id)
        })
        .await
    }

    /// A stored job that needs no call: a reused transaction_id, or a final
    /// row (a redelivery after a crash).
    fn settled_without_call(existing: &ExistingJob, key: &JobKey<'_>) -> Option<Handled> {
        if existing.conflicts_with(key.fingerprint) {
            return Some(refused(&StoreError::TransactionIdConflict {
                transaction_id: key.transaction_id.to_owned(),
            }));
        }
        if existing.status.is_final() {
            count_job(JobOutcome::Duplicate);
            return Some(Handled {
                disposition: Disposition::Ack,
                outcome: JobOutcome::Duplicate,
            });
        }
        None
    }

    async fn call_and_settle(
        &self,
        job: &Job,
        key: &JobKey<'_>,
        attempt: Attempt,
        pass: Pass,
        question: Option<String>,
    ) -> Handled {
        let Some(permit) = self.acquire_permit().await else {
            self.spend_unused(pass, key).await;
            count_job(JobOutcome::HandedBack);
            return Handled::handed_back();
        };
        let started_at = Utc::now();
        let report = self.client.query_relation(&job.query).await;
        // The call counts against the rate window until a second after this.
        drop(permit);
        self.spend_settle(pass, key, &report.outcome).await;
        self.settle(key, attempt, started_at, report, question)
            .await
    }

    /// Waits for a permit unless shutdown or a pause intervenes; `None` means
    /// hand the delivery back. A hold at the daily spend limit is no such
    /// pause: the job passed the budget gate and holds its unit.
    async fn acquire_permit(&self) -> Option<CallPermit<'_>> {
        if self.control.is_stopping() || self.control.is_fault_paused() {
            return None;
        }
        let permit = tokio::select! {
            permit = self.limiter.acquire() => permit,
            () = self.control.stopped() => return None,
            () = self.control.fault_paused() => return None,
        };
        metrics::histogram!(metric::RATE_LIMIT_WAIT_SECONDS).record(permit.waited().as_secs_f64());
        (!(self.control.is_stopping() || self.control.is_fault_paused())).then_some(permit)
    }

    fn outlived_window(&self, first_call_at: DateTime<Utc>) -> bool {
        is_outside_window(first_call_at, Utc::now(), self.safe_call_window)
    }

    /// The job's first call is too old to call again under the same
    /// transaction_id without risking TRANSACTION_ID_EXPIRED.
    async fn expire(&self, key: &JobKey<'_>) -> Handled {
        let reason = format!(
            "{WINDOW_EXCEEDED}: the first upstream call is older than {} s: \
             calling again risks TRANSACTION_ID_EXPIRED; re-submit with a new transaction_id \
             after checking the bill",
            self.safe_call_window.as_secs()
        );
        let update = RowUpdate::Failed {
            error_code: WINDOW_EXCEEDED.into(),
            error_message: reason.clone(),
            response_body: None,
        };
        match self.commit(key, None, &update).await {
            Ok(()) => Handled {
                disposition: Disposition::DeadLetter { reason },
                outcome: JobOutcome::Failed,
            },
            Err(Instead(handled)) => handled,
        }
    }

    /// Decides what the call means, commits it, then applies the rest.
    async fn settle(
        &self,
        key: &JobKey<'_>,
        attempt: Attempt,
        started_at: DateTime<Utc>,
        report: CallReport<RelationAnswer>,
        question_hmac: Option<String>,
    ) -> Handled {
        let settlement = decide(
            CallClass::of(&report),
            attempt,
            &self.policy,
            &mut rand::rng(),
        );
        let call = CallRecord {
            attempt: attempt.number,
            started_at,
            duration_ms: u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            http_status: report.http_status,
            code: report.code.clone(),
            sub_code: report.sub_code.clone(),
            outcome: settlement.ledger.as_str().to_owned(),
        };
        let update = row_update(settlement.row, &report, question_hmac);
        let pause_reason = self.apply(&settlement, &report);
        if let Err(Instead(handled)) = self.commit(key, Some(&call), &update).await {
            return handled;
        }
        if let Some(reason) = pause_reason {
            self.pause(reason);
        }
        log_settlement(&settlement, &report);
        Handled {
            disposition: disposition(settlement.next, &report),
            outcome: settlement.job_outcome(),
        }
    }

    /// Every effect of a settlement outside the store, in one place: the
    /// unverified-answer streak, the shared rate and the call's metrics, now
    /// (a 40005 slows the other tasks down before this one's commit); and the
    /// reason to pause consumption, if any, which the caller acts on only
    /// once the outcome is committed (a delivery handed back because the
    /// database failed is decided again on redelivery).
    fn apply(
        &self,
        settlement: &Settlement,
        report: &CallReport<RelationAnswer>,
    ) -> Option<String> {
        let streak_tripped = match settlement.streak {
            StreakChange::Reset => {
                self.control.note_verified();
                false
            }
            StreakChange::Extend => self.control.note_unverified(),
            StreakChange::Keep => false,
        };
        if settlement.slow_down {
            self.limiter.note_throttled();
        }
        record_call_metrics(report, settlement.job_outcome());
        match &report.outcome {
            Err(error) if settlement.pause => Some(configuration_advice(error)),
            _ if streak_tripped => Some(UNVERIFIED_STREAK_ADVICE.to_owned()),
            _ => None,
        }
    }

    fn pause(&self, reason: String) {
        if self.control.pause(reason.clone()) {
            metrics::gauge!(metric::CONSUMPTION_PAUSED).set(1.0);
            tracing::error!(
                error.message = %reason,
                "configuration fault: consumption paused, prefetched jobs handed back; \
                 probing the gateway until it is fixed"
            );
        }
    }

    /// Commits the outcome (row and ledger entry in one transaction).
    async fn commit(
        &self,
        key: &JobKey<'_>,
        call: Option<&CallRecord>,
        update: &RowUpdate,
    ) -> Result<(), Instead> {
        self.persist("store the outcome", || self.store.record(key, call, update))
            .await
            .map(|_| ())
    }

    /// Runs one store operation, retrying with backoff while the database is
    /// unreachable (up to `STORE_RETRY_BUDGET`, or until shutdown), so an
    /// outage holds deliveries instead of spinning them through the broker.
    /// [`Instead`] says how to handle the delivery when the operation did not
    /// complete: hand back when the database stays down, dead-letter (with
    /// the database's own reason) when it refuses the data, which no retry
    /// would change.
    async fn persist<T, F, Fut>(&self, what: &'static str, mut operation: F) -> Result<T, Instead>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + STORE_RETRY_BUDGET;
        let mut pause = Duration::from_millis(200);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_unavailable() => {
                    if tokio::time::Instant::now() + pause > deadline || self.control.is_stopping()
                    {
                        return Err(Instead(store_unavailable(&error)));
                    }
                    tracing::warn!(error.message = %error, operation = what,
                        "database unavailable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {},
                        () = self.control.stopped() => {},
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(error @ StoreError::TransactionIdConflict { .. }) => {
                    return Err(Instead(refused(&error)));
                }
                Err(error) => return Err(Instead(store_refused(what, &error))),
            }
        }
    }

    /// An invalid message: never sent upstream. It goes to the dead queue with
    /// the reason, after a `failed` row when it has a usable transaction_id.
    async fn reject(&self, rejected: RejectedJob) -> Disposition {
        let reason = rejected.error.to_string();
        if let Some(transaction_id) = &rejected.transaction_id {
            Span::current().record("transaction_id", transaction_id.as_str());
            let stored = self
                .persist("record the rejected job", || {
                    self.store.record_rejected(
                        transaction_id.as_str(),
                        rejected.external_ref.as_deref(),
                        rejected.batch_id.as_deref(),
                        rejected.error.code(),
                        &reason,
                    )
                })
                .await;
            if let Err(Instead(handled)) = stored {
                return handled.disposition;
            }
        }
        count_job(JobOutcome::Invalid);
        tracing::warn!(error.message = %reason, "invalid job message dead-lettered");
        Span::current().record("outcome", JobOutcome::Invalid.as_str());
        Disposition::DeadLetter { reason }
    }
}

/// Whether a job first called at `first_call_at` is, at `now`, past the
/// window in which calling again under its transaction_id is safe.
fn is_outside_window(first_call_at: DateTime<Utc>, now: DateTime<Utc>, window: Duration) -> bool {
    let age = now.signed_duration_since(first_call_at);
    age.to_std().is_ok_and(|age| age > window)
}

fn mask(job: &Job, key: &PiiKey) -> PiiMasked {
    PiiMasked {
        cert_no_hmac: Some(key.cert_no_index(&job.query.cert_no)),
        relation_phone_hmac: Some(key.phone_index(&job.query.relation_phone)),
        cert_no: job::mask_cert_no(&job.query.cert_no),
        name: job::mask_name(&job.query.name),
        relation_phone: job::mask_phone(&job.query.relation_phone),
        relation_name: job::mask_name(&job.query.relation_name),
    }
}

fn failed(error: &UpstreamError, response_body: Option<String>) -> RowUpdate {
    RowUpdate::Failed {
        error_code: error.error_code(),
        error_message: error_message(error),
        response_body,
    }
}

fn error_message(error: &UpstreamError) -> String {
    error
        .to_string()
        .chars()
        .take(MAX_ERROR_MESSAGE_CHARS)
        .collect()
}

/// The raw answer is kept as evidence when it is a verified gateway answer.
/// Not for a rejected signature: the gateway echoes our string-to-sign, PII
/// included.
fn evidence(report: &CallReport<RelationAnswer>, error: &UpstreamError) -> Option<String> {
    match error {
        UpstreamError::Gateway(fault) if fault.verified => report.raw_body.clone(),
        _ => None,
    }
}

fn configuration_advice(error: &UpstreamError) -> String {
    let advice = match error {
        UpstreamError::SignatureRejected(_) => {
            "check upstream.private_key_path and upstream.app_id against the app's public key"
        }
        UpstreamError::Gateway(fault) => match fault.normalized_code().as_str() {
            "INVALID_APP_ID" | "MISSING_APP_ID" => "check upstream.app_id",
            "NO_VALID_ARRANGEMENT" => "the app has no valid contract for this product: sign it",
            "INVALID_APP_AUTH_TOKEN" => "check upstream.app_auth_token",
            _ => "check the upstream section of the configuration",
        },
        UpstreamError::Http { .. } => "check upstream.gateway_url",
        _ => "check the upstream section of the configuration",
    };
    format!("{error}: {advice}")
}

/// A job whose transaction_id belongs to another job's business fields: never
/// sent, never written (the stored job stays as it is), dead-lettered so the
/// producer sees it and re-sends the contact under a new transaction_id.
fn refused(conflict: &StoreError) -> Handled {
    count_job(JobOutcome::Conflict);
    tracing::warn!(error.message = %conflict, "transaction_id reused for another job; dead-lettered");
    Handled {
        disposition: Disposition::DeadLetter {
            reason: conflict.to_string(),
        },
        outcome: JobOutcome::Conflict,
    }
}

fn store_unavailable(error: &StoreError) -> Handled {
    count_job(JobOutcome::HandedBack);
    tracing::warn!(error.message = %error, error.cause_chain = ?error,
        "database unavailable; handing the delivery back");
    Handled::handed_back()
}

/// The store refused the data itself (a constraint, a value too long): no
/// retry would change that, so the delivery is dead-lettered with the
/// database's own reason.
fn store_refused(what: &str, error: &StoreError) -> Handled {
    tracing::error!(error.message = %error, error.cause_chain = ?error,
        operation = what, "the store refused the job; dead-lettering it");
    let reason = match error.database_reason() {
        Some(said) => format!("could not {what}: {error}: {said}"),
        None => format!("could not {what}: {error}"),
    };
    Handled {
        disposition: Disposition::DeadLetter { reason },
        outcome: JobOutcome::Failed,
    }
}

/// The row for the call's settlement. [`decide`] gives a succeeded row only
/// to a successful call, so a failed call is never stored as one.
fn row_update(
    change: RowChange,
    report: &CallReport<RelationAnswer>,
    question_hmac: Option<String>,
) -> RowUpdate {
    match (&report.outcome, change) {
        (Ok(answer), _) => RowUpdate::Succeeded {
            biz_no: answer.biz_no.clone(),
            relation_rank: answer.relation_rank.clone(),
            recency: answer.recency().map(str::to_owned),
            relation_score: answer.relation_score,
            response_body: report.raw_body.clone().unwrap_or_default(),
            question_hmac,
        },
        (Err(error), RowChange::Retrying { with_evidence }) => RowUpdate::Retrying {
            error_code: error.error_code(),
            error_message: error_message(error),
            response_body: if with_evidence {
                evidence(report, error)
            } else {
                None
            },
        },
        (Err(error), RowChange::Failed | RowChange::Succeeded) => {
            failed(error, evidence(report, error))
        }
    }
}

fn disposition(next: Next, report: &CallReport<RelationAnswer>) -> Disposition {
    match next {
        Next::Ack => Disposition::Ack,
        Next::Retry {
            delay,
            next_attempt,
            throttled,
        } => Disposition::Retry {
            delay,
            next_attempt,
            throttled,
        },
        Next::GiveUp { attempts } => Disposition::DeadLetter {
            reason: match &report.outcome {
                Err(error) => format!(
                    "gave up after {attempts} attempts; last error {}: {}",
                    error.error_code(),
                    error_message(error)
                ),
                Ok(_) => format!("gave up after {attempts} attempts"),
            },
        },
        Next::HandBack => Disposition::HandBack,
    }
}

/// One WARN line for a call that did not settle the job: throttled, retried
/// or out of attempts, with the code and sub_code of `zhima_upstream_calls_total`.
fn log_settlement(settlement: &Settlement, report: &CallReport<RelationAnswer>) {
    let Err(error) = &report.outcome else {
        return;
    };
    let (code, sub_code) = call_labels(report);
    // The text the row stores: PII-free, like every stored error_message.
    let message = error_message(error);
    match settlement.next {
        Next::Retry {
            delay,
            next_attempt,
            ..
        } if settlement.slow_down => tracing::warn!(%code, %sub_code,
            error.message = %message, delay_ms = delay.as_millis() as u64, next_attempt,
            "upstream throttled us: this replica's rate halved, job retried"),
        Next::Retry {
            delay,
            next_attempt,
            ..
        } => tracing::warn!(%code, %sub_code, error.message = %message,
            delay_ms = delay.as_millis() as u64, next_attempt, "job retried"),
        Next::GiveUp { attempts } => tracing::warn!(%code, %sub_code,
            error.message = %message, attempts, "attempts exhausted: job dead-lettered"),
        Next::Ack | Next::HandBack => {}
    }
}

fn count_job(outcome: JobOutcome) {
    metrics::counter!(metric::JOBS_TOTAL, metric::OUTCOME => outcome.as_str()).increment(1);
}

/// One sample per gateway call, and the job's count by the outcome the call
/// was settled with.
fn record_call_metrics(report: &CallReport<RelationAnswer>, outcome: JobOutcome) {
    let (code, sub_code) = call_labels(report);
    metrics::counter!(metric::UPSTREAM_CALLS_TOTAL, metric::CODE => code, metric::SUB_CODE => sub_code)
        .increment(1);
    metrics::histogram!(metric::UPSTREAM_LATENCY_SECONDS).record(report.elapsed.as_secs_f64());
    count_job(outcome);
}

/// The `code` and `sub_code` labels of a call. An answer that failed
/// verification is counted under [`metric::CODE_UNVERIFIED`] with the code it
/// claimed as `sub_code`: an unverified `10000` is no success.
fn call_labels(report: &CallReport<RelationAnswer>) -> (String, String) {
    if let Err(UpstreamError::Unverified { code, .. }) = &report.outcome {
        let claimed = code.clone().or_else(|| report.code.clone());
        return (metric::CODE_UNVERIFIED.into(), claimed.unwrap_or_default());
    }
    let code = report
        .code
        .clone()
        .unwrap_or_else(|| match report.http_status {
            Some(status) => format!("HTTP_{status}"),
            None => "NONE".into(),
        });
    (code, report.sub_code.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests;
