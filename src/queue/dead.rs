//! Looking into queues without losing or duplicating a message: the one scan
//! behind `dead list`, `dead show`, `dead purge --invalid`, `requeue-dead`
//! (and so `reconcile --repair`) and the broker half of `show`.
//!
//! **How a scan reads a queue.** AMQP 0-9-1 has no "peek", so a scan takes
//! each message present at its start with `basic.get` (manual ack) and holds
//! it *unacknowledged* until the scan ends; then every message it keeps is
//! handed back with `basic.nack(requeue)`. Holding them means `basic.get`
//! cannot return the same message twice within one scan. If the process dies
//! mid-scan, the broker returns every unacknowledged message to the queue by
//! itself when the channel closes: each stays there exactly once. We chose
//! this over "get, republish a copy with confirm, ack the original" because
//! that order duplicates the message when a crash falls between the confirm
//! and the ack. A message is removed only by an ack: after a confirmed copy
//! is in the main queue (requeue; a crash between the two leaves the job in
//! both, which is harmless because its row makes a second run a no-op), or
//! for `purge --invalid`, after it was reported.
//!
//! The main queue is never scanned while it is a quorum queue: each hand-back
//! counts as a delivery against its `x-delivery-limit`, and enough `show`
//! calls would dead-letter healthy jobs. Delay and dead queues have no
//! delivery limit.
//!
//! Only masked personal data leaves this module ([`DeadEntry`]); the bodies
//! themselves are never returned, printed or logged. No SQL runs here: a
//! requeued job's row is reset through [`JobStore`].

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel, Connection};
use serde::Serialize;

use super::admin::{RequeueError, fresh_headers};
use super::publisher::Outgoing;
use super::topology::ready_messages;
use super::{
    ATTEMPT_HEADER, DEAD_AT_HEADER, ERROR_HEADER, Publisher, QueueError, Topology, header_u32,
    short,
};
use crate::config::{QueueType, Settings};
use crate::job::{Job, RejectedJob, decode_job, mask_cert_no, mask_name, mask_phone};
use crate::store::JobStore;

/// The header RabbitMQ sets when it dead-letters a message itself (a quorum
/// queue's delivery limit), used when ours is absent.
const BROKER_DEATH_REASON: &str = "x-first-death-reason";

/// One message as a scan sees it; the body is decoded but never kept whole.
pub(crate) struct QueuedMessage {
    message_id: Option<String>,
    decoded: Result<Job, RejectedJob>,
    reason: Option<String>,
    attempt: Option<u32>,
    /// When the worker dead-lettered it ([`DEAD_AT_HEADER`]), if recorded.
    dead_lettered_at: Option<DateTime<Utc>>,
    /// An invalid body's `cert_no` and `relation_phone` strings, as sent
    /// (for `erase`; never shown).
    salvaged: Salvaged,
}

/// Personal fields read from a body that is not a valid job.
#[derive(Default)]
struct Salvaged {
    cert_no: Option<String>,
    relation_phone: Option<String>,
}

impl Salvaged {
    fn from_body(body: &[u8]) -> Self {
        let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(body) else {
            return Self::default();
        };
        let text = |field: &str| object.get(field)?.as_str().map(str::to_owned);
        Self {
            cert_no: text("cert_no"),
            relation_phone: text("relation_phone"),
        }
    }
}

impl QueuedMessage {
    fn read(delivery: &Delivery, product_code: &str) -> Self {
        let headers = delivery.properties.headers().as_ref();
        let reason = text_header(headers, ERROR_HEADER)
            .or_else(|| text_header(headers, BROKER_DEATH_REASON).map(|r| format!("broker: {r}")));
        let decoded = decode_job(&delivery.data, product_code);
        let salvaged = if decoded.is_err() {
            Salvaged::from_body(&delivery.data)
        } else {
            Salvaged::default()
        };
        Self {
            salvaged,
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            decoded,
            reason,
            attempt: header_u32(headers, ATTEMPT_HEADER),
            dead_lettered_at: text_header(headers, DEAD_AT_HEADER)
                .and_then(|at| DateTime::parse_from_rfc3339(at.trim()).ok())
                .map(|at| at.with_timezone(&Utc)),
        }
    }

    /// The `cert_no` the body carries, valid or not (for `erase`).
    pub(crate) fn cert_no(&self) -> Option<&str> {
        match &self.decoded {
            Ok(job) => Some(&job.query.cert_no),
            Err(_) => self.salvaged.cert_no.as_deref(),
        }
    }

