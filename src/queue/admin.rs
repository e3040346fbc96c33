//! The operator command that moves queued messages: `requeue-dead` (dead
//! letters back to the main queue, all of them or, for `reconcile --repair`,
//! only chosen transaction_ids). `status` is in `queue::status`.
//!
//! `requeue-dead` never loses a message: a dead copy is removed only after its
//! replacement is confirmed by the broker, and a message that is still
//! invalid or not selected stays in the dead queue. Neither runs SQL itself;
//! rows are changed through [`JobStore`].

use std::collections::HashSet;

use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Connection};

use super::publisher::Outgoing;
use super::topology::ready_messages;
use super::{ATTEMPT_HEADER, ERROR_HEADER, Publisher, QueueError, THROTTLED_HEADER, Topology};
use crate::config::Settings;
use crate::job::decode_job;
use crate::store::{JobStore, StoreError};

async fn open_channel(connection: &Connection) -> Result<Channel, QueueError> {
    connection
        .create_channel()
        .await
        .map_err(QueueError::broker("channel.open"))
}

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
/// (a requeued job starts a fresh attempt count) and the broker's death
/// records (which would otherwise grow with each round trip).
fn is_stale_header(name: &str) -> bool {
    matches!(
        name,
        ATTEMPT_HEADER | THROTTLED_HEADER | ERROR_HEADER | "x-death"
    ) || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

fn fresh_headers(headers: Option<&FieldTable>) -> FieldTable {
    let mut fresh = FieldTable::default();
    for (name, value) in headers.map(FieldTable::inner).into_iter().flatten() {
        if !is_stale_header(name.as_str()) {
            fresh.insert(name.clone(), value.clone());
        }
    }
    fresh
}

/// Moves the selected valid jobs from the dead queue back to the main queue,
/// looking at each message present at the start only once.
///
/// Per message: reset the row to `retrying`, publish a copy with fresh headers
/// and wait for its confirm, then ack the dead copy. Still-invalid and
/// unselected messages are held unacknowledged until the scan ends (so
/// `basic.get` cannot hand the same one back) and then returned to the dead
/// queue.
pub(crate) async fn requeue_dead(
    settings: &Settings,
    store: &JobStore,
    selection: Selection,
) -> Result<RequeueReport, RequeueError> {
    let topology = Topology::from_settings(settings)?;
    let connection = super::connect(&settings.amqp, selection.role()).await?;
    let publisher = Publisher::open(&connection).await?;
    topology.declare(publisher.channel()).await?;
    let getter = open_channel(&connection).await?;
    let names = &topology.names;
    let depth = ready_messages(&getter, &names.dead_queue).await?;
    let mut mover = DeadMover {
        settings,
        store,
        publisher: &publisher,
        topology: &topology,
        selection,
        held: Vec::new(),
        report: RequeueReport::default(),
    };
    let outcome = mover.scan(&getter, depth).await;
    let returned = mover.return_held().await;
    let _ = connection.close(200, "requeue-dead done".into()).await;
    outcome?;
    returned?;
    Ok(mover.report)
}

/// The state of one `requeue-dead` pass.
struct DeadMover<'a> {
    settings: &'a Settings,
    store: &'a JobStore,
    publisher: &'a Publisher,
    topology: &'a Topology,
    /// What is still to be moved.
    selection: Selection,
    /// Still-invalid and unselected messages, unacknowledged until the scan
    /// ends.
    held: Vec<Acker>,
    report: RequeueReport,
}

impl DeadMover<'_> {
    async fn scan(&mut self, getter: &Channel, depth: u32) -> Result<(), RequeueError> {
        let dead_queue = super::short(&self.topology.names.dead_queue)?;
        for _ in 0..depth {
            if self.selection.is_done(self.report.requeued.len()) {
                break;
            }
            let Some(message) = getter
                .basic_get(dead_queue.clone(), BasicGetOptions { no_ack: false })
                .await
                .map_err(QueueError::broker("basic.get"))?
            else {
                break;
            };
            self.handle(message).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, message: BasicGetMessage) -> Result<(), RequeueError> {
        let delivery = message.delivery;
        let product_code = &self.settings.upstream.product_code;
        let job = match decode_job(&delivery.data, product_code) {
            Ok(job) => job,
            Err(rejected) => {
                let message_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string());
                self.report.invalid.push(StillInvalid {
                    message_id,
                    reason: rejected.error.to_string(),
                });
                self.held.push(delivery.acker);
                return Ok(());
            }
        };
        let transaction_id = job.query.transaction_id.as_str();
        if !self.selection.is_selected(transaction_id) {
            self.held.push(delivery.acker);
            return Ok(());
        }
        self.move_back(delivery, transaction_id).await
    }

    /// A failed republish hands the dead copy straight back, so the message
    /// stays dead and the error ends the pass.
    async fn move_back(
        &mut self,
        delivery: Delivery,
        transaction_id: &str,
    ) -> Result<(), RequeueError> {
        if let Err(error) = self
            .republish(
                transaction_id,
                &delivery.data,
                delivery.properties.headers().as_ref(),
            )
            .await
        {
            let _ = delivery.acker.nack(requeue()).await;
            return Err(error);
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(QueueError::broker("basic.ack"))?;
        self.selection.mark_requeued(transaction_id);
        self.report.requeued.push(transaction_id.to_owned());
        Ok(())
    }

    /// The original body goes back as it was (a producer's extra fields
    /// included); only the headers are renewed.
    async fn republish(
        &self,
        transaction_id: &str,
        body: &[u8],
        headers: Option<&FieldTable>,
    ) -> Result<(), RequeueError> {
        self.store.reset_to_retrying(transaction_id).await?;
        let mut message = Outgoing::job(&self.topology.names, body, Some(transaction_id));
        message.headers = fresh_headers(headers);
        self.publisher.publish(message).await?;
        Ok(())
    }

    /// Hands the still-invalid and unselected messages back to the dead queue.
    async fn return_held(&mut self) -> Result<(), QueueError> {
        for acker in self.held.drain(..) {
            acker
                .nack(requeue())
                .await
                .map_err(QueueError::broker("basic.nack"))?;
        }
        Ok(())
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
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
