//! The verdict on one statement row that the in-memory index could not
//! settle (its biz_no is not among our rows of the day, or its
//! transaction_id differs), from exact lookups: our row holding that biz_no,
//! our row for that transaction_id, and how often our ledger called with it.
//!
//! Pure: the caller does the lookups. The `detail` texts tell the operator
//! what to do next, including whether `reconcile --repair` can recover the
//! answer the upstream billed us for.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::report::{Category, Entry};
use crate::store::{JobStatus, StoredCheck};

/// A statement row awaiting its lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) line: u64,
    pub(crate) biz_no: String,
    pub(crate) transaction_id: String,
    pub(crate) billed_at: DateTime<Utc>,
}

/// What the lookups found for one [`Pending`] row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found<'a> {
    pub(crate) by_biz_no: Option<&'a StoredCheck>,
    pub(crate) by_transaction_id: Option<&'a StoredCheck>,
    pub(crate) ledger_calls: i64,
    /// The transaction_id of an `erased_checks` tombstone holding the biz_no:
    /// the row was erased on request (`zhima-worker erase`) after billing.
    pub(crate) erased: Option<&'a str>,
}

/// The context the verdicts need: now, and how long after billing the
/// upstream still replays a transaction_id's answer unbilled (validity minus
/// our safety margin).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: DateTime<Utc>,
    pub(crate) replay_window: TimeDelta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Ours and right, but completed on another day than billed.
    MatchedOtherDay,
    /// Ours, billed, then erased on request: only its tombstone is left
    /// (biz_no and transaction_id), so it is counted, not a discrepancy.
    Erased,
    Discrepancy {
        category: Category,
        entry: Entry,
        /// A `failed` row whose answer is still replayable: `--repair` can
        /// re-publish its dead-lettered message.
        is_repairable: bool,
    },
}

pub(crate) fn judge(row: &Pending, found: Found<'_>, clock: Clock) -> Verdict {
    if let Some(stored) = found.by_biz_no {
        return judge_known_biz_no(row, stored);
    }
    if found.by_transaction_id.is_none() && found.erased == Some(row.transaction_id.as_str()) {
        return Verdict::Erased;
    }
    match found.by_transaction_id {
        Some(stored) if stored.reused_from.is_some() => judge_reused(row, stored),
        Some(stored) if stored.status == JobStatus::Succeeded => {
            let ours = stored.biz_no.as_deref().unwrap_or("none");
            discrepancy(
                Category::DuplicateBizNo,
                row,
                format!(
                    "line {}: one transaction_id with two biz_nos: we stored biz_no {ours} \
                     for it, the upstream billed it again under this one",
                    row.line
                ),
            )
        }
        Some(stored) => judge_unfinished(row, stored, clock),
        None => judge_missing(row, found.ledger_calls, clock),
    }
}

fn judge_known_biz_no(row: &Pending, stored: &StoredCheck) -> Verdict {
    if stored.transaction_id != row.transaction_id {
        return discrepancy(
            Category::TransactionIdMismatch,
            row,
            format!(
                "line {}: we stored this biz_no for transaction_id {}",
                row.line, stored.transaction_id
            ),
        );
    }
    if stored.status == JobStatus::Succeeded {
        return Verdict::MatchedOtherDay;
    }
    discrepancy(
        Category::BilledNotStored,
        row,
        format!(
            "line {}: our row holds this biz_no but is {}",
            row.line, stored.status
        ),
    )
}

/// A statement row billing a transaction_id that we answered by answer reuse:
/// we never sent it upstream (a reused row is written only for a
/// transaction_id that had no row, so no earlier call of ours exists either),
/// so the upstream billed a query that is not ours under that id.
fn judge_reused(row: &Pending, stored: &StoredCheck) -> Verdict {
    let payer = stored.reused_from.as_deref().unwrap_or_default();
    discrepancy(
        Category::BilledNotStored,
        row,
        format!(
            "line {}: billed, but we answered this transaction_id from transaction_id              {payer}'s paid answer (answer reuse) and never sent it upstream: dispute it              with the upstream",
            row.line
        ),
    )
}