    /// The `relation_phone` the body carries, valid or not (for `erase`).
    pub(crate) fn relation_phone(&self) -> Option<&str> {
        match &self.decoded {
            Ok(job) => Some(&job.query.relation_phone),
            Err(_) => self.salvaged.relation_phone.as_deref(),
        }
    }

    /// The producer's reference, from a valid or an invalid body.
    pub(crate) fn external_ref(&self) -> Option<&str> {
        match &self.decoded {
            Ok(job) => job.external_ref.as_deref(),
            Err(rejected) => rejected.external_ref.as_deref(),
        }
    }

    /// When the worker dead-lettered it (`x-zhima-dead-lettered-at`); None
    /// for a message dead-lettered before the header existed or by the broker.
    pub(crate) fn dead_lettered_at(&self) -> Option<DateTime<Utc>> {
        self.dead_lettered_at
    }

    /// The job's transaction_id: from the body when it carries a valid one,
    /// else the message's `message_id`.
    pub(crate) fn transaction_id(&self) -> Option<&str> {
        match &self.decoded {
            Ok(job) => Some(job.query.transaction_id.as_str()),
            Err(rejected) => rejected
                .transaction_id
                .as_ref()
                .map(|id| id.as_str())
                .or(self.message_id.as_deref()),
        }
    }

    /// A message that is not a valid job can never succeed: requeueing it
    /// would only dead-letter it again.
    pub(crate) fn is_invalid(&self) -> bool {
        self.decoded.is_err()
    }

    /// The reason it was dead-lettered (`x-zhima-error`), if recorded.
    pub(crate) fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// What an operator may see of it: masked personal data only.
    pub(crate) fn entry(&self) -> DeadEntry {
        let (job, invalid) = match &self.decoded {
            Ok(job) => (Some(job), None),
            Err(rejected) => (None, Some(rejected.error.to_string())),
        };
        let external_ref = match &self.decoded {
            Ok(job) => job.external_ref.clone(),
            Err(rejected) => rejected.external_ref.clone(),
        };
        let reason = self.reason.clone();
        DeadEntry {
            transaction_id: self.transaction_id().map(str::to_owned),
            message_id: self.message_id.clone(),
            external_ref,
            reason_group: reason_group(reason.as_deref(), invalid.as_deref()),
            reason,
            invalid,
            attempt: self.attempt,
            cert_no: job.map(|j| mask_cert_no(&j.query.cert_no)),
            name: job.map(|j| mask_name(&j.query.name)),
            relation_phone: job.map(|j| mask_phone(&j.query.relation_phone)),
            relation_name: job.map(|j| mask_name(&j.query.relation_name)),
            relation: job.and_then(|j| j.query.relation.map(|r| r.as_str().to_owned())),
            product_code: job.map(|j| j.query.product_code.clone()),
        }
    }
}

fn text_header(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// A queued message as `dead list`, `dead show` and `show` present it. The
/// personal fields are masked (`640202********4686`); `invalid` says why the
/// body is not a valid job today, if it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DeadEntry {
    pub(crate) transaction_id: Option<String>,
    pub(crate) message_id: Option<String>,
    pub(crate) external_ref: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) reason_group: String,
    pub(crate) invalid: Option<String>,
    pub(crate) attempt: Option<u32>,
    pub(crate) cert_no: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) relation_phone: Option<String>,
    pub(crate) relation_name: Option<String>,
    pub(crate) relation: Option<String>,
    pub(crate) product_code: Option<String>,
}

/// The reason without what differs between jobs of one cause, so `--group-by
/// reason` counts causes: `gave up after 8 attempts; last error SYSTEM_ERROR:
/// …` is `gave up: SYSTEM_ERROR`; ``field `cert_no`: …`` stays
/// ``field `cert_no` ``; a message that is invalid without a recorded reason is
/// grouped by why it is invalid.
pub(crate) fn reason_group(reason: Option<&str>, invalid: Option<&str>) -> String {
    let Some(reason) = reason.or(invalid).map(str::trim).filter(|r| !r.is_empty()) else {
        return "(no reason recorded)".into();
    };
    if let Some(rest) = reason.strip_prefix("gave up after ") {
        let code = rest
            .split_once("last error ")
            .map(|(_, tail)| tail.split(':').next().unwrap_or(tail).trim());
        return match code {
            Some(code) if !code.is_empty() => format!("gave up: {code}"),
            _ => "gave up".into(),
        };
    }
    let head = reason.split(':').next().unwrap_or(reason).trim();
    head.chars().take(80).collect()
}

