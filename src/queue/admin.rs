//! The operator command that moves queued messages: `requeue-dead` (dead
//! letters back to the main queue, all of them or, for `reconcile --repair`,
//! only chosen transaction_ids). `status` is in `queue::status`.
//!
//! `requeue-dead` never loses a message: a dead copy is removed only after its
//! replacement is confirmed by the broker, and a message that is still
//! invalid or not selected stays in the dead queue. Neither runs SQL itself;
//! rows are changed through [`JobStore`].

use std::collections::HashSet;

use lapin::types::FieldTable;

use super::dead::{self, Mover, QueuedMessage, Verdict, Visitor};
use super::{ATTEMPT_HEADER, ERROR_HEADER, Publisher, QueueError, THROTTLED_HEADER, Topology};
use crate::config::Settings;
use crate::store::{JobStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RequeueError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The row could not be reset, so the dead copy was handed back untouched.
    #[error("resetting the job's row failed; the dead message was left in place")]
    Store(#[from] StoreError),
}

/// A dead message that is still not a valid job; it stays in the dead queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StillInvalid {
    /// The message's `message_id` (a transaction_id, never PII), if any.
    pub(crate) message_id: Option<String>,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequeueReport {
    /// The transaction_ids moved back to the main queue, in the order moved.
    pub(crate) requeued: Vec<String>,
    /// `--dry-run`: the transaction_ids that would have moved.
    pub(crate) would_requeue: Vec<String>,
    pub(crate) invalid: Vec<StillInvalid>,
}

/// Which valid dead jobs a `requeue-dead` pass moves; the others are handed
/// back to the dead queue untouched, like still-invalid messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every valid job, at most `limit` of them.
    All { limit: Option<u64> },
    /// Only these transaction_ids, each at most once (a second dead copy of
    /// the same job stays dead); the pass ends once all of them are moved.
    Only(HashSet<String>),
}

impl Selection {
    /// The connection's role in `rabbitmqctl list_connections`.
    fn role(&self) -> &'static str {
        match self {
            Self::All { .. } => "requeue-dead",
            Self::Only(_) => "reconcile-repair",
        }
    }

    fn is_selected(&self, transaction_id: &str) -> bool {
        match self {
            Self::All { .. } => true,
            Self::Only(wanted) => wanted.contains(transaction_id),
        }
    }

    fn mark_requeued(&mut self, transaction_id: &str) {
        if let Self::Only(wanted) = self {
            wanted.remove(transaction_id);
        }
    }

    fn is_done(&self, requeued: usize) -> bool {
        match self {
            Self::All { limit } => {
                limit.is_some_and(|limit| u64::try_from(requeued).is_ok_and(|n| n >= limit))
            }
            Self::Only(wanted) => wanted.is_empty(),
        }
    }
}

/// Headers a requeued job must not carry: the worker's retry bookkeeping
/// (a requeued job starts a fresh attempt count), the broker's death
/// records (which would otherwise grow with each round trip) and the quorum
/// queue's delivery count (every scan of the dead queue adds one).
fn is_stale_header(name: &str) -> bool {
    matches!(
        name,
        ATTEMPT_HEADER | THROTTLED_HEADER | ERROR_HEADER | "x-death" | "x-delivery-count"
    ) || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

pub(super) fn fresh_headers(headers: Option<&FieldTable>) -> FieldTable {
    let mut fresh = FieldTable::default();
    for (name, value) in headers.map(FieldTable::inner).into_iter().flatten() {
        if !is_stale_header(name.as_str()) {
            fresh.insert(name.clone(), value.clone());
        }
    }
    fresh
}

/// Narrows a `requeue-dead` pass beyond its [`Selection`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequeueFilter {
    /// Only jobs whose dead-letter reason (`x-zhima-error`) contains this
    /// text, compared case-insensitively.
    pub(crate) reason: Option<String>,
    /// Report what would move and move nothing.
    pub(crate) dry_run: bool,
}

