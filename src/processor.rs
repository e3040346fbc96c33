//! One job, from message body to committed outcome: decode and validate, skip
//! if already final, wait for a rate-limit permit, call the gateway, classify,
//! and commit the row and the ledger entry. The main flow of the worker.
//!
//! The result is a [`Disposition`] telling the consumer what to do with the
//! delivery; every disposition that lets the message go (ack, retry copy,
//! dead letter) is returned only after the outcome is committed to the store.
//! This module never touches AMQP itself.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::Span;

use crate::control::Control;
use crate::job::{self, Job, RejectedJob};
use crate::pii::PiiKey;
use crate::rate_limit::{CallPermit, UpstreamLimiter};
use crate::retry::{Decision, FailureKind, RetryPolicy};
use crate::store::{CallRecord, JobKey, JobStore, PiiMasked, RowUpdate, StoreError};
use crate::upstream::{CallReport, ErrorClass, RelationAnswer, UpstreamClient, UpstreamError};

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
}

/// How long to keep retrying a commit while the database is unreachable
/// before handing the delivery back.
const STORE_RETRY_BUDGET: Duration = Duration::from_secs(30);
const MAX_ERROR_MESSAGE_CHARS: usize = 1000;

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
        }
    }

    /// Runs inside the consumer's `process_job` span, whose `transaction_id`
    /// and `outcome` fields it fills in.
    pub async fn process(&self, body: &[u8], attempt: Attempt) -> Disposition {
        let job = match job::decode_job(body, &self.default_product_code) {
            Ok(job) => job,
            Err(rejected) => return self.reject(rejected).await,
        };
        Span::current().record("transaction_id", job.query.transaction_id.as_str());
        let disposition = self.process_valid(&job, attempt).await;
        let outcome = describe(&disposition);
        Span::current().record("outcome", outcome);
        tracing::info!(outcome, "job processed");
        disposition
    }

    async fn process_valid(&self, job: &Job, attempt: Attempt) -> Disposition {
        let masked = mask(job);
        let fingerprint = self.pii_key.fingerprint(&job.query);
        let key = JobKey {
            transaction_id: job.query.transaction_id.as_str(),
            external_ref: job.external_ref.as_deref(),
            masked: &masked,
            fingerprint: &fingerprint,
        };
        let existing = match self
            .persist("look the job up", || self.store.find(key.transaction_id))
            .await
        {
            Ok(existing) => existing,
            Err(disposition) => return disposition,
        };
        if let Some(existing) = &existing {
            if existing.conflicts_with(&fingerprint) {
                return refused(&StoreError::TransactionIdConflict {
                    transaction_id: key.transaction_id.to_owned(),
                });
            }
            if existing.status.is_final() {
                metrics::counter!("zhima_jobs_total", "outcome" => "duplicate").increment(1);
                return Disposition::Ack;
            }
            if let Some(first) = existing.first_call_at
                && self.outlived_window(first)
            {
                return self.expire(&key).await;
            }
        }
        // The row is written before the permit is taken, so that nothing slow
        // stands between the permit and the request (the upstream counts
        // arrivals, and delays after the permit bunch them up).
        let began = self
            .persist("record the call's start", || {
                self.store.begin_call(&key, Utc::now())
            })
            .await;
        if let Err(disposition) = began {
            return disposition;
        }
        let Some(permit) = self.acquire_permit().await else {
            return Disposition::HandBack;
        };
        let started_at = Utc::now();
        let report = self.client.query_relation(&job.query).await;
        // The call counts against the rate window until a second after this.
        drop(permit);
        self.settle(&key, attempt, started_at, report).await
    }

    /// Waits for a permit unless shutdown or a pause intervenes; `None` means
    /// hand the delivery back.
    async fn acquire_permit(&self) -> Option<CallPermit<'_>> {
        if self.control.is_stopping() || self.control.is_paused() {
            return None;
        }
        let permit = tokio::select! {
            permit = self.limiter.acquire() => permit,
            () = self.control.stopped() => return None,
            () = self.control.paused() => return None,
        };
        metrics::histogram!("zhima_rate_limit_wait_seconds").record(permit.waited().as_secs_f64());
        (!(self.control.is_stopping() || self.control.is_paused())).then_some(permit)
    }

    fn outlived_window(&self, first_call_at: chrono::DateTime<Utc>) -> bool {
        let age = Utc::now().signed_duration_since(first_call_at);
        age.to_std().is_ok_and(|age| age > self.safe_call_window)
    }

    /// The job's first call is too old to call again under the same
    /// transaction_id without risking TRANSACTION_ID_EXPIRED.
    async fn expire(&self, key: &JobKey<'_>) -> Disposition {
        let reason = format!(
            "TRANSACTION_WINDOW_EXCEEDED: the first upstream call is older than {} s: \
             calling again risks TRANSACTION_ID_EXPIRED; re-submit with a new transaction_id \
             after checking the bill",
            self.safe_call_window.as_secs()
        );
        let update = RowUpdate::Failed {
            error_code: "TRANSACTION_WINDOW_EXCEEDED".into(),
            error_message: reason.clone(),
            response_body: None,
        };
        match self.commit(key, None, &update).await {
            Ok(()) => Disposition::DeadLetter { reason },
            Err(disposition) => disposition,
        }
    }

    async fn settle(
        &self,
        key: &JobKey<'_>,
        attempt: Attempt,
        started_at: chrono::DateTime<Utc>,
        report: CallReport<RelationAnswer>,
    ) -> Disposition {
        let verdict = self.judge(&report, attempt);
        record_metrics(&report, &verdict);
        let call = CallRecord {
            attempt: attempt.number,
            started_at,
            duration_ms: u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            http_status: report.http_status,
            code: report.code.clone(),
            sub_code: report.sub_code.clone(),
            outcome: verdict.ledger_outcome.to_owned(),
        };
        if let Err(disposition) = self.commit(key, Some(&call), &verdict.update).await {
            return disposition;
        }
        if let Some(reason) = verdict.pause_reason {
            self.pause(reason);
        }
        verdict.disposition
    }

    fn judge(&self, report: &CallReport<RelationAnswer>, attempt: Attempt) -> Verdict {
        match &report.outcome {
            Ok(answer) => {
                self.control.note_verified();
                Verdict::succeeded(answer, report.raw_body.clone().unwrap_or_default())
            }
            Err(error) => {
                let class = error.class();
                if class == ErrorClass::Unverified {
                    if self.control.note_unverified() {
                        let mut verdict = self.judge_retry(report, error, attempt, class);
                        verdict.pause_reason = Some(
                            "many answers in a row failed signature verification: check \
                             upstream.alipay_public_key_path (the Alipay public key, not the app's) \
                             and upstream.sign_type"
                                .into(),
                        );
                        return verdict;
                    }
                } else if report.code.is_some() {
                    self.control.note_verified();
                }
                self.judge_failure(report, error, attempt, class)
            }
        }
    }

    fn judge_failure(
        &self,
        report: &CallReport<RelationAnswer>,
        error: &UpstreamError,
        attempt: Attempt,
        class: ErrorClass,
    ) -> Verdict {
        if class == ErrorClass::Throttled {
            self.limiter.note_throttled();
        }
        match class {
            ErrorClass::Permanent => Verdict {
                update: failed(error, evidence(report, error)),
                disposition: Disposition::Ack,
                ledger_outcome: "permanent",
                pause_reason: None,
            },
            ErrorClass::Configuration => Verdict {
                update: RowUpdate::Retrying {
                    error_code: error.error_code(),
                    error_message: error_message(error),
                    response_body: None,
                },
                disposition: Disposition::HandBack,
                ledger_outcome: "configuration",
                pause_reason: Some(configuration_advice(error)),
            },
            ErrorClass::Retryable | ErrorClass::Throttled | ErrorClass::Unverified => {
                self.judge_retry(report, error, attempt, class)
            }
        }
    }

    fn judge_retry(
        &self,
        report: &CallReport<RelationAnswer>,
        error: &UpstreamError,
        attempt: Attempt,
        class: ErrorClass,
    ) -> Verdict {
        let (kind, ledger_outcome) = match class {
            ErrorClass::Throttled => (FailureKind::Throttled, "throttled"),
            ErrorClass::Unverified => (FailureKind::Transient, "unverified"),
            _ => (FailureKind::Transient, "retryable"),
        };
        let throttled = attempt.throttled + u32::from(kind == FailureKind::Throttled);
        let counted = attempt.number.saturating_sub(throttled);
        let mut rng = rand::rng();
        match self.policy.decide(counted, kind, &mut rng) {
            Decision::RetryAfter(delay) => Verdict {
                update: RowUpdate::Retrying {
                    error_code: error.error_code(),
                    error_message: error_message(error),
                    response_body: evidence(report, error),
                },
                disposition: Disposition::Retry {
                    delay,
                    next_attempt: attempt.number + 1,
                    throttled,
                },
                ledger_outcome,
                pause_reason: None,
            },
            Decision::GiveUp => Verdict {
                update: failed(error, evidence(report, error)),
                disposition: Disposition::DeadLetter {
                    reason: format!(
                        "gave up after {counted} attempts; last error {}: {}",
                        error.error_code(),
                        error_message(error)
                    ),
                },
                ledger_outcome,
                pause_reason: None,
            },
        }
    }

    fn pause(&self, reason: String) {
        if self.control.pause(reason.clone()) {
            metrics::gauge!("zhima_consumption_paused").set(1.0);
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
    ) -> Result<(), Disposition> {
        self.persist("store the outcome", || self.store.record(key, call, update))
            .await
            .map(|_| ())
    }

    /// Runs one store operation, retrying with backoff while the database is
    /// unreachable (up to `STORE_RETRY_BUDGET`, or until shutdown), so an
    /// outage holds deliveries instead of spinning them through the broker.
    /// `Err` carries the disposition to use instead: hand back when the
    /// database stays down, dead-letter (with the database's own reason) when
    /// it refuses the data, which no retry would change.
    async fn persist<T, F, Fut>(
        &self,
        what: &'static str,
        mut operation: F,
    ) -> Result<T, Disposition>
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
                        return Err(store_unavailable(&error));
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
                    return Err(refused(&error));
                }
                Err(error) => {
                    tracing::error!(error.message = %error, error.cause_chain = ?error,
                        operation = what, "the store refused the job; dead-lettering it");
                    let reason = match error.database_reason() {
                        Some(said) => format!("could not {what}: {error}: {said}"),
                        None => format!("could not {what}: {error}"),
                    };
                    return Err(Disposition::DeadLetter { reason });
                }
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
                        rejected.error.code(),
                        &reason,
                    )
                })
                .await;
            if let Err(disposition) = stored {
                return disposition;
            }
        }
        metrics::counter!("zhima_jobs_total", "outcome" => "invalid").increment(1);
        tracing::warn!(error.message = %reason, "invalid job message dead-lettered");
        Span::current().record("outcome", "invalid");
        Disposition::DeadLetter { reason }
    }
}

