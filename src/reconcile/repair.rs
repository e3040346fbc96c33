//! `reconcile --repair`: recovering answers the upstream billed but we never
//! stored, without paying for them again.
//!
//! The upstream replays a transaction_id's first answer unbilled within its
//! validity, so re-running the *same* job recovers it. But we store personal
//! data masked only, so a job cannot be rebuilt from its row. The one place a
//! full job survives is the dead queue: a job that ran out of attempts (say,
//! HTTP 502 after billing, then errors until the attempts ran out) is
//! dead-lettered with its original body. For those, repair does what
//! `requeue-dead` does, for the chosen transaction_ids only: reset the row to
//! `retrying`, publish the original body back to the main queue with fresh
//! headers and wait for the broker's confirm, then ack the dead copy. The
//! worker then stores the replayed answer.
//!
//! A row that was deleted, or a failed job whose dead message is gone, cannot
//! be recovered here: the producer must re-submit it with the same
//! transaction_id (within the validity window). Other dead messages are handed
//! back to the dead queue untouched. Never mints a transaction_id.
//!
//! The queue work is [`admin::requeue_dead`]'s; this module only chooses the
//! transaction_ids and says which of them it could not find.

use std::collections::HashSet;

use super::ReconcileError;
use crate::config::Settings;
use crate::queue::admin::{self, RequeueError, Selection};
use crate::store::JobStore;

/// What `--repair` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RepairReport {
    /// Re-published to the main queue: the worker will store their answers.
    pub(crate) requeued: Vec<String>,
    /// Repairable by their row, but no dead message carries them: re-submit
    /// from the producer with the same transaction_id.
    pub(crate) not_in_dead_queue: Vec<String>,
}

/// Re-publishes the dead-lettered jobs of `transaction_ids` (see the module
/// docs). Looks at each message present in the dead queue at the start once.
pub(crate) async fn repair(
    settings: &Settings,
    store: &JobStore,
    transaction_ids: &[String],
) -> Result<RepairReport, ReconcileError> {
    let wanted: HashSet<String> = transaction_ids.iter().cloned().collect();
    if wanted.is_empty() {
        return Ok(RepairReport::default());
    }
    let moved = admin::requeue_dead(settings, store, Selection::Only(wanted)).await?;
    let requeued: HashSet<&str> = moved.requeued.iter().map(String::as_str).collect();
    let not_in_dead_queue = transaction_ids
        .iter()
        .filter(|id| !requeued.contains(id.as_str()))
        .cloned()
        .collect();
    Ok(RepairReport {
        requeued: moved.requeued,
        not_in_dead_queue,
    })
}

/// Repair has always reported queue and store failures as its own, so the
/// messages an operator sees stay the same.
impl From<RequeueError> for ReconcileError {
    fn from(error: RequeueError) -> Self {
        match error {
            RequeueError::Queue(source) => Self::Queue(source),
            RequeueError::Store(source) => Self::Store(source),
        }
    }
}
