//! The broker's side of `status`: each queue's ready messages and
//! consumers, read with passive declares (nothing is ever created), and the
//! dead queue's messages counted by the reason they carry.
//!
//! AMQP 0-9-1 reports a queue's ready messages and consumers but not its
//! unacknowledged ones, and it cannot list queues: the delay queues probed
//! are the current configuration's plus every one a `run` registered in the
//! database (`delay_queues`, migration 0004). Only `run` publishes retry
//! copies, so a delay queue of an earlier configuration that can still hold
//! one is in that registry; the RabbitMQ management API would list them too,
//! but it is an optional plugin and not relied on.
//!
//! Reading the reasons never loses a message: they are taken with
//! `basic.get` without acknowledgement and all given back with one
//! `basic.nack` (`requeue`, `multiple`) before the channel closes (closing
//! it would return them too). Each return counts as a delivery on a quorum
//! queue, and from RabbitMQ 4.0 a quorum queue without `x-delivery-limit`
//! drops a message after 20 (4.3 stopped counting nacks), so reading stops
//! at the first message whose `x-delivery-count` has reached
//! [`PEEK_DELIVERY_COUNT_STOP`], and at most [`DEAD_PEEK_LIMIT`] messages
//! are read per call.

use std::collections::BTreeMap;

use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ErrorKind};

use super::{ERROR_HEADER, QueueError, Topology, header_u32, short};
use crate::config::Settings;

/// The AMQP reply code for a queue that does not exist.
const NOT_FOUND: u16 = 404;
/// The most dead messages read for their reasons in one call.
pub(crate) const DEAD_PEEK_LIMIT: u32 = 1000;
/// A dead message returned this many times already stops the reading.
pub(crate) const PEEK_DELIVERY_COUNT_STOP: u32 = 10;
/// The quorum queue's header counting a message's earlier deliveries.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// The reason of a dead message that carries none.
pub(crate) const NO_REASON: &str = "(no x-zhima-error header)";

/// One queue as the broker reports it; `None` counts when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct QueueCounts {
    pub(crate) name: String,
    pub(crate) exists: bool,
    pub(crate) ready: Option<u32>,
    pub(crate) consumers: Option<u32>,
}

/// The dead queue's messages by reason, as far as they were read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DeadReasons {
    /// Messages read (and given back).
    pub(crate) read: u32,
    /// Reason (the `x-zhima-error` text up to its first `": "`) → count.
    pub(crate) by_reason: BTreeMap<String, u32>,
    /// Why fewer than every ready message was read, if so.
    pub(crate) partial: Option<String>,
}

/// Every queue of the worker's topology, as the broker sees it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct BrokerOverview {
    pub(crate) main: QueueCounts,
    /// Shortest delay first: the current configuration's tiers and every
    /// registered delay queue that still exists.
    pub(crate) delays: Vec<DelayQueue>,
    pub(crate) dead: QueueCounts,
    pub(crate) dead_reasons: DeadReasons,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DelayQueue {
    pub(crate) delay_ms: u64,
    /// Whether the current configuration declares it.
    pub(crate) current: bool,
    #[serde(flatten)]
    pub(crate) counts: QueueCounts,
}

impl BrokerOverview {
    /// Ready messages in every delay queue: the jobs waiting for a retry.
    pub(crate) fn retry_total(&self) -> u64 {
        self.delays
            .iter()
            .filter_map(|delay| delay.counts.ready)
            .map(u64::from)
            .sum()
    }
}

/// Reads every queue on a fresh connection. When the main queue does not
/// exist, nothing has declared the topology yet and no other queue is
/// probed (each miss closes a channel).
pub(crate) async fn broker_overview(
    settings: &Settings,
    registered_delays: &[(String, u64)],
) -> Result<BrokerOverview, QueueError> {
    let topology = Topology::from_settings(settings)?;
    let names = &topology.names;
    let connection = super::connect(&settings.amqp, "status").await?;
    let mut prober = Prober::open(&connection).await?;
    let main = prober.counts(&names.queue).await?;
    let delays = delay_queues(&topology, registered_delays);
    let overview = if main.exists {
        let mut probed = Vec::with_capacity(delays.len());
        for (name, delay_ms, current) in delays {
            let counts = prober.counts(&name).await?;
            if counts.exists || current {
                probed.push(DelayQueue {
                    delay_ms,
                    current,
                    counts,
                });
            }
        }
        let dead = prober.counts(&names.dead_queue).await?;
        let dead_reasons = match dead.ready {
            Some(ready) if ready > 0 => {
                read_dead_reasons(&open_channel(&connection).await?, &dead.name, ready).await?
            }
            _ => DeadReasons::default(),
        };
        BrokerOverview {
            main,
            delays: probed,
            dead,
            dead_reasons,
        }
    } else {
        BrokerOverview {
            main,
            delays: delays
                .into_iter()
                .filter(|(_, _, current)| *current)
                .map(|(name, delay_ms, current)| DelayQueue {
                    delay_ms,
                    current,
                    counts: missing(name),
                })
                .collect(),
            dead: missing(names.dead_queue.clone()),
            dead_reasons: DeadReasons::default(),
        }
    };
    let _ = connection.close(200, "status done".into()).await;
    Ok(overview)
}