/// What a scan does with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it back to its queue when the scan ends.
    Keep,
    /// Reset its row, publish it to the main queue (confirmed), then ack it.
    Requeue,
    /// Ack it: it is gone.
    Remove,
}

/// Decides, message by message, what a scan does.
pub(crate) trait Visitor {
    /// Called before the scan of each queue.
    fn entering(&mut self, _queue: &str) {}

    fn visit(&mut self, message: &QueuedMessage) -> Verdict;

    /// True once nothing more needs to be seen (a limit reached).
    fn is_done(&self) -> bool {
        false
    }

    /// Called after a [`Verdict::Requeue`] is done (confirmed and acked).
    fn requeued(&mut self, _transaction_id: &str) {}
}

/// What moves a message back to the main queue; a read-only scan has none.
pub(crate) struct Mover<'a> {
    pub(crate) store: &'a JobStore,
    pub(crate) publisher: &'a Publisher,
    pub(crate) topology: &'a Topology,
}

/// One scan over `queue` (see the module docs): each message present at the
/// start is seen once, unless the visitor is done first. Kept messages go
/// back even when the scan fails, and the scan ends only once the broker
/// shows them ready again (see [`settle`]).
pub(crate) async fn scan(
    connection: &Connection,
    queue: &str,
    product_code: &str,
    mover: Option<&Mover<'_>>,
    visitor: &mut dyn Visitor,
) -> Result<(), RequeueError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(QueueError::broker("channel.open"))?;
    let depth = ready_messages(&channel, queue).await?;
    let mut held = Vec::new();
    let outcome = scan_held(
        &channel,
        queue,
        depth,
        product_code,
        mover,
        visitor,
        &mut held,
    )
    .await;
    let kept = held.len();
    let returned = hand_back(held).await;
    let _ = channel.close(200, "scan done".into()).await;
    if let (Ok(gone), Ok(()), true) = (&outcome, &returned, kept > 0) {
        settle(connection, queue, depth.saturating_sub(*gone)).await;
    }
    outcome?;
    returned?;
    Ok(())
}

/// How long a scan waits for the messages it handed back to be ready again.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// A quorum queue applies hand-backs asynchronously: for a few milliseconds
/// after the scan they are neither ready nor held, and a command started
/// right after this one (`dead list` then `requeue-dead` in a script) would
/// see a shorter queue and miss them. So the scan waits until the queue has
/// `expected` ready messages again, or [`SETTLE_LIMIT`] has passed (another
/// consumer, or TTL expiry in a delay queue, may keep it from ever getting
/// there; nothing is lost either way).
async fn settle(connection: &Connection, queue: &str, expected: u32) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    while tokio::time::Instant::now() < deadline {
        match ready_messages(&channel, queue).await {
            Ok(ready) if ready < expected => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => break,
        }
    }
    let _ = channel.close(200, "settled".into()).await;
}

/// Returns how many messages left the queue (removed or requeued).
async fn scan_held(
    channel: &Channel,
    queue: &str,
    depth: u32,
    product_code: &str,
    mover: Option<&Mover<'_>>,
    visitor: &mut dyn Visitor,
    held: &mut Vec<Acker>,
) -> Result<u32, RequeueError> {
    let name = short(queue)?;
    let mut gone = 0;
    for _ in 0..depth {
        if visitor.is_done() {
            break;
        }
        let Some(BasicGetMessage { delivery, .. }) = channel
            .basic_get(name.clone(), BasicGetOptions { no_ack: false })
            .await
            .map_err(QueueError::broker("basic.get"))?
        else {
            break;
        };
        let message = QueuedMessage::read(&delivery, product_code);
        match (visitor.visit(&message), mover, &message.decoded) {
            (Verdict::Remove, _, _) => {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(QueueError::broker("basic.ack"))?;
                gone += 1;
            }
            (Verdict::Requeue, Some(mover), Ok(job)) => {
                let transaction_id = job.query.transaction_id.as_str();
                move_back(mover, delivery, transaction_id).await?;
                visitor.requeued(transaction_id);
                gone += 1;
            }
            _ => held.push(delivery.acker),
        }
    }
    Ok(gone)
}

