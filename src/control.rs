//! Process-wide switches every job task consults: shutting down, paused on a
//! configuration fault or held at the daily spend limit (`crate::spend`), and
//! the run of unverifiable answers that reveals a wrong Alipay public key.
//!
//! Tasks only read these before an upstream call (a paused or stopping worker
//! hands deliveries back instead of calling); the app's consume loop reacts to
//! the changes. No I/O.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::watch;

pub struct Control {
    stopping: watch::Sender<bool>,
    paused: watch::Sender<Option<String>>,
    unverified_in_row: AtomicU32,
    max_unverified_in_row: u32,
    /// The pause is a hold at the daily spend limit, not a configuration
    /// fault: it ends by re-checking the budget, never by probing the gateway.
    budget_hold: AtomicBool,
}

impl Control {
    pub fn new(max_unverified_in_row: u32) -> Self {
        Self {
            stopping: watch::Sender::new(false),
            paused: watch::Sender::new(None),
            unverified_in_row: AtomicU32::new(0),
            max_unverified_in_row: max_unverified_in_row.max(1),
            budget_hold: AtomicBool::new(false),
        }
    }

    pub(crate) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn stopped(&self) {
        let mut receiver = self.stopping.subscribe();
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }

    /// Pauses consumption; returns true for the call that paused it (which
    /// logs), false when already paused.
    pub(crate) fn pause(&self, reason: String) -> bool {
        self.paused.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        })
    }

    pub(crate) fn resume(&self) {
        self.unverified_in_row.store(0, Ordering::Relaxed);
        self.budget_hold.store(false, Ordering::Relaxed);
        self.paused.send_replace(None);
    }

    pub(crate) fn pause_reason(&self) -> Option<String> {
        self.paused.borrow().clone()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.borrow().is_some()
    }

    /// Resolves once consumption is paused.
    pub(crate) async fn paused(&self) {
        let mut receiver = self.paused.subscribe();
        let _ = receiver.wait_for(Option::is_some).await;
    }

    /// Pauses consumption at the daily spend limit; true for the call that
    /// paused it. A pause already in force (a configuration fault, or the
    /// hold itself) is left as it is.
    pub(crate) fn hold_for_budget(&self, reason: String) -> bool {
        self.paused.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            self.budget_hold.store(true, Ordering::Relaxed);
            *current = Some(reason);
            true
        })
    }

    /// Whether the pause in force is a hold at the daily spend limit.
    pub(crate) fn is_budget_hold(&self) -> bool {
        self.is_paused() && self.budget_hold.load(Ordering::Relaxed)
    }

    /// Whether consumption is paused on a configuration fault (not a budget
    /// hold): a job past the budget gate holds its unit and may still call
    /// during a hold, never during a fault.
    pub(crate) fn is_fault_paused(&self) -> bool {
        self.is_paused() && !self.budget_hold.load(Ordering::Relaxed)
    }

    /// Resolves once consumption is paused on a configuration fault.
    pub(crate) async fn fault_paused(&self) {
        let mut receiver = self.paused.subscribe();
        let _ = receiver
            .wait_for(|reason| reason.is_some() && !self.budget_hold.load(Ordering::Relaxed))
            .await;
    }

    /// Replaces the reason of a budget hold (the count seen at the latest
    /// re-check, for `/readyz`); any other pause is left as it is.
    pub(crate) fn update_budget_hold(&self, reason: String) {
        self.paused.send_if_modified(|current| {
            if current.is_none() || !self.budget_hold.load(Ordering::Relaxed) {
                return false;
            }
            *current = Some(reason);
            false
        });
    }

    /// Counts an answer whose signature was missing or wrong; true once the
    /// run reaches the configured limit.
    pub(crate) fn note_unverified(&self) -> bool {
        let run = self.unverified_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        run >= self.max_unverified_in_row
    }

    /// A verified answer ends the run.
    pub(crate) fn note_verified(&self) {
        self.unverified_in_row.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn only_the_first_pause_reports_the_transition() {
        let control = Control::new(3);
        assert!(control.pause("bad key".into()));
        assert!(!control.pause("again".into()));
        assert_eq!(control.pause_reason().as_deref(), Some("bad key"));
        control.resume();
        assert!(!control.is_paused());
    }

    #[test]
    fn a_budget_hold_is_told_apart_from_a_configuration_pause() {
        let control = Control::new(3);
        assert!(control.hold_for_budget("limit".into()));
        assert!(control.is_budget_hold());
        assert!(!control.hold_for_budget("again".into()));
        control.update_budget_hold("limit, 100 used".into());
        assert_eq!(control.pause_reason().as_deref(), Some("limit, 100 used"));
        control.resume();
        assert!(!control.is_budget_hold() && !control.is_paused());

        assert!(control.pause("bad key".into()));
        assert!(!control.hold_for_budget("limit".into()));
        assert!(!control.is_budget_hold());
        control.update_budget_hold("limit".into());
        assert_eq!(control.pause_reason().as_deref(), Some("bad key"));
    }

    #[test]
    fn a_verified_answer_resets_the_unverified_run() {
        let control = Control::new(3);
        assert!(!control.note_unverified());
        assert!(!control.note_unverified());
        control.note_verified();
        assert!(!control.note_unverified());
        assert!(!control.note_unverified());
        assert!(control.note_unverified());
    }

    #[tokio::test]
    async fn stopped_resolves_after_stop() {
        let control = std::sync::Arc::new(Control::new(1));
        let waiter = tokio::spawn({
            let control = control.clone();
            async move { control.stopped().await }
        });
        control.stop();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