/// The current tiers and the registered queues, once each, shortest first.
fn delay_queues(topology: &Topology, registered: &[(String, u64)]) -> Vec<(String, u64, bool)> {
    let mut queues: BTreeMap<String, (u64, bool)> = registered
        .iter()
        .map(|(name, ms)| (name.clone(), (*ms, false)))
        .collect();
    for delay in &topology.delays {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        queues.insert(topology.names.delay_queue(*delay), (ms, true));
    }
    let mut listed: Vec<(String, u64, bool)> = queues
        .into_iter()
        .map(|(name, (ms, current))| (name, ms, current))
        .collect();
    listed.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    listed
}

fn missing(name: String) -> QueueCounts {
    QueueCounts {
        name,
        exists: false,
        ready: None,
        consumers: None,
    }
}

/// A passive declare of a missing queue closes the channel, so the prober
/// opens a new one after each miss.
struct Prober<'c> {
    connection: &'c Connection,
    channel: Channel,
}

impl<'c> Prober<'c> {
    async fn open(connection: &'c Connection) -> Result<Self, QueueError> {
        Ok(Self {
            connection,
            channel: open_channel(connection).await?,
        })
    }

    async fn counts(&mut self, name: &str) -> Result<QueueCounts, QueueError> {
        let declared = self
            .channel
            .queue_declare(
                short(name)?,
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(queue) => Ok(QueueCounts {
                name: name.to_owned(),
                exists: true,
                ready: Some(queue.message_count()),
                consumers: Some(queue.consumer_count()),
            }),
            Err(error) if is_not_found(&error) => {
                self.channel = open_channel(self.connection).await?;
                Ok(missing(name.to_owned()))
            }
            Err(error) => Err(QueueError::broker("queue.declare passive")(error)),
        }
    }
}

async fn open_channel(connection: &Connection) -> Result<Channel, QueueError> {
    connection
        .create_channel()
        .await
        .map_err(QueueError::broker("channel.open"))
}

pub(super) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if e.get_id() == NOT_FOUND)
}

/// Takes up to `ready` (at most [`DEAD_PEEK_LIMIT`]) messages without
/// acknowledging them, counts their reasons, and gives them all back.
async fn read_dead_reasons(
    channel: &Channel,
    queue: &str,
    ready: u32,
) -> Result<DeadReasons, QueueError> {
    let mut reasons = DeadReasons::default();
    let mut last_tag = None;
    let limit = ready.min(DEAD_PEEK_LIMIT);
    let got = async {
        while reasons.read < limit {
            let options = BasicGetOptions { no_ack: false };
            let Some(message) = channel
                .basic_get(short(queue)?, options)
                .await
                .map_err(QueueError::broker("basic.get"))?
            else {
                break;
            };
            let delivery = &message.delivery;
            last_tag = Some(delivery.delivery_tag);
            let headers = delivery.properties.headers().as_ref();
            *reasons.by_reason.entry(reason_of(headers)).or_default() += 1;
            reasons.read += 1;
            if header_u32(headers, DELIVERY_COUNT_HEADER)
                .is_some_and(|count| count >= PEEK_DELIVERY_COUNT_STOP)
            {
                reasons.partial = Some(format!(
                    "stopped at a message already returned {PEEK_DELIVERY_COUNT_STOP} times or \
                     more ({DELIVERY_COUNT_HEADER}), so that reading never makes a quorum queue \
                     drop it"
                ));
                break;
            }
        }
        Ok::<(), QueueError>(())
    }
    .await;
    if let Some(tag) = last_tag {
        let options = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        channel
            .basic_nack(tag, options)
            .await
            .map_err(QueueError::broker("basic.nack"))?;
    }
    let _ = channel.close(200, "reasons read".into()).await;
    got?;
    if reasons.partial.is_none() && reasons.read < ready {
        reasons.partial = Some(format!("read the first {} of {ready}", reasons.read));
    }
    Ok(reasons)
}

/// The reason's kind: the `x-zhima-error` text up to its first `": "`
/// (`gave up after 8 attempts; last error SYSTEM_ERROR`), at most 120
/// characters, so that messages differing only in detail group together.
pub(crate) fn reason_of(headers: Option<&FieldTable>) -> String {
    let text = headers
        .and_then(|headers| headers.inner().get(ERROR_HEADER))
        .and_then(|value| match value {
            AMQPValue::LongString(text) => {
                Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
            }
            AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
            _ => None,
        });
    let Some(text) = text else {
        return NO_REASON.to_owned();
    };
    let kind = text.split(": ").next().unwrap_or_default().trim();
    let kind: String = kind.chars().filter(|c| !c.is_control()).take(120).collect();
    if kind.is_empty() {
        NO_REASON.to_owned()
    } else {
        kind
    }
}