struct Verdict {
    update: RowUpdate,
    disposition: Disposition,
    ledger_outcome: &'static str,
    pause_reason: Option<String>,
}

impl Verdict {
    fn succeeded(answer: &RelationAnswer, raw_body: String) -> Self {
        Self {
            update: RowUpdate::Succeeded {
                biz_no: answer.biz_no.clone(),
                relation_rank: answer.relation_rank.clone(),
                recency: answer.recency().map(str::to_owned),
                relation_score: answer.relation_score,
                response_body: raw_body,
            },
            disposition: Disposition::Ack,
            ledger_outcome: "succeeded",
            pause_reason: None,
        }
    }
}

fn mask(job: &Job) -> PiiMasked {
    PiiMasked {
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
fn refused(conflict: &StoreError) -> Disposition {
    metrics::counter!("zhima_jobs_total", "outcome" => "conflict").increment(1);
    tracing::warn!(error.message = %conflict, "transaction_id reused for another job; dead-lettered");
    Disposition::DeadLetter {
        reason: conflict.to_string(),
    }
}

fn store_unavailable(error: &StoreError) -> Disposition {
    metrics::counter!("zhima_jobs_total", "outcome" => "handed_back").increment(1);
    tracing::warn!(error.message = %error, error.cause_chain = ?error,
        "database unavailable; handing the delivery back");
    Disposition::HandBack
}

fn record_metrics(report: &CallReport<RelationAnswer>, verdict: &Verdict) {
    let code = report
        .code
        .clone()
        .unwrap_or_else(|| match report.http_status {
            Some(status) => format!("HTTP_{status}"),
            None => "NONE".into(),
        });
    let sub_code = report.sub_code.clone().unwrap_or_default();
    metrics::counter!("zhima_upstream_calls_total", "code" => code, "sub_code" => sub_code)
        .increment(1);
    metrics::histogram!("zhima_upstream_latency_seconds").record(report.elapsed.as_secs_f64());
    let outcome = match &verdict.disposition {
        Disposition::Ack if verdict.ledger_outcome == "succeeded" => "succeeded",
        Disposition::Ack | Disposition::DeadLetter { .. } => "failed",
        Disposition::Retry { .. } => "retried",
        Disposition::HandBack => "handed_back",
    };
    metrics::counter!("zhima_jobs_total", "outcome" => outcome).increment(1);
}

fn describe(disposition: &Disposition) -> &'static str {
    match disposition {
        Disposition::Ack => "stored",
        Disposition::Retry { .. } => "retry_scheduled",
        Disposition::DeadLetter { .. } => "dead_lettered",
        Disposition::HandBack => "handed_back",
    }
}