/// Our row exists but has no answer: retrying, pending or failed.
fn judge_unfinished(row: &Pending, stored: &StoredCheck, clock: Clock) -> Verdict {
    let deadline = row.billed_at + clock.replay_window;
    let error = stored.error_code.as_deref().unwrap_or("no error code");
    let (detail, is_repairable) = match stored.status {
        JobStatus::Failed if deadline > clock.now => (
            format!(
                "line {}: billed, but our row is failed ({error}); the upstream replays the \
                 answer unbilled for the same transaction_id until {}: `reconcile --repair` \
                 re-publishes the job from the dead queue",
                row.line,
                rfc3339(deadline)
            ),
            true,
        ),
        JobStatus::Failed => (
            format!(
                "line {}: billed, but our row is failed ({error}) and the transaction_id's \
                 replay window ended at {}: the answer cannot be recovered unbilled",
                row.line,
                rfc3339(deadline)
            ),
            false,
        ),
        status => (
            format!(
                "line {}: billed, our row is still {status}: the worker has not finished \
                 it; reconcile again once the queues are empty",
                row.line
            ),
            false,
        ),
    };
    Verdict::Discrepancy {
        category: Category::BilledNotStored,
        entry: entry(row, detail),
        is_repairable,
    }
}

/// No row at all: the ledger tells a deleted row from a call we never made.
fn judge_missing(row: &Pending, ledger_calls: i64, clock: Clock) -> Verdict {
    let deadline = row.billed_at + clock.replay_window;
    let detail = if ledger_calls > 0 {
        let resubmit = if deadline > clock.now {
            format!(
                "re-submit it from the producer with the same transaction_id before {}",
                rfc3339(deadline)
            )
        } else {
            "its replay window has ended, so the answer cannot be recovered unbilled".to_owned()
        };
        format!(
            "line {}: no stored row, but our ledger has {ledger_calls} upstream call(s) for \
             this transaction_id (row deleted?); not recoverable here (we keep no \
             unmasked job): {resubmit}",
            row.line
        )
    } else {
        format!(
            "line {}: no stored row and no call in our ledger for this transaction_id: \
             not a query of ours; dispute it with the upstream",
            row.line
        )
    };
    discrepancy(Category::BilledNotStored, row, detail)
}

fn discrepancy(category: Category, row: &Pending, detail: String) -> Verdict {
    Verdict::Discrepancy {
        category,
        entry: entry(row, detail),
        is_repairable: false,
    }
}

