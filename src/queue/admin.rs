//! The operator commands that look at or move queued messages: `status`
//! (queue depths next to the stored job counts) and `requeue-dead` (dead
//! letters back to the main queue, all of them or, for `reconcile --repair`,
//! only chosen transaction_ids).
//!
//! `status` only reads: it uses passive declares and never creates a queue.
//! `requeue-dead` never loses a message: a dead copy is removed only after its
//! replacement is confirmed by the broker, and a message that is still
//! invalid or not selected stays in the dead queue. Neither runs SQL itself;
//! rows are changed through [`JobStore`].

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use lapin::types::FieldTable;
use lapin::{Channel, Connection, ErrorKind};

use super::dead::{self, Mover, QueuedMessage, Verdict, Visitor};
use super::topology::ready_messages;
use super::{ATTEMPT_HEADER, ERROR_HEADER, Publisher, QueueError, THROTTLED_HEADER, Topology};
use crate::config::Settings;
use crate::store::{JobStatus, JobStore, StoreError};

/// The AMQP reply code for a queue that does not exist.
const NOT_FOUND: u16 = 404;

/// Ready messages in one queue; `None` when the queue does not exist (nothing
/// has declared the topology yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueDepth {
    pub(crate) name: String,
    pub(crate) ready: Option<u32>,
}

/// Depths of every queue the worker declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueDepths {
    pub(crate) main: QueueDepth,
    /// One per retry tier, shortest delay first.
    pub(crate) delays: Vec<(Duration, QueueDepth)>,
    pub(crate) dead: QueueDepth,
}

impl QueueDepths {
    /// Messages waiting in any delay queue: the jobs being retried.
    pub(crate) fn retry_total(&self) -> u64 {
        self.delays
            .iter()
            .filter_map(|(_, depth)| depth.ready)
            .map(u64::from)
            .sum()
    }
}

/// Counts ready messages with passive declares on a fresh connection. When
/// the main queue does not exist, nothing has declared the topology yet and
/// the other queues are not probed (each miss closes a channel, which the
/// client library logs as an error).
pub(crate) async fn queue_depths(settings: &Settings) -> Result<QueueDepths, QueueError> {
    let topology = Topology::from_settings(settings)?;
    let connection = super::connect(&settings.amqp, "status").await?;
    let mut prober = DepthProber::open(&connection).await?;
    let names = &topology.names;
    let main = prober.depth(&names.queue).await?;
    let unprobed = |name: String| QueueDepth { name, ready: None };
    if main.ready.is_none() {
        let _ = connection.close(200, "status done".into()).await;
        return Ok(QueueDepths {
            main,
            delays: topology
                .delays
                .iter()
                .map(|delay| (*delay, unprobed(names.delay_queue(*delay))))
                .collect(),
            dead: unprobed(names.dead_queue.clone()),
        });
    }
    let mut delays = Vec::with_capacity(topology.delays.len());
    for delay in &topology.delays {
        delays.push((*delay, prober.depth(&names.delay_queue(*delay)).await?));
    }
    let dead = prober.depth(&names.dead_queue).await?;
    let _ = connection.close(200, "status done".into()).await;
    Ok(QueueDepths { main, delays, dead })
}

/// A passive declare of a missing queue closes the channel, so the prober
/// opens a new one after each miss.
struct DepthProber<'c> {
    connection: &'c Connection,
    channel: Channel,
}