/// A failed reset or republish hands the message straight back, so it stays
/// where it was and the error ends the scan.
async fn move_back(
    mover: &Mover<'_>,
    delivery: Delivery,
    transaction_id: &str,
) -> Result<(), RequeueError> {
    if let Err(error) = republish(mover, &delivery, transaction_id).await {
        let _ = delivery.acker.nack(requeue()).await;
        return Err(error);
    }
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map_err(QueueError::broker("basic.ack"))?;
    Ok(())
}

/// The original body goes back as it was (a producer's extra fields
/// included); only the headers are renewed.
async fn republish(
    mover: &Mover<'_>,
    delivery: &Delivery,
    transaction_id: &str,
) -> Result<(), RequeueError> {
    mover.store.reset_to_retrying(transaction_id).await?;
    let mut message = Outgoing::job(&mover.topology.names, &delivery.data, Some(transaction_id));
    message.headers = fresh_headers(delivery.properties.headers().as_ref());
    mover.publisher.publish(message).await?;
    Ok(())
}

async fn hand_back(held: Vec<Acker>) -> Result<(), QueueError> {
    for acker in held {
        acker
            .nack(requeue())
            .await
            .map_err(QueueError::broker("basic.nack"))?;
    }
    Ok(())
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

/// `dead list`: the first `limit` entries and the count per reason group of
/// every message in the dead queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct DeadListing {
    pub(crate) total: u64,
    pub(crate) by_reason: BTreeMap<String, u64>,
    pub(crate) entries: Vec<DeadEntry>,
}

struct Lister {
    limit: usize,
    listing: DeadListing,
}

impl Visitor for Lister {
    fn visit(&mut self, message: &QueuedMessage) -> Verdict {
        let entry = message.entry();
        self.listing.total += 1;
        *self
            .listing
            .by_reason
            .entry(entry.reason_group.clone())
            .or_default() += 1;
        if self.listing.entries.len() < self.limit {
            self.listing.entries.push(entry);
        }
        Verdict::Keep
    }
}

/// Reads the whole dead queue and leaves it as it was.
pub(crate) async fn list_dead(
    settings: &Settings,
    limit: usize,
) -> Result<DeadListing, RequeueError> {
    let mut lister = Lister {
        limit,
        listing: DeadListing::default(),
    };
    let queue = settings.amqp.dead_queue.clone();
    scan_queues(settings, "dead-list", &[queue], &mut lister).await?;
    Ok(lister.listing)
}

/// Every message of the wanted transaction_ids, kept, named by its queue
/// and by the wanted id it carries.
struct Finder<'a> {
    wanted: HashSet<&'a str>,
    queue: String,
    found: Vec<(String, String, DeadEntry)>,
}

impl Visitor for Finder<'_> {
    fn entering(&mut self, queue: &str) {
        queue.clone_into(&mut self.queue);
    }

    fn visit(&mut self, message: &QueuedMessage) -> Verdict {
        let hit = [message.transaction_id(), message.message_id.as_deref()]
            .into_iter()
            .flatten()
            .find(|id| self.wanted.contains(id));
        if let Some(id) = hit {
            self.found
                .push((self.queue.clone(), id.to_owned(), message.entry()));
        }
        Verdict::Keep
    }
}

/// `dead show`: every dead copy of `transaction_id` (usually one).
pub(crate) async fn find_dead(
    settings: &Settings,
    transaction_id: &str,
) -> Result<Vec<DeadEntry>, RequeueError> {
    let queue = settings.amqp.dead_queue.clone();
    let ids = [transaction_id.to_owned()];
    let found = find_in(settings, "dead-show", &[queue], &ids).await?;
    Ok(found.into_iter().map(|(_, _, entry)| entry).collect())
}

/// Where a job's message is now: which queue, and what it says there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Location {
    pub(crate) queue: String,
    /// `main`, `delay` or `dead`.
    pub(crate) kind: &'static str,
    pub(crate) entry: DeadEntry,
}

/// What [`locate`] found for one transaction_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Whereabouts {
    pub(crate) found: Vec<Location>,
    /// Set when the main queue was not scanned (a quorum queue): its name.
    pub(crate) main_not_scanned: Option<String>,
}

