//! The daily budget (`spend.daily_limit`): at most that many billed queries
//! per statement day (midnight to midnight in `reconcile.utc_offset_hours`,
//! the day of the reconciliation statement), counted in the database and so
//! shared by every replica.
//!
//! Before each call the processor takes a [`Pass`]: one unit of today's
//! budget reserved atomically in the database (`store::spend`), or the unit
//! its transaction_id already holds from an earlier attempt (the upstream
//! replays a transaction_id unbilled, so a retry costs no second unit). After
//! the call the unit is settled by the outcome's [`Cost`]: a success keeps it
//! (billed); an answer the upstream certainly did not bill gives a unit
//! taken for this call back; an uncertain one (timeout, HTTP 5xx, an
//! unreadable answer) keeps it, so the limit is never exceeded even when the
//! upstream billed a call whose answer was lost. A unit kept that way goes
//! to the retry, and is given back only on proof that the transaction_id was
//! never billed (a verified business refusal, which the upstream never gives
//! in place of a recorded answer). A replica killed between reserving and
//! settling leaves its unit `held`: it counts as used for that day (never
//! more than the limit) until the redelivered job settles it; the next day
//! starts from zero.
//!
//! At the limit the delivery is handed back and consumption is held
//! (`Control::hold_for_budget`): the session hands back what it prefetched,
//! and `app` re-checks the shared count every `spend.recheck_interval_s`, on
//! `SIGHUP` (which re-reads `spend.daily_limit`) and at the next statement
//! day. While units are held by jobs waiting for a retry, the limit defers
//! jobs through a delay queue instead ([`Pass::Deferred`]), so that those
//! retries are reached and settle their units. This module decides what a call cost and whether to call; it runs no
//! SQL itself and never touches the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, TimeDelta, Utc};
use tokio::sync::Notify;

use crate::config::Settings;
use crate::control::Control;
use crate::store::{JobStore, Reservation, StoreError};
use crate::telemetry::metric;
use crate::upstream::UpstreamError;

/// Whether the upstream billed a call, judged from what came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    /// A successful answer: billed (or an unbilled replay of a billed one).
    Billed,
    /// This call was certainly not billed (a rejected signature or request,
    /// a refused connection, a request never sent, a SYSTEM_ERROR), but that
    /// says nothing about an earlier call under the same transaction_id.
    NotBilled,
    /// A verified business answer (40004) that the upstream gives only to a
    /// transaction_id it holds no billed answer for (it would replay that
    /// answer instead): no call under this transaction_id was billed.
    NeverBilled,
    /// The request may have been processed and billed, its answer lost.
    Uncertain,
}

/// 40004 sub_codes that prove nothing about earlier calls: a retryable
/// failure, and the two that mean the upstream holds a record of the
/// transaction_id (which may have been billed).
const NOT_PROOF_OF_NO_BILL: [&str; 3] = [
    "SYSTEM_ERROR",
    "TRANSACTION_ID_EXPIRED",
    "TRANSACTION_ID_REPEAT",
];

impl Cost {
    pub(crate) fn of<A>(outcome: &Result<A, UpstreamError>) -> Self {
        let Err(error) = outcome else {
            return Self::Billed;
        };
        match error {
            UpstreamError::Gateway(fault)
                if fault.verified
                    && fault.code == "40004"
                    && !NOT_PROOF_OF_NO_BILL.contains(&fault.normalized_code().as_str()) =>
            {
                Self::NeverBilled
            }
            UpstreamError::Gateway(_)
            | UpstreamError::SignatureRejected(_)
            | UpstreamError::Signing(_)
            | UpstreamError::Encode(_) => Self::NotBilled,
            UpstreamError::Connect(source) if source.is_connect() => Self::NotBilled,
            UpstreamError::Timeout
            | UpstreamError::Connect(_)
            | UpstreamError::Http { .. }
            | UpstreamError::Redirect { .. }
            | UpstreamError::TooLarge { .. }
            | UpstreamError::Malformed { .. }
            | UpstreamError::Unverified { .. }
            | UpstreamError::CertificateFetch { .. }
            | UpstreamError::CertificateUntrusted { .. } => Self::Uncertain,
        }
    }
}