impl<'c> DepthProber<'c> {
    async fn open(connection: &'c Connection) -> Result<Self, QueueError> {
        let channel = open_channel(connection).await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    async fn depth(&mut self, name: &str) -> Result<QueueDepth, QueueError> {
        let ready = match ready_messages(&self.channel, name).await {
            Ok(ready) => Some(ready),
            Err(QueueError::Broker { source, .. }) if is_not_found(&source) => {
                self.channel = open_channel(self.connection).await?;
                None
            }
            Err(error) => return Err(error),
        };
        Ok(QueueDepth {
            name: name.to_owned(),
            ready,
        })
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

/// The `status` table: job counts (every status, zeros included), then queue
/// depths, numbers right-aligned. A missing queue shows `-`; a missing main
/// queue adds a line saying how to create the topology.
pub(crate) fn render_status(counts: &[(JobStatus, i64)], depths: &QueueDepths) -> String {
    let mut rows: Vec<(String, String, String)> =
        vec![("JOBS".into(), String::new(), "COUNT".into())];
    rows.extend(
        counts
            .iter()
            .map(|(status, count)| (status.to_string(), String::new(), count.to_string())),
    );
    rows.push(Default::default());
    rows.push(("QUEUE".into(), "NAME".into(), "READY".into()));
    rows.push(depth_row("main", &depths.main));
    let missing = depths.delays.iter().all(|(_, d)| d.ready.is_none());
    let retry = if missing {
        "-".into()
    } else {
        depths.retry_total().to_string()
    };
    rows.push((
        "retry".into(),
        format!("({} delay queues)", depths.delays.len()),
        retry,
    ));
    for (delay, depth) in &depths.delays {
        rows.push(depth_row(&format!("  {}ms", delay.as_millis()), depth));
    }
    rows.push(depth_row("dead", &depths.dead));
    let mut out = align(&rows);
    if depths.main.ready.is_none() {
        let _ = writeln!(
            out,
            "\nqueue {} does not exist yet: run `zhima-worker run` or `enqueue` once",
            depths.main.name
        );
    }
    out
}

fn depth_row(label: &str, depth: &QueueDepth) -> (String, String, String) {
    let ready = depth.ready.map_or_else(|| "-".into(), |n| n.to_string());
    (label.to_owned(), depth.name.clone(), ready)
}

fn align(rows: &[(String, String, String)]) -> String {
    let width = |pick: fn(&(String, String, String)) -> &String| {
        rows.iter()
            .map(|row| pick(row).chars().count())
            .max()
            .unwrap_or(0)
    };
    let (first, second, third) = (width(|r| &r.0), width(|r| &r.1), width(|r| &r.2));
    let mut out = String::new();
    for (label, name, number) in rows {
        let line = if name.is_empty() && second > 0 {
            format!("{label:<first$}  {:second$}  {number:>third$}", "")
        } else {
            format!("{label:<first$}  {name:<second$}  {number:>third$}")
        };
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
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

    fn depth(name: &str, ready: Option<u32>) -> QueueDepth {
        QueueDepth {
            name: name.into(),
            ready,
        }
    }

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

    #[test]
    fn status_lists_every_status_and_sums_the_delay_queues() {
        let counts: Vec<(JobStatus, i64)> = JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let depths = QueueDepths {
            main: depth("q", Some(3)),
            delays: vec![
                (Duration::from_secs(1), depth("q.delay.1000", Some(2))),
                (Duration::from_secs(2), depth("q.delay.2000", Some(5))),
            ],
            dead: depth("q.dead", None),
        };
        let table = render_status(&counts, &depths);
        for status in ["pending", "retrying", "succeeded", "failed"] {
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(status) && l.ends_with(" 0")),
                "{table}"
            );
        }
        let line = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap()
                .to_owned()
        };
        assert!(line("main").ends_with(" 3"));
        assert!(line("retry ").ends_with(" 7"));
        assert!(line("  1000ms").ends_with(" 2"));
        assert!(line("dead").ends_with(" -"));
        let widths: Vec<usize> = [line("main"), line("retry"), line("dead")]
            .iter()
            .map(|l| l.chars().count())
            .collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{table}");
        assert!(!table.contains("does not exist yet"), "{table}");
    }

    #[test]
    fn status_before_the_topology_exists_says_how_to_create_it() {
        let counts: Vec<(JobStatus, i64)> = JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let depths = QueueDepths {
            main: depth("zhima.relation.verify", None),
            delays: vec![(Duration::from_secs(1), depth("q.delay.1000", None))],
            dead: depth("q.dead", None),
        };
        let table = render_status(&counts, &depths);
        assert!(
            table.contains(
                "queue zhima.relation.verify does not exist yet: run `zhima-worker run` or `enqueue` once"
            ),
            "{table}"
        );
    }
}