/// `show`: the queues holding a message of each of `transaction_ids` (one
/// [`Whereabouts`] per id, in order), read in one pass over every delay
/// queue, the dead queue, and the main queue when it is a classic queue (see
/// the module docs). A message being processed is held by a worker and is
/// in none of them.
pub(crate) async fn locate(
    settings: &Settings,
    transaction_ids: &[String],
) -> Result<Vec<Whereabouts>, RequeueError> {
    let topology = Topology::from_settings(settings)?;
    let names = &topology.names;
    let mut queues: Vec<(String, &'static str)> = Vec::new();
    let scan_main = names.queue_type == QueueType::Classic;
    if scan_main {
        queues.push((names.queue.clone(), "main"));
    }
    queues.extend(topology.delay_queues().into_iter().map(|q| (q, "delay")));
    queues.push((names.dead_queue.clone(), "dead"));
    let only: Vec<String> = queues.iter().map(|(q, _)| q.clone()).collect();
    let mut found = find_in(settings, "show", &only, transaction_ids).await?;
    let kind_of = |queue: &str| {
        queues
            .iter()
            .find(|(q, _)| q == queue)
            .map_or("dead", |(_, kind)| *kind)
    };
    Ok(transaction_ids
        .iter()
        .map(|id| {
            let (mine, rest) = found.drain(..).partition(|(_, hit, _)| hit == id);
            found = rest;
            Whereabouts {
                found: mine
                    .into_iter()
                    .map(|(queue, _, entry)| Location {
                        kind: kind_of(&queue),
                        queue,
                        entry,
                    })
                    .collect(),
                main_not_scanned: (!scan_main).then(|| names.queue.clone()),
            }
        })
        .collect())
}

/// Scans `queues` for `transaction_ids` on one connection.
async fn find_in(
    settings: &Settings,
    role: &str,
    queues: &[String],
    transaction_ids: &[String],
) -> Result<Vec<(String, String, DeadEntry)>, RequeueError> {
    let mut finder = Finder {
        wanted: transaction_ids.iter().map(String::as_str).collect(),
        queue: String::new(),
        found: Vec::new(),
    };
    scan_queues(settings, role, queues, &mut finder).await?;
    Ok(finder.found)
}

/// Scans `queues` in turn on one connection, with no [`Mover`] (nothing is
/// requeued; a visitor may still remove); a queue that does not exist
/// (nothing declared it yet) holds nothing and is skipped.
async fn scan_queues(
    settings: &Settings,
    role: &str,
    queues: &[String],
    visitor: &mut dyn Visitor,
) -> Result<(), RequeueError> {
    let connection = super::connect(&settings.amqp, role).await?;
    let product_code = &settings.upstream.product_code;
    let mut outcome = Ok(());
    for queue in queues {
        visitor.entering(queue);
        outcome = match scan(&connection, queue, product_code, None, visitor).await {
            Err(RequeueError::Queue(QueueError::Broker { source, .. }))
                if super::status::is_not_found(&source) =>
            {
                Ok(())
            }
            other => other,
        };
        if outcome.is_err() {
            break;
        }
    }
    let _ = connection.close(200, "scan done".into()).await;
    outcome
}

/// `dead purge --invalid`: reports, then removes (or, dry, only reports)
/// every dead message that is not a valid job; the others stay.
struct Purger<'r> {
    dry_run: bool,
    /// Called with each message before it is removed.
    report: &'r mut dyn FnMut(&DeadEntry),
    count: u64,
}

impl Visitor for Purger<'_> {
    fn visit(&mut self, message: &QueuedMessage) -> Verdict {
        if !message.is_invalid() {
            return Verdict::Keep;
        }
        (self.report)(&message.entry());
        self.count += 1;
        if self.dry_run {
            Verdict::Keep
        } else {
            Verdict::Remove
        }
    }
}

/// Removes the dead messages that can never succeed, handing each (masked)
/// to `report` before it is acked, so that a message is never gone without
/// having been reported; with `dry_run` nothing is removed. Returns how many
/// were reported.
pub(crate) async fn purge_invalid(
    settings: &Settings,
    dry_run: bool,
    report: &mut dyn FnMut(&DeadEntry),
) -> Result<u64, RequeueError> {
    let mut purger = Purger {
        dry_run,
        report,
        count: 0,
    };
    let queue = settings.amqp.dead_queue.clone();
    scan_queues(settings, "dead-purge", &[queue], &mut purger).await?;
    Ok(purger.count)
}