/// What the gate said about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// No limit configured: nothing reserved, nothing to settle.
    Unlimited,
    /// A new unit was reserved for this call.
    Reserved,
    /// The transaction_id holds a unit from an earlier attempt.
    AlreadyHeld,
    /// The day's budget is used up: do not call, hand the delivery back
    /// (consumption is held).
    Refused,
    /// The day's budget is used up, but some of its units are held by jobs
    /// waiting for a retry after an uncertain outcome, whose copies must be
    /// consumed to settle them: do not call, and send this job to the back
    /// of the queue through a delay queue ([`SpendGate::defer_delay`])
    /// instead of holding consumption.
    Deferred,
}

/// The least time a unit held for a job in progress keeps the replicas
/// from holding consumption (see [`Pass::Deferred`]); at least twice the
/// longest retry delay.
const MIN_PENDING_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A statement day: its date in the statement's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatementDay {
    pub(crate) date: NaiveDate,
    offset: FixedOffset,
}

impl StatementDay {
    /// The day `at` falls on in the zone `utc_offset_hours` from UTC
    /// (validated by the configuration to -12..=14).
    pub(crate) fn of(at: DateTime<Utc>, utc_offset_hours: i8) -> Self {
        let offset = FixedOffset::east_opt(i32::from(utc_offset_hours) * 3600).unwrap_or(Utc.fix());
        Self {
            date: at.with_timezone(&offset).date_naive(),
            offset,
        }
    }

    /// `YYYY-MM-DD`, the key of the budget tables.
    pub(crate) fn key(&self) -> String {
        self.date.format("%Y-%m-%d").to_string()
    }

    /// When the next statement day begins, in UTC.
    pub(crate) fn next_start(&self) -> DateTime<Utc> {
        let midnight = self.date.and_time(chrono::NaiveTime::MIN);
        (midnight - TimeDelta::seconds(i64::from(self.offset.local_minus_utc()))).and_utc()
            + TimeDelta::days(1)
    }

    fn zone(&self) -> String {
        format!("UTC{:+}", self.offset.local_minus_utc() / 3600)
    }
}

/// The budget shared by the job tasks of one replica.
pub(crate) struct SpendGate {
    store: JobStore,
    control: Arc<Control>,
    limit: AtomicU64,
    warn_ratio: f64,
    utc_offset_hours: i8,
    /// The day a near-limit WARN was logged for (one per day per replica).
    warned_on: Mutex<Option<NaiveDate>>,
    /// Budget rows of days older than this many are deleted
    /// (`retention.row_days`, like the rows and the ledger).
    keep_days: u32,
    /// The day this replica last deleted old budget rows on.
    forgotten_on: Mutex<Option<NaiveDate>>,
    /// Woken when `SIGHUP` changed the limit.
    limit_changed: Notify,
    /// How far back a held unit counts as pending (see [`Pass::Deferred`]).
    pending_window: Duration,
    /// How long a deferred job waits before it is delivered again.
    defer_delay: Duration,
}

impl SpendGate {
    pub(crate) fn new(store: JobStore, control: Arc<Control>, settings: &Settings) -> Self {
        let spend = &settings.spend;
        metrics::gauge!(metric::SPEND_DAILY_LIMIT).set(spend.daily_limit as f64);
        metrics::gauge!(metric::SPEND_HELD).set(0.0);
        let longest_retry = Duration::from_millis(settings.retry.max_delay_ms);
        Self {
            store,
            control,
            limit: AtomicU64::new(spend.daily_limit),
            warn_ratio: spend.warn_ratio,
            utc_offset_hours: settings.reconcile.utc_offset_hours,
            warned_on: Mutex::new(None),
            keep_days: settings.retention.row_days,
            forgotten_on: Mutex::new(None),
            limit_changed: Notify::new(),
            pending_window: MIN_PENDING_WINDOW.max(longest_retry.saturating_mul(2)),
            defer_delay: spend.recheck_interval(),
        }
    }