/// Moves the selected valid jobs from the dead queue back to the main queue,
/// looking at each message present at the start only once.
///
/// Per message: reset the row to `retrying`, publish a copy with fresh headers
/// and wait for its confirm, then ack the dead copy. Still-invalid and
/// unselected messages are held unacknowledged until the scan ends (so
/// `basic.get` cannot hand the same one back) and then returned to the dead
/// queue (see [`super::dead`]).
pub(crate) async fn requeue_dead(
    settings: &Settings,
    store: &JobStore,
    selection: Selection,
) -> Result<RequeueReport, RequeueError> {
    requeue_dead_filtered(settings, store, selection, RequeueFilter::default()).await
}

/// [`requeue_dead`] with a reason filter and a dry run (`requeue-dead
/// --reason`, `--dry-run`).
pub(crate) async fn requeue_dead_filtered(
    settings: &Settings,
    store: &JobStore,
    selection: Selection,
    filter: RequeueFilter,
) -> Result<RequeueReport, RequeueError> {
    let topology = Topology::from_settings(settings)?;
    let connection = super::connect(&settings.amqp, selection.role()).await?;
    let publisher = Publisher::open(&connection).await?;
    topology.declare(publisher.channel()).await?;
    let mover = Mover {
        store,
        publisher: &publisher,
        topology: &topology,
    };
    let mut chooser = Chooser {
        selection,
        reason: filter.reason.map(|r| r.to_lowercase()),
        dry_run: filter.dry_run,
        report: RequeueReport::default(),
    };
    let outcome = dead::scan(
        &connection,
        &topology.names.dead_queue,
        &settings.upstream.product_code,
        Some(&mover),
        &mut chooser,
    )
    .await;
    let _ = connection.close(200, "requeue-dead done".into()).await;
    outcome?;
    Ok(chooser.report)
}

/// The choices of one `requeue-dead` pass.
struct Chooser {
    /// What is still to be moved.
    selection: Selection,
    /// Lower-cased.
    reason: Option<String>,
    dry_run: bool,
    report: RequeueReport,
}

impl Chooser {
    fn moved(&self) -> usize {
        self.report.requeued.len() + self.report.would_requeue.len()
    }

    fn reason_matches(&self, message: &QueuedMessage) -> bool {
        self.reason.as_deref().is_none_or(|wanted| {
            message
                .reason()
                .is_some_and(|reason| reason.to_lowercase().contains(wanted))
        })
    }
}

impl Visitor for Chooser {
    fn visit(&mut self, message: &QueuedMessage) -> Verdict {
        if message.is_invalid() {
            let entry = message.entry();
            self.report.invalid.push(StillInvalid {
                message_id: entry.message_id,
                reason: entry.invalid.unwrap_or_default(),
            });
            return Verdict::Keep;
        }
        let Some(transaction_id) = message.transaction_id() else {
            return Verdict::Keep;
        };
        if !self.selection.is_selected(transaction_id) || !self.reason_matches(message) {
            return Verdict::Keep;
        }
        if self.dry_run {
            let transaction_id = transaction_id.to_owned();
            self.selection.mark_requeued(&transaction_id);
            self.report.would_requeue.push(transaction_id);
            return Verdict::Keep;
        }
        Verdict::Requeue
    }

    fn is_done(&self) -> bool {
        self.selection.is_done(self.moved())
    }

    fn requeued(&mut self, transaction_id: &str) {
        self.selection.mark_requeued(transaction_id);
        self.report.requeued.push(transaction_id.to_owned());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use lapin::types::{AMQPValue, LongString};

    use super::*;

    #[test]
    fn stale_headers_are_dropped_and_producer_headers_kept() {
        let mut headers = FieldTable::default();
        for name in [
            ATTEMPT_HEADER,
            THROTTLED_HEADER,
            ERROR_HEADER,
            "x-death",
            "x-delivery-count",
            "x-first-death-queue",
            "x-first-death-reason",
            "x-last-death-exchange",
            "tenant",
        ] {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from("v")));
        }
        let fresh = fresh_headers(Some(&headers));
        let names: Vec<&str> = fresh.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["tenant"]);
        assert!(fresh_headers(None).inner().is_empty());
    }
}