/// How often the reporting replica reads the queue depths.
pub(crate) const DEPTH_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Refreshes `zhima_queue_messages_ready` and `zhima_queue_consumers` every
/// [`DEPTH_REFRESH`] while `reporter` is set (one replica: see
/// `cluster::LeaseKeeper`), for the main, dead and delay queues (the current
/// tiers and those registered in the database). Elsewhere the gauges read
/// `NaN` and the broker is not asked. Broker failures are logged at DEBUG
/// and retried on the next tick with a new connection: the gauges are a
/// view, never a reason to stop the worker. Runs until aborted.
pub(crate) async fn report_depths(
    settings: Settings,
    registered: Vec<(String, u64)>,
    reporter: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use crate::telemetry::metric;
    let Ok(topology) = Topology::from_settings(&settings) else {
        return;
    };
    let mut queues = vec![
        (topology.names.queue.clone(), "main"),
        (topology.names.dead_queue.clone(), "dead"),
    ];
    queues.extend(
        delay_queues(&topology, &registered)
            .into_iter()
            .map(|(name, _, _)| (name, "delay")),
    );
    let names: Vec<String> = queues.iter().map(|(name, _)| name.clone()).collect();
    let mut connection: Option<Connection> = None;
    let mut tick = tokio::time::interval(DEPTH_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reporting = reporter.load(std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(metric::QUEUE_DEPTH_REPORTER).set(f64::from(u8::from(reporting)));
        if !reporting {
            connection = None;
            set_depth_gauges(&queues, |_| None);
            continue;
        }
        if connection.as_ref().is_none_or(|c| !c.status().connected()) {
            connection = super::connect(&settings.amqp, "queue gauges").await.ok();
        }
        let Some(open) = &connection else {
            continue;
        };
        match read_counts(open, &names).await {
            Ok(counts) => set_depth_gauges(&queues, |name| counts.iter().find(|c| c.name == name)),
            Err(error) => {
                tracing::debug!(error.message = %error, "reading the queue depths failed");
                connection = None;
            }
        }
    }
}

async fn read_counts(
    connection: &Connection,
    names: &[String],
) -> Result<Vec<QueueCounts>, QueueError> {
    let mut prober = Prober::open(connection).await?;
    let mut counts = Vec::with_capacity(names.len());
    for name in names {
        counts.push(prober.counts(name).await?);
    }
    let _ = prober.channel.close(200, "depths read".into()).await;
    Ok(counts)
}

/// A queue that does not exist (or no reading) shows `NaN`: unknown, not 0.
fn set_depth_gauges<'a>(
    queues: &[(String, &'static str)],
    counts: impl Fn(&str) -> Option<&'a QueueCounts>,
) {
    use crate::telemetry::metric;
    for (name, kind) in queues {
        let found = counts(name);
        let value = |n: Option<u32>| n.map_or(f64::NAN, f64::from);
        let labels = [
            (metric::QUEUE, name.clone()),
            (metric::KIND, (*kind).to_owned()),
        ];
        metrics::gauge!(metric::QUEUE_MESSAGES_READY, &labels)
            .set(value(found.and_then(|c| c.ready)));
        metrics::gauge!(metric::QUEUE_CONSUMERS, &labels)
            .set(value(found.and_then(|c| c.consumers)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use lapin::types::LongString;

    use super::*;

    fn headers(reason: &str) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(
            ERROR_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        table
    }

    #[test]
    fn a_reason_is_grouped_by_its_text_before_the_detail() {
        let gave_up = headers("gave up after 8 attempts; last error SYSTEM_ERROR: busy, try later");
        assert_eq!(
            reason_of(Some(&gave_up)),
            "gave up after 8 attempts; last error SYSTEM_ERROR"
        );
        let database = headers("database error 22021: invalid byte sequence");
        assert_eq!(reason_of(Some(&database)), "database error 22021");
    }

    #[test]
    fn a_missing_empty_or_hostile_reason_is_named_safely() {
        assert_eq!(reason_of(None), NO_REASON);
        assert_eq!(reason_of(Some(&FieldTable::default())), NO_REASON);
        assert_eq!(reason_of(Some(&headers(": detail only"))), NO_REASON);
        let hostile = headers(&format!("bad\u{1b}[2J{}", "x".repeat(500)));
        let kind = reason_of(Some(&hostile));
        assert!(!kind.contains('\u{1b}'), "{kind:?}");
        assert_eq!(kind.chars().count(), 120);
    }

    #[test]
    fn delay_queues_of_earlier_configurations_are_listed_beside_the_current_ones() {
        let names = crate::queue::QueueNames {
            exchange: "x".into(),
            queue: "q".into(),
            dead_queue: "q.dead".into(),
            queue_type: crate::config::QueueType::Quorum,
            delivery_limit: 5,
        };
        let topology = Topology::new(
            names,
            &[
                std::time::Duration::from_millis(1000),
                std::time::Duration::from_millis(2000),
            ],
        );
        let registered = vec![
            ("q.delay.1000".to_owned(), 1000),
            ("q.delay.500".to_owned(), 500),
        ];
        let listed = delay_queues(&topology, &registered);
        assert_eq!(
            listed,
            vec![
                ("q.delay.500".to_owned(), 500, false),
                ("q.delay.1000".to_owned(), 1000, true),
                ("q.delay.2000".to_owned(), 2000, true),
            ]
        );
    }
}
