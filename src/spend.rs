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
//! (billed); an answer the upstream certainly did not bill gives it back; an
//! uncertain one (timeout, HTTP 5xx, an unreadable answer) keeps it, so the
//! limit is never exceeded even when the upstream billed a call whose answer
//! was lost. A replica killed between reserving and settling leaves its unit
//! `held`: it counts as used for that day (never more than the limit) until
//! the redelivered job settles it; the next day starts from zero.
//!
//! At the limit the delivery is handed back and consumption is held
//! (`Control::hold_for_budget`): the session hands back what it prefetched,
//! and `app` re-checks the shared count every `spend.recheck_interval_s`, on
//! `SIGHUP` (which re-reads `spend.daily_limit`) and at the next statement
//! day. This module decides what a call cost and whether to call; it runs no
//! SQL itself and never touches the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, TimeDelta, Utc};
use tokio::sync::Notify;

use crate::config::SpendSettings;
use crate::control::Control;
use crate::store::{JobStore, Reservation, StoreError};
use crate::telemetry::metric;
use crate::upstream::UpstreamError;

/// Whether the upstream billed a call, judged from what came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    /// A successful answer: billed (or an unbilled replay of a billed one).
    Billed,
    /// Certainly not billed: a business error, a rejected signature, a
    /// request never sent or never connected.
    Unbilled,
    /// The request may have been processed and billed, its answer lost.
    Uncertain,
}

impl Cost {
    pub(crate) fn of<A>(outcome: &Result<A, UpstreamError>) -> Self {
        let Err(error) = outcome else {
            return Self::Billed;
        };
        match error {
            UpstreamError::Gateway(_)
            | UpstreamError::SignatureRejected(_)
            | UpstreamError::Signing(_)
            | UpstreamError::Encode(_) => Self::Unbilled,
            UpstreamError::Connect(source) if source.is_connect() => Self::Unbilled,
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
    /// The day's budget is used up: do not call, hand the delivery back.
    Refused,
}

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
}

impl SpendGate {
    pub(crate) fn new(
        store: JobStore,
        control: Arc<Control>,
        settings: &SpendSettings,
        utc_offset_hours: i8,
        keep_days: u32,
    ) -> Self {
        metrics::gauge!(metric::SPEND_DAILY_LIMIT).set(settings.daily_limit as f64);
        metrics::gauge!(metric::SPEND_HELD).set(0.0);
        Self {
            store,
            control,
            limit: AtomicU64::new(settings.daily_limit),
            warn_ratio: settings.warn_ratio,
            utc_offset_hours,
            warned_on: Mutex::new(None),
            keep_days,
            forgotten_on: Mutex::new(None),
            limit_changed: Notify::new(),
        }
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

    /// Settles the pass with what the call cost.
    pub(crate) async fn settle(&self, pass: Pass, transaction_id: &str, cost: Cost) {
        let settled = match (pass, cost) {
            (Pass::Reserved | Pass::AlreadyHeld, Cost::Billed) => {
                self.store.mark_spend_billed(transaction_id).await
            }
            (Pass::Reserved, Cost::Unbilled) => self.give_back(transaction_id).await,
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
        if used < i64::try_from(limit).unwrap_or(i64::MAX) {
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
    fn only_a_success_is_billed_and_only_a_sure_refusal_is_unbilled() {
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
            Cost::Unbilled
        );
    }
}
