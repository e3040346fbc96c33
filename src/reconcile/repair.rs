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

use std::collections::HashSet;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};

use super::ReconcileError;
use crate::config::Settings;
use crate::job::decode_job;
use crate::queue::publisher::Outgoing;
use crate::queue::topology::ready_messages;
use crate::queue::{
    self, ATTEMPT_HEADER, ERROR_HEADER, Publisher, QueueError, THROTTLED_HEADER, Topology,
};
use crate::store::JobStore;

/// What `--repair` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Re-published to the main queue: the worker will store their answers.
    pub requeued: Vec<String>,
    /// Repairable by their row, but no dead message carries them: re-submit
    /// from the producer with the same transaction_id.
    pub not_in_dead_queue: Vec<String>,
}

/// Re-publishes the dead-lettered jobs of `transaction_ids` (see the module
/// docs). Looks at each message present in the dead queue at the start once.
pub async fn repair(
    settings: &Settings,
    store: &JobStore,
    transaction_ids: &[String],
) -> Result<RepairReport, ReconcileError> {
    let mut wanted: HashSet<&str> = transaction_ids.iter().map(String::as_str).collect();
    let mut report = RepairReport::default();
    if wanted.is_empty() {
        return Ok(report);
    }
    let topology = Topology::from_settings(settings)?;
    let connection = queue::connect(&settings.amqp, "reconcile-repair").await?;
    let publisher = Publisher::open(&connection).await?;
    topology.declare(publisher.channel()).await?;
    let getter = connection
        .create_channel()
        .await
        .map_err(QueueError::broker("channel.open"))?;
    let mut mover = Mover {
        settings,
        store,
        publisher: &publisher,
        topology: &topology,
        held: Vec::new(),
    };
    let scanned = mover.scan(&getter, &mut wanted, &mut report).await;
    let returned = mover.return_held().await;
    let _ = connection.close(200, "repair done".into()).await;
    scanned?;
    returned?;
    report.not_in_dead_queue = transaction_ids
        .iter()
        .filter(|id| wanted.contains(id.as_str()))
        .cloned()
        .collect();
    Ok(report)
}

struct Mover<'a> {
    settings: &'a Settings,
    store: &'a JobStore,
    publisher: &'a Publisher,
    topology: &'a Topology,
    /// Dead messages that are not ours to move, unacknowledged until the end
    /// so that `basic.get` does not hand them out again.
    held: Vec<Acker>,
}

impl Mover<'_> {
    async fn scan(
        &mut self,
        getter: &Channel,
        wanted: &mut HashSet<&str>,
        report: &mut RepairReport,
    ) -> Result<(), ReconcileError> {
        let dead_queue = &self.topology.names.dead_queue;
        let depth = ready_messages(getter, dead_queue).await?;
        for _ in 0..depth {
            if wanted.is_empty() {
                break;
            }
            let Some(message) = getter
                .basic_get(queue::short(dead_queue)?, BasicGetOptions { no_ack: false })
                .await
                .map_err(QueueError::broker("basic.get"))?
            else {
                break;
            };
            if let Some(id) = self.handle(message, wanted).await? {
                report.requeued.push(id);
            }
        }
        Ok(())
    }

    /// Moves the message if it is a wanted job; returns its transaction_id then.
    async fn handle(
        &mut self,
        message: BasicGetMessage,
        wanted: &mut HashSet<&str>,
    ) -> Result<Option<String>, ReconcileError> {
        let delivery = message.delivery;
        let product_code = &self.settings.upstream.product_code;
        let transaction_id = decode_job(&delivery.data, product_code)
            .ok()
            .map(|job| job.query.transaction_id.as_str().to_owned());
        let Some(id) = transaction_id.filter(|id| wanted.contains(id.as_str())) else {
            self.held.push(delivery.acker);
            return Ok(None);
        };
        if let Err(error) = self
            .republish(&id, &delivery.data, delivery.properties.headers().as_ref())
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
        wanted.remove(id.as_str());
        Ok(Some(id))
    }

    async fn republish(
        &self,
        transaction_id: &str,
        body: &[u8],
        headers: Option<&FieldTable>,
    ) -> Result<(), ReconcileError> {
        self.store.reset_to_retrying(transaction_id).await?;
        let mut message = Outgoing::job(&self.topology.names, body, Some(transaction_id));
        message.headers = fresh_headers(headers);
        self.publisher.publish(message).await?;
        Ok(())
    }

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

/// The producer's own headers survive; the worker's retry bookkeeping and the
/// broker's death records do not (a repaired job starts a fresh attempt count,
/// its first-call time still bounds it through the row).
fn fresh_headers(headers: Option<&FieldTable>) -> FieldTable {
    let is_stale = |name: &str| {
        matches!(
            name,
            ATTEMPT_HEADER | THROTTLED_HEADER | ERROR_HEADER | "x-death"
        ) || name.starts_with("x-first-death-")
            || name.starts_with("x-last-death-")
    };
    let mut fresh = FieldTable::default();
    for (name, value) in headers.map(FieldTable::inner).into_iter().flatten() {
        if !is_stale(name.as_str()) {
            fresh.insert(name.clone(), value.clone());
        }
    }
    fresh
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}