    /// Units taken before this no longer count as pending.
    fn pending_since(&self) -> DateTime<Utc> {
        TimeDelta::from_std(self.pending_window)
            .ok()
            .and_then(|window| Utc::now().checked_sub_signed(window))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// How long a [`Pass::Deferred`] job waits in a delay queue.
    pub(crate) fn defer_delay(&self) -> Duration {
        self.defer_delay
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    fn today(&self) -> StatementDay {
        StatementDay::of(Utc::now(), self.utc_offset_hours)
    }

    /// Reserves the call's unit (see the module doc). A refusal holds
    /// consumption.
    pub(crate) async fn pass(&self, transaction_id: &str) -> Result<Pass, StoreError> {
        let limit = self.limit();
        if limit == 0 {
            return Ok(Pass::Unlimited);
        }
        let day = self.today();
        let limit_db = i64::try_from(limit).unwrap_or(i64::MAX);
        match self
            .store
            .reserve_spend(transaction_id, &day.key(), limit_db)
            .await?
        {
            Reservation::Taken { used } => {
                self.note_used(day, used, limit);
                self.forget_old_days(day).await;
                Ok(Pass::Reserved)
            }
            Reservation::AlreadyHeld => Ok(Pass::AlreadyHeld),
            Reservation::Refused { used } => {
                if self
                    .store
                    .pending_spend_units(&day.key(), self.pending_since())
                    .await?
                    > 0
                {
                    return Ok(Pass::Deferred);
                }
                self.hold(day, used, limit);
                Ok(Pass::Refused)
            }
        }
    }

    /// Once a statement day per replica: deletes the budget rows of days
    /// past the retention. Best effort (a failure is retried the next day).
    async fn forget_old_days(&self, day: StatementDay) {
        {
            let Ok(mut forgotten_on) = self.forgotten_on.lock() else {
                return;
            };
            if *forgotten_on == Some(day.date) {
                return;
            }
            *forgotten_on = Some(day.date);
        }
        let Some(cutoff) = day
            .date
            .checked_sub_signed(TimeDelta::days(i64::from(self.keep_days)))
        else {
            return;
        };
        let cutoff = cutoff.format("%Y-%m-%d").to_string();
        if let Err(error) = self.store.forget_spend_before(&cutoff).await {
            tracing::warn!(error.message = %error, "could not delete old spend days");
        }
    }

    /// Counts a job left waiting in the queue at the limit (once a day per
    /// transaction_id, for `spend`). Best effort: the count is a report.
    pub(crate) async fn note_refused(&self, transaction_id: &str) {
        metrics::counter!(metric::SPEND_REFUSED_TOTAL).increment(1);
        let day = self.today().key();
        if let Err(error) = self.store.note_spend_refusal(&day, transaction_id).await {
            tracing::warn!(error.message = %error, "could not count a job refused for budget");
        }
    }

    /// Settles the pass with what the call cost. A unit held from an
    /// earlier attempt whose outcome was uncertain is given back only on
    /// proof that no call under the transaction_id was billed.
    pub(crate) async fn settle(&self, pass: Pass, transaction_id: &str, cost: Cost) {
        let settled = match (pass, cost) {
            (Pass::Reserved | Pass::AlreadyHeld, Cost::Billed) => {
                self.store.mark_spend_billed(transaction_id).await
            }
            (Pass::Reserved, Cost::NotBilled | Cost::NeverBilled)
            | (Pass::AlreadyHeld, Cost::NeverBilled) => self.give_back(transaction_id).await,
            _ => Ok(()),
        };
        if let Err(error) = settled {
            tracing::warn!(error.message = %error,
                "could not settle the call's spend; its unit stays counted as used");
        }
    }

    /// The pass was not used (the job needed no call, or shutdown or a pause
    /// came first): a unit reserved for it goes back.
    pub(crate) async fn unused(&self, pass: Pass, transaction_id: &str) {
        if pass != Pass::Reserved {
            return;
        }
        if let Err(error) = self.give_back(transaction_id).await {
            tracing::warn!(error.message = %error,
                "could not give an unused spend unit back; it stays counted as used");
        }
    }

    async fn give_back(&self, transaction_id: &str) -> Result<(), StoreError> {
        self.store.release_spend(transaction_id).await.map(|_| ())
    }

    fn note_used(&self, day: StatementDay, used: i64, limit: u64) {
        metrics::gauge!(metric::SPEND_BILLED_TODAY).set(used as f64);
        metrics::gauge!(metric::SPEND_DAILY_LIMIT).set(limit as f64);
        if !is_near_limit(used, limit, self.warn_ratio) {
            return;
        }
        let Ok(mut warned_on) = self.warned_on.lock() else {
            return;
        };
        if *warned_on == Some(day.date) {
            return;
        }
        *warned_on = Some(day.date);
        tracing::warn!(used, daily_limit = limit, day = %day.key(),
            warn_ratio = self.warn_ratio,
            "daily spend is near spend.daily_limit: calling stops at the limit");
    }

    fn hold(&self, day: StatementDay, used: i64, limit: u64) {
        metrics::gauge!(metric::SPEND_BILLED_TODAY).set(used as f64);
        let reason = hold_reason(day, used, limit);
        if self.control.hold_for_budget(reason.clone()) {
            metrics::gauge!(metric::SPEND_HELD).set(1.0);
            tracing::warn!(reason = %reason,
                "daily spend limit reached: consumption held, jobs wait in the queue");
        }
    }

    /// Re-reads today's count: `true` once calling may resume (a unit came
    /// back, the day changed, the limit was raised or removed); otherwise
    /// refreshes the hold's reason.
    pub(crate) async fn may_resume(&self) -> Result<bool, StoreError> {
        let limit = self.limit();
        if limit == 0 {
            return Ok(true);
        }
        let day = self.today();
        let used = self.store.spend_used(&day.key()).await?;
        metrics::gauge!(metric::SPEND_BILLED_TODAY).set(used as f64);
        // A unit held by a job in progress (its call's outcome turned out
        // uncertain after the hold began) needs its retry to run: resume,
        // and the refused jobs are deferred instead until it settles.
        let is_free = used < i64::try_from(limit).unwrap_or(i64::MAX)
            || self
                .store
                .pending_spend_units(&day.key(), self.pending_since())
                .await?
                > 0;
        if is_free {
            metrics::gauge!(metric::SPEND_HELD).set(0.0);
            return Ok(true);
        }
        self.control
            .update_budget_hold(hold_reason(day, used, limit));
        Ok(false)
    }

    /// Resolves when `SIGHUP` changed the limit, or at the next statement day.
    pub(crate) async fn changed(&self) {
        let until_next_day = (self.today().next_start() - Utc::now())
            .to_std()
            .unwrap_or_default();
        tokio::select! {
            () = self.limit_changed.notified() => {},
            () = tokio::time::sleep(until_next_day) => {},
        }
    }

    /// A new `spend.daily_limit` (SIGHUP).
    pub(crate) fn set_limit(&self, limit: u64) {
        let before = self.limit.swap(limit, Ordering::Relaxed);
        metrics::gauge!(metric::SPEND_DAILY_LIMIT).set(limit as f64);
        if before != limit {
            tracing::info!(before, after = limit, "SIGHUP: spend.daily_limit changed");
            self.limit_changed.notify_waiters();
        }
    }
}

/// Whether `used` units of `limit` reach the warning share.
pub(crate) fn is_near_limit(used: i64, limit: u64, warn_ratio: f64) -> bool {
    limit > 0 && used as f64 >= warn_ratio * limit as f64
}

/// `/readyz`'s and the log's words for a hold.
pub(crate) fn hold_reason(day: StatementDay, used: i64, limit: u64) -> String {
    format!(
        "daily spend limit reached: {used} of {limit} billed queries (spend.daily_limit) \
         used on statement day {} ({}); calling resumes at {} (the next statement day) \
         or when spend.daily_limit is raised (SIGHUP or restart)",
        day.key(),
        day.zone(),
        day.next_start().format("%Y-%m-%dT%H:%M:%SZ"),
    )
}

/// Re-reads `spend.daily_limit` on every `SIGHUP` (the same `--config` file
/// and environment as at start-up); an unusable configuration keeps the
/// limit in force. Runs until the process exits.
pub(crate) fn spawn_limit_reload(gate: Arc<SpendGate>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match crate::config::reload() {
                Ok(settings) => gate.set_limit(settings.spend.daily_limit),
                Err(error) => tracing::error!(error.message = %error,
                    "SIGHUP: the configuration is invalid; spend.daily_limit stays {}",
                    gate.limit()),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::upstream::GatewayFault;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_statement_day_turns_at_midnight_utc_plus_8() {
        let before = StatementDay::of(at("2026-12-01T15:59:59.999Z"), 8);
        let after = StatementDay::of(at("2026-12-01T16:00:00Z"), 8);
        assert_eq!(before.key(), "2026-12-01");
        assert_eq!(after.key(), "2026-12-02");
        assert_eq!(before.next_start(), at("2026-12-01T16:00:00Z"));
        assert_eq!(after.next_start(), at("2026-12-02T16:00:00Z"));
        assert_eq!(
            StatementDay::of(at("2026-12-01T23:30:00Z"), 0).key(),
            "2026-12-01"
        );
        assert_eq!(before.zone(), "UTC+8");
    }

    #[test]
    fn the_warning_share_is_inclusive() {
        assert!(!is_near_limit(79, 100, 0.8));
        assert!(is_near_limit(80, 100, 0.8));
        assert!(is_near_limit(1, 1, 1.0));
        assert!(!is_near_limit(0, 1, 1.0));
        assert!(!is_near_limit(5, 0, 0.8));
    }

    #[test]
    fn the_hold_reason_says_limit_used_day_and_when_it_resumes() {
        let day = StatementDay::of(at("2026-12-01T10:00:00Z"), 8);
        let reason = hold_reason(day, 100, 100);
        assert!(reason.contains("100 of 100"), "{reason}");
        assert!(reason.contains("2026-12-01 (UTC+8)"), "{reason}");
        assert!(
            reason.contains("resumes at 2026-12-01T16:00:00Z"),
            "{reason}"
        );
        assert!(reason.contains("spend.daily_limit"), "{reason}");
    }

    #[test]
    fn only_a_success_is_billed_and_a_lost_answer_is_uncertain() {
        let ok: Result<(), UpstreamError> = Ok(());
        assert_eq!(Cost::of(&ok), Cost::Billed);
        for error in [
            UpstreamError::Timeout,
            UpstreamError::Http { status: 502 },
            UpstreamError::Malformed {
                reason: "cut".into(),
            },
            UpstreamError::Unverified {
                reason: "bad".into(),
                code: Some("10000".into()),
            },
        ] {
            assert_eq!(Cost::of::<()>(&Err(error)), Cost::Uncertain);
        }
        let encode = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(
            Cost::of::<()>(&Err(UpstreamError::Encode(encode))),
            Cost::NotBilled
        );
    }

    fn business(code: &str, sub_code: &str, verified: bool) -> Result<(), UpstreamError> {
        Err(UpstreamError::Gateway(Box::new(GatewayFault {
            code: code.into(),
            msg: "Business Failed".into(),
            sub_code: Some(sub_code.into()),
            sub_msg: None,
            verified,
        })))
    }

    #[test]
    fn only_a_verified_business_refusal_proves_no_call_was_billed() {
        assert_eq!(
            Cost::of(&business("40004", "API_PRODUCT_NOT_MATCH", true)),
            Cost::NeverBilled
        );
        assert_eq!(
            Cost::of(&business("40004", "ZMCREDIT.INVALID_PARAMETER", true)),
            Cost::NeverBilled
        );
        for (code, sub_code, verified) in [
            ("40004", "API_PRODUCT_NOT_MATCH", false),
            ("40004", "SYSTEM_ERROR", true),
            ("40004", "TRANSACTION_ID_EXPIRED", true),
            ("40004", "ZMCREDIT.TRANSACTION_ID_REPEAT", true),
            ("20000", "isp.unknow-error", true),
            ("40002", "isv.invalid-parameter", true),
            ("40005", "isv.app-call-limited", true),
        ] {
            assert_eq!(
                Cost::of(&business(code, sub_code, verified)),
                Cost::NotBilled,
                "{code} {sub_code} {verified}"
            );
        }
    }
}