/// `erase` and `purge`: removes (or, dry, only counts) every message of
/// `queues` that `matches`, through the one scan that never loses a message.
/// Returns the count per queue (queues with none omitted).
pub(crate) async fn remove_where(
    settings: &Settings,
    role: &str,
    queues: &[String],
    dry_run: bool,
    matches: &mut dyn FnMut(&QueuedMessage) -> bool,
) -> Result<BTreeMap<String, u64>, RequeueError> {
    let mut remover = Remover {
        dry_run,
        matches,
        queue: String::new(),
        counts: BTreeMap::new(),
    };
    scan_queues(settings, role, queues, &mut remover).await?;
    Ok(remover.counts)
}

/// The delay queues of the configured retry tiers.
pub(crate) fn delay_queue_names(settings: &Settings) -> Result<Vec<String>, RequeueError> {
    Ok(Topology::from_settings(settings)?.delay_queues())
}

struct Remover<'m> {
    dry_run: bool,
    matches: &'m mut dyn FnMut(&QueuedMessage) -> bool,
    queue: String,
    counts: BTreeMap<String, u64>,
}

impl Visitor for Remover<'_> {
    fn entering(&mut self, queue: &str) {
        queue.clone_into(&mut self.queue);
    }

    fn visit(&mut self, message: &QueuedMessage) -> Verdict {
        if !(self.matches)(message) {
            return Verdict::Keep;
        }
        *self.counts.entry(self.queue.clone()).or_default() += 1;
        if self.dry_run {
            Verdict::Keep
        } else {
            Verdict::Remove
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn reasons_are_grouped_by_cause_not_by_job() {
        let group = |reason: &str| reason_group(Some(reason), None);
        assert_eq!(
            group("gave up after 8 attempts; last error SYSTEM_ERROR: upstream busy"),
            "gave up: SYSTEM_ERROR"
        );
        assert_eq!(
            group("gave up after 2 attempts; last error HTTP_502: bad gateway"),
            "gave up: HTTP_502"
        );
        assert_eq!(group("gave up after 3 attempts"), "gave up");
        assert_eq!(
            group("field `cert_no`: check character does not match"),
            "field `cert_no`"
        );
        assert_eq!(
            reason_group(None, Some("body is not valid JSON: eof")),
            "body is not valid JSON"
        );
        assert_eq!(reason_group(None, None), "(no reason recorded)");
        assert_eq!(reason_group(Some("  "), None), "(no reason recorded)");
        assert_eq!(group(&"x".repeat(10_000)).chars().count(), 80);
    }

    #[test]
    fn an_invalid_message_shows_no_personal_field_and_a_valid_one_only_masked() {
        let body = br#"{"transaction_id":"t_1","cert_no":"640202199007164686","name":"Zhang San",
            "relation_phone":"15843991158","relation_name":"Li Si","external_ref":"loan-1"}"#;
        let message = QueuedMessage {
            message_id: Some("t_1".into()),
            decoded: decode_job(body, "w1010100001000001200"),
            reason: Some("gave up after 2 attempts; last error SYSTEM_ERROR: busy".into()),
            attempt: Some(2),
            dead_lettered_at: None,
            salvaged: Salvaged::default(),
        };
        let entry = message.entry();
        let shown = serde_json::to_string(&entry).unwrap();
        assert!(!shown.contains("640202199007164686"), "{shown}");
        assert!(!shown.contains("15843991158"), "{shown}");
        assert!(!shown.contains("Zhang San"), "{shown}");
        assert_eq!(entry.cert_no.as_deref(), Some("640202********4686"));
        assert_eq!(entry.relation_phone.as_deref(), Some("158****1158"));
        assert_eq!(entry.transaction_id.as_deref(), Some("t_1"));
        assert!(!message.is_invalid());

        let broken = br#"{"transaction_id":"t_2","cert_no":"640202199007164680","name":"Zhang San",
            "relation_phone":"15843991158","relation_name":"Li Si"}"#;
        let message = QueuedMessage {
            message_id: None,
            decoded: decode_job(broken, "w1010100001000001200"),
            reason: None,
            attempt: None,
            dead_lettered_at: None,
            salvaged: Salvaged::default(),
        };
        let entry = message.entry();
        assert!(message.is_invalid());
        assert_eq!(entry.transaction_id.as_deref(), Some("t_2"));
        assert_eq!(entry.cert_no, None);
        let shown = serde_json::to_string(&entry).unwrap();
        assert!(!shown.contains("15843991158"), "{shown}");
        assert!(!shown.contains("640202199007164680"), "{shown}");
    }
}