fn entry(row: &Pending, detail: String) -> Entry {
    Entry {
        biz_no: row.biz_no.clone(),
        transaction_id: row.transaction_id.clone(),
        detail,
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn pending() -> Pending {
        Pending {
            line: 9,
            biz_no: "ZM9".into(),
            transaction_id: "t9".into(),
            billed_at: DateTime::parse_from_rfc3339("2024-05-21T00:00:00Z")
                .unwrap()
                .to_utc(),
        }
    }

    fn stored(transaction_id: &str, biz_no: Option<&str>, status: JobStatus) -> StoredCheck {
        StoredCheck {
            transaction_id: transaction_id.into(),
            biz_no: biz_no.map(str::to_owned),
            status,
            error_code: Some("HTTP_502".into()),
            completed_at: None,
            reused_from: None,
        }
    }

    fn clock(hours_after_billing: i64) -> Clock {
        Clock {
            now: pending().billed_at + TimeDelta::hours(hours_after_billing),
            replay_window: TimeDelta::hours(23),
        }
    }

    fn none() -> Found<'static> {
        Found {
            by_biz_no: None,
            by_transaction_id: None,
            ledger_calls: 0,
            erased: None,
        }
    }

    fn category(verdict: &Verdict) -> (Category, bool) {
        match verdict {
            Verdict::Discrepancy {
                category,
                is_repairable,
                ..
            } => (*category, *is_repairable),
            Verdict::MatchedOtherDay => panic!("matched"),
            Verdict::Erased => panic!("erased"),
        }
    }

    #[test]
    fn a_biz_no_stored_under_another_transaction_id_is_a_mismatch() {
        let row = stored("t1", Some("ZM9"), JobStatus::Succeeded);
        let found = Found {
            by_biz_no: Some(&row),
            ..none()
        };
        let verdict = judge(&pending(), found, clock(1));
        assert_eq!(category(&verdict), (Category::TransactionIdMismatch, false));
    }

    #[test]
    fn a_biz_no_completed_on_another_day_is_matched() {
        let row = stored("t9", Some("ZM9"), JobStatus::Succeeded);
        let found = Found {
            by_biz_no: Some(&row),
            ..none()
        };
        assert_eq!(judge(&pending(), found, clock(1)), Verdict::MatchedOtherDay);
    }

    #[test]
    fn a_transaction_id_stored_with_another_biz_no_is_a_duplicate() {
        let row = stored("t9", Some("ZM1"), JobStatus::Succeeded);
        let found = Found {
            by_transaction_id: Some(&row),
            ..none()
        };
        assert_eq!(
            category(&judge(&pending(), found, clock(1))),
            (Category::DuplicateBizNo, false)
        );
    }

    #[test]
    fn a_failed_row_is_repairable_only_inside_the_replay_window() {
        let row = stored("t9", None, JobStatus::Failed);
        let found = Found {
            by_transaction_id: Some(&row),
            ..none()
        };
        assert_eq!(
            category(&judge(&pending(), found, clock(1))),
            (Category::BilledNotStored, true)
        );
        assert_eq!(
            category(&judge(&pending(), found, clock(30))),
            (Category::BilledNotStored, false)
        );
        let retrying = stored("t9", None, JobStatus::Retrying);
        let found = Found {
            by_transaction_id: Some(&retrying),
            ..none()
        };
        assert_eq!(
            category(&judge(&pending(), found, clock(1))),
            (Category::BilledNotStored, false)
        );
    }

    #[test]
    fn a_missing_row_is_told_apart_by_the_ledger() {
        let Verdict::Discrepancy { entry, .. } = judge(
            &pending(),
            Found {
                ledger_calls: 2,
                erased: None,
                ..none()
            },
            clock(1),
        ) else {
            panic!("discrepancy");
        };
        assert!(
            entry.detail.contains("not recoverable here"),
            "{}",
            entry.detail
        );
        assert!(
            entry.detail.contains("same transaction_id"),
            "{}",
            entry.detail
        );
        let Verdict::Discrepancy { entry, .. } = judge(&pending(), none(), clock(1)) else {
            panic!("discrepancy");
        };
        assert!(
            entry.detail.contains("no call in our ledger"),
            "{}",
            entry.detail
        );
    }

    #[test]
    fn a_billed_row_erased_on_request_is_counted_erased_not_billed_not_stored() {
        let row = pending();
        let found = Found {
            erased: Some(row.transaction_id.as_str()),
            ledger_calls: 0,
            ..none()
        };
        assert_eq!(judge(&row, found, clock(1)), Verdict::Erased);
        // A tombstone under another transaction_id settles nothing.
        let other = Found {
            erased: Some("someone_else"),
            ..none()
        };
        assert_ne!(judge(&row, other, clock(1)), Verdict::Erased);
    }

    #[test]
    fn a_billed_transaction_id_we_answered_by_reuse_is_billed_not_stored_naming_the_payer() {
        let mut row = stored("t9", None, JobStatus::Succeeded);
        row.reused_from = Some("t1".into());
        let found = Found {
            by_transaction_id: Some(&row),
            ..none()
        };
        let verdict = judge(&pending(), found, clock(1));
        assert_eq!(category(&verdict), (Category::BilledNotStored, false));
        let Verdict::Discrepancy { entry, .. } = verdict else {
            panic!("a discrepancy");
        };
        assert!(entry.detail.contains("answer reuse"), "{}", entry.detail);
        assert!(entry.detail.contains("t1"), "{}", entry.detail);
    }
}
